"""The worker task django-q2 runs: claim the job for its attempt, run it, report the outcome."""

import logging
import threading
import time
from multiprocessing import current_process

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections

from coordination.exceptions import StaleAttempt
from coordination.models import CatalogModel, Job
from coordination.kinds import job_kind, job_kind_register
from coordination.maintenance import idempotency_keys_prune, queue_log_prune
from coordination.recovery import HEARTBEAT_CANCEL, HEARTBEAT_LOST, HEARTBEAT_OK, job_heartbeat, reap_if_due
from coordination.recovery import reap as reaper_pass
from coordination.runners import RunnerStopped, get_runner, runner_call
from coordination.services import job_claim, job_complete, job_fail, job_finish_and_take_next, job_stopped

logger = logging.getLogger(__name__)


def run_job(job_id: str, attempt: int) -> None:
    """Run the job for this attempt, then every job handed to this worker by its finish.

    When a job ends, the coordinator starts the next one in the same transaction; the worker takes
    it there (claimed, so its own delivery does nothing), confirms that with one UPDATE and runs it
    at once. That hop is what makes back-to-back jobs fast in serialized mode. Hand-offs stop once the task has used up one job
    timeout, so a task never outlives django-q2's timeout (twice the job timeout).
    """
    job = job_claim(job_id=job_id, attempt=attempt)
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
            reap_if_due()
        except (OperationalError, InterfaceError):
            logger.warning("Reaper pass skipped: database unavailable")


class LeaseKeeper:
    """While the runner works: renews the attempt's lease, and tells the runner to stop when the job
    was cancelled (state "cancel") or taken from this worker (state "lost")."""

    def __init__(self, job_id, attempt: int):
        self.job_id, self.attempt = job_id, attempt
        self.state = HEARTBEAT_OK
        self.stop = threading.Event()
        # Set once the runner returned: from then on the keeper only keeps the lease alive while
        # the outcome is reported, and a "lost" answer (the report itself ended the job) is quiet.
        self.reporting = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()

    def _keep(self) -> None:
        renew_every = settings.COORDINATOR_LEASE_SECONDS / 3
        last_renewal = time.monotonic()
        try:
            # Looks every second (a cancel is seen within about a second), renews every third of a lease.
            while not self._done.wait(min(1.0, renew_every)):
                renew = time.monotonic() - last_renewal >= renew_every
                try:
                    state = job_heartbeat(
                        job_id=self.job_id, attempt=self.attempt, renew=renew, audit=not self.reporting
                    )
                except Exception:  # a database hiccup: not renewed this time; the next look tries again
                    logger.warning("Heartbeat of job %s attempt %s failed; retrying", self.job_id, self.attempt)
                    connections.close_all()
                    continue
                if renew:
                    last_renewal = time.monotonic()
                if state != HEARTBEAT_OK:
                    self.state = state
                    self.stop.set()
                    return
        finally:
            connections.close_all()  # this thread's own connection


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
            outcome = {"status": Job.Status.COMPLETED, "result": result}
        if lease.state == HEARTBEAT_LOST:
            logger.info("Job %s attempt %s was taken from this worker; its outcome is decided elsewhere", job.job_id, attempt)
            return None
        lease.reporting = True
        # Still inside the keeper: during a database outage the lease is renewed as soon as the
        # database answers again, so the reaper does not end a job whose outcome is waiting here.
        return _report(job, attempt, outcome, take_next=take_next)


def _report(job: Job, attempt: int, outcome: dict, *, take_next: bool) -> Job | None:
    deadline = time.monotonic() + 2 * settings.COORDINATOR_LEASE_SECONDS
    while True:
        try:
            if take_next:
                return job_finish_and_take_next(job_id=job.job_id, attempt=attempt, **outcome)
            _finish_only(job_id=job.job_id, attempt=attempt, **outcome)
        except StaleAttempt:
            pass  # already logged and audited by the service: the outcome was decided elsewhere
        except (OperationalError, InterfaceError):
            # The database is away: keep the outcome and try again for a while. If it stays away
            # longer, the lease lapses and the reaper decides once it is back (retry or fail).
            if time.monotonic() > deadline:
                logger.warning("Could not report job %s attempt %s: database unavailable", job.job_id, attempt)
                return None
            connections.close_all()
            time.sleep(0.5)  # back-off between reconnection attempts, not a wait for a condition
            continue
        return None


def _finish_only(*, job_id, attempt: int, status: str, result: dict | None = None, error: str | None = None) -> None:
    if status == Job.Status.COMPLETED:
        job_complete(job_id=job_id, attempt=attempt, result=result)
    elif status == Job.Status.CANCELLED:
        job_stopped(job_id=job_id, attempt=attempt, error=error)
    else:
        job_fail(job_id=job_id, attempt=attempt, error=error)


def _run(job: Job, attempt: int, should_stop) -> dict:
    return job_kind(job.kind).run(job=job, attempt=attempt, should_stop=should_stop)


def normal_run(*, job: Job, attempt: int, should_stop) -> dict:
    """A normal job: one call of its model's runner."""
    # A handed-over job comes with its model's catalog row, read in the transaction that started it.
    model = getattr(job, "catalog_row", None) or CatalogModel.objects.get(name=job.model)
    call = runner_call(model, job_id=job.job_id, prompt=job.prompt, params=job.params, should_stop=should_stop)
    return get_runner(model.runner).run(call)


job_kind_register(Job.Kind.NORMAL, run=normal_run)

def reap() -> dict:
    """The reaper's schedule (see coordination.recovery)."""
    return reaper_pass()


def prune_queue_log(days: int = 7) -> int:
    """The daily housekeeping schedule: old audit rows, and idempotency keys past their 24 hours."""
    idempotency_keys_prune()
    return queue_log_prune(days=days)
