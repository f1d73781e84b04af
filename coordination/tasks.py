"""The worker task django-q2 runs: claim the job for its attempt, run it, report the outcome."""

import logging
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing import current_process
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from coordination.exceptions import StaleAttempt
from coordination.models import CatalogModel, Job
from coordination.kinds import job_kind, job_kind_register
from coordination.maintenance import idempotency_keys_prune, job_events_prune, queue_log_prune
from coordination.recovery import (
    HEARTBEAT_CANCEL, HEARTBEAT_LOST, HEARTBEAT_OK, job_heartbeat, reaper_pass, reaper_pass_if_due,
)
from coordination.runners import RunnerStopped, get_runner, runner_call
from coordination.services import job_claim, job_report, job_report_and_take_next
from coordination.webhooks import deliver_due

if TYPE_CHECKING:
    from coordination.runners.client import Accepted

logger = logging.getLogger(__name__)


def run_job(job_id: str, attempt: int) -> None:
    """Run the job for this attempt, then every job handed to this worker when it reports one ended.

    When a job ends, the coordinator starts the next one in the same transaction; the worker takes
    it there (claimed, so its own delivery does nothing), confirms that with one UPDATE and runs it
    at once. That hop is what makes back-to-back jobs fast in serialized mode. Hand-offs stop once the task has used up one job
    timeout, so a task never outlives django-q2's timeout (twice the job timeout).
    """
    job = _when_database_answers(job_claim, job_id=job_id, attempt=attempt)
    if job is None:
        # Delivered again, or the job moved on (cancelled, reset, a newer attempt): not ours to run.
        logger.info("Job %s attempt %s is not ours to run any more; skipping", job_id, attempt)
        return
    handoff_until = time.monotonic() + settings.COORDINATOR_JOB_TIMEOUT
    logger.info("%s processing job %s attempt %s", current_process().name, job.job_id, attempt)
    while job is not None:
        finished = job.job_id
        job = _run_and_report(job, take_next=time.monotonic() < handoff_until)
        if job is not None:
            # django-q logs "processing" for the tasks it delivers; a hand-off is not delivered, so say it here.
            logger.info(
                "%s processing job %s attempt %s (handed over when job %s ended)",
                current_process().name, job.job_id, job.attempt, finished,
            )
        # Its first heartbeat (one UPDATE) before the runner starts: should this worker die before it,
        # the reaper sends the job again without using up an attempt (it never ran). A cancel, if any,
        # is seen by the lease keeper within its first second.
        if job is not None and job_heartbeat(job_id=job.job_id, attempt=job.attempt, look_for_cancel=False) != HEARTBEAT_OK:
            job = None
        try:
            reaper_pass_if_due()
        except (OperationalError, InterfaceError):
            logger.warning("Reaper pass skipped: database unavailable")


class LeaseKeeper:
    """While the runner works: renews the attempt's lease, and tells the runner to stop when the job
    was cancelled (state "cancel") or taken from this worker (state "lost").

    One keeper thread per worker process watches whichever job the worker runs (starting and joining
    a thread for every job was a tenth of a zero-second job's time); this object is that job's watch.
    """

    def __init__(self, job_id, attempt: int):
        self.job_id, self.attempt = job_id, attempt
        self.state = HEARTBEAT_OK
        self.stop = threading.Event()
        # Set once the runner returned: from then on the keeper only keeps the lease alive while
        # the outcome is reported, and a "lost" answer (the report itself ended the job) is quiet.
        self.reporting = False
        self.last_renewal = time.monotonic()

    def __enter__(self) -> "LeaseKeeper":
        _keeper().watch(self)
        return self

    def __exit__(self, *exc_info) -> None:
        _keeper().unwatch(self)


