"""POST/GET /jobs and POST /jobs/{id}/cancel, as a client sees them.

The worker never runs here: on_commit callbacks do not fire in these (non-transactional) tests, so
every job stays running or pending exactly as the coordinator decided.
"""

import uuid
from datetime import datetime

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bench.fake_provider import FakeProvider
from coordination.models import CatalogModel, Job, JobQueueLog
from coordination.services import PROMPT_MAX_LENGTH
from coordination.tasks import run_job

pytestmark = pytest.mark.django_db

JOB_FIELDS = {
    "job_id", "kind", "job_type", "model", "required_models", "status", "priority", "queue_position",
    "blocked_by_job_id", "conflict_reason", "queued_at", "created_at", "started_at", "completed_at",
    "result", "error",
}
KNOWN_MODELS = ["nano-banana-pro-leonardo", "motion-2.0-fast", "flux-dev", "minimax/video-01"]


def submit(client, **overrides):
    body = {"prompt": "A knight riding a horse", "model": "motion-2.0-fast", "job_type": "video", **overrides}
    return client.post("/jobs", body, format="json")


def submitted(client, **overrides) -> dict:
    response = submit(client, **overrides)
    assert response.status_code == 201, response.content
    return response.json()


def assert_iso_with_zone(value: str) -> None:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value


