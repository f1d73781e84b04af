"""job_complete / job_fail: end a running job and start what may start now (docs/design.md: I2-I6, life of a job)."""

import pytest

from coordination.exceptions import JobNotFound, StaleAttempt
from coordination.models import Job, JobQueueLog, JobQueueState
from coordination.queue import words
from coordination.recovery import reaper_pass
from coordination.services import job_cancel, job_complete, job_fail
from tests.helpers import (
    AUDIT_FAILED,
    assert_exclusion,
    assert_honest_waiting,
    assert_in_order,
    coordinator_lines,
    events,
    execute_workflow,
    fresh,
    log_row,
    submit,
)

pytestmark = pytest.mark.django_db


def test_guide_test_1_the_second_job_starts_when_the_first_completes(coordinator_log, user):
    job1 = submit(user, prompt="A knight riding a horse")
    job2 = submit(user, prompt="A dragon flying")

    job_complete(job_id=job1.job_id, attempt=1, result={"url": "https://example.com/knight.mp4"})

    assert_in_order(
        coordinator_lines(coordinator_log),
        [
            # Job 1 starts
            f"[COORDINATOR] Checking if job {job1.job_id} can start - Models: ['motion-2.0-fast']",
            f"[COORDINATOR] No active job - {job1.job_id} can start immediately",
            f"[COORDINATOR] Set active job: {job1.job_id} (normal) - Models: ['motion-2.0-fast']",
            # Job 2 arrives
            f"[COORDINATOR] Checking if job {job2.job_id} can start - Models: ['motion-2.0-fast']",
            "[COORDINATOR] Model conflict detected: {'motion-2.0-fast'}",
            f"[COORDINATOR] Job {job2.job_id} blocked: Model conflict: motion-2.0-fast in use by normal job {job1.job_id}",
            f"[COORDINATOR] Marked job {job2.job_id} as queued (blocked by {job1.job_id})",
            # Job 1 completes
            f"[COORDINATOR] Job {job1.job_id} completed, checking for next queued job...",
            "[COORDINATOR] Found 1 queued job(s), checking for next eligible job...",
            f"[COORDINATOR] Starting next queued job: {job2.job_id}",
        ],
    )
    job1, job2 = fresh(job1), fresh(job2)
    assert job1.status == Job.Status.COMPLETED
    assert job1.result == {"url": "https://example.com/knight.mp4"}
    assert job1.completed_at is not None and job1.error is None
    assert job2.status == Job.Status.RUNNING
    assert (job2.blocked_by_job_id, job2.conflict_reason) == (None, None)
    assert job2.attempt == 1
    slot = JobQueueState.objects.get(id=1)
    assert (slot.active_job_id, slot.active_job_type, slot.active_models) == (job2.job_id, "normal", ["motion-2.0-fast"])


def test_the_next_jobs_task_is_enqueued_only_after_the_completion_commits(user, django_capture_on_commit_callbacks):
    job1 = submit(user)
    job2 = submit(user)

    with django_capture_on_commit_callbacks() as callbacks:
        job_complete(job_id=job1.job_id, attempt=1, result={})

    assert [(callback.func.__name__, callback.args) for callback in callbacks] == [("enqueue_job_run", (job2.job_id, 1))]


def test_completing_the_last_job_frees_the_slot(coordinator_log, user):
    job = submit(user)

    job_complete(job_id=job.job_id, attempt=1, result={})

    slot = JobQueueState.objects.get(id=1)
    assert (slot.active_job_id, slot.active_job_type, slot.active_models, slot.started_at) == (None, None, [], None)
    assert "[COORDINATOR] No queued jobs" in coordinator_lines(coordinator_log)


def test_a_result_is_kept_as_json_would_keep_it_whatever_its_values(user):
    """The write's JSON is orjson's; what it refuses (an integer beyond 64 bits) still goes through."""
    job = submit(user)
    result = {"seed": 2**70, 7: "a key that is not a string", "when": "2026-12-07T15:00:00+00:00", "score": 0.1}

    job_complete(job_id=job.job_id, attempt=1, result=result)

    assert fresh(job).result == {"seed": 2**70, "7": "a key that is not a string", "when": "2026-12-07T15:00:00+00:00",
                                 "score": 0.1}


def test_a_result_with_a_key_that_is_not_a_string_is_kept_as_json_would_keep_it(user):
    job = submit(user)

    job_complete(job_id=job.job_id, attempt=1, result={1: "one", None: "none", "n": 2**63 - 1})

    assert fresh(job).result == {"1": "one", "null": "none", "n": 2**63 - 1}


