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


def at_provider(job: Job) -> bool:
    """The job's current attempt is at a provider, its run in flight."""
    return _provider_run(job).exists()


def _provider_run(job: Job):
    """The job's current attempt at a provider (in flight), as a queryset."""
    return ProviderRun.objects.filter(job_id=job.job_id, attempt=job.attempt, state=ProviderRun.State.IN_FLIGHT)


def provider_stop(job: Job, *, reason: str) -> bool:
    """Under the lock, for a running job that is to end for `reason` (its deadline, an operator's
    Reset state or reconcile) without anyone having cancelled it: False if its attempt is not at a
    provider (the caller ends it now). True if it is: its run is marked to stop (a stop asked for
    already keeps its first reason), its poller sends the provider its cancel after this commits, and
    the job keeps running, in its slot and holding its models, until the provider confirms or
    COORDINATOR_PROVIDER_CANCEL_GRACE passes; then it fails with `reason` and its run closes in
    that same transaction (coordination/providers/store.py). So a provider's own in-flight limit is
    never overrun and no job is given a model its predecessor still uses there (docs/design.md, I1)."""
    run = _provider_run(job)
    if not run.exists():
        return False
    run.filter(stop_reason__isnull=True).update(stop_reason=reason)
    return True


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
        if claimed and _provider_run(job).filter(stop_reason__isnull=False).exists():
            # Being stopped at the provider already (by its poller at the same deadline, or an
            # earlier pass): its poller ends it once the provider confirms or the grace passes.
            return None
        # At a provider, the repair is provider_stop(): cancelled there first, failed then.
        return TIMED_OUT, f"timed out after {timeout} s"
    if lapsed and claimed and at_provider(job):
        # Its worker let go of it at the provider; the poller that watched it is gone: the next
        # poller adopts it (coordination/providers). Nothing ran twice and nothing was lost.
        return None
    if claimed and lapsed:
        return LEASE_EXPIRED, f"worker lost: lease expired at {job.lease_expires_at.isoformat()}"
    if not claimed and lapsed:
        # Started, but no worker took it in a whole lease: its task was lost. Send it again; should
        # the first copy turn up after all, the claim lets only one of them run.
        return RESEND, "not claimed"
    return None
