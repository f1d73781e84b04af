"""A job's life after it was accepted (submit.py): claim, cancel, and how a running attempt ends.

One verb for the coordinator's side, "end", and one for the worker's side, "report":

- transitions.job_ended: the edge itself (running -> completed, failed or cancelled);
- job_end: under the lock, end the job for good with an outcome already decided (the edge, its slot
  and models freed, its audit row, and whatever may start now);
- job_attempt_end: under the lock, an attempt ended as someone reports it: the one outcome rule
  decides between job_retry (back in line) and job_end;
- job_complete, job_fail, job_stopped, job_report, job_report_and_take_next: a worker's (or
  poller's) report, by id and fenced by its attempt, each its own transaction (job_attempt_end under
  the lock).
"""

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from coordination.exceptions import JobNotFound, StaleAttempt
from coordination.models import CatalogModel, Job, JobQueueLog
from coordination.queue import LockedQueue
from coordination.queue.locked import uuid_of
from coordination.queue.words import say
from coordination.transitions import RETRY, Outcome, attempt_outcome, job_ended, max_attempts_of

logger = logging.getLogger("job_coordinator")


def _job_of(queue: LockedQueue, job_id) -> Job:
    """The job `job_id` as `queue` knows it: read with its snapshot (a transition's own job is), or now."""
    job = queue.jobs.get(uuid_of(job_id))
    return job if job is not None else queue.known(_locked_job(job_id))


def _locked_job(job_id) -> Job:
    try:
        return Job.objects.select_for_update().get(pk=job_id)
    except (Job.DoesNotExist, ValueError, ValidationError):
        # A malformed id is simply not found (Django reports it as a ValidationError, not a ValueError).
        raise JobNotFound(f"No job {job_id}.") from None


def job_max_attempts(job: Job) -> int:
    """How many attempts `job` may have (transitions.max_attempts_of), as the catalog says now."""
    attempts = CatalogModel.objects.filter(name__in=job.required_models).values_list("name", "max_attempts")
    return max_attempts_of(job, dict(attempts))


def job_retry(queue: LockedQueue, job: Job, *, error: str | None) -> None:
    """The attempt ended without an outcome and the job may run again: audited, then back in line
    at its old place (see LockedQueue.requeue), and everyone decided again."""
    logger.info("[COORDINATOR] Job %s attempt %s ended (%s), retrying", job.job_id, job.attempt, error)
    queue.record(event_type=JobQueueLog.Event.RETRIED, job=job, details={"attempt": job.attempt, "error": error})
    queue.requeue(job)
    started = {started.job_id for started in queue.settle_after(job.job_id)}
    if job.job_id not in started and job.status == Job.Status.PENDING:
        queue.reassess(job)


def job_end(
    queue: LockedQueue, job: Job, *, status: str, error: str | None = None, result: dict | None = None,
    settle: bool = True,
) -> None:
    """Under the lock: end a running job for good with this outcome (decided already): its slot and
    models freed, its audit row, and (unless the caller settles several at once) whatever may start now."""
    job_ended(job, status=status, now=queue.now, result=result, error=error, writes=queue.writes)
    say("ended", job.job_id, status)
    queue.release(job)
    queue.record(event_type=status, job=job, details={"attempt": job.attempt, **({"error": error} if error else {})})
    if settle:
        queue.settle_after(job.job_id)


def job_attempt_end(
    queue: LockedQueue, job: Job, *, reported: str, error: str | None = None, result: dict | None = None,
    retry: bool = True, settle: bool = True,
) -> Outcome:
    """Under the lock: a running attempt ended as `reported` (by its worker, the reaper, the reconciler
    or Reset state): the one outcome rule (transitions.attempt_outcome) decides, and job_retry or
    job_end carries it out."""
    may_retry = retry and reported == Job.Status.FAILED and job.cancel_requested_at is None
    outcome = attempt_outcome(
        job,
        reported=reported,
        error=error,
        retry=retry,
        max_attempts=queue.max_attempts(job) if may_retry else 1,
        cancel_reason=job_cancel_reason(job) if reported != Job.Status.COMPLETED and (
            job.cancel_requested_at is not None or reported == Job.Status.CANCELLED
        ) else None,
    )
    if outcome.status == RETRY:
        job_retry(queue, job, error=error)
    else:
        job_end(queue, job, status=outcome.status, error=outcome.error, result=result, settle=settle)
    return outcome


