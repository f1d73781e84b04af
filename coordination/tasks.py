"""The worker task django-q2 runs, and how each worker process runs many jobs at once.

A job waits on a remote model or on `simulate_seconds`, not on our CPU. So in a qcluster's worker
process `run_job` hands its job to a thread of its own and returns at once: one process runs every job
it is sent side by side, a few processes serve any number of slots, and no started job waits for a
process (docs/design.md, life of a job). The thread claims the job for its attempt, runs it, reports
its outcome and takes the job that outcome started (a hand-over), until none is handed to it.

The bounds that keep a thousand slots from exhausting PostgreSQL, per worker process: its job threads
hold at most COORDINATOR_WORKER_CONNECTIONS connections at once (_ConnectionGate), and a thread gives
its connection back while its runner waits; one keeper thread renews every running job's lease and
looks for cancels, in one statement or two a second for all of them (_KeeperThread). The webhook
deliveries its jobs' changes make are sent by the qcluster's main process (coordination.webhooks.Sender).

A job's time limit: django-q2's task timeout kills a whole process, so it no longer guards a job (the
task returns once its thread started). The runner gives up at its model's deadline (the http runner
counts it from the attempt's start), and the reaper ends an attempt that ran past it ("timed out after
N s"); this process's keeper then sees the attempt is gone and stops its runner within a second.

A stop (coordination's `qcluster` command, on SIGTERM or Ctrl-C): the worker starts nothing from
then on (no hand-over, no start in its reports, no reaper pass), lets each running job finish for up to
COORDINATOR_STOP_GRACE seconds, and then (or at a second signal) hands the jobs still running back:
each waits again at its place in line, no attempt used (services.job_hand_back).
"""

import logging
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing import current_process
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from coordination.exceptions import StaleAttempt
from coordination.models import CatalogModel, Job
from coordination.kinds import job_kind, job_kind_register
from coordination.maintenance import idempotency_keys_prune, job_events_prune, queue_log_prune
from coordination.recovery import (
    HEARTBEAT_CANCEL, HEARTBEAT_LOST, HEARTBEAT_OK, job_heartbeat, leases_look, reaper_pass, reaper_pass_if_due,
    start_reaper_ticker,
)
from coordination.runners import RunnerStopped, get_runner, runner_call
from coordination.services import job_claim, job_hand_back, job_report, job_report_and_take_next
from coordination.services.input_files import inputs_resolved
from coordination.webhooks import deliver_due, worker_wake_register

if TYPE_CHECKING:
    from coordination.runners.client import Accepted

logger = logging.getLogger(__name__)


# --- a stop, shared by the qcluster's processes ------------------------------------------------------

class ClusterStop:
    """What a qcluster's main process tells its worker processes about a stop, and what they tell it
    back. Made in the main process before django-q2 forks its processes, which inherit it."""

    def __init__(self):
        context = multiprocessing.get_context("fork")
        self.stopping = context.Event()  # a stop began: start nothing, let running jobs finish
        self.hand_back = context.Event()  # the grace is over, or a second signal: hand them back now
        self.running = context.Value("i", 0)  # jobs whose runner a worker process is running now

    def running_jobs(self) -> int:
        return self.running.value

    def _count(self, delta: int) -> None:
        with self.running.get_lock():
            self.running.value += delta


_stop: ClusterStop | None = None


def cluster_stop_prepare() -> ClusterStop:
    """The qcluster command calls this once, before its cluster forks."""
    global _stop
    _stop = ClusterStop()
    return _stop


def _stopping() -> bool:
    return _stop is not None and _stop.stopping.is_set()


def _handing_back() -> bool:
    return _stop is not None and _stop.hand_back.is_set()


# --- the worker process ---------------------------------------------------------------------------

class _ConnectionGate:
    """At most `size` of this process's job threads hold a database connection at once: a thread's
    first query waits for a turn, and its connection closing gives the turn back. Every query of a job
    thread passes here (ours, a workflow's steps, the provider store's), so the bound holds whatever
    the kind of job; a thread keeps its connection between queries only until its runner waits."""

    def __init__(self, size: int):
        self._turns = threading.BoundedSemaphore(size)

    def attach(self) -> None:
        """Gate the calling thread's connection (Django keeps one per thread)."""
        wrapper = connections[DEFAULT_DB_ALIAS]
        connect, close = wrapper.get_new_connection, wrapper._close
        turns = self._turns

        def gated_connect(conn_params):
            turns.acquire()
            try:
                return connect(conn_params)
            except BaseException:
                turns.release()
                raise

        def gated_close():
            try:
                return close()
            finally:
                turns.release()

        wrapper.get_new_connection = gated_connect
        wrapper._close = gated_close