def test_guide_test_2_the_normal_job_starts_when_the_workflow_completes(user):
    workflow = execute_workflow(user)
    normal = submit(user, prompt="A cinematic video")

    job_complete(job_id=workflow.job_id, attempt=1, result={"output": "x"})

    assert fresh(normal).status == Job.Status.RUNNING
    log = JobQueueLog.objects.filter(event_type__in=["started", "blocked", "completed"]).order_by("id")
    assert [(row.job_id, row.job_type, row.event_type) for row in log] == [
        (workflow.job_id, "workflow", "started"),
        (normal.job_id, "normal", "blocked"),
        (workflow.job_id, "workflow", "completed"),
        (normal.job_id, "normal", "started"),
    ]


def test_guide_test_3_serialized_jobs_run_one_at_a_time_in_fifo_order(user):
    jobs = [submit(user, model=model) for model in ("flux-dev", "minimax/video-01", "flux-dev", "nano-banana-pro-leonardo")]

    order = []
    for _ in jobs:
        running = Job.objects.get(status=Job.Status.RUNNING)
        order.append(running.job_id)
        assert_exclusion()
        assert_honest_waiting()
        job_complete(job_id=running.job_id, attempt=running.attempt, result={})

    assert order == [job.job_id for job in jobs]
    assert not Job.objects.exclude(status=Job.Status.COMPLETED).exists()


def test_failing_a_job_records_its_error_and_starts_the_next(user):
    job1 = submit(user)
    job2 = submit(user)

    job_fail(job_id=job1.job_id, attempt=1, error="provider returned 500")

    job1 = fresh(job1)
    assert (job1.status, job1.error, job1.result) == (Job.Status.FAILED, "provider returned 500", None)
    assert job1.completed_at is not None
    assert fresh(job2).status == Job.Status.RUNNING
    failed = log_row(job1, "failed")
    assert failed.job_type == "normal"
    assert failed.details == {"attempt": 1, "error": "provider returned 500"}


def test_every_transition_leaves_its_audit_row(user):
    job1 = submit(user)
    job2 = submit(user)
    job3 = submit(user)
    job_cancel(job_id=job3.job_id, user=user)
    job_complete(job_id=job1.job_id, attempt=1, result={})
    job_fail(job_id=job2.job_id, attempt=1, error="boom")

    assert events(job1) == ["submitted", "started", "completed"]
    assert events(job2) == ["submitted", "blocked", "started", "failed"]
    assert events(job3) == ["submitted", "blocked", "cancelled"]


def test_completion_and_the_next_start_are_one_transaction(user, fail_audit):
    """I2 and I6: if the next job cannot be started (its `started` row fails), the completion rolls back too."""
    job1 = submit(user)
    job2 = submit(user)
    fail_audit(JobQueueLog.Event.STARTED)
    with pytest.raises(AUDIT_FAILED):
        job_complete(job_id=job1.job_id, attempt=1, result={})

    assert fresh(job1).status == Job.Status.RUNNING
    assert fresh(job2).status == Job.Status.PENDING
    assert fresh(job2).blocked_by_job_id == job1.job_id
    assert events(job1) == ["submitted", "started"]
    assert JobQueueState.objects.get(id=1).active_job_id == job1.job_id


@pytest.mark.parametrize(("finish", "event"), [(job_complete, "completed"), (job_fail, "failed")])
def test_an_outcome_and_its_audit_row_are_one_transaction(user, fail_audit, finish, event):
    """I6: if the outcome's own row cannot be written, the job keeps running and holds its slot."""
    job = submit(user)
    fail_audit(event)
    kwargs = {"result": {}} if finish is job_complete else {"error": "boom"}
    with pytest.raises(AUDIT_FAILED):
        finish(job_id=job.job_id, attempt=1, **kwargs)

    job = fresh(job)
    assert (job.status, job.completed_at) == (Job.Status.RUNNING, None)
    assert JobQueueState.objects.get(id=1).active_job_id == job.job_id


def _chain(user, length: int) -> list[Job]:
    jobs = [submit(user) for _ in range(length)]
    assert [fresh(job).blocked_by_job_id for job in jobs] == [None] + [job.job_id for job in jobs[:-1]]
    return jobs