def _report(
    *,
    job_id,
    attempt: int,
    status: str,
    result: dict | None = None,
    error: str | None = None,
    take_next: bool = False,
    retry: bool = True,
    starts: bool = True,
) -> tuple[Job, Job | None]:
    """A report of how an attempt ended, in one transaction under the lock. Returns the job and, with
    `take_next`, the job handed over (or None). `starts` False (a stopping worker's report): nothing
    is started (LockedQueue's `starts`)."""
    refusal = decided = None
    with transaction.atomic(), LockedQueue(take_next=take_next and starts, starts=starts, snapshot=True,
                                           ending=[job_id], ends_transaction=True) as queue:
        job = _job_of(queue, job_id)
        if job.status != Job.Status.RUNNING or job.attempt != attempt or (
            status == Job.Status.CANCELLED and job.cancel_requested_at is None
        ):
            # Recorded, and committed, before refusing: a late worker's call is part of the story.
            refusal = _refusal(job_id, status, job, attempt)
            queue.record(
                event_type=JobQueueLog.Event.REFUSED,
                job=job,
                details={"wanted": status, "status": job.status, "attempt": job.attempt, "caller_attempt": attempt},
            )
        else:
            job_attempt_end(queue, job, reported=status, error=error, result=result, retry=retry)
            decided = job, queue.taken
    if refusal:
        logger.warning("[COORDINATOR] %s", refusal)
        raise StaleAttempt(refusal)
    return decided


def _refusal(job_id, status: str, job: Job, attempt: int) -> str:
    return f"Refused to mark job {job_id} {status}: it is {job.status} at attempt {job.attempt}, the caller held attempt {attempt}"


def job_cancel_reason(job: Job) -> str:
    """Why a running job was asked to stop, as its cancel recorded it (who, in their words)."""
    details = (
        JobQueueLog.objects.filter(job_id=job.job_id, event_type=JobQueueLog.Event.CANCEL_REQUESTED)
        .order_by("-id").values_list("details", flat=True).first()
    )
    return (details or {}).get("reason") or "Cancelled"


def job_complete(*, job_id, attempt: int, result: dict | None = None, starts: bool = True) -> Job:
    """Complete the attempt (`starts` False: a stopping process's report, which starts nothing)."""
    return _report(job_id=job_id, attempt=attempt, status=Job.Status.COMPLETED, result=result, starts=starts)[0]


def job_fail(*, job_id, attempt: int, error: str, retry: bool = True, starts: bool = True) -> Job:
    """Fail the attempt; the job runs again (at its old place in line) while its models allow
    more attempts, unless `retry` is False."""
    return _report(job_id=job_id, attempt=attempt, status=Job.Status.FAILED, error=error, retry=retry, starts=starts)[0]


def job_stopped(*, job_id, attempt: int, error: str = "stopped while running", starts: bool = True) -> Job:
    """The worker stopped the runner of a job whose cancel was requested: it ends cancelled."""
    return _report(job_id=job_id, attempt=attempt, status=Job.Status.CANCELLED, error=error, starts=starts)[0]


def job_report(
    *, job_id, attempt: int, status: str, result: dict | None = None, error: str | None = None, starts: bool = True,
) -> Job:
    """A worker reports its job's outcome as a status: as job_complete, job_fail (may be retried) or
    job_stopped would, chosen by `status`. `starts` False: a stopping worker's report, which starts
    nothing (what may start waits for the next worker)."""
    return _report(job_id=job_id, attempt=attempt, status=status, result=result, error=error, starts=starts)[0]


