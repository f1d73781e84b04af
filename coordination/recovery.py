"""Self-healing: leases renewed by heartbeats, and the reaper that ends what they no longer cover.

A running attempt holds a lease (`jobs.lease_expires_at`). Its worker renews it while the runner
works; a worker that is killed, paused or cut off stops renewing, and the reaper then ends that
attempt: retried at its old place in line if its models allow more attempts, failed otherwise. A
late call from that worker is refused (its attempt is no longer current), so the outcome stands (docs/design.md, I5).
"""

import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connection, connections, transaction
from django.utils import timezone

from coordination.models import Job, JobQueueLog
from coordination.queue import LockedQueue, stale_waiting
from coordination.queue.attempts import LEASE_EXPIRED, RESEND, TIMED_OUT, catalog_timeouts, lease_seconds, running_check
from coordination.services.repairs import running_repair, waiting_repair
from coordination.webhooks import deliver_due

logger = logging.getLogger("job_coordinator")

HEARTBEAT_OK, HEARTBEAT_CANCEL, HEARTBEAT_LOST = "ok", "cancel", "lost"


def job_heartbeat(*, job_id, attempt: int, renew: bool = True) -> str:
    """One attempt's look (leases_look), its lease renewed unless `renew` is False (no coordinator
    lock: it touches only this row, fenced by attempt), and a lost attempt's refusal audited.

    Returns "ok", "cancel" (an operator or the owner asked it to stop) or "lost" (the attempt is no
    longer current: the reaper or an operator ended it; the worker must stop and report nothing).
    """
    key = (job_id, attempt)
    state = leases_look(watched=[key], renew=[key] if renew else [])[key]
    if state == HEARTBEAT_LOST:
        job = Job.objects.filter(pk=job_id).only("job_id", "kind", "status", "attempt").first()
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.REFUSED,
            job=job,
            details={"wanted": "heartbeat", "caller_attempt": attempt,
                     "status": job.status if job else None, "attempt": job.attempt if job else None},
        )
        logger.warning("[COORDINATOR] Refused heartbeat of job %s attempt %s: the attempt is no longer current", job_id, attempt)
    return state


def leases_look(*, watched: list[tuple], renew: list[tuple]) -> dict[tuple, str]:
    """A worker process's keeper's look at every attempt it runs, (job_id, attempt) pairs: renews the
    leases of `renew` (one UPDATE, fenced by status, attempt and claim) and reads the state of all (one SELECT):
    "ok", "cancel" or "lost" each. Records nothing: a lost attempt's refusal is job_heartbeat's to audit."""
    now = timezone.now()
    if renew:
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {Job._meta.db_table} AS job SET heartbeat_at = %s, lease_expires_at = %s "
                "FROM unnest(%s::uuid[], %s::integer[]) AS watched(job_id, attempt) "
                "WHERE job.job_id = watched.job_id AND job.status = %s AND job.attempt = watched.attempt "
                "AND job.claimed_attempt = watched.attempt",
                [now, now + timedelta(seconds=lease_seconds()), [job_id for job_id, _ in renew],
                 [attempt for _, attempt in renew], Job.Status.RUNNING],
            )
    rows = Job.objects.filter(pk__in=[job_id for job_id, _ in watched]).values_list(
        "job_id", "status", "attempt", "claimed_attempt", "cancel_requested_at")
    found = {job_id: (status, attempt, claimed, cancel) for job_id, status, attempt, claimed, cancel in rows}
    states = {}
    for job_id, attempt in watched:
        status, current, claimed, cancel = found.get(job_id, (None, None, None, None))
        if status != Job.Status.RUNNING or current != attempt or claimed != attempt:
            states[(job_id, attempt)] = HEARTBEAT_LOST
        else:
            states[(job_id, attempt)] = HEARTBEAT_OK if cancel is None else HEARTBEAT_CANCEL
    return states


def reaper_pass() -> dict:
    """One reaper pass: end lapsed and overlong attempts, re-send lost tasks, repair waiting jobs, dispatch."""
    report = {LEASE_EXPIRED: [], TIMED_OUT: [], RESEND: [], "repaired": []}
    # Looked for without the lock (a read of committed rows); each is checked again under it.
    suspects = list(stale_waiting().values_list("job_id", flat=True)[:1000])
    now = timezone.now()
    with transaction.atomic(), LockedQueue() as queue:
        timeouts = catalog_timeouts()
        for job in list(queue.running.values()):
            found = running_check(job, now, timeouts)
            if found:
                running_repair(queue, job, now, *found)
                report[found[0]].append(str(job.job_id))
        if suspects:
            stale, _ = waiting_repair(queue, actor="reaper", only=suspects)
            report["repaired"] = [str(job.job_id) for job in stale]
        else:
            queue.dispatch(quiet_when_idle=True)
    if any(report.values()):
        logger.info("[COORDINATOR] Reaper: %s", {key: len(value) for key, value in report.items() if value})
    return report


def reaper_pass_if_due() -> dict | None:
    """Run a reaper pass when the last one is older than COORDINATOR_REAPER_SECONDS.

    django-q2's scheduler fires at most about once a minute; busy workers call this between jobs so
    that recovery runs every COORDINATOR_REAPER_SECONDS while there is work.
    """
    if not cache.add("coordinator:reaper", 1, timeout=settings.COORDINATOR_REAPER_SECONDS):
        return None
    return reaper_pass()


def background_pass() -> dict:
    """What each worker process's ticker does: a reaper pass when one is due, then the webhook
    deliveries whose time came (sent with no lock and no transaction held; never from a job's loop,
    where a slow receiver would hold up the job)."""
    return {"reaped": reaper_pass_if_due(), "webhooks_delivered": deliver_due()}


def start_reaper_ticker(sender=None, proc_name: str = "", paused=lambda: False, **kwargs) -> threading.Thread:
    """In a worker process (coordination.tasks.worker_process_ready, at django-q2's post_spawn): a
    daemon thread that runs background_pass() every COORDINATOR_REAPER_SECONDS, so recovery needs no
    request and no busy worker; none while `paused()` (a stopping worker starts nothing)."""

    def tick() -> None:
        stop = threading.Event()
        while not stop.wait(settings.COORDINATOR_REAPER_SECONDS):
            if paused():
                continue
            try:
                background_pass()
            except Exception:  # the database may be away; the next tick tries again
                logger.exception("Reaper pass failed")
            finally:
                connections.close_all()

    thread = threading.Thread(target=tick, name=f"reaper-{proc_name}", daemon=True)
    thread.start()
    return thread