_gate: _ConnectionGate | None = None  # set in a qcluster worker process only


def worker_process_ready(sender=None, proc_name: str = "", **kwargs) -> None:
    """django-q2's post_spawn, in each worker process: its jobs run on threads from now on, through
    its connection gate, its reaper ticker pauses once a stop began, and its jobs' changes that make
    webhook deliveries wake the sender of the qcluster's main process."""
    global _gate
    _gate = _ConnectionGate(settings.COORDINATOR_WORKER_CONNECTIONS)
    start_reaper_ticker(proc_name=proc_name, paused=_stopping)
    worker_wake_register()


def run_job(job_id: str, attempt: int) -> None:
    """django-q2's task: run the job for this attempt, then every job handed over when one ends.

    In a worker process the job runs on a thread of its own and this returns at once; elsewhere
    (a test calling it, django-q2's sync mode) it runs here, to the end. The thread is not a daemon:
    a stopping worker process exits once its jobs have ended or were handed back.
    """
    if _gate is None:
        _job_thread(job_id, attempt)
        return
    threading.Thread(target=_job_thread_gated, args=(job_id, attempt), name=f"job-{job_id}").start()


def _job_thread_gated(job_id: str, attempt: int) -> None:
    _gate.attach()
    try:
        _job_thread(job_id, attempt)
    except Exception:  # a thread's exception would go to stderr only: say which job it was
        logger.exception("Worker thread of job %s attempt %s failed", job_id, attempt)
    finally:
        _close_quietly()
        if "coordination.runners.client" in sys.modules:  # loaded once a job called a provider
            from coordination.runners.client import thread_client_close

            try:
                thread_client_close()
            except Exception:
                logger.debug("Closing the thread's provider client failed", exc_info=True)


def _job_thread(job_id: str, attempt: int) -> None:
    """Claim the job for its attempt and run it, then each job handed to this thread when one ends.

    When a job ends, the coordinator starts the next one in the same transaction; the thread takes it
    there (claimed, with its lease and first heartbeat, so its own delivery does nothing) and runs it
    at once: what makes back-to-back jobs fast in serialized mode. A stopping worker takes none.
    """
    if _stopping():
        # Sent while this worker stops: it starts nothing, so the job waits again for the next worker.
        if _when_database_answers(job_hand_back, job_id=job_id, attempt=attempt, began=False,
                                  reason="sent to a stopping worker") is None:
            logger.info("Job %s attempt %s is not ours to run any more; skipping", job_id, attempt)
        return
    job = _when_database_answers(job_claim, job_id=job_id, attempt=attempt)
    if job is None:
        # Delivered again, or the job moved on (cancelled, reset, a newer attempt): not ours to run.
        logger.info("Job %s attempt %s is not ours to run any more; skipping", job_id, attempt)
        return
    logger.info("%s processing job %s attempt %s", current_process().name, job.job_id, attempt)
    while job is not None:
        finished = job.job_id
        job = _run_counted(job)
        if job is not None:
            # django-q logs "processing" for the tasks it delivers; a hand-off is not delivered, so say it here.
            logger.info(
                "%s processing job %s attempt %s (handed over when job %s ended)",
                current_process().name, job.job_id, job.attempt, finished,
            )
        if _stopping():
            continue
        try:
            reaper_pass_if_due()
        except (OperationalError, InterfaceError):
            logger.warning("Reaper pass skipped: database unavailable")


def _run_counted(job: Job) -> Job | None:
    if _stop is None:
        return _run_and_report(job)
    _stop._count(+1)
    try:
        return _run_and_report(job)
    finally:
        _stop._count(-1)


