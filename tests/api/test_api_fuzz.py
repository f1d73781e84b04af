"""Property-based: every operation in /schema, fed requests generated from the schema itself.

Schemathesis reads the served schema, generates valid and invalid requests for each operation and
sends them, as an ordinary user with a token, to the WSGI app in this process. Whatever it sends:
no 500, every error is the API's JSON error, and every answer is what the schema says it is.

Two things are left to tests that run the ASGI server (tests/e2e/test_live_events.py): the event
streams (a stream of a job that has not ended does not end, and a WSGI app can only send one
whole), and answers that really wait (`Prefer: wait=N` with a valid N; a bad one is fuzzed here).
"""

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rest_framework.exceptions import ValidationError

from coordination import services
from coordination.api.prefer import prefer_wait
from coordination.models import Job
from coordination.seed import CATALOG, WORKFLOWS
from tests.factories import UserFactory
from workflows.services import workflow_execute


def errors_are_json_with_a_message(ctx, response, case):
    """Any 4xx or 5xx is JSON with an "error" string a person can read."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (
        f"{response.status_code} without an 'error' message: {response.text[:300]}"
    )
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


# The schema is read from the app itself, at collection (it needs no database); each operation
# becomes a test of its own.
APP = WSGIHandler()
schema = schemathesis.openapi.from_wsgi("/schema?format=json", APP)
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    deterministic=True,
    # Our token goes in every request; generated Authorization values would only test the 401s.
    with_security_parameters=False,
)
schema = schema.exclude(path_regex=r"/events$")


KNOWN_MODELS = [entry["name"] for entry in CATALOG]
KNOWN_WORKFLOWS = [spec["workflow_id"] for spec in WORKFLOWS]


@schema.hook
def flatmap_body(context, body):
    """Half the submissions name a real model or carry the workflow's input, so they reach the coordinator."""
    if not isinstance(body, dict) or context.operation.method.upper() != "POST":
        return st.just(body)
    if context.operation.path == "/jobs":
        return st.one_of(st.just(body), st.sampled_from(KNOWN_MODELS).map(lambda model: {**body, "model": model}))
    if context.operation.path == "/jobs/batch" and isinstance(body.get("jobs"), list):
        # Every body of the batch on a real model, so that some whole batches are accepted.
        named = [{**job, "model": model} if isinstance(job, dict) else job for job, model in zip(body["jobs"], KNOWN_MODELS * 250)]
        return st.one_of(st.just(body), st.just({**body, "jobs": named}))
    if context.operation.path.endswith("/execute"):
        # Keys beyond the declared ones are the workflow's inputs: unknown ones are (rightly) a 400.
        declared = {key: value for key, value in body.items() if key in ("prompt", "params", "priority")}
        return st.one_of(st.just(body), st.just({**declared, "input_image": "https://example.com/knight.png"}))
    return st.just(body)


@schema.hook
def map_headers(context, headers):
    """A valid `Prefer: wait=N` would make an answer wait N seconds: not here (see above)."""
    if headers and "Prefer" in headers:
        request = type("Request", (), {"headers": headers})()
        try:
            if prefer_wait(request) is not None:
                headers = {key: value for key, value in headers.items() if key != "Prefer"}
        except ValidationError:
            pass  # a bad one: the API must answer 400
    return headers


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Half the ids are of workflows, jobs and models that exist (running, waiting, finished, someone else's)."""
    if not isinstance(path_parameters, dict):
        return st.just(path_parameters)
    if "name" in path_parameters:
        return st.one_of(st.just(path_parameters), st.sampled_from(KNOWN_MODELS).map(lambda name: {**path_parameters, "name": name}))
    if "workflow_id" in path_parameters:
        known = st.sampled_from(KNOWN_WORKFLOWS).map(lambda wid: {**path_parameters, "workflow_id": wid})
        return st.one_of(st.just(path_parameters), known)
    if "job_id" in path_parameters:
        # Not the jobs POST /jobs/{id}/retry makes while its examples run: hypothesis needs the same
        # ids to draw from in every example of one operation.
        jobs = Job.objects.filter(retry_of__isnull=True).order_by("created_at")
        ids = [str(job_id) for job_id in jobs.values_list("job_id", flat=True)]
        if ids:
            known = st.sampled_from(ids).map(lambda job_id: {**path_parameters, "job_id": job_id})
            return st.one_of(st.just(path_parameters), known)
    return st.just(path_parameters)


@pytest.fixture(autouse=True)
def _jobs(db, user):
    """A queue to poke at: a running job, waiting ones (one a workflow), a cancelled one, another user's."""
    services.job_submit(owner=user, model="motion-2.0-fast", prompt="a knight rides")
    services.job_submit(owner=user, model="motion-2.0-fast", prompt="a knight waits")
    workflow_execute(owner=user, workflow_id=KNOWN_WORKFLOWS[0], inputs={"input_image": "https://example.com/a.png"})
    cancelled = services.job_submit(owner=user, model="flux-dev", prompt="a castle")
    services.job_cancel(job_id=cancelled.job_id, user=user)
    services.job_submit(owner=UserFactory(), model="flux-dev", prompt="not yours")


@pytest.fixture(autouse=True)
def _keep_the_test_connection(db):
    # Django closes the connection around every request; inside the test's transaction that would
    # lose the test's data. Django's own test client disconnects these signals for the same reason.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def _no_submission_rate(settings):
    # The rate would turn most POSTs into 429s after the first minute's worth; 429 is in the schema
    # (and tested with the throttle), the rest is what we want to reach.
    settings.COORDINATOR_SUBMIT_RATE = 0


@schema.parametrize()
@hypothesis_settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_keeps_its_contract(case, user):
    token, _ = Token.objects.get_or_create(user=user)
    case.call_and_validate(
        headers={"Authorization": f"Token {token.key}"},
        checks=CHECKS,
        additional_checks=[errors_are_json_with_a_message],
    )
