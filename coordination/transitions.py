"""The one place that changes a job's status: the legal transitions, one function per edge, and the
one rule that turns how an attempt ended into the job's outcome.

Every function here runs under the coordinator lock, inside the caller's transaction, and re-checks
the state it starts from: a job that moved on raises InvalidTransition (never an `assert`, which
`python -O` would drop). Nothing else in the code base writes `jobs.status` (tests/test_structure.py
holds it: no other module assigns a status). Hand-written SQL is not stopped (the repairs exist for it).

What follows a change is not done here: the database writes its job_events row and, for a job that
wants it, its webhook delivery (coordination/events/triggers.py); the coordinator's write answers
with the jobs that got one, whose sending it asks for after commit (LockedQueue.flush).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings

from coordination.exceptions import InvalidTransition
from coordination.models import Job
from coordination.writes import Writes

PENDING, RUNNING = Job.Status.PENDING, Job.Status.RUNNING
COMPLETED, FAILED, CANCELLED = Job.Status.COMPLETED, Job.Status.FAILED, Job.Status.CANCELLED
EXPIRED = Job.Status.EXPIRED

# (from, to) -> the edge's name. A job is inserted `pending` (job_accepted); it may be cancelled
# while it waits; a running attempt ends in an outcome, or goes back in line (a retry, a lost worker).
TRANSITIONS: dict[tuple[str, str], str] = {
    (PENDING, RUNNING): "started",
    (PENDING, CANCELLED): "cancelled while waiting",
    (PENDING, EXPIRED): "expired: not started by its deadline",
    (RUNNING, COMPLETED): "completed",
    (RUNNING, FAILED): "failed",
    (RUNNING, CANCELLED): "cancelled while running",
    (RUNNING, PENDING): "requeued",
}


def _move(job: Job, to: str) -> None:
    if (job.status, to) not in TRANSITIONS:
        raise InvalidTransition(f"Job {job.job_id} is {job.status}; it cannot become {to}.")
    job.status = to


def job_accepted(job: Job, *, now: datetime, writes: Writes) -> None:
    """Insert a new job, waiting: line order is the order of `now`, taken under the lock (a job that
    replaces another by its dedupe_key is given that job's time: it takes its place)."""
    if not job._state.adding:
        raise InvalidTransition(f"Job {job.job_id} was accepted already.")
    job.status = PENDING
    job.created_at = now
    writes.insert(job)


def job_started(job: Job, *, now: datetime, claimed: bool = False, writes: Writes) -> None:
    """A waiting job takes a slot: a new attempt, with a lease from now (a task no worker takes is
    sent again by the reaper; a worker that dies lets it lapse). `claimed`: the finishing worker
    runs it at once (the hand-off): taken in this transaction as a delivered task is by job_claim,
    its claim and first heartbeat written with its start."""
    _move(job, RUNNING)
    job.started_at = now
    job.attempt += 1
    job.blocked_by_job_id = None
    job.conflict_reason = None
    job.lease_expires_at = now + timedelta(seconds=settings.COORDINATOR_LEASE_SECONDS)
    job.cancel_requested_at = None
    fields = [
        "status", "started_at", "attempt", "blocked_by_job_id", "conflict_reason", "lease_expires_at",
        "cancel_requested_at",
    ]
    if claimed:
        job.claimed_attempt = job.attempt
        job.heartbeat_at = now
        fields += ["claimed_attempt", "heartbeat_at"]
    writes.update(job, fields)


def job_requeued(job: Job, *, writes: Writes) -> None:
    """A running attempt ended without an outcome: the job waits again, at its old place in line."""
    _move(job, PENDING)
    job.lease_expires_at = None
    writes.update(job, ["status", "lease_expires_at"])


def job_handed_back(job: Job, *, writes: Writes) -> None:
    """A stopping worker gives back a running attempt it did not finish (or never began): the job
    waits again at its old place in line and the attempt is not counted. Its number is used again by
    the next start, so a provider that saw it answers that start from its Idempotency-Key; nothing of
    the old attempt is left to report with it (its worker stopped its runner first)."""
    _move(job, PENDING)
    job.attempt -= 1
    job.claimed_attempt = min(job.claimed_attempt, job.attempt)
    job.lease_expires_at = None
    writes.update(job, ["status", "attempt", "claimed_attempt", "lease_expires_at"])


def job_ended(job: Job, *, status: str, now: datetime, result: dict | None = None, error: str | None = None, writes: Writes) -> None:
    """A running attempt ends for good: completed, failed or cancelled."""
    if status not in Job.OUTCOMES:
        raise InvalidTransition(f"'{status}' is not an outcome (one of {', '.join(Job.OUTCOMES)}).")
    _move(job, status)
    job.completed_at = now
    job.result = result
    job.error = error
    job.lease_expires_at = None
    writes.update(job, ["status", "completed_at", "result", "error", "lease_expires_at"])


def job_cancelled_waiting(job: Job, *, now: datetime, reason: str, writes: Writes) -> None:
    """A waiting job is cancelled: it ends at once, blocked by nothing."""
    if job.status != PENDING:
        raise InvalidTransition(
            f"Job {job.job_id} is already {job.status}; only a pending or running job can be cancelled."
        )
    _move(job, CANCELLED)
    job.completed_at = now
    job.blocked_by_job_id = None
    job.conflict_reason = None
    job.error = reason
    writes.update(job, ["status", "completed_at", "blocked_by_job_id", "conflict_reason", "error"])


def job_expired(job: Job, *, now: datetime, writes: Writes) -> None:
    """A waiting job's start-by deadline passed: it ends without having run, blocked by nothing."""
    if job.status != PENDING:
        raise InvalidTransition(f"Job {job.job_id} is {job.status}; only a waiting job can expire.")
    _move(job, EXPIRED)
    job.completed_at = now
    job.blocked_by_job_id = None
    job.conflict_reason = None
    job.error = f"not started by {job.start_by.isoformat()}"
    writes.update(job, ["status", "completed_at", "blocked_by_job_id", "conflict_reason", "error"])


# --- how an attempt ended -> the job's outcome ------------------------------------------------------

RETRY = "retry"


def max_attempts_of(job: Job, max_attempts: dict[str, int]) -> int:
    """How many attempts `job` may have: its model's max_attempts; a workflow's, the smallest among
    its models' (`max_attempts`: the catalog's, by model name)."""
    return min((max_attempts[model] for model in job.required_models if model in max_attempts), default=1)


@dataclass(frozen=True)
class Outcome:
    status: str  # completed, failed, cancelled, or RETRY (back in line for another attempt)
    error: str | None = None


def attempt_outcome(
    job: Job, *, reported: str, error: str | None, retry: bool, max_attempts: int, cancel_reason: str | None,
) -> Outcome:
    """The one rule for how a running attempt ends, whoever reports it: the worker (completed, failed,
    stopped), the reaper (a lapsed lease: `failed` that may retry; a timeout: `failed`, no retry), the
    reconciler, or Reset state (`failed`, no retry).

    - A job whose cancel was requested and did not complete ends `cancelled`, saying who asked and
      what became of the attempt; it is never retried.
    - A failure is retried while `retry` allows and the job's models allow more attempts.
    - Otherwise what was reported stands.
    """
    if reported == COMPLETED:
        return Outcome(COMPLETED)
    if job.cancel_requested_at is not None or reported == CANCELLED:
        if reported == CANCELLED:
            detail = error or "stopped"
        else:
            detail = f"its last attempt failed: {error}" if error else None
        who = cancel_reason or "Cancelled"
        return Outcome(CANCELLED, f"{who}; {detail}" if detail else who)
    if retry and job.attempt < max_attempts:
        return Outcome(RETRY, error)
    return Outcome(reported, error)
