"""POST /jobs/batch (issue 10, item 4): up to 1,000 POST /jobs bodies in one request, all checked
first, then accepted in their order in one transaction under one hold of the coordinator lock.

As in test_jobs_api.py, no worker runs here: every job stays running or pending as the coordinator
decided.
"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from coordination.models import IdempotencyKey, Job, JobQueueLog
from coordination.services import BATCH_MAX_JOBS
from tests.factories import UserFactory
from tests.helpers import AUDIT_FAILED

pytestmark = pytest.mark.django_db

KNOWN_MODELS = "flux-dev, minimax/video-01, motion-2.0-fast, nano-banana-pro-leonardo"


def body(model: str = "motion-2.0-fast", prompt: str = "A knight riding a horse", **extra) -> dict:
    return {"prompt": prompt, "model": model, **extra}


def batch(client, bodies: list, **headers):
    return client.post("/jobs/batch", {"jobs": bodies}, format="json", **headers)


def accepted(client, bodies: list) -> list[dict]:
    response = batch(client, bodies)
    assert response.status_code == 201, response.content
    assert set(response.json()) == {"jobs"}
    return response.json()["jobs"]


def assert_nothing_accepted(response, status: int, *words: str) -> dict:
    """Refused with the API's JSON error, and no job and no audit row was written."""
    assert response.status_code == status, response.content
    error = response.json()
    for word in words:
        assert word in error["error"], error["error"]
    assert not Job.objects.exists()
    assert not JobQueueLog.objects.exists()
    return error


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- accepted as single submissions in a row would be ---------------------------------------------


class TestOrderAndStatuses:
    def test_three_jobs_on_one_model_the_first_runs_and_the_rest_wait_behind_each_other(self, api):
        first, second, third = accepted(api, [body(prompt="one"), body(prompt="two"), body(prompt="three")])

        assert [job["prompt"] for job in (first, second, third)] == ["one", "two", "three"]
        assert first["status"] == "running" and first["queue_position"] is None
        assert second["status"] == "pending" and second["blocked_by_job_id"] == first["job_id"]
        assert third["status"] == "pending" and third["blocked_by_job_id"] == second["job_id"]
        assert [second["queue_position"], third["queue_position"]] == [1, 2]
        assert second["conflict_reason"] == f"Model conflict: motion-2.0-fast in use by normal job {first['job_id']}"
        assert "goes first" in third["conflict_reason"]

    def test_the_line_keeps_the_batchs_order_whatever_the_ids(self, api):
        """All of a batch is accepted at one instant; its line order is still the order sent."""
        jobs = accepted(api, [body(prompt=str(n)) for n in range(30)])

        line = list(Job.objects.filter(status=Job.Status.PENDING).order_by("-priority", "created_at", "job_id"))
        assert [job.prompt for job in line] == [str(n) for n in range(1, 30)]
        assert [job["queue_position"] for job in jobs[1:]] == list(range(1, 30))

    def test_each_job_is_answered_as_post_jobs_answers_it(self, api):
        single = api.post("/jobs", body(model="flux-dev"), format="json").json()
        (from_batch,) = accepted(api, [body(model="flux-dev")])

        assert set(from_batch) == set(single)
        detail = api.get(f"/jobs/{from_batch['job_id']}").json()
        assert {key: detail[key] for key in from_batch} == from_batch
        assert from_batch["status"] == "pending" and from_batch["blocked_by_job_id"] == single["job_id"]

    def test_the_same_bodies_one_by_one_give_the_same_statuses_and_blockers(self, api, user, settings):
        """Two slots, models shared and not, priorities: the batch and the same submissions in a row
        (by another user, on a fresh queue) end alike, job for job."""
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
        bodies = [
            body("motion-2.0-fast"), body("flux-dev"), body("motion-2.0-fast"), body("nano-banana-pro-leonardo"),
            body("flux-dev", priority=-1), body("motion-2.0-fast", priority=-2), body("flux-dev"),
        ]

        def shape(jobs: list[dict]) -> list[tuple]:
            place = {job["job_id"]: index for index, job in enumerate(jobs)}
            return [(job["status"], place.get(job["blocked_by_job_id"]), job["queue_position"]) for job in jobs]

        submitted = [api.post("/jobs", b, format="json").json()["job_id"] for b in bodies]
        one_by_one = [api.get(f"/jobs/{job_id}").json() for job_id in submitted]  # as they stand at the end
        Job.objects.all().delete()
        together = accepted(client_for(UserFactory()), bodies)

        assert shape(together) == shape(one_by_one)
        assert [job["status"] for job in together] == ["running", "running", *["pending"] * 5]

    def test_the_audit_trail_is_each_jobs_submission_in_order(self, api):
        jobs = accepted(api, [body(prompt="one"), body(prompt="two")])

        rows = list(JobQueueLog.objects.order_by("id").values_list("job_id", "event_type"))
        ids = [job["job_id"] for job in jobs]
        assert [(str(job_id), event) for job_id, event in rows] == [
            (ids[0], "submitted"), (ids[0], "started"), (ids[1], "submitted"), (ids[1], "blocked"),
        ]

    def test_a_thousand_are_accepted(self, staff_api):
        jobs = accepted(staff_api, [body(prompt=f"job {n}") for n in range(BATCH_MAX_JOBS)])

        assert len(jobs) == Job.objects.count() == 1000
        assert jobs[-1]["queue_position"] == 999


