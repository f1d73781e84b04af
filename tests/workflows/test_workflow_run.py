"""A workflow job end to end in-process: workflow_execute, then the worker task runs its steps."""

import pytest

from coordination.exceptions import InvalidJob, WorkflowNotFound
from coordination.models import CatalogModel, Job, JobQueueLog, JobQueueState
from coordination.runners.simulated import SimulatedRunner
from coordination.services import job_submit
from coordination.tasks import run_job
from tests.helpers import assert_exclusion, assert_honest_waiting, coordinator_lines, events, fresh
from workflows.models import WorkflowExecution, WorkflowStep
from workflows.services import workflow_execute

pytestmark = pytest.mark.django_db

WORKFLOW = "knight-style-img-to-video"
BOTH_MODELS = ["nano-banana-pro-leonardo", "motion-2.0-fast"]
INPUT_IMAGE = "https://example.com/user.jpg"


def execute(user, **kwargs) -> Job:
    kwargs.setdefault("params", {"simulate_seconds": 0})
    return workflow_execute(owner=user, workflow_id=WORKFLOW, inputs={"input_image": INPUT_IMAGE}, **kwargs)


@pytest.fixture
def runner_calls(monkeypatch) -> list:
    """Each call the simulated runner gets, with what the coordinator held at that moment."""
    calls = []
    run = SimulatedRunner.run

    def observing_run(self, call):
        slot = JobQueueState.objects.get(id=1)
        execution = WorkflowExecution.objects.filter(job_id=call.job_id).first()  # None: a normal job
        calls.append({
            "call": call,
            "slot_models": slot.active_models,
            "slot_job": slot.active_job_id,
            "current_step": (execution.current_step, execution.current_step_model) if execution else None,
        })
        return run(self, call)

    monkeypatch.setattr(SimulatedRunner, "run", observing_run)
    return calls


def test_steps_run_in_order_each_feeding_the_next(user, runner_calls):
    job = execute(user, prompt="in the rain")

    run_job(str(job.job_id), 1)

    style, animate = (entry["call"] for entry in runner_calls)
    assert (style.model, animate.model) == ("nano-banana-pro-leonardo", "motion-2.0-fast")
    assert style.inputs == {"input_image": INPUT_IMAGE}
    assert style.prompt == "Restyle the person in the image as a medieval knight. in the rain"
    style_output = f"simulated://nano-banana-pro-leonardo/{job.job_id}"
    # Step 1's file, kept before step 2 ran: step 2 gets a signed link to the coordinator's copy
    # (tests/workflows/test_workflow_files.py); no COORDINATOR_PUBLIC_URL here: the simulated runner takes the path.
    assert animate.inputs["previous_step"] == "style"
    assert animate.inputs["input"].startswith(f"/jobs/{job.job_id}/files/0?sig=")
    assert animate.prompt == "Animate the knight: a slow cinematic push-in. in the rain"
    assert [entry["current_step"] for entry in runner_calls] == [(1, "nano-banana-pro-leonardo"), (2, "motion-2.0-fast")]

    job = fresh(job)
    assert job.status == Job.Status.COMPLETED
    assert job.result["output"] == f"simulated://motion-2.0-fast/{job.job_id}"
    assert [(step["step"], step["name"], step["model"]) for step in job.result["steps"]] == [
        (1, "style", "nano-banana-pro-leonardo"),
        (2, "animate", "motion-2.0-fast"),
    ]
    # Every step's files, each naming its step (an image, then the video made from it).
    assert job.result["files"] == [
        {"source_url": style_output, "content_type": "image/png", "step": 1},
        {"source_url": f"simulated://motion-2.0-fast/{job.job_id}", "content_type": "video/mp4", "step": 2},
    ]
    execution = job.workflow_execution
    assert (execution.current_step, execution.current_step_model) == (2, "motion-2.0-fast")
    assert execution.step_outputs == job.result["steps"]


