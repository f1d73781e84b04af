"""The OpenAPI schema at /schema and Swagger UI at /docs: public, valid, complete, served offline."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import URLPattern
from drf_spectacular.validation import validate_schema

from coordination.api import urls as api_urls
from jobqueue_site import urls as site_urls

pytestmark = pytest.mark.django_db

BASE_DIR = Path(django_settings.BASE_DIR)
# The coordinator's operations, and the workflows app's (routed beside them in the site's urls).
API_ROUTES = [
    *api_urls.urlpatterns,
    *(p for p in site_urls.urlpatterns if getattr(p, "name", None) in ("workflow-list", "workflow-execute")),
]


@pytest.fixture
def schema():
    response = Client().get("/schema", HTTP_ACCEPT="application/json")
    assert response.status_code == 200, response.content[:300]
    return response.json()


def _openapi_path(pattern: URLPattern) -> str:
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern))


def _json_schema_ref(response: dict) -> str | None:
    return response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")


def test_schema_is_public_and_a_valid_openapi_3_document(schema):
    assert schema["openapi"].startswith("3.")
    validate_schema(schema)  # drf-spectacular's own check against the OpenAPI 3 JSON schema


def test_schema_is_served_even_with_a_bad_token():
    response = Client().get("/schema", HTTP_AUTHORIZATION="Token not-a-token")
    assert response.status_code == 200
    assert b"openapi: 3" in response.content  # YAML unless JSON is asked for


def test_schema_generates_without_warnings():
    """`manage.py spectacular --fail-on-warn`: an untyped field or parameter would be a warning."""
    result = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_api_route_and_method_is_in_the_schema(schema):
    assert {"/workflows", "/workflows/{workflow_id}/execute"} <= {_openapi_path(p) for p in API_ROUTES}
    for pattern in API_ROUTES:
        path = _openapi_path(pattern)
        assert path in schema["paths"], path
        view = pattern.callback.view_class
        methods = {m for m in view().allowed_methods if m not in ("OPTIONS", "HEAD")}
        assert {m.lower() for m in methods} == set(schema["paths"][path]), path


def test_every_error_response_is_the_error_component(schema):
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "code"}
    assert error["properties"]["fields"]["type"] == "object"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if int(code) >= 400 and path != "/health":
                    assert _json_schema_ref(response) == "#/components/schemas/Error", (method, path, code)


def test_operations_document_their_answers(schema):
    paths = schema["paths"]
    assert set(paths["/jobs"]["post"]["responses"]) == {"200", "201", "400", "401", "403", "409", "413", "422", "429", "503"}
    assert paths["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobSubmit")
    listed = {p["name"]: p for p in paths["/jobs"]["get"]["parameters"]}
    assert set(listed) == {"status", "kind", "model", "limit", "offset"}
    assert listed["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}
    assert listed["offset"]["schema"] == {"type": "integer", "minimum": 0, "default": 0}
    assert paths["/jobs/{job_id}"]["get"]["responses"].keys() >= {"200", "404"}
    assert paths["/jobs/{job_id}/cancel"]["post"]["responses"].keys() >= {"200", "404", "409"}
    assert paths["/workflows/{workflow_id}/execute"]["post"]["responses"].keys() >= {
        "200", "201", "400", "404", "422", "429"
    }
    for path in ("/jobs", "/workflows/{workflow_id}/execute"):
        operation = paths[path]["post"]
        assert "Idempotency-Key" in {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert "Retry-After" in operation["responses"]["429"]["headers"]
    status = schema["components"]["schemas"]["QueueStatus"]
    assert set(status["required"]) == {"active_job", "active_jobs", "queued_jobs", "queue_length"}
    assert set(paths["/health"]["get"]["responses"]) == {"200", "503"}


def test_auth_is_token_or_session_and_health_needs_none(schema):
    schemes = schema["components"]["securitySchemes"]
    assert schemes["tokenAuth"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": schemes["tokenAuth"]["description"],
    }
    assert "Token" in schemes["tokenAuth"]["description"]
    assert schemes["cookieAuth"]["in"] == "cookie"
    assert {"tokenAuth": []} in schema["paths"]["/jobs"]["get"]["security"]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_job_fields_are_typed_and_the_optional_ones_optional(schema):
    job = schema["components"]["schemas"]["Job"]
    properties = job["properties"]
    assert properties["queue_position"] == {"type": "integer", "nullable": True, "readOnly": True}
    assert properties["current_step"]["type"] == "integer"
    assert properties["workflow_id"]["type"] == "string"
    assert properties["required_models"]["items"] == {"type": "string"}
    waiting_for = properties["waiting_for"]
    assert waiting_for["nullable"] is True
    assert waiting_for["items"]["$ref"].endswith("/WaitingFor")
    # Only workflow jobs carry the workflow keys; only GET /jobs/{id} carries waiting_for.
    for name in ("waiting_for", "workflow_id", "current_step", "current_step_model"):
        assert name not in job["required"]
    assert {"job_id", "status", "queue_position", "created_at"} <= set(job["required"])


def test_docs_is_swagger_ui_without_login_and_without_a_cdn():
    response = Client().get("/docs")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "SwaggerUIBundle" in html or "swagger-ui" in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and not [a for a in assets if a.startswith(("http:", "https:", "//"))], assets
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)


def test_docs_assets_are_served_from_our_static_files(settings):
    # WhiteNoise serves collected files (`make run` collects them); here it looks them up directly.
    settings.WHITENOISE_USE_FINDERS = True
    settings.WHITENOISE_AUTOREFRESH = True
    client = Client()
    html = client.get("/docs").content.decode()
    assets = [a for a in re.findall(r'(?:src|href)="([^"]+)"', html) if a.startswith("/static/")]
    names = {Path(asset).name for asset in assets}
    assert names >= {"swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"}
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert b"".join(response.streaming_content if response.streaming else [response.content])


def test_the_slot_wait_is_typed_and_optional(schema):
    job = schema["components"]["schemas"]["Job"]
    slot = job["properties"]["waiting_for_slot"]
    assert slot["nullable"] is True and slot["readOnly"] is True
    assert slot["allOf"][0]["$ref"].endswith("/WaitingForSlot")
    assert "waiting_for_slot" not in job["required"]
    shape = schema["components"]["schemas"]["WaitingForSlot"]
    assert set(shape["required"]) == {"slots", "held_by", "jobs_ahead"}
    assert shape["properties"]["held_by"]["items"]["$ref"].endswith("/Holder")


def test_the_batch_is_described_body_and_answers(schema):
    operation = schema["paths"]["/jobs/batch"]["post"]
    assert set(operation["responses"]) == {"200", "201", "400", "401", "403", "409", "413", "422", "429", "503"}
    assert "Idempotency-Key" in {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert "Retry-After" in operation["responses"]["429"]["headers"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert request.endswith("/JobBatch")
    components = schema["components"]["schemas"]
    jobs = components["JobBatch"]["properties"]["jobs"]
    assert (jobs["minItems"], jobs["maxItems"]) == (1, 1000)
    assert components["JobBatch"]["required"] == ["jobs"]
    assert components["JobBatch"]["additionalProperties"] is False
    item = components[jobs["items"]["$ref"].rsplit("/", 1)[1]]
    # A POST /jobs body (the same keys, params and strictness), and a client_ref.
    submit = components["JobSubmit"]
    assert set(item["properties"]) == set(submit["properties"]) | {"client_ref"}
    assert item["properties"]["params"] == submit["properties"]["params"]
    assert item["additionalProperties"] is False
    assert item["properties"]["client_ref"] == {
        "type": "string", "nullable": True, "maxLength": 200, "description": item["properties"]["client_ref"]["description"],
    }
    answer = operation["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    assert components[answer.rsplit("/", 1)[1]]["properties"]["jobs"]["items"]["$ref"].endswith("/Job")


def test_every_job_carries_its_client_ref(schema):
    job = schema["components"]["schemas"]["Job"]
    assert job["properties"]["client_ref"]["nullable"] is True
    assert "client_ref" in job["required"]
