"""job_submit: accept a job and start it or queue it, in one transaction (docs/design.md: scheduling rules, life of a job)."""

import pytest
from django.db import IntegrityError, transaction

from coordination.exceptions import InvalidJob, NotAllowed, UnknownModel
from coordination.models import Job, JobQueueLog, JobQueueState
from coordination.queue import line_position
from coordination.services import job_complete
from tests.helpers import (
    AUDIT_FAILED,
    assert_exclusion,
    assert_honest_waiting,
    coordinator_lines,
    events,
    execute_workflow,
    fresh,
    log_row,
    submit,
)

pytestmark = pytest.mark.django_db


def test_guide_test_1_first_job_starts_and_second_is_queued_with_the_guides_log_lines(coordinator_log, user):
    job1 = submit(user, prompt="A knight riding a horse")
    assert coordinator_lines(coordinator_log) == [
        f"[COORDINATOR] Checking if job {job1.job_id} can start - Models: ['motion-2.0-fast']",
        f"[COORDINATOR] No active job - {job1.job_id} can start immediately",
        f"[COORDINATOR] Set active job: {job1.job_id} (normal) - Models: ['motion-2.0-fast']",
    ]
    coordinator_log.clear()

    job2 = submit(user, prompt="A dragon flying")
    assert coordinator_lines(coordinator_log) == [
        f"[COORDINATOR] Checking if job {job2.job_id} can start - Models: ['motion-2.0-fast']",
        "[COORDINATOR] Model conflict detected: {'motion-2.0-fast'}",
        f"[COORDINATOR] Job {job2.job_id} blocked: Model conflict: motion-2.0-fast in use by normal job {job1.job_id}",
        f"[COORDINATOR] Marked job {job2.job_id} as queued (blocked by {job1.job_id})",
    ]

    job1, job2 = fresh(job1), fresh(job2)
    assert job1.status == Job.Status.RUNNING
    assert job1.started_at is not None and job1.attempt == 1
    assert (job1.blocked_by_job_id, job1.conflict_reason, job1.queued_at) == (None, None, None)
    assert job2.status == Job.Status.PENDING
    assert job2.blocked_by_job_id == job1.job_id
    assert job2.conflict_reason == f"Model conflict: motion-2.0-fast in use by normal job {job1.job_id}"
    assert job2.queued_at is not None and job2.queue_position == 1
    assert job2.started_at is None and job2.attempt == 0


def test_the_started_job_occupies_slot_1_as_the_guides_singleton_row(user):
    job = submit(user)

    slot = JobQueueState.objects.get(id=1)
    assert slot.active_job_id == job.job_id
    assert slot.active_job_type == "normal"
    assert slot.active_models == ["motion-2.0-fast"]
    assert slot.started_at == fresh(job).started_at


def test_guide_test_2_a_normal_job_behind_a_workflow_is_blocked_by_the_workflow(coordinator_log, user):
    workflow = execute_workflow(user)
    assert fresh(workflow).status == Job.Status.RUNNING
    coordinator_log.clear()

    normal = submit(user, prompt="A cinematic video")

    reason = f"Model conflict: motion-2.0-fast in use by workflow job {workflow.job_id}"
    assert coordinator_lines(coordinator_log) == [
        f"[COORDINATOR] Checking if job {normal.job_id} can start - Models: ['motion-2.0-fast']",
        "[COORDINATOR] Model conflict detected: {'motion-2.0-fast'}",
        f"[COORDINATOR] Job {normal.job_id} blocked: {reason}",
        f"[COORDINATOR] Marked job {normal.job_id} as queued (blocked by {workflow.job_id})",
    ]
    normal = fresh(normal)
    assert (normal.status, normal.blocked_by_job_id, normal.conflict_reason) == (
        Job.Status.PENDING, workflow.job_id, reason
    )
    slot = JobQueueState.objects.get(id=1)
    assert slot.active_job_type == "workflow"
    assert slot.active_models == ["nano-banana-pro-leonardo", "motion-2.0-fast"]


