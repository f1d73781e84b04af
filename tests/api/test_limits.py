"""Abuse and bad input: submission rate, pending jobs per user, params and address limits, what
/queue/status shows of other users' jobs, the admin, and production settings."""

import json
import os
import subprocess
import sys

import pytest
from django.core.cache import caches
from django.core.cache.backends.db import DatabaseCache
from django.test import Client
from rest_framework.test import APIClient

from coordination.models import Job

pytestmark = pytest.mark.django_db

WORKFLOW = "/workflows/knight-style-img-to-video/execute"
IMAGE = "https://example.com/user.jpg"


def submit(client, **body):
    body = {"prompt": "A knight riding a horse", "model": "motion-2.0-fast", **body}
    return client.post("/jobs", body, format="json")


def execute(client, **body):
    return client.post(WORKFLOW, {"input_image": IMAGE, **body}, format="json")


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def nested(levels: int) -> dict:
    """params nesting `levels` objects deep, params itself included."""
    value: dict = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"next": value}
    return value


class TestSubmissionRate:
    def test_past_the_rate_a_submission_is_a_429_with_retry_after(self, api, settings):
        settings.COORDINATOR_SUBMIT_RATE = 2
        assert submit(api).status_code == 201
        assert execute(api).status_code == 201  # both endpoints share one count

        response = submit(api, prompt="one too many")

        assert response.status_code == 429
        assert 1 <= int(response["Retry-After"]) <= 60
        body = response.json()
        assert body["code"] == "throttled"
        assert "at most 2 a minute" in body["error"]
        assert execute(api).status_code == 429
        assert Job.objects.count() == 2

    def test_reading_is_not_throttled(self, api, settings):
        settings.COORDINATOR_SUBMIT_RATE = 1
        submit(api)

        assert api.get("/jobs").status_code == 200
        assert api.get("/queue/status").status_code == 200

    def test_each_user_has_their_own_count(self, api, other_user, settings):
        settings.COORDINATOR_SUBMIT_RATE = 1
        submit(api)

        assert submit(api).status_code == 429
        assert submit(client_for(other_user)).status_code == 201

    def test_zero_turns_the_rate_off(self, api, settings):
        settings.COORDINATOR_SUBMIT_RATE = 0

        assert all(submit(api, prompt=f"job {n}").status_code == 201 for n in range(5))

    def test_the_counts_live_in_the_database_so_every_web_process_shares_them(self):
        assert isinstance(caches["throttle"], DatabaseCache)
        caches["throttle"].set("probe", 1)  # the table exists (made by a migration)
        assert caches["throttle"].get("probe") == 1


class TestPendingJobsPerUser:
    def test_past_the_limit_a_submission_is_a_429_that_says_the_limit(self, api, user, settings):
        settings.COORDINATOR_MAX_PENDING_PER_USER = 2
        assert submit(api).json()["status"] == "running"  # a running job does not count
        assert submit(api, prompt="waits 1").status_code == 201
        assert submit(api, prompt="waits 2").status_code == 201

        response = submit(api, prompt="one too many")

        assert response.status_code == 429
        assert response.json()["code"] == "pending_limit"
        assert "the limit is 2" in response.json()["error"]
        assert execute(api).status_code == 429
        assert Job.objects.filter(owner=user, status=Job.Status.PENDING).count() == 2

    def test_other_users_are_not_held_back(self, api, other_user, settings):
        settings.COORDINATOR_MAX_PENDING_PER_USER = 1
        submit(api)
        submit(api, prompt="waits")

        assert submit(api, prompt="refused").status_code == 429
        assert submit(client_for(other_user)).status_code == 201

    def test_a_place_frees_when_a_waiting_job_leaves(self, api, settings):
        settings.COORDINATOR_MAX_PENDING_PER_USER = 1
        submit(api)
        waiting = submit(api, prompt="waits").json()
        assert submit(api, prompt="refused").status_code == 429

        api.post(f"/jobs/{waiting['job_id']}/cancel")

        assert submit(api, prompt="now accepted").status_code == 201


class TestParams:
    def test_five_levels_are_accepted(self, api):
        assert submit(api, params=nested(5)).status_code == 201

    @pytest.mark.parametrize("value", [nested(6), {"list": [[[[["too deep"]]]]]}])
    def test_six_levels_are_refused(self, api, value):
        response = submit(api, params=value)

        assert response.status_code == 400
        assert "params" in response.json()["fields"]
        assert "5 levels deep" in response.json()["error"]

    def test_more_than_16_kb_is_refused(self, api):
        response = submit(api, params={"notes": "x" * 16 * 1024})

        assert response.status_code == 400
        assert "16384 bytes (16 KB)" in response.json()["error"]

    def test_16_kb_exactly_is_accepted(self, api):
        padding = 16 * 1024 - len(json.dumps({"notes": ""}, separators=(",", ":")))

        assert submit(api, params={"notes": "x" * padding}).status_code == 201

    def test_a_workflows_params_have_the_same_limits(self, api):
        assert execute(api, params=nested(6)).status_code == 400

    def test_unknown_fields_are_still_refused(self, api):
        response = submit(api, input_image=IMAGE)

        assert response.status_code == 400
        assert "Unknown field(s): input_image" in response.json()["error"]


