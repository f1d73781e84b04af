"""Input the API took wrongly, or answered in the wrong shape (issue 25, §5). A refusal changes nothing.

- a number where text belongs (`"prompt": 42`) was stored as "42": now a 400 naming the field;
"""

import pytest

from coordination.models import Job

pytestmark = pytest.mark.django_db

WORKFLOW_EXECUTE = "/workflows/knight-style-img-to-video/execute"
INPUT_IMAGE = "https://example.com/user.jpg"
JOB = {"prompt": "A knight riding a horse", "model": "flux-dev"}


def assert_refused(response, status: int, field: str, *words: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    body = response.json()
    assert body["error"].startswith(f"{field}: "), body
    assert field in body["fields"], body
    for word in words:
        assert word in body["error"], body
    return body


# --- Text fields take text only -------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [42, 4.2, 0])
def test_a_prompt_that_is_a_number_is_400_naming_it(api, prompt):
    response = api.post("/jobs", {**JOB, "prompt": prompt}, format="json")

    assert_refused(response, 400, "prompt", "must be a string", f"the number {prompt}")
    assert Job.objects.count() == 0


@pytest.mark.parametrize("field, value", [
    ("model", 42), ("dedupe_key", 7), ("webhook_url", 1), ("prompt", True), ("prompt", ["A knight"]),
])
def test_every_text_field_of_a_job_takes_text_only(api, field, value):
    response = api.post("/jobs", {**JOB, field: value}, format="json")

    assert_refused(response, 400, field, "must be a string")
    assert Job.objects.count() == 0


def test_a_batch_body_with_a_number_for_text_is_named_by_its_place(api):
    response = api.post("/jobs/batch", {"jobs": [JOB, {**JOB, "prompt": 42}, {**JOB, "client_ref": 7}]}, format="json")

    body = assert_refused(response, 400, "jobs[1].prompt", "must be a string")
    assert body["fields"]["jobs[2].client_ref"] == ["must be a string (text in double quotes), not the number 7."]
    assert Job.objects.count() == 0


@pytest.mark.parametrize("field", ["prompt", "input_image"])
def test_a_workflow_takes_the_same_rule(api, field):
    response = api.post(WORKFLOW_EXECUTE, {"input_image": INPUT_IMAGE, "prompt": "In oil", field: 42}, format="json")

    assert_refused(response, 400, field, "must be a string")
    assert Job.objects.count() == 0


def test_text_still_passes(api):
    response = api.post("/jobs", {**JOB, "prompt": "42"}, format="json")

    assert response.status_code == 201
    assert response.json()["prompt"] == "42"