def test_guide_test_3_serialized_mode_queues_a_job_on_a_different_model_and_says_why(user):
    image = submit(user, model="flux-dev", prompt="Generate image")
    video = submit(user, model="minimax/video-01", prompt="Generate video")

    image, video = fresh(image), fresh(video)
    assert image.status == Job.Status.RUNNING
    assert video.status == Job.Status.PENDING
    assert video.blocked_by_job_id == image.job_id
    assert video.conflict_reason == (
        f"Serialized mode: one job at a time; normal job {image.job_id} is running (flux-dev)"
    )


def test_serialized_mode_is_fifo_each_waiting_job_waits_behind_the_one_before_it(user):
    first = submit(user, model="flux-dev")
    second = submit(user, model="minimax/video-01")
    third = submit(user, model="nano-banana-pro-leonardo")
    fourth = submit(user, model="minimax/video-01")

    third, fourth = fresh(third), fresh(fourth)
    assert third.blocked_by_job_id == second.job_id
    assert third.conflict_reason == f"Serialized mode: one job at a time; normal job {second.job_id} goes first"
    assert fourth.blocked_by_job_id == third.job_id
    assert [line_position(fresh(job)) for job in (second, third, fourth)] == [1, 2, 3]
    assert fresh(first).status == Job.Status.RUNNING
    assert_honest_waiting()
    assert_exclusion()


def test_a_waiting_job_that_shares_a_model_with_the_job_ahead_says_so(user):
    submit(user, model="flux-dev")
    ahead = submit(user, model="motion-2.0-fast")
    behind = submit(user, model="motion-2.0-fast")

    assert fresh(behind).conflict_reason == f"Waiting in line for motion-2.0-fast: normal job {ahead.job_id} goes first"


def test_a_waiting_jobs_reason_stays_true_once_the_job_it_names_has_started(user):
    first = submit(user, model="flux-dev")
    second = submit(user, model="minimax/video-01")
    third = submit(user, model="nano-banana-pro-leonardo")

    job_complete(job_id=first.job_id, attempt=1, result={})

    second, third = fresh(second), fresh(third)
    assert second.status == Job.Status.RUNNING
    # Still named (I4: it runs now), and the words are still true: it went first; it is not "in line".
    assert third.blocked_by_job_id == second.job_id
    assert third.conflict_reason == f"Serialized mode: one job at a time; normal job {second.job_id} goes first"


def test_submission_writes_submitted_then_started_or_blocked_audit_rows(user):
    job1 = submit(user)
    job2 = submit(user)

    assert events(job1) == ["submitted", "started"]
    assert events(job2) == ["submitted", "blocked"]
    blocked = log_row(job2, "blocked")
    assert blocked.job_type == "normal"
    assert blocked.conflict_reason == fresh(job2).conflict_reason
    assert blocked.details["blocked_by_job_id"] == str(job1.job_id)
    started = log_row(job1, "started")
    assert started.job_type == "normal"
    assert started.details == {"slot": 1, "attempt": 1, "models": ["motion-2.0-fast"]}


def test_a_workflows_audit_rows_say_workflow(user):
    workflow = execute_workflow(user)

    rows = JobQueueLog.objects.filter(job_id=workflow.job_id).order_by("id")
    assert [(row.event_type, row.job_type) for row in rows] == [("submitted", "workflow"), ("started", "workflow")]


def test_submission_and_its_audit_row_are_one_transaction(user, fail_audit):
    """I6: if writing the `started` row fails, the job is not accepted at all."""
    fail_audit(JobQueueLog.Event.STARTED)
    with pytest.raises(AUDIT_FAILED):
        submit(user)

    assert not Job.objects.exists()
    assert not JobQueueLog.objects.exists()
    assert JobQueueState.objects.get(id=1).active_job_id is None


