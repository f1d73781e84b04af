"""The guide's two repairs, made safe: "Clear stale queue" and "Reset state". Each is one
transaction under the coordinator lock, audited, and ends by starting whatever may start."""

import logging
from datetime import timedelta

from django.db import transaction

from coordination.exceptions import InvalidTransition
from coordination.models import Job, JobQueueLog
from coordination.queue import LockedQueue, enqueue_job_run, stale_waiting
from coordination.queue.attempts import LEASE_EXPIRED, TIMED_OUT, lease_seconds, provider_stop
from coordination.services.jobs import job_attempt_end

logger = logging.getLogger("job_coordinator")


def waiting_repair(queue: LockedQueue, *, actor: str, only: list | None = None) -> tuple[list[Job], set]:
    """Under the lock: audit each stale waiting job (of `only`, if given), start what may start, and
    decide again for the rest. Returns the repaired jobs and the ids of every job started."""
    stale = stale_waiting() if only is None else stale_waiting().filter(job_id__in=only)
    stale = list(stale)
    for job in stale:
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.STALE_CLEARED,
            job=job,
            conflict_reason=job.conflict_reason,
            details={"actor": actor, "stale_blocker": str(job.blocked_by_job_id) if job.blocked_by_job_id else None},
        )
    started = {job.job_id for job in queue.dispatch()}
    for job in stale:
        if job.job_id not in started and queue.reassess(job):
            started.add(job.job_id)
    return stale, started


def queue_clear_stale(*, actor: str) -> dict:
    """The guide's "Clear stale queue", made safe: re-decide every pending job whose blocker is
    finished or missing (or that has none), then start what may start. Nothing is cleared blindly."""
    with transaction.atomic(), LockedQueue() as queue:
        stale, started = waiting_repair(queue, actor=actor)
        # One row for the run itself (each job repaired has its own): also an empty run is on record.
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.STALE_CLEARED,
            details={"actor": actor, "repaired": len(stale), "started": [str(job_id) for job_id in started]},
        )
    return {"repaired": [str(job.job_id) for job in stale], "started": [str(job_id) for job_id in started]}


def queue_reset(*, actor: str, slot_ids: list[int], expected: dict[int, str | None] | None = None) -> dict:
    """The guide's "Reset state", made safe: free the chosen slots; a job still running in one is
    ended as failed first, so no two jobs ever share a model. Then start what may start.

    A job running at a provider is cancelled there first (queue.attempts.provider_stop): it keeps its
    slot until the provider confirms or the cancel grace passes, then fails and frees it ("stopping").

    `expected` maps slot ids to the job id (or None) the operator's preview showed in them: if a
    slot shows another job by now, nothing is changed (a job the operator never saw is not failed)."""
    evicted: list[str] = []
    stopping: list[str] = []
    with transaction.atomic(), LockedQueue() as queue:
        chosen = [s for s in queue.slots if s.id in set(slot_ids)]
        for slot in chosen if expected is not None else []:
            now_shows = str(slot.active_job_id) if slot.active_job_id else None
            if slot.id in expected and expected[slot.id] != now_shows:
                raise InvalidTransition(
                    f"Slot {slot.id} now shows job {now_shows or 'none'}, not {expected[slot.id] or 'none'} as the "
                    "preview did; nothing was changed. Look at the queue again."
                )
        for slot in chosen:
            job = queue.running.get(slot.active_job_id) if slot.active_job_id else None
            JobQueueLog.objects.record(
                event_type=JobQueueLog.Event.STATE_RESET,
                job=job,
                details={"actor": actor, "slot": slot.id, "active_job_id": str(slot.active_job_id) if slot.active_job_id else None},
            )
            if job is not None:
                error = f"Evicted by {actor}: slot {slot.id} was reset while the job ran"
                if provider_stop(job, reason=error):
                    stopping.append(str(job.job_id))
                    continue  # its slot is freed when it ends, once the provider dropped its job
                job_attempt_end(queue, job, reported=Job.Status.FAILED, error=error, retry=False, settle=False)
                evicted.append(str(job.job_id))
            queue.empty_slot(slot)
        started = queue.settle_after(*evicted)
    if stopping:
        logger.info("Reset state by %s: job(s) %s cancelled at their provider first; each frees its slot when the "
                    "provider confirms", actor, ", ".join(stopping))
    return {"evicted": evicted, "stopping": stopping, "started": [str(job.job_id) for job in started]}


def running_repair(queue: LockedQueue, job: Job, now, action: str, reason: str) -> None:
    """Under the lock: carry out what running_check() found."""
    if action == TIMED_OUT:
        if provider_stop(job, reason=reason):
            # At a provider: cancelled there first; its poller fails it once the provider confirms.
            JobQueueLog.objects.record(event_type=JobQueueLog.Event.TIMED_OUT, job=job,
                                       details={"attempt": job.attempt, "reason": reason, "at_provider": "cancelling"})
            return
        _end(queue, job, JobQueueLog.Event.TIMED_OUT, reason, retry=False)
    elif action == LEASE_EXPIRED:
        _end(queue, job, JobQueueLog.Event.LEASE_EXPIRED, reason, retry=True)
    else:
        _task_resend(job, now, reason=reason)


def _task_resend(job: Job, now, *, reason: str) -> None:
    """Send a started job's task again (it stays running, at the same attempt): no worker took it."""
    JobQueueLog.objects.record(event_type=JobQueueLog.Event.TASK_RESENT, job=job, details={"attempt": job.attempt, "reason": reason})
    logger.info("[COORDINATOR] Job %s attempt %s was never taken by a worker; sending its task again", job.job_id, job.attempt)
    # A lease from now before the next re-send; started_at stays, so its deadline (timeout_seconds)
    # still ends a job whose task never gets taken.
    job.claimed_attempt = job.attempt - 1
    job.lease_expires_at = now + timedelta(seconds=lease_seconds())
    job.save(update_fields=["claimed_attempt", "lease_expires_at"])
    transaction.on_commit(lambda: enqueue_job_run(job.job_id, job.attempt))


def _end(queue: LockedQueue, job: Job, event: str, reason: str, *, retry: bool) -> None:
    JobQueueLog.objects.record(event_type=event, job=job, details={"attempt": job.attempt, "reason": reason})
    job_attempt_end(queue, job, reported=Job.Status.FAILED, error=reason, retry=retry)