def job_report_and_take_next(
    *, job_id, attempt: int, status: str, result: dict | None = None, error: str | None = None
) -> Job | None:
    """A worker reports its job's outcome and takes, already claimed, the first job that outcome
    started, so the next job runs without waiting for the broker to deliver it (None if none)."""
    return _report(job_id=job_id, attempt=attempt, status=status, result=result, error=error, take_next=True)[1]


def job_hand_back(*, job_id, attempt: int, began: bool, reason: str) -> Job | None:
    """A stopping worker gives back an attempt it claimed (`began`: its runner stopped before the job
    ended) or was sent and never claimed: the job waits again at its old place in line, the attempt
    not counted, and nothing is started (the worker is stopping: what may start waits for the next
    worker). Fenced by the attempt and its claim; None if the job moved on meanwhile (ended, taken
    away, claimed by another worker)."""
    with transaction.atomic(), LockedQueue(starts=False, snapshot=True, ending=[job_id]) as queue:
        job = queue.running_job(job_id)
        if job is None or job.attempt != attempt or (job.claimed_attempt == attempt) != began:
            return None
        if job.cancel_requested_at is not None:
            # Its cancel was asked for (and its runner, if it had one, has stopped): the cancel's outcome.
            job_attempt_end(queue, job, reported=Job.Status.CANCELLED, error="stopped while running")
            return job
        logger.info("Job %s attempt %s handed back (%s): waiting again at its place in line, no attempt used",
                    job.job_id, attempt, reason)
        queue.record(
            event_type=JobQueueLog.Event.RETRIED, job=job,
            details={"attempt": attempt, "handed_back": True, "attempt_used": False, "reason": reason},
        )
        queue.hand_back(job)
        queue.settle_after(job.job_id)
        queue.reassess(job)
    return job


def job_cancel(*, job_id, user=None, reason: str = "Cancelled by its owner") -> Job:
    with transaction.atomic(), LockedQueue(snapshot=True, ending=[job_id]) as queue:
        job = _job_of(queue, job_id)
        if job.status == Job.Status.RUNNING:
            # Its worker stops the runner and reports `cancelled`; only then (or once its lease
            # lapses) are its models freed, so it never overlaps the next job on them.
            if job.cancel_requested_at is None:
                job.cancel_requested_at = timezone.now()
                queue.writes.update(job, ["cancel_requested_at"])
                logger.info("[COORDINATOR] Cancel requested for running job %s; waiting for its worker to stop", job.job_id)
                queue.record(
                    event_type=JobQueueLog.Event.CANCEL_REQUESTED,
                    job=job,
                    details={"by": getattr(user, "username", None), "reason": reason, "attempt": job.attempt},
                )
            return job
        queue.cancel_waiting(job, reason=reason, details={"by": getattr(user, "username", None)})
        queue.settle_after(job.job_id)
    return job


def job_claim(*, job_id, attempt: int) -> Job | None:
    """A worker takes its job for one attempt; None if the job moved on or was already claimed.

    django-q2 may deliver a task twice; only the first delivery of an attempt gets the job, so a
    runner never runs twice for one attempt.
    """
    try:
        job_id = uuid.UUID(str(job_id))
    except ValueError:
        return None
    now = timezone.now()
    columns = ", ".join(field.column for field in Job._meta.concrete_fields)
    with transaction.atomic():
        # One statement takes the attempt and returns the row (UPDATE ... RETURNING);
        # the audit row is the second. Fenced by status and attempt: a second delivery takes nothing.
        claimed = list(Job.objects.raw(
            f"UPDATE {Job._meta.db_table} SET claimed_attempt = %s, heartbeat_at = %s, lease_expires_at = %s "
            f"WHERE job_id = %s AND status = %s AND attempt = %s AND claimed_attempt < %s RETURNING {columns}",
            [attempt, now, now + timedelta(seconds=settings.COORDINATOR_LEASE_SECONDS),
             Job._meta.pk.get_db_prep_value(job_id, connection), Job.Status.RUNNING, attempt, attempt],
        ))
        if not claimed:
            return None
        job = claimed[0]
        JobQueueLog.objects.record(event_type=JobQueueLog.Event.CLAIMED, job=job, details={"attempt": attempt})
    return job