def test_each_step_leaves_a_step_started_row(user):
    job = execute(user)

    run_job(str(job.job_id), 1)

    assert events(job) == ["submitted", "started", "claimed", "step_started", "step_started", "completed"]
    steps = JobQueueLog.objects.filter(job_id=job.job_id, event_type="step_started").order_by("id")
    assert [row.job_type for row in steps] == ["workflow", "workflow"]
    assert [row.details for row in steps] == [
        {"step": 1, "name": "style", "model": "nano-banana-pro-leonardo", "attempt": 1},
        {"step": 2, "name": "animate", "model": "motion-2.0-fast", "attempt": 1},
    ]


def test_the_workflow_holds_both_models_for_its_whole_run(user, runner_calls):
    job = execute(user)

    run_job(str(job.job_id), 1)

    assert [(entry["slot_job"], entry["slot_models"]) for entry in runner_calls] == [(job.job_id, BOTH_MODELS)] * 2


def test_a_job_on_the_first_steps_model_is_blocked_while_the_second_step_runs(coordinator_log, user, monkeypatch):
    """nano-banana is done with after step 1, but the workflow keeps holding it until it ends."""
    workflow = execute(user)
    submitted_during_step_2 = []
    run = SimulatedRunner.run

    def submit_during_animate(self, call):
        if call.model == "motion-2.0-fast":
            submitted_during_step_2.append(
                job_submit(owner=user, model="nano-banana-pro-leonardo", prompt="A portrait", params={"simulate_seconds": 0})
            )
        return run(self, call)

    monkeypatch.setattr(SimulatedRunner, "run", submit_during_animate)
    run_job(str(workflow.job_id), 1)

    (nano,) = submitted_during_step_2
    reason = f"Model conflict: nano-banana-pro-leonardo in use by workflow job {workflow.job_id}"
    assert f"[COORDINATOR] Job {nano.job_id} blocked: {reason}" in coordinator_lines(coordinator_log)
    assert JobQueueLog.objects.get(job_id=nano.job_id, event_type="blocked").conflict_reason == reason
    # The workflow's completion then started it, and handed it to this worker, which ran it.
    assert fresh(workflow).status == Job.Status.COMPLETED
    assert fresh(nano).status == Job.Status.COMPLETED
    assert fresh(nano).started_at >= fresh(workflow).completed_at


def test_a_normal_job_waits_for_the_workflow_then_runs(user):
    """The guide's Test 2, with the worker task doing the work."""
    workflow = execute(user)
    normal = job_submit(owner=user, model="motion-2.0-fast", prompt="A cinematic video", params={"simulate_seconds": 0})
    assert fresh(normal).blocked_by_job_id == workflow.job_id

    run_job(str(workflow.job_id), 1)  # the workflow's worker is handed the normal job and runs it
    assert fresh(normal).status == Job.Status.COMPLETED
    run_job(str(normal.job_id), 1)  # the normal job's own delivery then finds it done: nothing happens
    log = JobQueueLog.objects.filter(event_type__in=["started", "blocked", "completed"]).order_by("id")
    assert [(row.job_id, row.job_type, row.event_type) for row in log] == [
        (workflow.job_id, "workflow", "started"),
        (normal.job_id, "normal", "blocked"),
        (workflow.job_id, "workflow", "completed"),
        (normal.job_id, "normal", "started"),
        (normal.job_id, "normal", "completed"),
    ]


def test_a_failing_first_step_fails_the_workflow_and_skips_the_rest(user, runner_calls):
    job = execute(user, params={"simulate_seconds": 0, "simulate_fail": "style model refused the image"})

    run_job(str(job.job_id), 1)

    job = fresh(job)
    assert job.status == Job.Status.FAILED
    assert job.error == "Step 1 (style, nano-banana-pro-leonardo) failed: style model refused the image"
    assert len(runner_calls) == 1
    assert events(job).count("step_started") == 1


