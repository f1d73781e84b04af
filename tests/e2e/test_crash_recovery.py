"""Workers die or freeze; the queue heals itself and no outcome is decided twice (PostgreSQL)."""

import os
import signal

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection

from coordination.models import Job, JobQueueLog, JobQueueState
from tests.e2e.harness import start_worker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LEASE = 3
FAST_RECOVERY = {"COORDINATOR_LEASE_SECONDS": str(LEASE), "COORDINATOR_REAPER_SECONDS": "1"}
# The first job would run this long: far beyond every wait below, so it can only end as the test makes it.
FOREVER = 600
# Give-up bounds for polling, not claims: recovery takes about a lease and a reaper tick.
GIVE_UP = 60


def submit_pair(http, first_seconds: float) -> tuple[str, str]:
    status, first = http.post("/jobs", {"prompt": "long", "model": "motion-2.0-fast", "job_type": "video",
                                        "params": {"simulate_seconds": first_seconds}})
    assert status == 201 and first["status"] == "running"
    status, second = http.post("/jobs", {"prompt": "next", "model": "motion-2.0-fast", "job_type": "video",
                                         "params": {"simulate_seconds": 0.2}})
    assert status == 201 and second["status"] == "pending"
    return first["job_id"], second["job_id"]


def claims(job_id) -> list[int]:
    return [row.details["attempt"] for row in JobQueueLog.objects.filter(job_id=job_id, event_type="claimed")]


def finished(job_id) -> Job | None:
    job = Job.objects.get(pk=job_id)
    return job if job.status in Job.FINISHED else None


def events(job_id) -> list[str]:
    return list(JobQueueLog.objects.filter(job_id=job_id).order_by("id").values_list("event_type", flat=True))


def test_a_killed_worker_loses_its_job_and_the_queue_recovers(http, settings, tmp_path):
    settings.COORDINATOR_LEASE_SECONDS = LEASE  # the web side stamps the first lease at start
    doomed = start_worker(tmp_path / "doomed.log", **FAST_RECOVERY)
    survivor = None
    try:
        first, second = submit_pair(http, first_seconds=FOREVER)
        wait_until(lambda: claims(first) == [1], timeout=GIVE_UP, message="the first job to be claimed")
        survivor = start_worker(tmp_path / "survivor.log", **FAST_RECOVERY)

        os.killpg(doomed.process.pid, signal.SIGKILL)  # the whole cluster: no goodbye, no report
        doomed.process.wait()

        lost = wait_until(lambda: finished(first), timeout=GIVE_UP, message="the lost job to be ended")
        after = wait_until(lambda: finished(second), timeout=GIVE_UP, message="the next job to run")
    finally:
        if survivor:
            survivor.stop()
        doomed.stop()  # already dead, unless the test failed before the kill

    # The lost attempt was ended by recovery (its lease lapsed), with that outcome on record...
    assert lost.status == Job.Status.FAILED and lost.error.startswith("worker lost")
    assert events(first) == ["submitted", "started", "claimed", "lease_expired", "failed"]
    # ...and only then did the next job on its model start, on the surviving worker, and complete.
    assert after.status == Job.Status.COMPLETED and after.started_at >= lost.completed_at
    # Each attempt was claimed, and so run, once: nothing ran twice, nothing was lost.
    assert claims(first) == [1] and claims(second) == [1]


def test_a_frozen_worker_cannot_change_the_outcome_once_it_wakes(http, settings, tmp_path):
    settings.COORDINATOR_LEASE_SECONDS = LEASE
    frozen = start_worker(tmp_path / "frozen.log", **FAST_RECOVERY)
    other = None
    try:
        first, second = submit_pair(http, first_seconds=FOREVER)
        wait_until(lambda: claims(first) == [1], timeout=GIVE_UP, message="the first job to be claimed")

        os.killpg(frozen.process.pid, signal.SIGSTOP)
        other = start_worker(tmp_path / "other.log", **FAST_RECOVERY)
        lost = wait_until(lambda: finished(first), timeout=GIVE_UP, message="the reaper to end the frozen attempt")
        wait_until(lambda: finished(second), timeout=GIVE_UP, message="the next job to run")
        os.killpg(frozen.process.pid, signal.SIGCONT)

        refusals = wait_until(
            lambda: list(JobQueueLog.objects.filter(job_id=first, event_type="refused")),
            timeout=GIVE_UP, message="the woken worker's late call to be refused",
        )
    finally:
        if other:
            other.stop()
        frozen.stop()

    assert lost.status == Job.Status.FAILED
    final = Job.objects.get(pk=first)
    assert (final.status, final.result, final.attempt) == (Job.Status.FAILED, None, 1), "the outcome stood"
    assert refusals[0].details["caller_attempt"] == 1


def test_a_process_frozen_holding_the_queue_lock_holds_nobody_up_for_long(http):
    # A session opened as the product opens its own, frozen where it holds the coordinator lock (every
    # slot row, FOR UPDATE) with its transaction still open: as a worker stopped mid-transition is.
    frozen = psycopg.connect(**connection.get_connection_params())
    frozen.execute(f"SELECT id FROM {JobQueueState._meta.db_table} ORDER BY id FOR UPDATE").fetchall()

    # A submit needs that lock; it waits, and goes through once the server has ended the frozen session.
    status, job = http.post("/jobs", {"prompt": "go", "model": "motion-2.0-fast", "job_type": "video"})

    assert status == 201 and job["status"] == "running"
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
        frozen.execute("SELECT 1")
    assert django_settings.COORDINATOR_IDLE_IN_TRANSACTION_SECONDS == 10  # the default, as documented