class TestAddresses:
    @pytest.mark.parametrize(
        "address",
        [
            "ftp://example.com/user.jpg",
            "javascript:alert(1)",
            "data:image/png;base64,iVBORw0KGgo=",
            "file:///etc/passwd",
            "example.com/user.jpg",
            "https://",
            "https://example.com/" + "a" * 2030,
        ],
    )
    def test_anything_but_an_http_url_of_at_most_2048_characters_is_refused(self, api, address):
        response = execute(api, input_image=address)

        assert response.status_code == 400, address
        assert "input_image" in response.json()["fields"]
        assert not Job.objects.exists()

    @pytest.mark.parametrize(
        "address",
        ["http://example.com/user.jpg", "https://cdn.example.com/a/b.png?x=1", "https://example.com/" + "a" * 2028],
    )
    def test_http_and_https_are_accepted(self, api, address):
        assert len(address) <= 2048
        assert execute(api, input_image=address).status_code == 201

    def test_the_refusal_names_the_scheme(self, api):
        response = execute(api, input_image="javascript:alert(1)")

        assert "'javascript:' is not accepted" in response.json()["error"]


class TestQueueStatusPrivacy:
    @pytest.fixture
    def queue(self, api, other_user):
        """Another user's job runs and one of theirs waits; then one of ours waits."""
        theirs = client_for(other_user)
        running = submit(theirs, prompt="their secret prompt", params={"secret": 1}).json()
        their_waiting = submit(theirs, prompt="their second secret").json()
        mine = submit(api, prompt="mine").json()
        return running, their_waiting, mine

    def test_other_users_waiting_jobs_show_only_place_kind_and_models(self, api, queue):
        running, their_waiting, mine = queue

        queued = api.get("/queue/status").json()["queued_jobs"]

        assert queued[0] == {"queue_position": 1, "kind": "normal", "required_models": ["motion-2.0-fast"]}
        assert queued[1]["job_id"] == mine["job_id"]
        assert queued[1]["blocked_by_job_id"] == their_waiting["job_id"]  # what blocks my job, I may know
        assert "secret" not in json.dumps(api.get("/queue/status").json())

    def test_staff_see_every_waiting_job_in_full(self, staff_api, queue):
        running, their_waiting, mine = queue

        queued = staff_api.get("/queue/status").json()["queued_jobs"]

        assert [job["job_id"] for job in queued] == [their_waiting["job_id"], mine["job_id"]]
        assert queued[0]["blocked_by_job_id"] == running["job_id"]


class TestAdmin:
    def test_the_admin_is_for_staff_only(self, user, staff_user):
        visitor = Client()
        visitor.force_login(user)
        operator = Client()
        operator.force_login(staff_user)

        refused = visitor.get("/admin/")

        assert refused.status_code == 302 and refused["Location"].startswith("/admin/login/")
        assert operator.get("/admin/").status_code == 200


@pytest.mark.django_db(False)
class TestProductionSettings:
    """Outside local development (JOBQUEUE_ENV set, not "local") the server will not start unsafe."""

    @staticmethod
    def check(**env: str) -> subprocess.CompletedProcess:
        unset = ("SECRET_KEY", "DEBUG", "JOBQUEUE_ENV")
        environment = {key: value for key, value in os.environ.items() if key not in unset}
        environment.update(env, DJANGO_SETTINGS_MODULE="jobqueue_site.settings")
        return subprocess.run(
            [sys.executable, "manage.py", "check"],
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_production_without_a_secret_key_refuses_to_start(self):
        result = self.check(JOBQUEUE_ENV="production")

        assert result.returncode != 0
        assert "ImproperlyConfigured" in result.stderr
        assert "set SECRET_KEY in the environment" in result.stderr

    def test_production_with_debug_on_refuses_to_start(self):
        result = self.check(JOBQUEUE_ENV="production", SECRET_KEY="s" * 50, DEBUG="1")

        assert result.returncode != 0
        assert "DEBUG must be off" in result.stderr

    def test_production_with_a_key_and_debug_off_starts(self):
        result = self.check(JOBQUEUE_ENV="production", SECRET_KEY="s" * 50)

        assert result.returncode == 0, result.stderr

    @pytest.mark.parametrize("env", [{}, {"JOBQUEUE_ENV": "local", "DEBUG": "1"}])
    def test_local_development_needs_neither(self, env):
        assert self.check(**env).returncode == 0


def test_staff_are_not_limited(staff_api, settings):
    settings.COORDINATOR_SUBMIT_RATE = 1
    settings.COORDINATOR_MAX_PENDING_PER_USER = 1

    assert [submit(staff_api, prompt=f"job {n}").status_code for n in range(4)] == [201] * 4