class TestOneLockHold:
    def test_the_batch_takes_the_coordinator_lock_once(self, api):
        """The lock is taken once for the batch, by the coordinator's read (or, on first use, by
        the slot rows' own statement)."""
        from coordination.queue.locked import takes_the_lock

        locks = []

        def counted(execute, sql, params, many, context):
            if takes_the_lock(sql, params):
                locks.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(counted):
            accepted(api, [body(prompt=str(n)) for n in range(5)])

        assert len(locks) == 1

    def test_a_failure_in_the_middle_leaves_nothing(self, api, fail_audit):
        fail_audit(JobQueueLog.Event.BLOCKED)  # the second job's: the first has started by then

        with pytest.raises(AUDIT_FAILED):
            batch(api, [body(prompt="starts"), body(prompt="would wait")])

        assert not Job.objects.exists()
        assert not JobQueueLog.objects.exists()

    def test_the_number_of_queries_does_not_grow_with_the_batch(self, api, django_assert_max_num_queries, settings):
        # Both limits on (they read and write in the request), and wide enough for 105 jobs.
        settings.COORDINATOR_SUBMIT_RATE = 1000
        settings.COORDINATOR_MAX_PENDING_PER_USER = 1000

        def queries_for(size: int) -> int:
            with CaptureQueriesContext(connection) as captured:
                accepted(api, [body(prompt=f"{size}-{n}", client_ref=str(n)) for n in range(size)])
            return len(captured)

        queries_for(3)  # the first use creates the slot rows, and the first job to wait the waiting-jobs counter
        small = queries_for(5)
        with django_assert_max_num_queries(small):
            accepted(api, [body(prompt=f"50-{n}") for n in range(50)])
        assert queries_for(50) == small
        assert Job.objects.count() == 108


# --- refused whole ----------------------------------------------------------------------------------


