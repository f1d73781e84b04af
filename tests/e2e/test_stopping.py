"""Stopping a worker (issue 25, §2; docs/operating.md, stopping): it starts nothing more, lets its
running jobs finish for up to COORDINATOR_STOP_GRACE seconds, then (or at a second signal) hands back
those still running, which wait again at their place in line with no attempt used; `bin/run` exits 0.

Real processes on the test's PostgreSQL: `manage.py qcluster`, and `bin/run` as `make run` starts it.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from coordination.models import CatalogModel, Job, JobQueueLog
from coordination.queue.locked import WAITS_FOR_WORKER
from coordination.services import job_submit
from tests.e2e.harness import BASE_DIR, start_worker, wait_until
from tests.e2e.harness import test_database_url as database_url
from tests.factories import UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

GIVE_UP = 60  # a bound for polling, not a claim


@pytest.fixture
def owner():
    return UserFactory(is_staff=True)


def submit(owner, model: str, seconds: float) -> Job:
    return job_submit(owner=owner, model=model, prompt="a knight", params={"simulate_seconds": seconds})


def fresh(*jobs) -> list[Job]:
    found = {job.job_id: job for job in Job.objects.filter(job_id__in=[job.job_id for job in jobs])}
    return [found[job.job_id] for job in jobs]


def claimed(*jobs) -> bool:
    return all(job.status == "running" and job.claimed_attempt == job.attempt for job in fresh(*jobs))


def exited(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"still running {timeout} s after the stop") from None


def test_a_stop_lets_the_running_jobs_finish_and_leaves_the_waiting_ones_for_the_next_worker(owner, settings, tmp_path):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
    models = ["motion-2.0-fast", "flux-dev"]
    jobs = [submit(owner, models[index % 2], seconds=3) for index in range(12)]
    running, waiting = jobs[:2], jobs[2:]
    assert [job.status for job in fresh(*jobs)] == ["running"] * 2 + ["pending"] * 10
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_MAX_ACTIVE_JOBS="2", COORDINATOR_STOP_GRACE="30")
    try:
        wait_until(lambda: claimed(*running), timeout=GIVE_UP, message="the two jobs to run")
        worker.process.send_signal(signal.SIGTERM)
        assert exited(worker.process, timeout=GIVE_UP) == 0
    finally:
        worker.stop()

    # The two ran to the end; no other job was started, by a hand-over or otherwise.
    assert [(job.status, job.attempt) for job in fresh(*running)] == [("completed", 1)] * 2
    assert [(job.status, job.attempt, job.started_at) for job in fresh(*waiting)] == [("pending", 0, None)] * 10
    # The first in each model's line says what it waits for: a worker (no job to name).
    heads = fresh(waiting[0], waiting[1])
    assert [(job.blocked_by_job_id, job.conflict_reason) for job in heads] == [(None, WAITS_FOR_WORKER)] * 2
    assert "Stopping: starting no more jobs; waiting for 2 running job(s) to finish, for at most 30 s" in worker.output()

    # The next worker starts them as it starts, in their order.
    worker = start_worker(tmp_path / "qcluster-next.log", COORDINATOR_MAX_ACTIVE_JOBS="2", COORDINATOR_STOP_GRACE="0")
    try:
        wait_until(lambda: claimed(*waiting[:2]), timeout=GIVE_UP, message="the next worker to start the first two waiting")
    finally:
        worker.stop()


@pytest.mark.parametrize("how", ["grace", "second signal"])
def test_a_job_still_running_when_the_grace_ends_is_handed_back_with_no_attempt_used(how, owner, settings, tmp_path):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 1
    long, behind = submit(owner, "motion-2.0-fast", seconds=120), submit(owner, "motion-2.0-fast", seconds=0)
    grace = "1" if how == "grace" else "120"
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_STOP_GRACE=grace)
    try:
        wait_until(lambda: claimed(long), timeout=GIVE_UP, message="the long job to run")
        worker.process.send_signal(signal.SIGTERM)
        if how == "second signal":
            wait_until(lambda: "Stopping: starting no more jobs" in worker.output(), timeout=GIVE_UP,
                       message="the worker to say it is stopping")
            worker.process.send_signal(signal.SIGTERM)
        assert exited(worker.process, timeout=GIVE_UP) == 0
    finally:
        worker.stop()

    long, behind = fresh(long, behind)
    # Waiting again, first in line as before, and its attempt not counted (the model allows one).
    assert (long.status, long.attempt, long.claimed_attempt, long.lease_expires_at) == ("pending", 0, 0, None)
    assert (long.blocked_by_job_id, long.conflict_reason) == (None, WAITS_FOR_WORKER)
    assert (behind.status, behind.blocked_by_job_id) == ("pending", long.job_id)
    audit = list(JobQueueLog.objects.filter(job_id=long.job_id).order_by("id").values_list("event_type", "details"))
    assert [event for event, _ in audit] == ["submitted", "started", "claimed", "retried", "reblocked"]
    assert audit[3][1] == {"attempt": 1, "handed_back": True, "attempt_used": False,
                           "reason": "its worker stopped before it ended"}
    said = "a second signal" if how == "second signal" else "1 s passed"
    assert f"Stopping: {said}; handing back the 1 job(s) still running" in worker.output()

    # The next worker runs it again as its first attempt: a model allowing one attempt still runs it.
    assert CatalogModel.objects.get(name="motion-2.0-fast").max_attempts == 1
    worker = start_worker(tmp_path / "qcluster-next.log", COORDINATOR_STOP_GRACE="0")
    try:
        wait_until(lambda: claimed(long) and fresh(long)[0].attempt == 1, timeout=GIVE_UP,
                   message="the next worker to run the job handed back")
    finally:
        worker.stop()


def test_bin_run_stopped_mid_job_lets_it_finish_and_exits_0(owner, settings, tmp_path):
    """The issue's case: one 4 s job running, five waiting, SIGTERM to bin/run after 1.5 s."""
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 1
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ, "DATABASE_URL": database_url(), "PORT": str(port), "LOG_FILE": "", "PYTHONUNBUFFERED": "1",
        "COORDINATOR_MAX_ACTIVE_JOBS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        run = subprocess.Popen(["bin/run"], cwd=BASE_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        wait_until(lambda: "running." in log_path.read_text() or run.poll() is not None, timeout=GIVE_UP,
                   message="bin/run's worker to run")
        jobs = [submit(owner, "motion-2.0-fast", seconds=4)] + [submit(owner, "flux-dev", seconds=0) for _ in range(5)]
        wait_until(lambda: claimed(jobs[0]), timeout=GIVE_UP, message="the 4 s job to run")
        wait_until(lambda: Job.objects.filter(job_id=jobs[0].job_id, heartbeat_at__isnull=False).exists(),
                   timeout=GIVE_UP, message="the job's first heartbeat")
        # 1.5 s into the job, as in the issue (a time the test sets up, not one it waits out for a condition).
        wait_until(lambda: _seconds_since_start(jobs[0]) >= 1.5, timeout=GIVE_UP, interval=0.05,
                   message="1.5 s of the job")
        os.kill(run.pid, signal.SIGTERM)  # bin/run alone, as systemd or `kill` sends it
        status = exited(run, timeout=GIVE_UP)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    output = log_path.read_text()
    assert status == 0, output[-3000:]
    first, *others = fresh(*jobs)
    assert (first.status, first.attempt) == ("completed", 1)  # finished, never left running for a lease
    assert [(job.status, job.attempt) for job in others] == [("pending", 0)] * 5
    assert "waiting for 1 running job(s) to finish" in output


def _seconds_since_start(job: Job) -> float:
    from django.utils import timezone

    started = fresh(job)[0].started_at
    return (timezone.now() - started).total_seconds()
