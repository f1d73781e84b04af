"""GET /workflows and POST /workflows/{id}/execute: the usage guide's Test 2, up to the worker."""

from datetime import datetime

import pytest
from django.urls import resolve, reverse
from rest_framework.test import APIClient

from coordination.models import CatalogModel, Job, JobQueueLog
from workflows.api import WorkflowExecuteView, WorkflowListView
from workflows.models import WorkflowDefinition, WorkflowExecution, WorkflowStep

pytestmark = pytest.mark.django_db

WORKFLOW = "knight-style-img-to-video"
EXECUTE = f"/workflows/{WORKFLOW}/execute"
INPUT_IMAGE = "https://example.com/user.jpg"


def execute(client, **body):
    return client.post(EXECUTE, {"input_image": INPUT_IMAGE, **body}, format="json")


def executed(client, **body) -> dict:
    response = execute(client, **body)
    assert response.status_code == 201, response.content
    return response.json()


def assert_refused(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert isinstance(error, str) and error.strip()
    for word in words:
        assert word in error, error
    assert Job.objects.count() == 0
    assert WorkflowExecution.objects.count() == 0
    assert JobQueueLog.objects.count() == 0


# --- GET /workflows -------------------------------------------------------------------------------


def test_workflows_lists_the_knight_workflow_with_its_steps_and_models(api):
    response = api.get("/workflows")

    assert response.status_code == 200
    [workflow] = [w for w in response.json() if w["workflow_id"] == WORKFLOW]
    steps = [(step["name"], step["default_model"]) for step in sorted(workflow["steps"], key=lambda s: s["position"])]
    assert steps == [("style", "nano-banana-pro-leonardo"), ("animate", "motion-2.0-fast")]
    assert workflow["required_models"] == ["nano-banana-pro-leonardo", "motion-2.0-fast"]
    assert workflow["inputs"] == ["input_image"]


def test_a_disabled_workflow_is_not_listed_and_cannot_run(api):
    WorkflowDefinition.objects.filter(workflow_id=WORKFLOW).update(enabled=False)

    assert [w["workflow_id"] for w in api.get("/workflows").json()] == []
    assert_refused(execute(api), 404, WORKFLOW)


def test_workflows_needs_credentials():
    response = APIClient().get("/workflows")

    assert response.status_code == 401
    assert response.json()["error"]


# --- POST /workflows/{id}/execute -----------------------------------------------------------------


def test_execute_starts_a_workflow_job_holding_both_models(api):
    job = executed(api)

    assert job["status"] == "running"
    assert job["kind"] == "workflow"
    assert job["job_type"] == "video"
    assert job["model"] is None
    assert job["required_models"] == ["nano-banana-pro-leonardo", "motion-2.0-fast"]
    assert job["workflow_id"] == WORKFLOW
    assert "current_step" in job and "current_step_model" in job
    assert job["blocked_by_job_id"] is None and job["conflict_reason"] is None
    assert datetime.fromisoformat(job["started_at"]).tzinfo is not None
    execution = WorkflowExecution.objects.get(job_id=job["job_id"])
    assert execution.inputs == {"input_image": INPUT_IMAGE}
    assert execution.required_models == ["nano-banana-pro-leonardo", "motion-2.0-fast"]
    status = api.get("/queue/status").json()
    assert status["active_job"] == {
        "job_id": job["job_id"], "job_type": "workflow", "models": ["nano-banana-pro-leonardo", "motion-2.0-fast"]
    }


def test_normal_job_on_a_model_the_workflow_holds_waits_for_the_workflow(api):
    workflow = executed(api)

    response = api.post(
        "/jobs", {"prompt": "A cinematic video", "model": "motion-2.0-fast", "job_type": "video"}, format="json"
    )

    assert response.status_code == 201
    normal = response.json()
    assert normal["status"] == "pending"
    assert normal["blocked_by_job_id"] == workflow["job_id"]
    assert normal["conflict_reason"] == f"Model conflict: motion-2.0-fast in use by workflow job {workflow['job_id']}"


def test_workflow_conflicts_on_its_first_step_model_too(api, settings):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 2  # so only the model, not the slot, stands in the way
    workflow = executed(api)

    normal = api.post(
        "/jobs", {"prompt": "A portrait", "model": "nano-banana-pro-leonardo", "job_type": "image"}, format="json"
    ).json()
    other = api.post("/jobs", {"prompt": "A castle", "model": "flux-dev", "job_type": "image"}, format="json").json()

    assert normal["status"] == "pending"
    assert normal["conflict_reason"] == (
        f"Model conflict: nano-banana-pro-leonardo in use by workflow job {workflow['job_id']}"
    )
    assert other["status"] == "running"  # a model the workflow does not need is free


def test_workflow_submitted_behind_a_normal_job_waits_and_says_for_whom(api):
    normal = api.post(
        "/jobs", {"prompt": "A knight", "model": "motion-2.0-fast", "job_type": "video"}, format="json"
    ).json()

    workflow = executed(api)

    assert workflow["status"] == "pending"
    assert workflow["blocked_by_job_id"] == normal["job_id"]
    assert workflow["conflict_reason"] == f"Model conflict: motion-2.0-fast in use by normal job {normal['job_id']}"
    assert workflow["workflow_id"] == WORKFLOW
    assert str(WorkflowExecution.objects.get(job_id=workflow["job_id"]).blocked_by_job_id) == normal["job_id"]


def test_workflow_job_is_listed_and_fetched_with_its_workflow_fields(api):
    workflow = executed(api)

    listed = api.get("/jobs", {"kind": "workflow"}).json()["results"]
    fetched = api.get(f"/jobs/{workflow['job_id']}").json()

    assert [job["job_id"] for job in listed] == [workflow["job_id"]]
    assert fetched["workflow_id"] == WORKFLOW
    assert {"current_step", "current_step_model"} <= set(fetched)


def test_prompt_and_params_are_kept(api):
    job = executed(api, prompt="at dawn", params={"simulate_seconds": 0.1})

    stored = Job.objects.get(pk=job["job_id"])
    assert stored.prompt == "at dawn"
    assert stored.params == {"simulate_seconds": 0.1}


def test_a_workflow_defined_in_the_admin_takes_the_inputs_it_declares(api):
    workflow = WorkflowDefinition.objects.create(
        workflow_id="restyle-clip", name="Restyle a clip", inputs=["input_video", "style"]
    )
    WorkflowStep.objects.create(
        workflow=workflow, position=1, name="restyle", default_model=CatalogModel.objects.get(name="minimax/video-01")
    )
    body = {"input_video": "https://example.com/clip.mp4", "style": "watercolour"}

    response = api.post("/workflows/restyle-clip/execute", body, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["required_models"] == ["minimax/video-01"]
    assert WorkflowExecution.objects.get(job_id=response.json()["job_id"]).inputs == body
    missing = api.post("/workflows/restyle-clip/execute", {"input_video": "https://example.com/clip.mp4"}, format="json")
    assert missing.status_code == 400
    assert "style" in missing.json()["error"]
    not_a_url = api.post("/workflows/restyle-clip/execute", {**body, "input_video": "clip.mp4"}, format="json")
    assert not_a_url.status_code == 400
    assert "input_video" in not_a_url.json()["error"]
    undeclared = api.post("/workflows/restyle-clip/execute", {**body, "input_image": INPUT_IMAGE}, format="json")
    assert undeclared.status_code == 400
    assert "input_image" in undeclared.json()["error"]
    assert Job.objects.count() == 1


# --- bad input ------------------------------------------------------------------------------------


def test_missing_input_image_is_refused(api):
    assert_refused(api.post(EXECUTE, {}, format="json"), 400, "input_image")


def test_empty_input_image_is_refused(api):
    assert_refused(api.post(EXECUTE, {"input_image": ""}, format="json"), 400, "input_image")


def test_input_image_that_is_not_a_url_is_refused(api):
    assert_refused(api.post(EXECUTE, {"input_image": "user.jpg"}, format="json"), 400, "input_image")


def test_unknown_workflow_is_404_json_naming_the_known_ones(api):
    response = api.post("/workflows/dragon-style/execute", {"input_image": INPUT_IMAGE}, format="json")

    assert_refused(response, 404, "dragon-style", WORKFLOW)


def test_unknown_fields_are_refused(api):
    assert_refused(execute(api, input_imgae=INPUT_IMAGE), 400, "input_imgae")


@pytest.mark.parametrize("params", [[1], "fast", 2])
def test_params_that_are_not_an_object_are_refused(api, params):
    assert_refused(execute(api, params=params), 400, "params")


def test_bad_simulate_seconds_is_refused(api):
    assert_refused(execute(api, params={"simulate_seconds": -1}), 400, "simulate_seconds")


def test_prompt_over_the_limit_is_refused(api):
    assert_refused(execute(api, prompt="x" * 4001), 400, "4000")


def test_non_staff_priority_above_zero_is_forbidden(api):
    assert_refused(execute(api, priority=3), 403, "priority")


def test_execute_needs_credentials():
    assert_refused(execute(APIClient()), 401)


def test_execute_path_with_trailing_slash_is_404(api):
    response = api.post(f"{EXECUTE}/", {"input_image": INPUT_IMAGE}, format="json")

    assert_refused(response, 404, "trailing slash")


def test_the_workflow_routes_keep_their_paths_and_names():
    """The workflows app routes its own operations (workflows/api.py): same paths, same URL names."""
    assert reverse("workflow-list") == "/workflows"
    assert reverse("workflow-execute", args=[WORKFLOW]) == EXECUTE
    assert resolve("/workflows").func.view_class is WorkflowListView
    assert resolve(EXECUTE).func.view_class is WorkflowExecuteView
