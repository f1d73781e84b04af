"""What recovery must do about a running attempt: a read, shared by the reaper (recovery.py) and
the reconciler's preview (queue/reconcile.py)."""

from datetime import timedelta

from django.conf import settings

from coordination.models import CatalogModel, Job, ProviderRun, attempt_timeout

# What recovery does about a running attempt; also the keys of the reaper's report (returned by its
# schedule, counted in its "[COORDINATOR] Reaper:" line). RESEND: its task is sent again; the key
# says "requeued_tasks", older than the rule that "requeued" is a job sent back to waiting, and kept
# as the log line's words.
TIMED_OUT, RESEND, LEASE_EXPIRED = "timed_out", "requeued_tasks", "lease_expired"


def lease_seconds() -> int:
    return settings.COORDINATOR_LEASE_SECONDS


def catalog_timeouts() -> dict[str, int | None]:
    """Each catalog model's timeout_seconds, by name (running_check's `timeouts`)."""
    return dict(CatalogModel.objects.values_list("name", "timeout_seconds"))


def _at_provider(job: Job) -> bool:
    return ProviderRun.objects.filter(job_id=job.job_id, attempt=job.attempt, state=ProviderRun.State.IN_FLIGHT).exists()


def running_check(job: Job, now, timeouts: dict) -> tuple[str, str] | None:
    """What recovery must do about a running attempt now, as (action, reason), or None while its
    lease and its deadline both hold. A read: the reaper and the reconciler's preview share it.
    `timeouts`: catalog_timeouts()."""
    # A workflow's attempt has the deadline of its strictest model.
    timeout = min(
        [attempt_timeout(timeouts.get(model)) for model in job.required_models] + [settings.COORDINATOR_JOB_TIMEOUT]
    )
    claimed = job.claimed_attempt == job.attempt
    lapsed = job.lease_expires_at is not None and job.lease_expires_at < now
    if job.started_at and now - job.started_at > timedelta(seconds=timeout):
        if claimed and _at_provider(job):
            # Its poller ends it at the same deadline (provider_runs.deadline_at), and drops the
            # provider's job too, which ending it here would leave running there.
            return None
        return TIMED_OUT, f"timed out after {timeout} s"
    if lapsed and claimed and _at_provider(job):
        # Its worker let go of it at the provider; the poller that watched it is gone: the next
        # poller adopts it (coordination/providers). Nothing ran twice and nothing was lost.
        return None
    if claimed and job.heartbeat_at is None and lapsed:
        # Handed to a worker in a finishing transaction, but that worker never confirmed it (it
        # died in between): nothing ran, so it is sent again without using an attempt.
        return RESEND, "handed off, never taken"
    if claimed and lapsed:
        return LEASE_EXPIRED, f"worker lost: lease expired at {job.lease_expires_at.isoformat()}"
    if not claimed and lapsed:
        # Started, but no worker took it in a whole lease: its task was lost. Send it again; should
        # the first copy turn up after all, the claim lets only one of them run.
        return RESEND, "not claimed"
    return None