def test_the_worker_task_is_enqueued_only_after_commit_and_only_for_a_started_job(user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        started = submit(user)
    assert len(callbacks) == 1
    assert callbacks[0].func.__name__ == "enqueue_job_run"
    assert callbacks[0].args == (started.job_id, 1)

    with django_capture_on_commit_callbacks() as callbacks:
        submit(user)
    assert callbacks == []


@pytest.mark.parametrize("model", ["motion-2.0-fast", "flux-dev"])
def test_required_models_of_a_normal_job_is_its_model(user, model):
    job = submit(user, model=model)

    assert fresh(job).required_models == [model]


def test_required_models_of_a_workflow_are_all_its_step_models_in_order(user):
    job = execute_workflow(user)

    assert fresh(job).required_models == ["nano-banana-pro-leonardo", "motion-2.0-fast"]
    assert fresh(job).workflow_execution.required_models == ["nano-banana-pro-leonardo", "motion-2.0-fast"]


def test_required_models_is_never_null(user):
    running = submit(user)
    waiting = submit(user, model="flux-dev")
    workflow = execute_workflow(user)

    # The guide's question ("Are required_models populated?") asked of every job as stored, the
    # waiting ones too: each holds its own models, not null and not empty...
    assert {job.job_id: job.required_models for job in Job.objects.all()} == {
        running.job_id: ["motion-2.0-fast"],
        waiting.job_id: ["flux-dev"],
        workflow.job_id: ["nano-banana-pro-leonardo", "motion-2.0-fast"],
    }
    assert (fresh(running).status, fresh(waiting).status, fresh(workflow).status) == ("running", "pending", "pending")
    # ...and the database itself refuses a job without them.
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.filter(pk=running.pk).update(required_models=None)


def test_unknown_model_is_refused_naming_the_known_ones(user):
    with pytest.raises(UnknownModel) as error:
        submit(user, model="sdxl-turbo")

    assert "Unknown model 'sdxl-turbo'" in error.value.message
    for known in ("flux-dev", "motion-2.0-fast", "minimax/video-01", "nano-banana-pro-leonardo"):
        assert known in error.value.message
    assert not Job.objects.exists()


def test_job_type_must_match_the_models_media_type(user):
    with pytest.raises(InvalidJob, match="job_type must be 'video'"):
        submit(user, model="motion-2.0-fast", job_type="image")

    assert submit(user, model="motion-2.0-fast", job_type="video").job_type == "video"
    assert submit(user, model="flux-dev").job_type == "image"


@pytest.mark.parametrize("prompt", ["", "   "])
def test_a_prompt_is_required(user, prompt):
    with pytest.raises(InvalidJob, match="prompt is required"):
        submit(user, prompt=prompt)


def test_only_staff_may_raise_priority(user, staff_user):
    with pytest.raises(NotAllowed):
        submit(user, priority=5)

    assert submit(staff_user, priority=5).priority == 5
    assert submit(user, priority=-3).priority == -3


def test_a_higher_priority_job_stands_ahead_of_earlier_lower_priority_ones(user, staff_user):
    running = submit(user)
    early = submit(user)
    urgent = submit(staff_user, priority=5)

    urgent, early = fresh(urgent), fresh(early)
    # Nothing pending stands ahead of it: it waits only for the running job.
    assert urgent.blocked_by_job_id == running.job_id
    assert line_position(urgent) == 1
    assert line_position(early) == 2
    assert_honest_waiting()


# --- job_build and jobs_submit_batch (POST /jobs/batch) ----------------------------------------------


def batch_body(model: str = "motion-2.0-fast", **extra) -> dict:
    return {"model": model, "prompt": "A knight riding a horse", "params": {"simulate_seconds": 0}, **extra}


def test_job_build_checks_a_submission_and_writes_nothing(user):
    from coordination.services import job_build

    job = job_build(owner=user, model="flux-dev", prompt="A castle", client_ref="poster")

    assert job._state.adding and job.required_models == ["flux-dev"] and job.job_type == "image"
    assert job.client_ref == "poster"
    assert not Job.objects.exists() and not JobQueueLog.objects.exists()
    with pytest.raises(UnknownModel, match="Unknown model 'x'"):
        job_build(owner=user, model="x", prompt="A castle")


def test_job_build_reads_a_given_catalog_instead_of_the_database(user, django_assert_num_queries):
    from coordination.models import CatalogModel
    from coordination.services import job_build

    catalog = {model.name: model for model in CatalogModel.objects.order_by("name")}

    with django_assert_num_queries(0):
        assert job_build(owner=user, model="flux-dev", prompt="A castle", catalog=catalog).model == "flux-dev"
        with pytest.raises(UnknownModel) as error:
            job_build(owner=user, model="x", prompt="A castle", catalog=catalog)
    assert error.value.message == (
        "Unknown model 'x'. Known models: flux-dev, minimax/video-01, motion-2.0-fast, nano-banana-pro-leonardo."
    )


def test_a_batch_is_accepted_in_order_as_submissions_in_a_row(user, coordinator_log):
    from coordination.services import jobs_submit_batch

    first, second, other, third = jobs_submit_batch(
        owner=user, bodies=[batch_body(), batch_body(), batch_body("flux-dev"), batch_body(client_ref="3")]
    )

    first, second, other, third = (fresh(job) for job in (first, second, other, third))
    assert first.status == Job.Status.RUNNING
    # Serialized mode: each waits behind the job before it in the one line, flux-dev's too.
    assert (second.blocked_by_job_id, other.blocked_by_job_id, third.blocked_by_job_id) == (
        first.job_id, second.job_id, other.job_id,
    )
    assert [line_position(job) for job in (second, other, third)] == [1, 2, 3]
    assert third.client_ref == "3" and first.client_ref is None
    assert len({job.created_at for job in (first, second, other, third)}) == 1  # one instant
    assert events(first) == ["submitted", "started"] and events(third) == ["submitted", "blocked"]
    lines = coordinator_lines(coordinator_log)
    assert lines[0] == f"[COORDINATOR] Checking if job {first.job_id} can start - Models: ['motion-2.0-fast']"
    assert_exclusion()
    assert_honest_waiting()


def test_a_bad_body_refuses_the_batch_naming_its_place(user):
    from coordination.services import jobs_submit_batch

    with pytest.raises(UnknownModel) as error:
        jobs_submit_batch(owner=user, bodies=[batch_body(), batch_body("x")])
    assert error.value.message.startswith("jobs[1].model: Unknown model 'x'. Known models: ")
    assert error.value.field == "jobs[1].model"
    with pytest.raises(NotAllowed, match=r"^jobs\[0\]\.priority: Only staff"):
        jobs_submit_batch(owner=user, bodies=[batch_body(priority=1)])
    with pytest.raises(InvalidJob, match=r"^jobs\[0\]\.prompt: A prompt is required"):
        jobs_submit_batch(owner=user, bodies=[batch_body(prompt=" ")])

    assert not Job.objects.exists() and not JobQueueLog.objects.exists()


@pytest.mark.parametrize("size", [0, 1001])
def test_a_batch_holds_one_to_a_thousand_jobs(user, size):
    from coordination.services import jobs_submit_batch

    with pytest.raises(InvalidJob, match="A batch"):
        jobs_submit_batch(owner=user, bodies=[batch_body()] * size)

    assert not Job.objects.exists()


def test_a_batch_and_its_audit_rows_are_one_transaction(user, fail_audit):
    """I6 for a batch: the third job's `blocked` row fails, and none of the batch is accepted."""
    from coordination.services import jobs_submit_batch

    fail_audit(JobQueueLog.Event.BLOCKED)
    with pytest.raises(AUDIT_FAILED):
        jobs_submit_batch(owner=user, bodies=[batch_body(), batch_body()])

    assert not Job.objects.exists()
    assert not JobQueueLog.objects.exists()
    assert JobQueueState.objects.get(id=1).active_job_id is None


def test_a_batch_enqueues_the_worker_task_of_each_job_it_started_after_commit(user, settings, django_capture_on_commit_callbacks):
    from coordination.services import jobs_submit_batch

    settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
    with django_capture_on_commit_callbacks() as callbacks:
        first, second, waiting = jobs_submit_batch(
            owner=user, bodies=[batch_body(), batch_body("flux-dev"), batch_body()]
        )

    assert [(callback.func.__name__, callback.args) for callback in callbacks] == [
        ("enqueue_job_run", (first.job_id, 1)), ("enqueue_job_run", (second.job_id, 1)),
    ]
    assert fresh(waiting).status == Job.Status.PENDING


def test_the_pending_limit_counts_a_batch_whole(user, settings):
    from coordination.exceptions import PendingLimitReached
    from coordination.services import jobs_submit_batch

    settings.COORDINATOR_MAX_PENDING_PER_USER = 2
    with pytest.raises(PendingLimitReached, match="the batch adds 3; the limit is 2"):
        jobs_submit_batch(owner=user, bodies=[batch_body(), batch_body("flux-dev"), batch_body("minimax/video-01")])
    assert not Job.objects.exists()

    assert len(jobs_submit_batch(owner=user, bodies=[batch_body(), batch_body()])) == 2