class _KeeperThread:
    """The worker process's keeper: looks at the watched job every second (a cancel is seen within
    about a second) and renews its lease every third of a lease."""

    def __init__(self):
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._current: LeaseKeeper | None = None
        self._busy = False  # a heartbeat of the current watch is in flight
        self._connected = False  # this thread holds a database connection
        self._thread = threading.Thread(target=self._keep, name="lease-keeper", daemon=True)
        self._thread.start()

    def watch(self, lease: LeaseKeeper) -> None:
        with self._changed:
            self._current = lease
            self._changed.notify_all()

    def unwatch(self, lease: LeaseKeeper) -> None:
        # Returns once no heartbeat of this job is in flight and the keeper's connection, if a long job
        # made it open one, is closed: nothing of this job outlives its report.
        with self._changed:
            if self._current is lease:
                self._current = None
            self._changed.notify_all()
            while self._busy or self._connected:
                self._changed.wait()

    def _keep(self) -> None:
        renew_every = settings.COORDINATOR_LEASE_SECONDS / 3
        look_every = min(1.0, renew_every)
        while True:
            with self._changed:
                lease = self._current
                if lease is not None:
                    # Sleeps a look's interval unless the watch changes (the job ended).
                    self._changed.wait_for(lambda: self._current is not lease, timeout=look_every)
                    if self._current is lease:
                        self._busy = True
                    else:
                        lease = None
                elif not self._connected:
                    self._changed.wait()
                    continue
            if lease is None:
                if self._connected:  # idle: hold no connection between jobs
                    _close_quietly()
                    with self._changed:
                        self._connected = False
                        self._changed.notify_all()
                continue
            try:
                self._look(lease, renew_every)
            finally:
                with self._changed:
                    self._busy, self._connected = False, True
                    if lease.stop.is_set() and self._current is lease:
                        self._current = None
                    self._changed.notify_all()

    def _look(self, lease: LeaseKeeper, renew_every: float) -> None:
        renew = time.monotonic() - lease.last_renewal >= renew_every
        try:
            state = job_heartbeat(job_id=lease.job_id, attempt=lease.attempt, renew=renew, audit=not lease.reporting)
        except Exception:  # a database hiccup: not renewed this time; the next look tries again
            logger.warning("Heartbeat of job %s attempt %s failed; retrying", lease.job_id, lease.attempt)
            _close_quietly()
            return
        if renew:
            lease.last_renewal = time.monotonic()
        if state != HEARTBEAT_OK:
            lease.state = state
            lease.stop.set()


def _close_quietly() -> None:
    """Drops the keeper's connection; one broken by an outage may fail to close, which must not stop the keeper."""
    try:
        connections.close_all()
    except Exception:
        logger.debug("Closing the lease keeper's connection failed", exc_info=True)


_keeper_thread: _KeeperThread | None = None
_keeper_guard = threading.Lock()


def _keeper() -> _KeeperThread:
    """This process's keeper, started on first use (django-q2 forks its workers: each gets its own)."""
    global _keeper_thread
    with _keeper_guard:
        if _keeper_thread is None or _keeper_thread.pid != os.getpid():
            _keeper_thread = _KeeperThread()
        return _keeper_thread


def _run_and_report(job: Job, *, take_next: bool) -> Job | None:
    attempt = job.attempt
    outcome = {"status": Job.Status.FAILED, "error": "Stopped by its worker"}
    with LeaseKeeper(job.job_id, attempt) as lease:
        try:
            result = _run(job, attempt, should_stop=lease.stop.is_set)
        except RunnerStopped:
            if lease.state == HEARTBEAT_CANCEL:
                outcome = {"status": Job.Status.CANCELLED, "error": "stopped while running"}
        except Exception as exc:  # any failure of the runner is the job's failure, recorded
            logger.info("Job %s attempt %s failed: %s", job.job_id, attempt, exc)
            outcome = {"status": Job.Status.FAILED, "error": str(exc) or type(exc).__name__}
        else:
            if isinstance(result, AtProvider):
                lease.reporting = True
                return _let_go(job, attempt, result, cancelled=lease.state == HEARTBEAT_CANCEL)
            outcome = {"status": Job.Status.COMPLETED, "result": result}
        if lease.state == HEARTBEAT_LOST:
            logger.info("Job %s attempt %s was taken from this worker; its outcome is decided elsewhere", job.job_id, attempt)
            return None
        lease.reporting = True
        # Still inside the keeper: during a database outage the lease is renewed as soon as the
        # database answers again, so the reaper does not end a job whose outcome is waiting here.
        return _report(job, attempt, outcome, take_next=take_next)


