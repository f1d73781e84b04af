"""Input the API took wrongly, or answered in the wrong shape (issue 25, §5). A refusal changes nothing.

- a number where text belongs (`"prompt": 42`) was stored as "42": now a 400 naming the field;
- a body over DATA_UPLOAD_MAX_MEMORY_SIZE was Django's HTML "Bad Request (400)": now a JSON 413 stating the limit;
- `Authorization: Bearer <API token>` was a 401: now it opens the API as `Token <key>` does;
- `?limit=abc` was ignored, `limit` had no maximum, `?model=zzz` answered an empty list: now a 400 naming the parameter.
"""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from coordination.api.pagination import LIST_MAX_LIMIT
from coordination.models import CatalogModel, Job

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


# --- A body over the limit ------------------------------------------------------------------------


def sized_body(size: int, **extra) -> bytes:
    """A job's JSON body of exactly `size` bytes (its prompt pads it)."""
    empty = len(json.dumps({**JOB, **extra, "prompt": ""}))
    return json.dumps({**JOB, **extra, "prompt": "x" * (size - empty)}).encode()


def over_the_limit(**extra) -> bytes:
    """One byte past DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB unless set): the issue's 3 MB body."""
    return sized_body(settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1, **extra)


@pytest.mark.parametrize("path, extra", [
    ("/jobs", {}), ("/jobs/batch", None), (WORKFLOW_EXECUTE, {"input_image": INPUT_IMAGE}),
])
def test_a_body_over_the_limit_is_413_json_stating_the_limit(user, path, extra):
    token = Token.objects.create(user=user)
    body = over_the_limit(**extra) if extra is not None else json.dumps({"jobs": [json.loads(over_the_limit())]}).encode()
    assert len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    response = Client().post(path, body, content_type="application/json", HTTP_AUTHORIZATION=f"Token {token.key}")

    assert response.status_code == 413, response.content[:200]
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "request_too_large"
    assert f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes" in response.json()["error"]
    assert Job.objects.count() == 0


