"""Leases, the reaper, fencing, retries, timeouts and cancelling a running job (in-process)."""

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from coordination.exceptions import StaleAttempt
from coordination.models import CatalogModel, Job, JobQueueLog
from coordination.recovery import HEARTBEAT_LOST, HEARTBEAT_OK, job_heartbeat, reaper_pass
from coordination.services import job_cancel, job_claim, job_complete, job_report_and_take_next
from coordination.tasks import run_job
from tests.e2e.harness import wait_until
from tests.helpers import assert_honest_waiting, events, fresh, log_row, submit


def run_job_in_thread(job_id: str, attempt: int) -> None:
    """run_job as a worker thread runs it, closing the thread's connection as django-q2's worker does."""
    try:
        run_job(job_id, attempt)
    finally:
        connections.close_all()

pytestmark = pytest.mark.django_db


def lapse(job: Job, seconds: int = 60) -> None:
    """As if its worker died `seconds` ago: the lease ran out."""
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=seconds))




def test_a_lapsed_lease_fails_the_job_frees_its_model_and_starts_the_next(user):
    lost = submit(user)
    waiting = submit(user)
    job_claim(job_id=lost.job_id, attempt=1)
    lapse(lost)

    report = reaper_pass()

    lost = fresh(lost)
    assert report["lease_expired"] == [str(lost.job_id)]
    assert lost.status == Job.Status.FAILED and lost.error.startswith("worker lost: lease expired")
    assert events(lost)[-2:] == ["lease_expired", "failed"]
    assert fresh(waiting).status == Job.Status.RUNNING
    assert_honest_waiting()


def test_a_live_lease_is_left_alone(user):
    alive = submit(user)
    job_claim(job_id=alive.job_id, attempt=1)

    assert job_heartbeat(job_id=alive.job_id, attempt=1) == HEARTBEAT_OK
    assert reaper_pass() == {"lease_expired": [], "timed_out": [], "requeued_tasks": [], "repaired": []}
    assert fresh(alive).status == Job.Status.RUNNING


def test_the_lost_workers_late_calls_are_refused_and_the_outcome_stands(user):
    lost = submit(user)
    job_claim(job_id=lost.job_id, attempt=1)
    lapse(lost)
    reaper_pass()

    assert job_heartbeat(job_id=lost.job_id, attempt=1) == HEARTBEAT_LOST
    with pytest.raises(StaleAttempt):
        job_complete(job_id=lost.job_id, attempt=1, result={"late": True})

    lost = fresh(lost)
    assert lost.status == Job.Status.FAILED and lost.result is None
    assert events(lost)[-2:] == ["refused", "refused"]


def test_a_retried_job_keeps_its_place_at_the_head_of_its_line(user):
    CatalogModel.objects.filter(name="motion-2.0-fast").update(max_attempts=2)
    lost = submit(user)
    later = submit(user)
    job_claim(job_id=lost.job_id, attempt=1)
    lapse(lost)

    reaper_pass()

    lost, later = fresh(lost), fresh(later)
    assert lost.status == Job.Status.RUNNING and lost.attempt == 2, "it went first again, before the later job"
    assert later.status == Job.Status.PENDING and later.blocked_by_job_id == lost.job_id
    assert events(lost) == ["submitted", "started", "claimed", "lease_expired", "retried", "started"]
    assert log_row(lost, "lease_expired").details["attempt"] == 1
    started = JobQueueLog.objects.filter(job_id=lost.job_id, event_type="started").order_by("id")
    assert [row.details["attempt"] for row in started] == [1, 2]


def test_a_job_running_past_its_models_limit_is_failed_as_timed_out(user):
    CatalogModel.objects.filter(name="flux-dev").update(timeout_seconds=5, max_attempts=3)
    slow = submit(user, model="flux-dev")
    waiting = submit(user, model="flux-dev")
    job_claim(job_id=slow.job_id, attempt=1)
    Job.objects.filter(pk=slow.pk).update(started_at=timezone.now() - timedelta(seconds=6))

    report = reaper_pass()

    slow = fresh(slow)
    assert report["timed_out"] == [str(slow.job_id)]
    assert slow.status == Job.Status.FAILED and slow.error == "timed out after 5 s", "a timeout is not retried"
    assert fresh(waiting).status == Job.Status.RUNNING


def test_a_started_job_no_worker_claimed_is_sent_again(user, django_capture_on_commit_callbacks):
    orphan = submit(user)
    lapse(orphan)  # a whole lease passed since it started, and no worker claimed it

    with django_capture_on_commit_callbacks() as callbacks:
        report = reaper_pass()

    assert report["requeued_tasks"] == [str(orphan.job_id)]
    assert len(callbacks) == 1, "its task is enqueued again, after commit"
    assert fresh(orphan).status == Job.Status.RUNNING and events(orphan)[-1] == "requeued"