class TestRefusedWhole:
    def test_an_unknown_model_names_the_body_and_the_known_models(self, api):
        bodies = [body(), body(), body(), body("x")]

        error = assert_nothing_accepted(batch(api, bodies), 400, f"jobs[3].model: Unknown model 'x'. Known models: {KNOWN_MODELS}.")

        assert error["code"] == "unknown_model"
        assert error["fields"] == {"jobs[3].model": [f"Unknown model 'x'. Known models: {KNOWN_MODELS}."]}

    def test_a_disabled_model_names_the_body(self, api):
        from coordination.models import CatalogModel

        CatalogModel.objects.filter(name="flux-dev").update(enabled=False)

        assert_nothing_accepted(batch(api, [body(), body("flux-dev")]), 400, "jobs[1].model: Model 'flux-dev' is disabled")

    def test_a_missing_prompt_names_the_body_and_the_field(self, api):
        error = assert_nothing_accepted(
            batch(api, [body(), {"model": "flux-dev"}]), 400, "jobs[1].prompt: A prompt is required"
        )

        assert error["code"] == "invalid"
        assert set(error["fields"]) == {"jobs[1].prompt"}

    def test_every_bad_body_the_serializer_sees_is_listed(self, api):
        bodies = [body(), body(job_type="sound"), 5, body(modle="flux-dev"), body(params={"simulate_seconds": -1})]

        error = assert_nothing_accepted(batch(api, bodies), 400, "jobs[1].job_type:")

        assert set(error["fields"]) == {"jobs[1].job_type", "jobs[2]", "jobs[3]", "jobs[4].params"}
        assert "Unknown field(s): modle" in error["fields"]["jobs[3]"][0]

    def test_a_job_type_that_is_not_the_models_names_the_body(self, api):
        assert_nothing_accepted(
            batch(api, [body(), body(job_type="image")]), 400, "jobs[1].job_type: Model 'motion-2.0-fast' makes videos"
        )

    def test_a_priority_above_0_from_someone_not_staff_names_the_body(self, api):
        error = assert_nothing_accepted(batch(api, [body(), body(priority=5)]), 403, "jobs[1].priority: Only staff")

        assert error["code"] == "permission_denied"

    def test_a_client_ref_longer_than_200_characters(self, api):
        assert_nothing_accepted(batch(api, [body(client_ref="r" * 201)]), 400, "jobs[0].client_ref:")

    def test_more_than_a_thousand(self, staff_api):
        assert_nothing_accepted(
            batch(staff_api, [body()] * (BATCH_MAX_JOBS + 1)), 400, "jobs: A batch holds at most 1000 jobs"
        )

    @pytest.mark.parametrize(
        ("payload", "words"),
        [
            ({"jobs": []}, "jobs: A batch needs at least one job"),
            ({}, 'jobs: A batch is {"jobs": [body, ...]}: "jobs" is missing.'),
            ({"jobs": None}, "jobs: jobs must be a list of job bodies, not null."),
            ({"jobs": body()}, "jobs must be a list of job bodies (got dict)"),
            ({"jobs": [body()], "priority": 1}, "Unknown field(s): priority. Allowed: jobs."),
        ],
    )
    def test_a_body_that_is_not_a_list_of_jobs(self, api, payload, words):
        error = assert_nothing_accepted(api.post("/jobs/batch", payload, format="json"), 400, words)

        assert error["code"] == "invalid"

    def test_only_post(self, api):
        assert api.get("/jobs/batch").status_code == 405
        assert api.post("/jobs/batch/", {"jobs": [body()]}, format="json").status_code == 404


# --- the per-user limits count every job of a batch -----------------------------------------------


class TestLimits:
    def test_the_pending_limit_counts_every_job_of_the_batch(self, api, settings):
        settings.COORDINATOR_MAX_PENDING_PER_USER = 3
        accepted(api, [body(), body()])  # one runs, one waits

        refused = batch(api, [body("flux-dev"), body("flux-dev"), body("flux-dev")])  # 1 + 3 > 3

        assert refused.status_code == 429, refused.content
        assert refused.json()["code"] == "pending_limit"
        assert "You have 1 jobs waiting and the batch adds 3; the limit is 3" in refused.json()["error"]
        assert "Send at most 2 now" in refused.json()["error"]
        assert Job.objects.count() == 2
        assert len(accepted(api, [body("flux-dev"), body("flux-dev")])) == 2  # 1 + 2 fits

    def test_every_job_counts_as_waiting_even_those_that_would_start(self, api, settings):
        settings.COORDINATOR_MAX_PENDING_PER_USER = 2

        refused = batch(api, [body("flux-dev"), body("motion-2.0-fast"), body("nano-banana-pro-leonardo")])

        assert_nothing_accepted(refused, 429, "the batch adds 3; the limit is 2")

    def test_a_batch_of_n_counts_n_submissions_towards_the_rate(self, api, settings):
        settings.COORDINATOR_SUBMIT_RATE = 5
        assert batch(api, [body()] * 3).status_code == 201

        refused = batch(api, [body()] * 3)  # 3 + 3 > 5

        assert refused.status_code == 429
        assert refused.json()["code"] == "throttled"
        assert "at most 5 a minute" in refused.json()["error"] and "this one counts 3" in refused.json()["error"]
        assert 1 <= int(refused["Retry-After"]) <= 60
        assert Job.objects.count() == 3
        assert api.post("/jobs", body(), format="json").status_code == 201  # 4
        assert batch(api, [body()] * 2).status_code == 429  # 4 + 2 > 5
        assert batch(api, [body()]).status_code == 201  # 5
        assert api.post("/jobs", body(), format="json").status_code == 429

    def test_a_batch_larger_than_the_rate_is_told_to_split(self, api, settings):
        settings.COORDINATOR_SUBMIT_RATE = 5

        refused = batch(api, [body()] * 6)

        assert_nothing_accepted(refused, 429, "A batch of 6 jobs counts as 6 submissions", "send at most 5 jobs in a batch")
        assert "Retry-After" not in refused  # waiting will not help
        assert batch(api, [body()] * 5).status_code == 201  # and it was not counted

    def test_staff_are_limited_by_neither(self, staff_api, settings):
        settings.COORDINATOR_SUBMIT_RATE = 2
        settings.COORDINATOR_MAX_PENDING_PER_USER = 2

        assert len(accepted(staff_api, [body()] * 10)) == 10