class LeaseKeeper:
    """While the runner works: its attempt's lease is renewed, and the runner told to stop when the job
    was cancelled (state "cancel") or taken from this worker (state "lost"), or when its stopping
    worker hands it back (`handing_back`).

    One keeper thread per worker process watches every job the process runs (_KeeperThread); this
    object is one job's watch.
    """

    def __init__(self, job_id, attempt: int):
        self.job_id, self.attempt = job_id, attempt
        self.state = HEARTBEAT_OK
        self.stop = threading.Event()
        self.handing_back = False
        # Set once the runner returned: from then on the keeper only keeps the lease alive while
        # the outcome is reported, and a "lost" answer (the report itself ended the job) is quiet.
        self.reporting = False
        self.last_renewal = time.monotonic()

    def should_stop(self) -> bool:
        """What the runner asks while it waits (every 0.1 s): the moment its thread needs no database
        connection, so the connection goes back to the gate (a thousand waiting jobs hold none)."""
        if not connections[DEFAULT_DB_ALIAS].in_atomic_block:
            _close_quietly()
        if _handing_back() and not self.stop.is_set():
            self.handing_back = True
            self.stop.set()
        return self.stop.is_set()

    def __enter__(self) -> "LeaseKeeper":
        _keeper().watch(self)
        return self

    def __exit__(self, *exc_info) -> None:
        _keeper().unwatch(self)


class _KeeperThread:
    """The worker process's keeper: looks at all the jobs it watches every second, in one statement (a
    cancel is seen within about a second), and renews their leases every third of a lease, in one more."""

    def __init__(self):
        self.pid = os.getpid()
        self._changed = threading.Condition(threading.Lock())
        self._watched: set[LeaseKeeper] = set()
        self._looking: set[LeaseKeeper] = set()  # the watches of the look in flight
        self._connected = False  # this thread holds a database connection
        self._thread = threading.Thread(target=self._keep, name="lease-keeper", daemon=True)
        self._thread.start()

    def watch(self, lease: LeaseKeeper) -> None:
        with self._changed:
            self._watched.add(lease)
            self._changed.notify_all()

    def unwatch(self, lease: LeaseKeeper) -> None:
        # Returns once no look at this job is in flight and, when it was the last job watched, the
        # keeper's connection is closed: nothing of this job outlives its report.
        with self._changed:
            self._watched.discard(lease)
            self._changed.notify_all()
            while lease in self._looking or (not self._watched and self._connected):
                self._changed.wait()

    def _keep(self) -> None:
        renew_every = settings.COORDINATOR_LEASE_SECONDS / 3
        look_every = min(1.0, renew_every)
        while True:
            with self._changed:
                if not self._watched and not self._connected:
                    self._changed.wait()
                    continue
                if self._watched:
                    # A look's interval, unless every job ended meanwhile (then: close the connection).
                    self._changed.wait_for(lambda: not self._watched, timeout=look_every)
                self._looking = {lease for lease in self._watched if not lease.stop.is_set()}
                looking = self._looking
            if not looking:
                if self._connected and not self._watched:  # idle: hold no connection between jobs
                    _close_quietly()
                    with self._changed:
                        self._connected = False
                        self._changed.notify_all()
                continue
            try:
                self._look(looking, renew_every)
            finally:
                with self._changed:
                    self._looking = set()
                    self._connected = True
                    self._changed.notify_all()

    def _look(self, looking: set[LeaseKeeper], renew_every: float) -> None:
        now = time.monotonic()
        renew = [lease for lease in looking if now - lease.last_renewal >= renew_every]
        try:
            states = leases_look(watched=[(lease.job_id, lease.attempt) for lease in looking],
                                 renew=[(lease.job_id, lease.attempt) for lease in renew])
        except Exception:  # a database hiccup: not renewed this time; the next look tries again
            logger.warning("Heartbeat of %d running job(s) failed; retrying", len(looking))
            _close_quietly()
            return
        for lease in renew:
            lease.last_renewal = now
        for lease in looking:
            state = states[(lease.job_id, lease.attempt)]
            if state == HEARTBEAT_LOST and not lease.reporting:
                # Its refusal audited and logged as a single heartbeat's would be (rare: one job).
                state = job_heartbeat(job_id=lease.job_id, attempt=lease.attempt, renew=False)
            if state != HEARTBEAT_OK:
                lease.state = state
                lease.stop.set()


def _close_quietly() -> None:
    """Drops the thread's connection; one broken by an outage may fail to close, which must not stop the thread."""
    try:
        connections.close_all()
    except Exception:
        logger.debug("Closing a worker thread's connection failed", exc_info=True)


