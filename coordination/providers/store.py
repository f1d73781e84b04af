"""The database side of jobs at a provider: what the worker records when the provider accepts a job,
what pollers renew, adopt and read, and how an outcome ends the job through the coordinator.

Who watches a run is `provider_runs.watcher`; its lease is the job's own `lease_expires_at`, renewed
for all of a poller's runs by one statement every third of a lease. A run whose job's lease lapsed (its poller died)
or that nobody watches yet is adopted by any poller, which raises its `fence`: the poller it was taken
from can no longer end it. Ending a run marks it done and reports the outcome in one transaction, so a
job ends once, whether its poller or the provider's callback (or both) bring the outcome.

A run is stopped at the provider when its job's cancel is asked for, or when the coordinator ends the
job for another reason (`stop_reason`: its deadline, an operator's Reset state or reconcile): its poller
sends the cancel, and the job keeps its slot and models until the provider confirms or the cancel grace
passes; only then does it end, its run closed in the same transaction. A run in flight whose job no longer
runs at its attempt (ended by hand-written SQL, say) is an orphan: a poller cancels it at the provider,
says so in its log and closes it.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from coordination.exceptions import StaleAttempt
from coordination.models import Job, JobQueueLog, ProviderRun
from coordination.runners import style_of
from coordination.runners.client import Accepted, Status, result_of
from coordination.services import job_complete, job_fail, job_stopped

logger = logging.getLogger(__name__)

IN_FLIGHT, DONE = ProviderRun.State.IN_FLIGHT, ProviderRun.State.DONE
# A provider's end this close to the run's deadline is that deadline's (it was sent the seconds left, whole).
DEADLINE_SLACK = timedelta(seconds=5)


def _lease(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.COORDINATOR_LEASE_SECONDS)


def run_record(
    *, job_id, attempt: int, model, accepted: Accepted, started_at: datetime | None = None,
) -> ProviderRun | None:
    """The provider accepted this attempt: record where to ask about it, in the worker's step that lets
    go of the job, and its deadline: the model's timeout_seconds from the attempt's start (`started_at`;
    from now if not given). None if the attempt is no longer the worker's (cancelled, reset, taken over)."""
    now = timezone.now()
    with transaction.atomic():
        # The UPDATE holds the job's row until the commit, as a SELECT FOR UPDATE would, in one statement:
        # its lease now runs until a poller takes the run (at its next tick, watcher being empty).
        if not Job.objects.filter(
            pk=job_id, status=Job.Status.RUNNING, attempt=attempt, claimed_attempt=attempt
        ).update(lease_expires_at=_lease(now), heartbeat_at=now):
            return None
        recorded = ProviderRun.objects.filter(job_id=job_id, attempt=attempt).first()
        if recorded is not None:
            # Recorded already: the worker's call again after a commit whose answer the database outage
            # lost (tasks._when_database_answers). The same provider job is that run; another one is not
            # this attempt's (None: the worker drops it at the provider).
            return recorded if recorded.provider_job_id == accepted.provider_job_id else None
        style = style_of(model)
        run = ProviderRun.objects.create(
            job_id=job_id, attempt=attempt, model=model.name, style=style,
            provider_job_id=accepted.provider_job_id, status_url=accepted.status_url, provider_data=accepted.data,
            provider_status=accepted.status.state, progress=accepted.status.progress,
            queue_position=accepted.status.queue_position, submitted_at=now,
            deadline_at=(started_at or now) + timedelta(seconds=model.attempt_timeout),
        )
        JobQueueLog.objects.create(job_id=job_id, job_type=Job.Kind.NORMAL, event_type=JobQueueLog.Event.AT_PROVIDER,
                                   details={"attempt": attempt, "provider_job_id": accepted.provider_job_id,
                                            "style": style})
    logger.info("Job %s attempt %s is at the provider as %s; its worker lets go of it",
                job_id, attempt, accepted.provider_job_id)
    return run


@dataclass
class Watched:
    """What a poller knows of a run it watches."""

    run_id: int
    job_id: object
    attempt: int
    fence: int
    model: str
    style: str
    provider_job_id: str
    status_url: str
    deadline_at: datetime
    data: dict
    cancel_requested: bool = False
    stop_reason: str | None = None  # the coordinator ends the job for this reason (provider_runs.stop_reason)
    orphan: bool = False  # its job no longer runs at this attempt: cancelled at the provider and closed
    cancel_sent_at: datetime | None = None
    provider_status: str = ""  # what the provider last said (written only when it changes)
    progress: float | None = None  # and of its progress and place in its line (stored when they change)
    queue_position: int | None = None
    progress_stored_at: float = 0.0  # monotonic: a progress is stored at most twice a second
    # The poller's own, never stored: the question it sends at each poll (built at the first, again
    # when the catalog's provider changed), and how many in a row went unanswered (a limit, an outage).
    request: object = None
    asked_as: object = None  # the Provider the request was built for
    unanswered: int = 0

    @property
    def stopping(self) -> bool:
        """To be cancelled at the provider: its job's cancel asked for, a stop decided, or an orphan."""
        return self.cancel_requested or self.stop_reason is not None or self.orphan