def test_no_pending_job_points_at_a_finished_job_after_cancels_and_failures(user):
    """I4 on a chain: running <- 2 <- 3 <- 4 <- 5; cancel the middle, fail the running one."""
    first, second, middle, fourth, fifth = _chain(user, 5)

    job_cancel(job_id=middle.job_id, user=user)
    assert_honest_waiting()
    assert fresh(fourth).blocked_by_job_id == second.job_id
    assert fresh(fifth).blocked_by_job_id == fourth.job_id

    job_fail(job_id=first.job_id, attempt=1, error="worker lost the provider")
    assert_honest_waiting()
    assert fresh(second).status == Job.Status.RUNNING
    assert fresh(fourth).blocked_by_job_id == second.job_id

    job_cancel(job_id=fifth.job_id, user=user)
    job_complete(job_id=second.job_id, attempt=1, result={})
    assert_honest_waiting()
    assert fresh(fourth).status == Job.Status.RUNNING
    assert not Job.objects.filter(status=Job.Status.PENDING).exists()


def test_a_waiter_re_pointed_after_its_blocker_finished_says_so_in_words(user):
    first, second, third = _chain(user, 3)

    job_cancel(job_id=second.job_id, user=user)

    third = fresh(third)
    assert third.blocked_by_job_id == first.job_id
    assert third.conflict_reason == f"Model conflict: motion-2.0-fast in use by normal job {first.job_id}"
    reblocked = log_row(third, "reblocked")
    assert reblocked.details == {"blocked_by_job_id": str(first.job_id), "previous": str(second.job_id)}


@pytest.mark.parametrize("finish", [job_complete, job_fail])
def test_a_wrong_attempt_is_refused_changes_nothing_and_is_logged(user, finish):
    job1 = submit(user)
    job2 = submit(user)
    kwargs = {"result": {}} if finish is job_complete else {"error": "late"}

    with pytest.raises(StaleAttempt):
        finish(job_id=job1.job_id, attempt=2, **kwargs)

    job1 = fresh(job1)
    assert (job1.status, job1.completed_at, job1.result, job1.error) == (Job.Status.RUNNING, None, None, None)
    assert fresh(job2).status == Job.Status.PENDING
    refused = log_row(job1, "refused")
    assert refused.job_type == "normal"
    assert refused.details["caller_attempt"] == 2
    assert refused.details["attempt"] == 1


@pytest.mark.parametrize("finish", [job_complete, job_fail])
def test_finishing_a_finished_job_is_refused_and_changes_nothing(user, finish):
    job = submit(user)
    job_complete(job_id=job.job_id, attempt=1, result={"first": True})
    before = fresh(job)
    kwargs = {"result": {"second": True}} if finish is job_complete else {"error": "late"}

    with pytest.raises(StaleAttempt):
        finish(job_id=job.job_id, attempt=1, **kwargs)

    after = fresh(job)
    assert (after.status, after.completed_at, after.result, after.error) == (
        before.status, before.completed_at, before.result, before.error
    )
    assert events(job) == ["submitted", "started", "completed", "refused"]


def test_finishing_a_pending_job_is_refused(user):
    submit(user)
    waiting = submit(user)

    with pytest.raises(StaleAttempt):
        job_complete(job_id=waiting.job_id, attempt=0, result={})

    assert fresh(waiting).status == Job.Status.PENDING
    assert events(waiting) == ["submitted", "blocked", "refused"]


def test_finishing_an_unknown_job_is_not_found(db):
    with pytest.raises(JobNotFound):
        job_complete(job_id="8a1af0ff-0000-0000-0000-000000000000", attempt=1, result={})


def test_a_higher_priority_job_goes_before_earlier_lower_priority_ones(user, staff_user):
    running = submit(user)
    early = submit(user)
    later = submit(user)
    urgent = submit(staff_user, priority=5)

    job_complete(job_id=running.job_id, attempt=1, result={})
    assert fresh(urgent).status == Job.Status.RUNNING
    assert fresh(early).status == Job.Status.PENDING
    assert fresh(early).blocked_by_job_id == urgent.job_id
    assert_honest_waiting()

    job_complete(job_id=urgent.job_id, attempt=1, result={})
    assert fresh(early).status == Job.Status.RUNNING
    job_complete(job_id=early.job_id, attempt=1, result={})
    assert fresh(later).status == Job.Status.RUNNING


def test_priority_does_not_let_a_job_start_on_a_model_in_use(user, staff_user):
    running = submit(user, model="flux-dev")
    urgent = submit(staff_user, model="flux-dev", priority=9)

    assert fresh(urgent).status == Job.Status.PENDING
    assert fresh(urgent).blocked_by_job_id == running.job_id