# --- client_ref ---------------------------------------------------------------------------------------


def test_client_ref_comes_back_on_the_job_wherever_it_is_read(api):
    jobs = accepted(api, [body(client_ref="scene-1"), body(), body(client_ref="scene 3 / take 2", model="flux-dev")])

    assert [job["client_ref"] for job in jobs] == ["scene-1", None, "scene 3 / take 2"]
    for job in jobs:
        assert api.get(f"/jobs/{job['job_id']}").json()["client_ref"] == job["client_ref"]
    listed = {job["job_id"]: job["client_ref"] for job in api.get("/jobs").json()["results"]}
    assert listed == {job["job_id"]: job["client_ref"] for job in jobs}
    assert Job.objects.get(pk=jobs[0]["job_id"]).client_ref == "scene-1"


# --- Idempotency-Key: it stands for the whole batch ------------------------------------------------


class TestIdempotencyKey:
    def test_a_retry_answers_the_same_jobs_in_order_with_200(self, api, user):
        bodies = [body(prompt="one"), body(prompt="two", client_ref="b"), body(model="flux-dev")]
        first = batch(api, bodies, HTTP_IDEMPOTENCY_KEY="batch-1")
        again = batch(api, bodies, HTTP_IDEMPOTENCY_KEY="batch-1")

        assert first.status_code == 201 and again.status_code == 200, again.content
        assert [job["job_id"] for job in again.json()["jobs"]] == [job["job_id"] for job in first.json()["jobs"]]
        assert Job.objects.count() == 3
        assert IdempotencyKey.objects.get(key="batch-1").job_id == Job.objects.get(prompt="one").job_id

    def test_the_retry_is_the_batch_alone_not_jobs_submitted_around_it(self, api):
        """The replay finds the batch by its instant and its ids: a job before it and after it,
        and another batch, are not in it."""
        api.post("/jobs", body(prompt="before"), format="json")
        first = batch(api, [body(prompt="a"), body(prompt="b")], HTTP_IDEMPOTENCY_KEY="k")
        batch(api, [body(prompt="c"), body(prompt="d")])
        api.post("/jobs", body(prompt="after"), format="json")

        again = batch(api, [body(prompt="a"), body(prompt="b")], HTTP_IDEMPOTENCY_KEY="k")

        assert [job["prompt"] for job in again.json()["jobs"]] == ["a", "b"]
        assert again.json()["jobs"][0]["job_id"] == first.json()["jobs"][0]["job_id"]

    def test_the_same_key_with_another_batch_is_a_422(self, api):
        batch(api, [body(prompt="one")], HTTP_IDEMPOTENCY_KEY="k")

        refused = batch(api, [body(prompt="one"), body(prompt="two")], HTTP_IDEMPOTENCY_KEY="k")

        assert refused.status_code == 422
        assert Job.objects.count() == 1

    def test_a_batchs_key_is_not_a_single_submissions(self, api):
        batch(api, [body()], HTTP_IDEMPOTENCY_KEY="k")

        assert api.post("/jobs", body(), format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 422

    def test_a_refused_batch_keeps_no_key(self, api):
        batch(api, [body("x")], HTTP_IDEMPOTENCY_KEY="k")

        assert not IdempotencyKey.objects.exists()
        assert batch(api, [body()], HTTP_IDEMPOTENCY_KEY="k").status_code == 201