def watches_renew(*, watcher: str) -> int:
    """One statement: the leases of every job this poller watches, renewed."""
    now = timezone.now()
    return Job.objects.filter(
        status=Job.Status.RUNNING, provider_runs__watcher=watcher, provider_runs__state=IN_FLIGHT,
    ).update(lease_expires_at=_lease(now), heartbeat_at=now)


def watches_read(*, watcher: str, run_ids: list[int] | None = None) -> list[Watched]:
    """The runs this poller still watches (or just these of them), with what changed on their jobs
    (a cancel asked for, a stop decided) and those whose job no longer runs at their attempt (orphans)."""
    runs = ProviderRun.objects.filter(watcher=watcher, state=IN_FLIGHT)
    if run_ids is not None:
        runs = runs.filter(id__in=run_ids)
    rows = runs.values_list(
        "id", "job_id", "attempt", "fence", "model", "style", "provider_job_id", "status_url", "deadline_at",
        "provider_data", "cancel_sent_at", "provider_status", "progress", "queue_position", "stop_reason",
        "job__cancel_requested_at", "job__attempt", "job__status",
    )
    return [
        Watched(run_id, job_id, attempt, fence, model, style, provider_job_id, status_url, deadline_at, data or {},
                cancel_requested=cancel_requested_at is not None, stop_reason=stop_reason,
                orphan=job_status != Job.Status.RUNNING or job_attempt != attempt,
                cancel_sent_at=cancel_sent_at, provider_status=provider_status, progress=progress,
                queue_position=queue_position)
        for (run_id, job_id, attempt, fence, model, style, provider_job_id, status_url, deadline_at, data, cancel_sent_at,
             provider_status, progress, queue_position, stop_reason, cancel_requested_at, job_attempt, job_status) in rows
    ]


def watches_stopping(*, watcher: str) -> list[tuple[int, bool, str | None]]:
    """The runs this poller watches that are to be cancelled at the provider, as (run id, its job's
    cancel asked for, stop_reason): an operator's or owner's cancel, or the coordinator ending the job."""
    rows = ProviderRun.objects.filter(watcher=watcher, state=IN_FLIGHT, job__status=Job.Status.RUNNING).filter(
        Q(job__cancel_requested_at__isnull=False) | Q(stop_reason__isnull=False)
    ).values_list("id", "job__cancel_requested_at", "stop_reason")
    return [(run_id, cancel_requested_at is not None, stop_reason) for run_id, cancel_requested_at, stop_reason in rows]


def run_stop(run_id: int, reason: str) -> str | None:
    """The poller's own decision to end a run (its deadline passed): recorded unless a stop was decided
    already. Returns the reason that stands (None: the run is no longer in flight)."""
    ProviderRun.objects.filter(pk=run_id, state=IN_FLIGHT, stop_reason__isnull=True).update(stop_reason=reason)
    return ProviderRun.objects.filter(pk=run_id, state=IN_FLIGHT).values_list("stop_reason", flat=True).first()


def watches_adopt(*, watcher: str, limit: int) -> list[int]:
    """Take runs nobody watches, or whose watcher's lease lapsed (it died), or whose job no longer runs
    at their attempt (an orphan, which has no lease to lapse): under a raised fence, with their leases
    renewed, in one transaction. Two pollers never take one run (SKIP LOCKED). Returns the ids of the runs taken."""
    now = timezone.now()
    with transaction.atomic():
        orphan = ~Q(job__status=Job.Status.RUNNING) | ~Q(job__attempt=F("attempt"))
        candidates = ProviderRun.objects.filter(state=IN_FLIGHT).filter(
            Q(watcher__isnull=True) | Q(job__lease_expires_at__lt=now) | orphan
        ).exclude(watcher=watcher)
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True, of=("self",))
        taken = list(candidates.order_by("id").values_list("id", "job_id", "watcher", "fence")[:limit])
        if not taken:
            return []
        ids = [run_id for run_id, *_ in taken]
        ProviderRun.objects.filter(id__in=ids).update(watcher=watcher, fence=F("fence") + 1)
        Job.objects.filter(job_id__in=[job_id for _, job_id, *_ in taken], status=Job.Status.RUNNING).update(
            lease_expires_at=_lease(now), heartbeat_at=now)
        from_others = [(run_id, job_id, previous) for run_id, job_id, previous, _ in taken if previous]
        if from_others:
            JobQueueLog.objects.bulk_create([
                JobQueueLog(job_id=job_id, job_type=Job.Kind.NORMAL, event_type=JobQueueLog.Event.ADOPTED,
                            details={"poller": watcher, "from": previous, "run": run_id})
                for run_id, job_id, previous in from_others
            ])
    return ids