def test_a_handed_off_job_is_claimed_with_its_start_so_its_worker_dying_is_a_lost_worker(user, runner_calls):
    """The hand-off takes the job as job_claim takes a delivered one: claim, lease and first heartbeat
    in the transaction that started it. Its worker dying after that commit loses the attempt, as it
    would a moment later in its runner; the job's own delivery still runs nothing."""
    first = submit(user)
    second = submit(user)
    job_claim(job_id=first.job_id, attempt=1)
    taken = job_report_and_take_next(job_id=first.job_id, attempt=1, status="completed", result={})
    assert taken.job_id == second.job_id  # ...and then that worker died

    handed = fresh(second)
    assert (handed.claimed_attempt, handed.heartbeat_at) == (1, handed.started_at)
    run_job(str(second.job_id), 1)  # its task, delivered by the broker afterwards
    assert runner_calls == []

    lapse(second)
    report = reaper_pass()

    second = fresh(second)
    assert report["lease_expired"] == [str(second.job_id)] and report["requeued_tasks"] == []
    assert second.status == Job.Status.FAILED and second.error.startswith("worker lost: lease expired")


def test_a_failing_job_is_retried_while_its_model_allows(user, runner_calls):
    CatalogModel.objects.filter(name="motion-2.0-fast").update(max_attempts=2)
    job = submit(user, params={"simulate_seconds": 0, "simulate_fail": "GPU out of memory"})

    run_job(str(job.job_id), 1)

    job = fresh(job)
    assert len(runner_calls) == 2 and job.attempt == 2
    assert job.status == Job.Status.FAILED and job.error == "GPU out of memory"
    assert events(job) == ["submitted", "started", "claimed", "retried", "started", "claimed", "failed"]


def test_the_reaper_repairs_a_waiting_job_that_points_at_a_finished_one(user):
    running = submit(user)
    waiting = submit(user, model="flux-dev")
    other = submit(user, model="minimax/video-01")
    Job.objects.filter(pk=other.pk).update(blocked_by_job_id=None, conflict_reason=None)  # by hand

    report = reaper_pass()

    assert report["repaired"] == [str(other.job_id)]
    assert fresh(other).blocked_by_job_id is not None
    assert fresh(waiting).status == Job.Status.PENDING and fresh(running).status == Job.Status.RUNNING
    assert_honest_waiting()


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_job_stops_its_runner_then_frees_its_model(user, runner_calls):
    """The worker's lease keeper sees the request within a second; the runner stops within 0.1 s."""
    running = submit(user, params={"simulate_seconds": 30})
    waiting = submit(user, params={"simulate_seconds": 0})
    worker = threading.Thread(target=run_job_in_thread, args=(str(running.job_id), 1))
    worker.start()
    wait_until(lambda: fresh(running).claimed_attempt == 1, timeout=10, message="the worker to claim its job")

    job_cancel(job_id=running.job_id, user=user)
    assert fresh(running).cancel_requested_at is not None

    worker.join(timeout=10)
    assert not worker.is_alive()
    running = fresh(running)
    assert running.status == Job.Status.CANCELLED and running.error == "Cancelled by its owner; stopped while running"
    assert (running.completed_at - running.started_at).total_seconds() < 15, "stopped long before its 30 s"
    waiting = fresh(waiting)
    assert waiting.status == Job.Status.COMPLETED and waiting.started_at >= running.completed_at


@pytest.mark.django_db(transaction=True)
def test_the_keeper_watches_each_job_a_worker_runs_in_turn(user, runner_calls):
    """One keeper per worker process: after a job, it watches the job handed over next, and a cancel
    of that one stops it too; the worker then holds no connection of the keeper's."""
    first = submit(user, params={"simulate_seconds": 0})
    second = submit(user, params={"simulate_seconds": 30})
    worker = threading.Thread(target=run_job_in_thread, args=(str(first.job_id), 1))
    worker.start()
    wait_until(lambda: fresh(second).claimed_attempt == 1, timeout=10, message="the hand-over of the second job")

    job_cancel(job_id=second.job_id, user=user)

    worker.join(timeout=10)
    assert not worker.is_alive()
    assert fresh(first).status == Job.Status.COMPLETED
    second = fresh(second)
    assert second.status == Job.Status.CANCELLED and second.error == "Cancelled by its owner; stopped while running"
    keepers = [thread for thread in threading.enumerate() if thread.name == "lease-keeper"]
    assert len(keepers) <= 1, "one keeper thread per process, not one per job"
