"""The event streams' and `Prefer: wait`'s answers that need no ASGI server (the streams themselves:
tests/e2e/test_live_events.py)."""

import pytest

from coordination.models import Job
from tests.helpers import submit

pytestmark = pytest.mark.django_db


def test_a_stream_asked_of_a_wsgi_server_says_which_server_it_needs(api, user):
    job = submit(user, model="flux-dev")
    response = api.get(f"/jobs/{job.job_id}/events", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 501 and response["Content-Type"].startswith("application/json")
    assert "make run" in response.json()["error"]


def test_only_staff_may_follow_every_job(api):
    assert api.get("/queue/events").status_code == 403


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=1.5", "wait="])
def test_a_bad_wait_is_refused_before_anything_is_accepted(api, prefer):
    response = api.post("/jobs", {"prompt": "A castle", "model": "flux-dev"}, format="json", HTTP_PREFER=prefer)
    assert response.status_code == 400
    assert "1 to 60" in response.json()["error"] and "Prefer" in response.json()["fields"]
    assert not Job.objects.exists()


def test_other_preferences_beside_wait_are_ignored_and_a_finished_job_is_answered_at_once(api, user):
    job = submit(user, model="flux-dev")
    from coordination.services import job_claim, job_complete

    job_claim(job_id=job.job_id, attempt=1)
    job_complete(job_id=job.job_id, attempt=1, result={})
    response = api.get(f"/jobs/{job.job_id}", HTTP_PREFER="respond-async, wait=30")
    assert response.status_code == 200 and response.json()["status"] == "completed"
    assert response["Preference-Applied"] == "wait=30"
    assert "Preference-Applied" not in api.get(f"/jobs/{job.job_id}", HTTP_PREFER="respond-async")