def watches_release(*, watcher: str) -> int:
    """A poller that stops lets go of its runs: the next poller takes them at once, not a lease later."""
    return ProviderRun.objects.filter(watcher=watcher, state=IN_FLIGHT).update(watcher=None)


def cancel_sent(run_id: int) -> None:
    ProviderRun.objects.filter(pk=run_id, cancel_sent_at__isnull=True).update(cancel_sent_at=timezone.now())


@dataclass(frozen=True)
class Ending:
    """A run's outcome, to be reported: the provider's last word, or what we decided (a timeout, a
    cancel the provider did not confirm)."""

    run_id: int
    status: Status
    watcher: str | None = None  # a poller's report: only while it still holds the run
    fence: int | None = None
    error: str | None = None  # our own words for a failure or a cancel
    orphan: bool = False  # its job ended elsewhere: the run is closed, nothing is reported


def runs_end(endings: list[Ending], *, starts: bool = True) -> list[int]:
    """End these runs and report their outcomes through the coordinator, together in one transaction
    (one commit for a poller's whole batch). A run already done, or taken by another poller, is skipped.
    Returns the ids ended here. `starts` False: a stopping poller's last reports, which, as a stopping
    worker's, free what the jobs held and start nothing (what may start waits for the next worker)."""
    ended = []
    with transaction.atomic():
        for ending in endings:
            runs = ProviderRun.objects.filter(pk=ending.run_id, state=IN_FLIGHT)
            if ending.watcher is not None:
                runs = runs.filter(watcher=ending.watcher, fence=ending.fence)
            run = runs.select_for_update().first()
            if run is None or not ProviderRun.objects.filter(pk=run.pk, state=IN_FLIGHT).update(
                state=DONE, finished_at=timezone.now(), provider_status=ending.status.state,
            ):
                continue
            if not ending.orphan:
                _report(run, ending, starts=starts)
            ended.append(run.pk)
    return ended


def _report(run: ProviderRun, ending: Ending, *, starts: bool) -> None:
    status = ending.status
    try:
        if status.state == "succeeded":
            job_complete(job_id=run.job_id, attempt=run.attempt, result=result_of(run.provider_job_id, status), starts=starts)
        elif status.state == "cancelled" and Job.objects.filter(pk=run.job_id, cancel_requested_at__isnull=False).exists():
            job_stopped(job_id=run.job_id, attempt=run.attempt, error=ending.error or "cancelled at the provider", starts=starts)
        elif run.stop_reason is not None:
            # The coordinator ended it (a deadline, a reset); the provider's last word (a callback's,
            # say) is added to that reason, and the job is not tried again.
            error = ending.error or f"{run.stop_reason}; the provider's job {run.provider_job_id} {status.state}"
            job_fail(job_id=run.job_id, attempt=run.attempt, error=error, retry=False, starts=starts)
        elif timezone.now() >= run.deadline_at - DEADLINE_SLACK:
            # The provider ended it at our deadline, which it was sent (Replicate's Cancel-After, RunPod's
            # executionTimeout, fal's X-Fal-Request-Timeout), a moment before the poller would have:
            # timed out, as the poller's own deadline fails it, and not tried again.
            started = Job.objects.filter(pk=run.job_id).values_list("started_at", flat=True).first() or run.submitted_at
            error = (f"timed out after {(run.deadline_at - started).total_seconds():.0f} s; the provider's job "
                     f"{run.provider_job_id} {status.state}: {status.error or '(no message)'}")
            job_fail(job_id=run.job_id, attempt=run.attempt, error=error, retry=False, starts=starts)
        else:
            error = ending.error or f"Provider job {run.provider_job_id} {status.state}: {status.error or '(no message)'}"
            job_fail(job_id=run.job_id, attempt=run.attempt, error=error, starts=starts)
    except StaleAttempt:
        pass  # the job moved on meanwhile (ended by hand, say): refused and recorded by the coordinator; the run is done


@dataclass(frozen=True)
class Seen:
    """What a provider now says of a job still at it: its status, progress and place in its line."""

    run_id: int
    state: str
    progress: float | None = None
    queue_position: int | None = None


def runs_seen(seen: list[Seen]) -> None:
    """Store what providers now say of jobs still at them, in one statement for the lot (each change is
    a job.progress event: coordination/events/triggers.py). A run no longer in flight is left alone."""
    if not seen:
        return
    rows = ", ".join(["(%s::bigint, %s::text, %s::float8, %s::integer)"] * len(seen))
    params = [value for one in seen for value in (one.run_id, one.state, one.progress, one.queue_position)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE provider_runs AS run SET provider_status = seen.state, progress = seen.progress, "
            f"queue_position = seen.queue_position FROM (VALUES {rows}) AS seen(id, state, progress, queue_position) "
            f"WHERE run.id = seen.id AND run.state = 'in_flight'", params)
