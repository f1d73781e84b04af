"""job_cancel: a waiting job leaves the line; whoever waited for it waits for a live job instead."""

import pytest

from coordination.exceptions import InvalidTransition, JobNotFound
from coordination.models import Job, JobQueueLog, JobQueueState
from coordination.services import job_cancel, job_complete
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


def test_cancelling_a_waiting_job_ends_it_and_logs_who_and_why(coordinator_log, user):
    running = submit(user)
    waiting = submit(user)

    job_cancel(job_id=waiting.job_id, user=user, reason="Changed my mind")

    waiting = fresh(waiting)
    assert waiting.status == Job.Status.CANCELLED
    assert waiting.completed_at is not None
    assert (waiting.blocked_by_job_id, waiting.conflict_reason) == (None, None)
    assert waiting.error == "Changed my mind"
    cancelled = log_row(waiting, "cancelled")
    assert cancelled.job_type == "normal"
    assert cancelled.details == {"by": user.username, "reason": "Changed my mind"}
    assert fresh(running).status == Job.Status.RUNNING
    line = f"[COORDINATOR] Job {waiting.job_id} cancelled, checking for next queued job..."
    assert line in coordinator_lines(coordinator_log)


def test_the_job_behind_a_cancelled_one_waits_for_a_live_job(user):
    running = submit(user)
    cancelled = submit(user)
    behind = submit(user)
    further = submit(user)

    job_cancel(job_id=cancelled.job_id, user=user)

    assert fresh(behind).blocked_by_job_id == running.job_id
    assert fresh(further).blocked_by_job_id == behind.job_id
    assert events(behind) == ["submitted", "blocked", "reblocked"]
    assert_honest_waiting()


def test_cancelling_the_head_of_the_line_in_serialized_mode_re_points_the_next(user):
    running = submit(user, model="flux-dev")
    head = submit(user, model="minimax/video-01")
    second = submit(user, model="nano-banana-pro-leonardo")

    job_cancel(job_id=head.job_id, user=user)

    second = fresh(second)
    assert second.blocked_by_job_id == running.job_id
    assert second.conflict_reason == f"Serialized mode: one job at a time; normal job {running.job_id} is running (flux-dev)"


def test_cancelling_a_waiting_workflow_clears_its_execution_blocker(user):
    submit(user)
    workflow = execute_workflow(user)
    assert fresh(workflow).workflow_execution.blocked_by_job_id is not None

    job_cancel(job_id=workflow.job_id, user=user)

    workflow = fresh(workflow)
    assert workflow.status == Job.Status.CANCELLED
    assert workflow.workflow_execution.blocked_by_job_id is None
    assert log_row(workflow, "cancelled").job_type == "workflow"


def test_a_cancel_that_frees_capacity_starts_the_jobs_that_may_now_start(settings, user):
    """With two slots: a waiting workflow held nano back by rule 3 (docs/design.md); cancelling it lets nano start."""
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
    submit(user, model="motion-2.0-fast")
    workflow = execute_workflow(user)
    nano = submit(user, model="nano-banana-pro-leonardo")
    assert fresh(nano).blocked_by_job_id == workflow.job_id

    job_cancel(job_id=workflow.job_id, user=user)

    assert fresh(nano).status == Job.Status.RUNNING
    assert_exclusion(max_active=2)
    assert_honest_waiting()


def test_cancel_then_complete_starts_the_right_job_with_the_guides_lines(coordinator_log, user):
    running = submit(user)
    cancelled = submit(user)
    next_up = submit(user)
    job_cancel(job_id=cancelled.job_id, user=user)
    coordinator_log.clear()

    job_complete(job_id=running.job_id, attempt=1, result={})

    assert_in_order(
        coordinator_lines(coordinator_log),
        [
            f"[COORDINATOR] Job {running.job_id} completed, checking for next queued job...",
            "[COORDINATOR] Found 1 queued job(s), checking for next eligible job...",
            f"[COORDINATOR] Starting next queued job: {next_up.job_id}",
        ],
    )
    assert fresh(cancelled).status == Job.Status.CANCELLED


def test_a_cancel_and_its_audit_row_are_one_transaction(user, fail_audit):
    """I6: if the `cancelled` row cannot be written, the job is still waiting, blocked as before."""
    running = submit(user)
    waiting = submit(user)
    fail_audit(JobQueueLog.Event.CANCELLED)
    with pytest.raises(AUDIT_FAILED):
        job_cancel(job_id=waiting.job_id, user=user)

    waiting = fresh(waiting)
    assert (waiting.status, waiting.blocked_by_job_id) == (Job.Status.PENDING, running.job_id)
    assert events(waiting) == ["submitted", "blocked"]


@pytest.mark.parametrize("finished", [Job.Status.COMPLETED, Job.Status.CANCELLED])
def test_a_finished_job_cannot_be_cancelled(user, finished):
    job = submit(user)
    submit(user)
    if finished == Job.Status.COMPLETED:
        job_complete(job_id=job.job_id, attempt=1, result={})
    else:
        waiting = Job.objects.get(status=Job.Status.PENDING)
        job_cancel(job_id=waiting.job_id, user=user)
        job = waiting
    before = events(job)

    with pytest.raises(InvalidTransition) as refused:
        job_cancel(job_id=job.job_id, user=user)

    # It says what can be cancelled: a running job can (it is asked to stop), not only a pending one.
    assert str(refused.value) == (
        f"Job {job.job_id} is already {finished}; only a pending or running job can be cancelled."
    )

    assert fresh(job).status == finished
    assert events(job) == before


def test_cancelling_a_running_job_only_asks_its_worker_to_stop(user):
    """Its worker may still be calling the model: the model stays held until the worker stops (I1)."""
    running = submit(user)
    waiting = submit(user)

    job_cancel(job_id=running.job_id, user=user)
    job_cancel(job_id=running.job_id, user=user)  # asking twice is asking once

    running = fresh(running)
    assert running.status == Job.Status.RUNNING and running.cancel_requested_at is not None
    assert fresh(waiting).blocked_by_job_id == running.job_id
    assert JobQueueState.objects.get(id=1).active_job_id == running.job_id
    assert events(running) == ["submitted", "started", "cancel_requested"]


def test_cancelling_an_unknown_job_is_not_found(db):
    with pytest.raises(JobNotFound):
        job_cancel(job_id="not-a-uuid")