class TestTwoSlots:
    """COORDINATOR_MAX_ACTIVE_JOBS = 2: models are still exclusive, slots are not."""

    @pytest.fixture(autouse=True)
    def two_slots(self, settings):
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 2

    def test_jobs_on_different_models_both_run(self, user):
        image = submit(user, model="flux-dev")
        video = submit(user, model="minimax/video-01")

        assert fresh(image).status == fresh(video).status == Job.Status.RUNNING
        slots = list(JobQueueState.objects.order_by("id").values_list("id", "active_job_id"))
        assert slots == [(1, image.job_id), (2, video.job_id)]
        assert_exclusion(max_active=2)

    def test_the_same_model_is_still_exclusive(self, coordinator_log, user):
        first = submit(user, model="flux-dev")
        coordinator_log.clear()
        second = submit(user, model="flux-dev")

        second = fresh(second)
        assert second.status == Job.Status.PENDING
        assert second.blocked_by_job_id == first.job_id
        assert second.conflict_reason == f"Model conflict: flux-dev in use by normal job {first.job_id}"
        line = f"[COORDINATOR] Marked job {second.job_id} as queued (blocked by {first.job_id})"
        assert line in coordinator_lines(coordinator_log)

    def test_a_third_job_waits_for_a_slot_when_both_are_busy(self, user):
        first = submit(user, model="flux-dev")
        submit(user, model="minimax/video-01")
        third = submit(user, model="nano-banana-pro-leonardo")

        third = fresh(third)
        assert third.status == Job.Status.PENDING
        assert third.blocked_by_job_id == first.job_id
        assert third.conflict_reason.startswith("All 2 slots are busy; waiting for a slot")

    def test_finishing_one_starts_every_job_that_may_now_start(self, coordinator_log, user):
        workflow = execute_workflow(user)
        video = submit(user, model="motion-2.0-fast")
        image = submit(user, model="nano-banana-pro-leonardo")
        video_again = submit(user, model="motion-2.0-fast")
        assert fresh(video).blocked_by_job_id == workflow.job_id
        assert fresh(image).blocked_by_job_id == workflow.job_id
        assert fresh(video_again).blocked_by_job_id == video.job_id
        coordinator_log.clear()

        job_complete(job_id=workflow.job_id, attempt=1, result={})

        assert fresh(video).status == Job.Status.RUNNING
        assert fresh(image).status == Job.Status.RUNNING
        assert fresh(video_again).status == Job.Status.PENDING
        assert fresh(video_again).blocked_by_job_id == video.job_id
        assert_in_order(
            coordinator_lines(coordinator_log),
            [
                f"[COORDINATOR] Job {workflow.job_id} completed, checking for next queued job...",
                "[COORDINATOR] Found 3 queued job(s), checking for next eligible job...",
                f"[COORDINATOR] Starting next queued job: {video.job_id}",
                f"[COORDINATOR] Starting next queued job: {image.job_id}",
            ],
        )
        assert_exclusion(max_active=2)
        assert_honest_waiting()

    def test_a_later_job_does_not_overtake_an_earlier_one_needing_the_same_model(self, user):
        """I3: the workflow waits for motion; a later motion job must not jump it when flux frees."""
        flux = submit(user, model="flux-dev")
        motion = submit(user, model="motion-2.0-fast")
        workflow = execute_workflow(user)
        nano = submit(user, model="nano-banana-pro-leonardo")

        assert fresh(workflow).blocked_by_job_id == motion.job_id
        assert fresh(nano).blocked_by_job_id == workflow.job_id

        job_complete(job_id=flux.job_id, attempt=1, result={})
        # A slot is free, but the only models free are ones the workflow (ahead in line) needs.
        assert fresh(nano).status == Job.Status.PENDING
        assert Job.objects.filter(status=Job.Status.RUNNING).get() == fresh(motion)

        job_complete(job_id=motion.job_id, attempt=1, result={})
        assert fresh(workflow).status == Job.Status.RUNNING
        assert fresh(nano).status == Job.Status.PENDING
        assert_honest_waiting()
        assert_exclusion(max_active=2)


def test_an_idle_queue_says_no_queued_jobs_once_not_on_every_reaper_pass(coordinator_log, user):
    job = submit(user)
    job_complete(job_id=job.job_id, attempt=1, result={})
    assert coordinator_lines(coordinator_log).count("[COORDINATOR] No queued jobs") == 1

    words._idle.said = False  # as in another worker process, which has not said it yet
    for _ in range(3):
        reaper_pass()

    assert coordinator_lines(coordinator_log).count("[COORDINATOR] No queued jobs") == 1
    job = submit(user)
    job_complete(job_id=job.job_id, attempt=1, result={})  # a change of state: said again
    assert coordinator_lines(coordinator_log).count("[COORDINATOR] No queued jobs") == 2
