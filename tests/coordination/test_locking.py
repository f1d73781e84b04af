"""The coordinator lock under real concurrency: threads, each with its own PostgreSQL connection."""

import threading
import time

import pytest
from django.db import connection, connections, transaction

from coordination.models import Job, JobQueueLog, JobQueueState
from coordination.queue import LINE_ORDER, LockedQueue
from coordination.services import job_submit
from tests.helpers import assert_exclusion, assert_honest_waiting

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 8
JOBS_PER_THREAD = 4
DEADLINE = 20.0
NO_WAIT = {"simulate_seconds": 0}


def in_thread(target, errors: list):
    """Run `target` in a thread with its own connection; record what it raised; close its connection."""

    def body():
        try:
            target()
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def wait_until(condition, *, timeout: float = DEADLINE, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def test_concurrent_submissions_on_one_model_start_exactly_one_and_queue_the_rest_in_order(user):
    errors: list = []
    start = threading.Barrier(THREADS)

    def submitter(index: int):
        def submit_many():
            start.wait(timeout=DEADLINE)
            for n in range(JOBS_PER_THREAD):
                job_submit(owner=user, model="motion-2.0-fast", prompt=f"thread {index} job {n}", params=NO_WAIT)
        return submit_many

    threads = [in_thread(submitter(index), errors) for index in range(THREADS)]
    for thread in threads:
        thread.join(timeout=DEADLINE)
    assert not any(thread.is_alive() for thread in threads), "a submitter never finished"
    assert errors == []

    jobs = list(Job.objects.order_by("created_at"))
    assert len(jobs) == THREADS * JOBS_PER_THREAD
    running = [job for job in jobs if job.status == Job.Status.RUNNING]
    assert running == [jobs[0]], "exactly one job runs: the first accepted"
    assert all(job.status == Job.Status.PENDING for job in jobs[1:])

    # created_at was taken under the lock: it is the line order, with no ties...
    assert len({job.created_at for job in jobs}) == len(jobs)
    assert list(Job.objects.filter(status=Job.Status.PENDING).order_by(*LINE_ORDER)) == jobs[1:]
    # ...and the order in which the coordinator accepted them, as its audit trail shows.
    submitted = list(JobQueueLog.objects.filter(event_type="submitted").order_by("id").values_list("job_id", flat=True))
    assert submitted == [job.job_id for job in jobs]
    # Each waiting job waits for the one accepted just before it (serialized mode: plain FIFO).
    assert [job.blocked_by_job_id for job in jobs[1:]] == [job.job_id for job in jobs[:-1]]
    assert_honest_waiting()
    assert_exclusion()
    slot = JobQueueState.objects.get(id=1)
    assert slot.active_job_id == jobs[0].job_id


def test_concurrent_submissions_with_two_slots_never_overfill_a_model(settings, user):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
    models = ["motion-2.0-fast", "flux-dev", "minimax/video-01"]
    errors: list = []
    start = threading.Barrier(THREADS)

    def submitter(index: int):
        def submit_many():
            start.wait(timeout=DEADLINE)
            for n in range(JOBS_PER_THREAD):
                job_submit(owner=user, model=models[(index + n) % len(models)], prompt=f"{index}/{n}", params=NO_WAIT)
        return submit_many

    threads = [in_thread(submitter(index), errors) for index in range(THREADS)]
    for thread in threads:
        thread.join(timeout=DEADLINE)
    assert errors == []

    running = list(Job.objects.filter(status=Job.Status.RUNNING))
    assert len(running) == 2
    assert len({job.model for job in running}) == 2
    assert_exclusion(max_active=2)
    assert_honest_waiting()
    assert sorted(JobQueueState.objects.exclude(active_job_id=None).values_list("active_job_id", flat=True)) == sorted(
        job.job_id for job in running
    )


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _waits_on_a_lock(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


def test_a_submission_waits_while_another_transaction_holds_the_coordinator_lock(user):
    errors: list = []
    holding = threading.Event()
    release = threading.Event()
    submitted = threading.Event()
    holder_job: list[Job] = []
    waiter_job: list[Job] = []
    waiter_pid: list[int] = []

    def hold_the_lock():
        with transaction.atomic():
            LockedQueue()
            # Accepted under the lock, not yet committed: the waiter must not see a free model.
            holder_job.append(job_submit(owner=user, model="motion-2.0-fast", prompt="holder"))
            holding.set()
            if not release.wait(timeout=DEADLINE):
                raise TimeoutError("the test never released the lock")

    def submit_behind_it():
        waiter_pid.append(_backend_pid())
        waiter_job.append(job_submit(owner=user, model="motion-2.0-fast", prompt="waiter"))
        submitted.set()

    holder = in_thread(hold_the_lock, errors)
    assert holding.wait(timeout=DEADLINE), "the holder never took the lock"
    waiter = in_thread(submit_behind_it, errors)

    # Positive evidence the waiter is blocked on a row lock, not merely slow.
    assert wait_until(lambda: bool(waiter_pid) and _waits_on_a_lock(waiter_pid[0])), "the waiter never waited on a lock"
    assert not submitted.is_set()
    assert not Job.objects.filter(prompt="waiter").exists()

    release.set()
    assert submitted.wait(timeout=DEADLINE), "the waiter never got the lock after the holder committed"
    holder.join(timeout=DEADLINE)
    waiter.join(timeout=DEADLINE)
    assert errors == []

    first, second = Job.objects.get(pk=holder_job[0].pk), Job.objects.get(pk=waiter_job[0].pk)
    assert first.status == Job.Status.RUNNING
    assert second.status == Job.Status.PENDING
    assert second.blocked_by_job_id == first.job_id
    assert second.created_at > first.created_at


def test_locked_queue_refuses_to_run_outside_a_transaction(db):
    with pytest.raises(RuntimeError, match="inside transaction.atomic"):
        LockedQueue()