def assert_refused(response, status: int, *words: str) -> dict:
    """The request was refused with a JSON error a person can read, and nothing was created."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and body["error"].strip()
    for word in words:
        assert word in body["error"], body["error"]
    assert Job.objects.count() == 0
    assert JobQueueLog.objects.count() == 0
    return body


# --- submitting -----------------------------------------------------------------------------------


def test_first_job_on_a_model_runs_and_is_answered_201_with_the_job(api):
    job = submitted(api)

    assert JOB_FIELDS <= set(job)
    assert job["status"] == "running"
    assert job["kind"] == "normal"
    assert job["job_type"] == "video"
    assert job["model"] == "motion-2.0-fast"
    assert job["required_models"] == ["motion-2.0-fast"]
    assert job["priority"] == 0
    assert job["queue_position"] is None
    assert job["blocked_by_job_id"] is None
    assert job["conflict_reason"] is None
    assert job["queued_at"] is None
    assert job["completed_at"] is None
    assert job["result"] is None and job["error"] is None
    assert_iso_with_zone(job["created_at"])
    assert_iso_with_zone(job["started_at"])
    assert "workflow_id" not in job  # only workflow jobs carry workflow fields
    stored = Job.objects.get(pk=job["job_id"])
    assert stored.status == Job.Status.RUNNING
    assert stored.owner is not None


def test_second_job_on_the_same_model_waits_for_the_first(api):
    first = submitted(api)
    second = submitted(api, prompt="A dragon flying")

    assert second["status"] == "pending"
    assert second["blocked_by_job_id"] == first["job_id"]
    assert second["conflict_reason"] == f"Model conflict: motion-2.0-fast in use by normal job {first['job_id']}"
    assert second["queue_position"] == 1
    assert second["started_at"] is None
    assert_iso_with_zone(second["queued_at"])
    events = JobQueueLog.objects.filter(job_id=second["job_id"]).order_by("id").values_list("event_type", flat=True)
    assert list(events) == ["submitted", "blocked"]


def test_serialized_mode_queues_a_job_on_another_model_and_says_why(api):
    first = submitted(api, prompt="Generate image", model="flux-dev", job_type="image")
    second = submitted(api, prompt="Generate video", model="minimax/video-01", job_type="video")

    assert first["status"] == "running"
    assert second["status"] == "pending"
    assert second["blocked_by_job_id"] == first["job_id"]
    assert "one job at a time" in second["conflict_reason"]
    assert first["job_id"] in second["conflict_reason"]


def test_job_type_may_be_left_out_and_is_taken_from_the_model(api):
    response = api.post("/jobs", {"prompt": "A castle", "model": "flux-dev"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["job_type"] == "image"


def test_prompt_of_exactly_the_limit_is_accepted(api):
    job = submitted(api, prompt="x" * PROMPT_MAX_LENGTH)

    assert PROMPT_MAX_LENGTH == 4000
    assert job["status"] == "running"


def test_staff_may_submit_with_a_higher_priority(staff_api):
    job = submitted(staff_api, priority=5)

    assert job["priority"] == 5


def test_higher_priority_job_goes_to_the_front_of_the_line(api, staff_api):
    submitted(api)  # runs
    waiting = submitted(api, prompt="ordinary")
    urgent = submitted(staff_api, prompt="urgent", priority=10)

    assert urgent["queue_position"] == 1
    assert api.get(f"/jobs/{waiting['job_id']}").json()["queue_position"] == 2


# --- bad input ------------------------------------------------------------------------------------


def test_unknown_model_is_refused_and_the_known_models_are_listed(api):
    body = assert_refused(submit(api, model="motion-3.0"), 400, "motion-3.0")

    for name in KNOWN_MODELS:
        assert name in body["error"]


def test_disabled_model_is_refused(api):
    CatalogModel.objects.filter(name="flux-dev").update(enabled=False)

    body = assert_refused(submit(api, model="flux-dev", job_type="image"), 400, "flux-dev")

    assert "motion-2.0-fast" in body["error"]  # what the client may use instead


def test_missing_prompt_is_refused(api):
    assert_refused(api.post("/jobs", {"model": "motion-2.0-fast", "job_type": "video"}, format="json"), 400, "prompt")


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_empty_or_blank_prompt_is_refused(api, prompt):
    assert_refused(submit(api, prompt=prompt), 400, "prompt")


def test_prompt_over_the_limit_is_refused_with_the_limit(api):
    assert_refused(submit(api, prompt="x" * (PROMPT_MAX_LENGTH + 1)), 400, "4000")


def test_missing_model_is_refused(api):
    assert_refused(api.post("/jobs", {"prompt": "A knight"}, format="json"), 400, "model")


@pytest.mark.parametrize(
    ("model", "job_type"), [("motion-2.0-fast", "image"), ("flux-dev", "video")]
)
def test_job_type_that_does_not_match_the_model_is_refused(api, model, job_type):
    assert_refused(submit(api, model=model, job_type=job_type), 400, "job_type", model)


def test_unknown_job_type_is_refused(api):
    assert_refused(submit(api, job_type="audio"), 400, "job_type")


@pytest.mark.parametrize("params", [["simulate_seconds", 2], "fast", 3, True])
def test_params_that_are_not_an_object_are_refused(api, params):
    assert_refused(submit(api, params=params), 400, "params")


@pytest.mark.parametrize("body", [
    b'{"prompt": "A castle", "model": "flux-dev", "params": {"key\\u0000": 1}}',
    b'{"prompt": "A castle", "model": "flux-dev", "params": {"style": ["\\u0000"]}}',
    b'{"prompt": "A castle", "model": "flux-dev", "params": {"style": "\\ud800 half a pair"}}',
])
def test_params_with_text_no_column_can_hold_are_refused(api, body):
    """Found by the schema fuzzer: JSON may say U+0000 or half a surrogate pair; jsonb refused it (a 500)."""
    response = api.generic("POST", "/jobs", body, content_type="application/json")
    assert_refused(response, 400, "params", "U+0000")


@pytest.mark.parametrize("seconds", [-1, "2", True, [2], 10**9, None])
def test_bad_simulate_seconds_is_refused(api, seconds):
    assert_refused(submit(api, params={"simulate_seconds": seconds}), 400, "simulate_seconds")


@pytest.mark.parametrize("fail", [None, 1, ["boom"], {"message": "boom"}])
def test_bad_simulate_fail_is_refused(api, fail):
    """Found by the schema fuzzer: null was accepted, then answered where the schema says boolean."""
    assert_refused(submit(api, params={"simulate_fail": fail}), 400, "simulate_fail")


def test_good_simulate_seconds_is_kept(api):
    job = submitted(api, params={"simulate_seconds": 0.5})

    assert Job.objects.get(pk=job["job_id"]).params == {"simulate_seconds": 0.5}


def test_unknown_fields_are_refused_and_named(api):
    assert_refused(submit(api, modle="flux-dev"), 400, "modle")


def test_non_staff_priority_above_zero_is_forbidden(api):
    assert_refused(submit(api, priority=1), 403, "priority")


def test_body_that_is_not_an_object_is_refused(api):
    assert_refused(api.post("/jobs", ["prompt", "model"], format="json"), 400)


def test_malformed_json_is_refused(api):
    response = api.post("/jobs", "{not json", content_type="application/json")

    assert_refused(response, 400)


# --- who may see what -----------------------------------------------------------------------------


def test_no_credentials_is_401_json():
    client = APIClient()

    for response in (client.get("/jobs"), submit(client), client.get(f"/jobs/{uuid.uuid4()}")):
        assert response.status_code == 401
        assert response.json()["error"]
    assert Job.objects.count() == 0


def test_wrong_token_is_401(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-key")

    response = client.get("/jobs")

    assert response.status_code == 401
    assert response.json()["error"]


def test_token_auth_works(user):
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")

    job = submitted(client)
    listed = client.get("/jobs")

    assert Job.objects.get(pk=job["job_id"]).owner == user
    assert listed.status_code == 200
    assert [row["job_id"] for row in listed.json()["results"]] == [job["job_id"]]


def test_a_user_lists_only_their_own_jobs_and_staff_list_all(api, user, other_user, staff_api):
    mine = submitted(api)
    other = APIClient()
    other.force_authenticate(other_user)
    theirs = submitted(other, prompt="theirs")

    assert [row["job_id"] for row in api.get("/jobs").json()["results"]] == [mine["job_id"]]
    assert [row["job_id"] for row in other.get("/jobs").json()["results"]] == [theirs["job_id"]]
    assert {row["job_id"] for row in staff_api.get("/jobs").json()["results"]} == {mine["job_id"], theirs["job_id"]}


def test_list_is_newest_first_and_filters_by_status(api):
    first = submitted(api)
    second = submitted(api, prompt="second")

    everything = api.get("/jobs").json()
    pending = api.get("/jobs", {"status": "pending"}).json()

    assert everything["count"] == 2
    assert [row["job_id"] for row in everything["results"]] == [second["job_id"], first["job_id"]]
    assert [row["job_id"] for row in pending["results"]] == [second["job_id"]]


def test_a_user_gets_their_job_by_id(api):
    job = submitted(api)

    response = api.get(f"/jobs/{job['job_id']}")

    assert response.status_code == 200
    assert response.json()["job_id"] == job["job_id"]
    assert response.json()["status"] == "running"


def test_someone_elses_job_is_not_found(api, other_user, staff_api):
    other = APIClient()
    other.force_authenticate(other_user)
    theirs = submitted(other)

    response = api.get(f"/jobs/{theirs['job_id']}")

    assert response.status_code == 404
    assert response.json()["error"]
    assert staff_api.get(f"/jobs/{theirs['job_id']}").status_code == 200


def test_unknown_job_id_is_404_json(api):
    response = api.get(f"/jobs/{uuid.uuid4()}")

    assert response.status_code == 404
    assert response.json()["error"]


@pytest.mark.parametrize("job_id", ["not-a-uuid", "123", "jobs"])
def test_non_uuid_job_id_is_404_json(api, job_id):
    for response in (api.get(f"/jobs/{job_id}"), api.post(f"/jobs/{job_id}/cancel")):
        assert response.status_code == 404
        assert response.json()["error"]


@pytest.mark.parametrize("path", ["/jobs/", "/queue/status/", "/workflows/", "/nothing-here"])
def test_trailing_slash_or_unknown_path_is_404_json(api, path):
    response = api.get(path)

    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert "trailing slash" in response.json()["error"]


def test_post_to_jobs_with_trailing_slash_creates_nothing(api):
    response = api.post("/jobs/", {"prompt": "A knight", "model": "motion-2.0-fast"}, format="json")

    assert response.status_code == 404
    assert Job.objects.count() == 0


# --- results --------------------------------------------------------------------------------------


def test_a_completed_job_shows_its_output_and_the_files_it_produced(api):
    job = submitted(api, model="flux-dev", job_type="image", params={"simulate_seconds": 0})

    run_job(job["job_id"], 1)  # its worker, in this process

    result = api.get(f"/jobs/{job['job_id']}").json()["result"]
    assert result["output"] == f"simulated://flux-dev/{job['job_id']}"
    [listed] = result["files"]
    assert {key: listed[key] for key in ("source_url", "content_type", "url", "state")} == {
        "source_url": f"simulated://flux-dev/{job['job_id']}", "content_type": "image/png",
        "url": f"/jobs/{job['job_id']}/files/0", "state": "copying"}  # kept by a copier next (tests/api/test_job_files.py)


def test_a_job_whose_provider_made_no_file_shows_an_empty_list(api):
    fake = FakeProvider().start()  # answers `output: "video://<id>.mp4"`, a name and no URL
    try:
        CatalogModel.objects.filter(name="flux-dev").update(runner="http", provider="generic", provider_url=f"{fake.url}/sync",
                                                            provider_style="sync")
        job = submitted(api, model="flux-dev", job_type="image")
        run_job(job["job_id"], 1)
    finally:
        fake.stop()

    answer = api.get(f"/jobs/{job['job_id']}").json()
    assert answer["status"] == "completed"
    assert answer["result"]["output"] == f"video://{job['job_id']}.mp4"
    assert answer["result"]["files"] == []


# --- cancelling -----------------------------------------------------------------------------------


def test_cancel_a_pending_job(api):
    submitted(api)
    waiting = submitted(api, prompt="second")

    response = api.post(f"/jobs/{waiting['job_id']}/cancel")

    assert response.status_code == 200, response.content
    job = response.json()
    assert job["status"] == "cancelled"
    assert job["blocked_by_job_id"] is None
    assert job["queue_position"] is None
    assert_iso_with_zone(job["completed_at"])
    assert JobQueueLog.objects.filter(job_id=waiting["job_id"], event_type="cancelled").exists()


def test_cancelling_a_waiting_job_repoints_the_job_behind_it(api):
    running = submitted(api, prompt="Generate image", model="flux-dev", job_type="image")
    middle = submitted(api, prompt="Generate video", model="motion-2.0-fast")
    last = submitted(api, prompt="Another image", model="nano-banana-pro-leonardo", job_type="image")
    assert last["blocked_by_job_id"] == middle["job_id"]

    assert api.post(f"/jobs/{middle['job_id']}/cancel").status_code == 200

    last_now = api.get(f"/jobs/{last['job_id']}").json()
    assert last_now["status"] == "pending"
    assert last_now["blocked_by_job_id"] == running["job_id"]
    assert running["job_id"] in last_now["conflict_reason"]
    assert "one job at a time" in last_now["conflict_reason"]
    assert last_now["queue_position"] == 1


def test_cancelling_a_waiting_workflow_starts_the_job_it_held_back(api, settings):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
    running = submitted(api)  # holds motion-2.0-fast
    workflow = api.post(
        "/workflows/knight-style-img-to-video/execute", {"input_image": "https://example.com/user.jpg"}, format="json"
    ).json()
    assert workflow["status"] == "pending"
    assert workflow["blocked_by_job_id"] == running["job_id"]
    # nano-banana is free, but the workflow ahead in line needs it (docs/design.md, rule 3): this job waits for it.
    behind = submitted(api, prompt="A portrait", model="nano-banana-pro-leonardo", job_type="image")
    assert behind["status"] == "pending"
    assert behind["blocked_by_job_id"] == workflow["job_id"]

    assert api.post(f"/jobs/{workflow['job_id']}/cancel").status_code == 200

    behind_now = api.get(f"/jobs/{behind['job_id']}").json()
    assert behind_now["status"] == "running"
    assert behind_now["blocked_by_job_id"] is None
    assert behind_now["conflict_reason"] is None


def test_cancel_a_running_job_is_accepted_and_waits_for_its_worker(api):
    running = submitted(api)

    response = api.post(f"/jobs/{running['job_id']}/cancel")

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "running" and body["cancel_requested_at"]
    assert Job.objects.get(pk=running["job_id"]).status == Job.Status.RUNNING


@pytest.mark.parametrize("status", [Job.Status.COMPLETED, Job.Status.FAILED, Job.Status.CANCELLED])
def test_cancel_a_finished_job_is_409(api, status):
    submitted(api)
    waiting = submitted(api, prompt="second")
    Job.objects.filter(pk=waiting["job_id"]).update(status=status, blocked_by_job_id=None, conflict_reason=None)

    response = api.post(f"/jobs/{waiting['job_id']}/cancel")

    assert response.status_code == 409
    assert status in response.json()["error"]
    assert Job.objects.get(pk=waiting["job_id"]).status == status


def test_cancel_someone_elses_job_is_404_and_leaves_it(api, other_user):
    other = APIClient()
    other.force_authenticate(other_user)
    submitted(other)
    theirs = submitted(other, prompt="theirs")

    response = api.post(f"/jobs/{theirs['job_id']}/cancel")

    assert response.status_code == 404
    assert Job.objects.get(pk=theirs["job_id"]).status == Job.Status.PENDING


def test_staff_may_cancel_anyones_pending_job(api, staff_api, staff_user):
    submitted(api)
    waiting = submitted(api, prompt="second")

    response = staff_api.post(f"/jobs/{waiting['job_id']}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["error"] == f"Cancelled by {staff_user.username} (staff)"


def test_owner_cancelling_is_recorded_as_the_owner(api, user):
    submitted(api)
    waiting = submitted(api, prompt="second")

    job = api.post(f"/jobs/{waiting['job_id']}/cancel").json()

    assert job["error"] == "Cancelled by its owner"
    log = JobQueueLog.objects.get(job_id=waiting["job_id"], event_type="cancelled")
    assert log.details["by"] == user.username


@pytest.mark.parametrize(
    ("method", "path"), [("delete", "/jobs/{id}"), ("get", "/jobs/{id}/cancel"), ("put", "/jobs")]
)
def test_wrong_method_is_405_json(api, method, path):
    job = submitted(api)

    response = getattr(api, method)(path.format(id=job["job_id"]))

    assert response.status_code == 405
    assert method.upper() in response.json()["error"]
    assert Job.objects.get(pk=job["job_id"]).status == Job.Status.RUNNING


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["status=bogus", "kind=batch"])
def test_an_unknown_list_filter_is_a_400_not_an_empty_list(api, query):
    response = api.get(f"/jobs?{query}")
    assert response.status_code == 400
    assert "use one of" in response.json()["error"]