def _let_go(job: Job, attempt: int, at: "AtProvider", *, cancelled: bool) -> None:
    """The provider accepted the attempt: record it and let go of the job (its qcluster's poller
    watches it from now on; no hand-off: this worker is free at once). A cancel asked for meanwhile,
    or an attempt that is no longer ours, drops the provider's job again."""
    # Imported here, as the HTTP stack is by normal_run: only a worker that sends a job to a provider carries it.
    from coordination.providers import store as provider_store
    from coordination.runners import client as provider_client

    run = None
    if not cancelled:
        try:
            run = _when_database_answers(provider_store.run_record, job_id=job.job_id, attempt=attempt, model=at.model,
                                         accepted=at.accepted, started_at=job.started_at)
        except (OperationalError, InterfaceError):
            logger.warning("Could not record job %s attempt %s at the provider: database unavailable", job.job_id, attempt)
    if run is not None:
        return None
    provider = runner_call(at.model, job_id=job.job_id, prompt="").provider
    confirmed = provider_client.run(
        lambda client: provider_client.cancel(client, provider, at.accepted.status_url, job_id=job.job_id),
        should_stop=lambda: False,
    )
    logger.info("Job %s attempt %s: provider job %s dropped again (%s)", job.job_id, attempt,
                at.accepted.provider_job_id, "confirmed" if confirmed else "not confirmed")
    if cancelled:
        _report(job, attempt, {"status": Job.Status.CANCELLED,
                               "error": "stopped while running" + ("" if confirmed else "; the provider did not confirm dropping its job")},
                take_next=False)
    return None


def _report(job: Job, attempt: int, outcome: dict, *, take_next: bool) -> Job | None:
    def report() -> Job | None:
        try:
            if take_next:
                return job_report_and_take_next(job_id=job.job_id, attempt=attempt, **outcome)
            job_report(job_id=job.job_id, attempt=attempt, **outcome)
        except StaleAttempt:
            pass  # already logged and audited by the service: the outcome was decided elsewhere
        return None

    try:
        return _when_database_answers(report)
    except (OperationalError, InterfaceError):
        # The database stayed away: the lease lapses and the reaper decides once it is back (retry or fail).
        logger.warning("Could not report job %s attempt %s: database unavailable", job.job_id, attempt)
        return None


def _when_database_answers(function, *args, **kwargs):
    """`function(...)`, tried again with back-off (and fresh connections) while the database is away or
    refuses a connection ("too many clients"), for up to two leases; then its error is raised. An
    outcome waits here rather than being lost, and a worker carries on rather than failing its job."""
    retrying = Retrying(
        retry=retry_if_exception_type((OperationalError, InterfaceError)),
        wait=wait_exponential_jitter(multiplier=0.2, max=5, jitter=0.3),
        stop=stop_after_delay(2 * settings.COORDINATOR_LEASE_SECONDS),
        before_sleep=_reconnect,
        reraise=True,
    )
    return retrying(function, *args, **kwargs)


def _reconnect(state) -> None:
    if state.attempt_number == 1:
        logger.warning("Database unavailable (%s); trying again", state.outcome.exception())
    connections.close_all()


def _run(job: Job, attempt: int, should_stop) -> dict:
    return job_kind(job.kind).run(job=job, attempt=attempt, should_stop=should_stop)


@dataclass(frozen=True)
class AtProvider:
    """A normal job's model call that the provider accepted and will work on without this worker."""

    model: CatalogModel
    accepted: "Accepted"


def normal_run(*, job: Job, attempt: int, should_stop) -> dict | AtProvider:
    """A normal job: one call of its model's runner; on a poll or callback provider, only its submit."""
    # A handed-over job comes with its model's catalog row, read in the transaction that started it.
    model = getattr(job, "catalog_row", None) or CatalogModel.objects.get(name=job.model)
    call = runner_call(model, job_id=job.job_id, prompt=job.prompt, params=job.params, should_stop=should_stop,
                       attempt=attempt, started_at=job.started_at.timestamp() if job.started_at else None)
    runner = get_runner(model.runner)
    if not model.detaches:
        return runner.run(call)
    # The HTTP stack is imported here, not with this module: a worker that runs no provider job never carries it.
    from coordination.runners.client import Accepted

    answer = runner.submit(call)
    return AtProvider(model, answer) if isinstance(answer, Accepted) else answer


job_kind_register(Job.Kind.NORMAL, run=normal_run)

def reaper_schedule() -> dict:
    """The django-q2 schedule "reaper" (coordination/maintenance.py): a reaper pass (see
    coordination.recovery), then the webhook deliveries that are due."""
    report = reaper_pass()
    report["webhooks_delivered"] = deliver_due()
    return report


# The schedule's dotted path until it was renamed: deployed schedule rows store it until
# coordinator_setup (or ensure_schedules) rewrites them at the next start.
reap = reaper_schedule


def prune_queue_log(days: int = 7) -> int:
    """The daily housekeeping schedule: old audit rows, idempotency keys and live events past their 24 hours."""
    idempotency_keys_prune()
    job_events_prune()
    return queue_log_prune(days=days)