_keeper_thread: _KeeperThread | None = None
_keeper_guard = threading.Lock()


def _keeper() -> _KeeperThread:
    """This process's keeper, started on first use (django-q2 forks its workers: each gets its own)."""
    global _keeper_thread
    with _keeper_guard:
        if _keeper_thread is None or _keeper_thread.pid != os.getpid():
            _keeper_thread = _KeeperThread()
        return _keeper_thread


def _run_and_report(job: Job) -> Job | None:
    attempt = job.attempt
    outcome = {"status": Job.Status.FAILED, "error": "Stopped by its worker"}
    with LeaseKeeper(job.job_id, attempt) as lease:
        try:
            if _handing_back():
                raise RunnerStopped("handed back before it began")
            result = _run(job, attempt, should_stop=lease.should_stop)
        except RunnerStopped:
            if lease.state == HEARTBEAT_CANCEL:
                outcome = {"status": Job.Status.CANCELLED, "error": "stopped while running"}
            elif lease.state == HEARTBEAT_OK and _handing_back():
                lease.reporting = True
                return _hand_back(job, attempt)
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
        return _report(job, attempt, outcome)


def _hand_back(job: Job, attempt: int) -> None:
    try:
        _when_database_answers(job_hand_back, job_id=job.job_id, attempt=attempt, began=True,
                               reason="its worker stopped before it ended")
    except (OperationalError, InterfaceError):
        # The database stayed away: the lease lapses and the reaper decides once it is back.
        logger.warning("Could not hand back job %s attempt %s: database unavailable", job.job_id, attempt)
    return None


def _let_go(job: Job, attempt: int, at: "AtProvider", *, cancelled: bool) -> None:
    """The provider accepted the attempt: record it and let go of the job (its qcluster's poller
    watches it from now on; no hand-off: this worker is free at once). A cancel asked for meanwhile,
    or an attempt that is no longer ours, drops the provider's job again."""
    # Imported here, as the HTTP stack is by normal_run: only a worker that sends a job to a provider carries it.
    from coordination.providers import store as provider_store

    run = None
    if not cancelled:
        try:
            run = _when_database_answers(provider_store.run_record, job_id=job.job_id, attempt=attempt, model=at.model,
                                         accepted=at.accepted, started_at=job.started_at)
        except (OperationalError, InterfaceError):
            logger.warning("Could not record job %s attempt %s at the provider: database unavailable", job.job_id, attempt)
    if run is not None:
        return None
    confirmed = get_runner(at.model.runner).drop(runner_call(at.model, job_id=job.job_id, prompt=""), at.accepted)
    logger.info("Job %s attempt %s: provider job %s dropped again (%s)", job.job_id, attempt,
                at.accepted.provider_job_id, "confirmed" if confirmed else "not confirmed")
    if cancelled:
        _report(job, attempt, {"status": Job.Status.CANCELLED,
                               "error": "stopped while running" + ("" if confirmed else "; the provider did not confirm dropping its job")},
                take_next=False)
    return None


def _report(job: Job, attempt: int, outcome: dict, *, take_next: bool = True) -> Job | None:
    """Report the outcome and, with `take_next`, take the job it started; a stopping worker starts nothing."""
    starts = not _stopping()

    def report() -> Job | None:
        try:
            if take_next and starts:
                return job_report_and_take_next(job_id=job.job_id, attempt=attempt, **outcome)
            job_report(job_id=job.job_id, attempt=attempt, starts=starts, **outcome)
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
    # Its input files (file:<id> in params) as signed links or files to upload, for this call only: never stored.
    params = inputs_resolved(job.params, owner_id=job.owner_id, model=model)
    call = runner_call(model, job_id=job.job_id, prompt=job.prompt, params=params, should_stop=should_stop,
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
    """The daily housekeeping schedule: old audit rows, idempotency keys, live events past their 24
    hours, and kept files and users' input files past COORDINATOR_OUTPUT_RETENTION_DAYS (coordination/outputs)."""
    from coordination.outputs.store import files_prune, input_files_prune

    idempotency_keys_prune()
    job_events_prune()
    files_prune()
    input_files_prune()
    return queue_log_prune(days=days)