def test_a_failing_second_step_fails_the_workflow_and_frees_both_models(settings, user, runner_calls):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
    WorkflowStep.objects.filter(workflow_id=WORKFLOW, name="animate").update(params={"simulate_fail": "upstream quota"})
    workflow = execute(user)
    video = job_submit(owner=user, model="motion-2.0-fast", prompt="A dragon", params={"simulate_seconds": 0})
    image = job_submit(owner=user, model="nano-banana-pro-leonardo", prompt="A castle", params={"simulate_seconds": 0})
    assert fresh(video).blocked_by_job_id == fresh(image).blocked_by_job_id == workflow.job_id

    run_job(str(workflow.job_id), 1)

    workflow = fresh(workflow)
    assert workflow.status == Job.Status.FAILED
    assert workflow.error == "Step 2 (animate, motion-2.0-fast) failed: upstream quota"
    assert [entry["call"].model for entry in runner_calls[:2]] == BOTH_MODELS
    execution = workflow.workflow_execution
    assert (execution.current_step, execution.current_step_model) == (2, "motion-2.0-fast")
    assert [step["name"] for step in execution.step_outputs] == ["style"]
    # Both of its models are free again: the jobs waiting for each started at once; the first in
    # line was handed to this worker (and ran), the other went to the broker.
    video, image = fresh(video), fresh(image)
    assert video.started_at >= workflow.completed_at and image.started_at >= workflow.completed_at
    assert (video.status, image.status) == (Job.Status.COMPLETED, Job.Status.RUNNING)
    assert len(runner_calls) == 3
    assert_exclusion(max_active=2)
    assert_honest_waiting()


def test_a_workflow_stops_between_steps_once_its_attempt_is_no_longer_current(user, runner_calls, monkeypatch):
    """Evicted by an operator reset during step 1: step 2 never runs, the eviction stands."""
    from coordination.services import queue_reset

    job = execute(user)
    run = SimulatedRunner.run

    def evicted_during_style(self, call):
        if call.model == "nano-banana-pro-leonardo":
            queue_reset(actor="admin:ops", slot_ids=[1])
        return run(self, call)

    monkeypatch.setattr(SimulatedRunner, "run", evicted_during_style)
    run_job(str(job.job_id), 1)

    job = fresh(job)
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("Evicted by admin:ops")
    assert len(runner_calls) == 1
    assert events(job).count("step_started") == 1


def test_a_workflow_behind_a_normal_job_is_queued_with_its_execution_blocked(coordinator_log, user):
    normal = job_submit(owner=user, model="nano-banana-pro-leonardo", prompt="A portrait", params={"simulate_seconds": 0})
    workflow = execute(user)

    workflow = fresh(workflow)
    assert workflow.status == Job.Status.PENDING
    assert workflow.blocked_by_job_id == normal.job_id
    assert workflow.workflow_execution.blocked_by_job_id == normal.job_id
    assert workflow.conflict_reason == f"Model conflict: nano-banana-pro-leonardo in use by normal job {normal.job_id}"
    checking = f"[COORDINATOR] Checking if job {workflow.job_id} can start - Models: {BOTH_MODELS}"
    assert checking in coordinator_lines(coordinator_log)

    run_job(str(normal.job_id), 1)  # ...which hands the workflow to this worker when it ends

    workflow = fresh(workflow)
    assert workflow.status == Job.Status.COMPLETED
    assert workflow.workflow_execution.blocked_by_job_id is None


def test_unknown_workflow_and_missing_input_are_refused(user):
    with pytest.raises(WorkflowNotFound, match=WORKFLOW):
        workflow_execute(owner=user, workflow_id="no-such-workflow", inputs={"input_image": INPUT_IMAGE})
    with pytest.raises(InvalidJob, match="needs input input_image"):
        workflow_execute(owner=user, workflow_id=WORKFLOW, inputs={})
    assert not Job.objects.exists()


def test_editing_the_definition_later_does_not_change_a_queued_job(user, runner_calls):
    """A job holds the models its steps named when it was accepted; it runs exactly those (docs/design.md, I1)."""
    job = execute(user)
    WorkflowStep.objects.filter(workflow_id=WORKFLOW, position=2).update(
        default_model_id=CatalogModel.objects.get(name="minimax/video-01").pk,
        prompt_template="changed",
    )

    run_job(str(job.job_id), 1)

    assert [entry["call"].model for entry in runner_calls] == BOTH_MODELS
    assert runner_calls[1]["call"].prompt != "changed"
    assert fresh(job).status == Job.Status.COMPLETED