def test_a_body_at_the_limit_is_read(user):
    token = Token.objects.create(user=user)
    body = sized_body(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    assert len(body) == settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    response = Client().post("/jobs", body, content_type="application/json", HTTP_AUTHORIZATION=f"Token {token.key}")

    assert response.status_code == 400  # read and checked: a prompt that long is refused by its own rule
    assert response.json()["fields"]["prompt"]


def test_a_host_not_allowed_is_400_json(client):
    response = client.get("/jobs", HTTP_HOST="elsewhere.example")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "bad_request"
    assert "ALLOWED_HOSTS" in response.json()["error"]


def test_the_admin_keeps_djangos_html_page_for_a_bad_request(client):
    response = client.get("/admin/", HTTP_HOST="elsewhere.example")

    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")


def test_a_wrong_method_on_metrics_is_405_json(staff_user):
    client = Client()
    client.force_login(staff_user)

    response = client.post("/metrics")

    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert response["Allow"] == "GET"


def asgi_post(path: str, chunks: list[bytes], headers: dict[str, str]) -> tuple[int, dict[bytes, bytes], bytes]:
    """POST through jobqueue_site.asgi's application, as `make run` serves it (gunicorn's uvicorn
    workers), the body in `chunks`; without a Content-Length header it is sent as a chunked body is."""
    from asgiref.testing import ApplicationCommunicator

    from jobqueue_site import asgi

    async def exchange():
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1")] + [(name.lower().encode(), value.encode()) for name, value in headers.items()],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        }
        communicator = ApplicationCommunicator(asgi.application, scope)
        for index, chunk in enumerate(chunks):
            await communicator.send_input({"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1})
        start = await communicator.receive_output(timeout=30)
        content = b""
        while True:
            message = await communicator.receive_output(timeout=30)
            content += message.get("body", b"")
            if not message.get("more_body"):
                break
        return start["status"], {name.lower(): value for name, value in start["headers"]}, content

    # The application's synchronous work runs on its pool of threads: one thread here, so that its
    # database connection can be closed afterwards (an open one keeps the test database from being dropped).
    shared, asgi._threads = asgi._threads, ThreadPoolExecutor(max_workers=1)
    try:
        return asyncio.run(exchange())
    finally:
        asgi._threads.submit(connections.close_all).result()
        asgi._threads.shutdown()
        asgi._threads = shared


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
def test_under_asgi_a_body_over_the_limit_is_413_json(user, with_length):
    token = Token.objects.create(user=user)
    body = over_the_limit()
    headers = {"Content-Type": "application/json", "Authorization": f"Token {token.key}"}
    if with_length:
        headers["Content-Length"] = str(len(body))

    status, response_headers, content = asgi_post("/jobs", [body[i:i + 2**20] for i in range(0, len(body), 2**20)], headers)

    assert status == 413, content[:200]
    assert response_headers[b"content-type"] == b"application/json"
    assert json.loads(content)["code"] == "request_too_large"
    assert Job.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_under_asgi_a_chunked_body_is_read(user):
    """A body without Content-Length (chunked) was taken for an empty one: "A prompt is required"."""
    token = Token.objects.create(user=user)
    body = json.dumps(JOB).encode()

    status, _, content = asgi_post("/jobs", [body[:10], body[10:]],
                                   {"Content-Type": "application/json", "Authorization": f"Token {token.key}"})

    assert status == 201, content
    assert json.loads(content)["prompt"] == JOB["prompt"]


# --- Bearer API tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "Token"])
def test_an_api_token_works_as_bearer_or_token(user, scheme):
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {token.key}")

    submitted = client.post("/jobs", JOB, format="json")
    listed = client.get("/jobs")

    assert submitted.status_code == 201, submitted.content
    assert Job.objects.get(pk=submitted.json()["job_id"]).owner == user
    assert listed.status_code == 200 and listed.json()["count"] == 1


def test_a_wrong_bearer_token_is_401(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-key")

    response = client.get("/jobs")

    assert response.status_code == 401
    assert response.json() == {"error": "Invalid token.", "code": "authentication_failed"}


def test_no_credentials_says_which_schemes_to_send(client):
    response = client.get("/jobs")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "Authorization: Token <your API token>" in response.json()["error"]
    assert "Bearer" in response.json()["error"]


def test_metrics_tells_an_api_token_sent_as_bearer_what_it_takes(client, user, settings):
    settings.METRICS_TOKEN = "s3cret-token"
    token = Token.objects.create(user=user)

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token.key}")

    assert response.status_code == 403
    assert "API token" in response.json()["error"] and "METRICS_TOKEN" in response.json()["error"]


# --- Query parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize("query, name, words", [
    ("limit=abc", "limit", ["from 1 to 500", "'abc'"]),
    ("limit=0", "limit", ["from 1 to 500"]),
    (f"limit={LIST_MAX_LIMIT + 1}", "limit", ["from 1 to 500"]),
    ("limit=-5", "limit", ["from 1 to 500"]),
    ("offset=abc", "offset", ["0 or more"]),
    ("offset=-1", "offset", ["0 or more"]),
    ("status=bogus", "status", ["Unknown status 'bogus'", "pending"]),
    ("kind=bogus", "kind", ["Unknown kind 'bogus'", "workflow"]),
    ("model=zzz", "model", ["Unknown model 'zzz'. Known models: flux-dev, minimax/video-01, motion-2.0-fast"]),
])
def test_a_bad_query_value_is_400_naming_it(api, query, name, words):
    response = api.get(f"/jobs?{query}")

    assert_refused(response, 400, name, *words)


def test_good_query_values_still_filter_and_page(api):
    for prompt in ("one", "two", "three"):
        assert api.post("/jobs", {**JOB, "prompt": prompt}, format="json").status_code == 201

    page = api.get(f"/jobs?model=flux-dev&status=pending&limit=1&offset=1&kind=normal").json()
    everything = api.get(f"/jobs?limit={LIST_MAX_LIMIT}").json()
    empty = api.get("/jobs?status=&model=&limit=").json()  # empty is the same as absent

    assert page["count"] == 2 and [job["prompt"] for job in page["results"]] == ["two"]
    assert everything["count"] == 3 and len(everything["results"]) == 3
    assert empty["count"] == 3


def test_a_disabled_or_removed_model_still_names_its_jobs(api, user):
    assert api.post("/jobs", JOB, format="json").status_code == 201
    CatalogModel.objects.filter(name="minimax/video-01").update(enabled=False)
    Job.objects.filter(owner=user).update(model="retired-model")  # as if its catalog row were gone

    disabled = api.get("/jobs?model=minimax/video-01")
    retired = api.get("/jobs?model=retired-model")

    assert disabled.status_code == 200 and disabled.json()["count"] == 0
    assert retired.status_code == 200 and retired.json()["count"] == 1
