"""GET /queue/status (the usage guide's endpoint) and GET /health."""

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def submitted(client, model="motion-2.0-fast", **body) -> dict:
    response = client.post("/jobs", {"prompt": "A knight riding a horse", "model": model, **body}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def status_of(client) -> dict:
    response = client.get("/queue/status")
    assert response.status_code == 200, response.content
    return response.json()


def test_idle_queue(api):
    assert status_of(api) == {
        "active_job": {"job_id": None, "job_type": None, "models": []},
        "active_jobs": [],
        "queued_jobs": [],
        "queue_length": 0,
    }


def test_running_job_and_the_jobs_waiting_behind_it(api):
    running = submitted(api)
    second = submitted(api, prompt="A dragon flying")
    third = submitted(api, model="flux-dev")

    status = status_of(api)

    assert status["active_job"] == {"job_id": running["job_id"], "job_type": "normal", "models": ["motion-2.0-fast"]}
    assert [job["job_id"] for job in status["active_jobs"]] == [running["job_id"]]
    assert status["active_jobs"][0]["models"] == ["motion-2.0-fast"]
    assert status["queue_length"] == 2
    queued = status["queued_jobs"]
    assert [job["job_id"] for job in queued] == [second["job_id"], third["job_id"]]
    assert [job["queue_position"] for job in queued] == [1, 2]
    # The guide's columns: who waits, on what model, for whom, why, since when.
    assert queued[0]["model"] == "motion-2.0-fast"
    assert queued[0]["blocked_by_job_id"] == running["job_id"]
    assert queued[0]["conflict_reason"] == f"Model conflict: motion-2.0-fast in use by normal job {running['job_id']}"
    assert queued[0]["queued_at"]
    assert queued[1]["blocked_by_job_id"] == second["job_id"]
    assert "one job at a time" in queued[1]["conflict_reason"]


def test_a_running_workflow_is_the_active_job_with_all_its_models(api):
    workflow = api.post(
        "/workflows/knight-style-img-to-video/execute", {"input_image": "https://example.com/user.jpg"}, format="json"
    ).json()

    active = status_of(api)["active_job"]

    assert active == {
        "job_id": workflow["job_id"], "job_type": "workflow", "models": ["nano-banana-pro-leonardo", "motion-2.0-fast"]
    }


def test_every_slot_is_listed_when_several_jobs_run(api, settings):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
    first = submitted(api)
    second = submitted(api, model="flux-dev")
    waiting = submitted(api, model="minimax/video-01")

    status = status_of(api)

    assert [job["job_id"] for job in status["active_jobs"]] == [first["job_id"], second["job_id"]]
    assert status["active_job"]["job_id"] == first["job_id"]
    assert [job["job_id"] for job in status["queued_jobs"]] == [waiting["job_id"]]
    assert status["queue_length"] == 1


def test_cancelled_job_leaves_the_queue(api):
    submitted(api)
    waiting = submitted(api, prompt="second")

    api.post(f"/jobs/{waiting['job_id']}/cancel")

    status = status_of(api)
    assert status["queued_jobs"] == []
    assert status["queue_length"] == 0


def test_queue_length_counts_every_waiting_job_beyond_the_listed_ones(api, settings):
    settings.COORDINATOR_STATUS_LIST_LIMIT = 2
    submitted(api)
    for n in range(4):
        submitted(api, prompt=f"waiting {n}")

    status = status_of(api)

    assert len(status["queued_jobs"]) == 2
    assert status["queue_length"] == 4


def test_every_user_sees_the_global_queue(api, other_user):
    running = submitted(api)
    other = APIClient()
    other.force_authenticate(other_user)

    assert status_of(other)["active_job"]["job_id"] == running["job_id"]


def test_queue_status_needs_credentials():
    response = APIClient().get("/queue/status")

    assert response.status_code == 401
    assert response.json()["error"]


def test_health_answers_without_credentials():
    response = APIClient().get("/health")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_health_ignores_bad_credentials():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-key")

    assert client.get("/health").status_code == 200
