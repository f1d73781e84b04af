"""Idempotency-Key on POST /jobs and POST /workflows/{id}/execute: a retried submission makes no second job."""

import threading
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection, connections, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from coordination.models import IdempotencyKey, Job, JobQueueState
from tests.factories import UserFactory

WORKFLOW = "/workflows/knight-style-img-to-video/execute"
BODY = {"prompt": "A knight riding a horse", "model": "motion-2.0-fast"}


def post(client, path="/jobs", body=None, key="key-1"):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(path, BODY if body is None else body, format="json", **headers)


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.django_db
class TestSameKeySameRequest:
    def test_the_second_request_answers_the_first_job_with_200(self, api, user):
        first = post(api)
        again = post(api)

        assert first.status_code == 201, first.content
        assert again.status_code == 200, again.content
        assert again.json()["job_id"] == first.json()["job_id"]
        assert Job.objects.filter(owner=user).count() == 1

    def test_the_replay_shows_the_job_as_it_is_now(self, api):
        running = post(api, key="a").json()
        waiting = post(api, body={**BODY, "prompt": "second"}, key="b").json()
        api.post(f"/jobs/{waiting['job_id']}/cancel")

        again = post(api, body={**BODY, "prompt": "second"}, key="b")

        assert again.status_code == 200
        assert again.json()["status"] == "cancelled"
        assert running["status"] == "running"

    def test_defaults_filled_in_make_the_same_request(self, api):
        first = post(api, body=BODY)
        again = post(api, body={**BODY, "params": {}, "priority": 0})

        assert again.status_code == 200
        assert again.json()["job_id"] == first.json()["job_id"]

    def test_a_workflow_execution_is_idempotent_too(self, api, user):
        body = {"input_image": "https://example.com/user.jpg"}
        first = post(api, path=WORKFLOW, body=body)
        again = post(api, path=WORKFLOW, body=body)

        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["job_id"] == first.json()["job_id"]
        assert again.json()["workflow_id"] == "knight-style-img-to-video"
        assert Job.objects.filter(owner=user, kind=Job.Kind.WORKFLOW).count() == 1

    def test_without_a_key_every_request_makes_a_job(self, api, user):
        assert post(api, key=None).status_code == 201
        assert post(api, key=None).status_code == 201
        assert Job.objects.filter(owner=user).count() == 2
        assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db
class TestSameKeyAnotherRequest:
    def test_another_body_is_refused_with_422(self, api, user):
        first = post(api).json()

        response = post(api, body={**BODY, "prompt": "A dragon"})

        assert response.status_code == 422
        body = response.json()
        assert body["code"] == "idempotency_key_reused"
        assert "key-1" in body["error"] and first["job_id"] in body["error"]
        assert Job.objects.filter(owner=user).count() == 1

    def test_another_endpoint_is_another_request(self, api):
        post(api)

        response = post(api, path=WORKFLOW, body={"input_image": "https://example.com/user.jpg"})

        assert response.status_code == 422

    def test_another_user_may_use_the_same_key(self, api, user, other_user):
        mine = post(api)
        theirs = post(client_for(other_user))

        assert (mine.status_code, theirs.status_code) == (201, 201)
        assert mine.json()["job_id"] != theirs.json()["job_id"]
        assert IdempotencyKey.objects.filter(key="key-1").count() == 2


def age(user, by: timedelta) -> None:
    IdempotencyKey.objects.filter(user=user).update(created_at=timezone.now() - by)


@pytest.mark.django_db
class TestKeyLifetime:
    def test_after_24_hours_the_key_is_free_again(self, api, user):
        first = post(api).json()
        age(user, timedelta(hours=24, seconds=1))

        again = post(api, body={**BODY, "prompt": "another job, same old key"})

        assert again.status_code == 201, again.content
        assert again.json()["job_id"] != first["job_id"]
        record = IdempotencyKey.objects.get(user=user, key="key-1")
        assert str(record.job_id) == again.json()["job_id"]

    def test_within_24_hours_it_still_holds(self, api, user):
        post(api)
        age(user, timedelta(hours=23))

        assert post(api).status_code == 200


@pytest.mark.django_db
class TestKeyTransaction:
    def test_a_refused_submission_does_not_use_up_its_key(self, api):
        refused = post(api, body={**BODY, "model": "no-such-model"})
        accepted = post(api)

        assert refused.status_code == 400
        assert accepted.status_code == 201
        assert IdempotencyKey.objects.count() == 1

    def test_a_submission_over_the_pending_limit_leaves_no_key(self, api, settings):
        settings.COORDINATOR_MAX_PENDING_PER_USER = 1
        post(api, key="a")
        post(api, key="b", body={**BODY, "prompt": "waits"})

        refused = post(api, key="c", body={**BODY, "prompt": "one too many"})

        assert refused.status_code == 429
        assert not IdempotencyKey.objects.filter(key="c").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tinside", "caf\u00e9"])
def test_a_malformed_key_is_a_400(api, key):
    response = post(api, key=key)

    assert response.status_code == 400, response.content
    assert "Idempotency-Key" in response.json()["error"]
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_a_key_of_255_printable_characters_is_accepted(api):
    key = ("k3y-~!@ " * 40)[:255]

    assert post(api, key=key).status_code == 201
    assert post(api, key=key).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_requests_with_one_key_make_exactly_one_job():
    """Both requests find no key, then queue on the coordinator lock (held here until both wait);
    the second inserts its job, hits the unique key, rolls back and answers the first's job."""
    user = UserFactory()
    results: list = []
    barrier = threading.Barrier(2)

    def submit():
        try:
            barrier.wait(timeout=10)
            response = post(client_for(user), key="race")
            results.append((response.status_code, response.json().get("job_id")))
        finally:
            connections.close_all()

    # The slot rows are the coordinator lock; a flushed database has none until first use.
    JobQueueState.objects.bulk_create(
        [JobQueueState(id=i) for i in range(1, settings.COORDINATOR_MAX_ACTIVE_JOBS + 1)], ignore_conflicts=True
    )
    with transaction.atomic():
        assert list(JobQueueState.objects.select_for_update().order_by("id"))
        threads = [threading.Thread(target=submit) for _ in range(2)]
        for thread in threads:
            thread.start()
        # Hold the lock until both requests wait on it, past their look-up of the key. (Inside a
        # transaction PostgreSQL keeps one snapshot of pg_stat_activity: clear it each time.)
        for _ in range(200):
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if cursor.fetchone()[0] >= 2:
                    break
            threading.Event().wait(0.05)
        else:
            pytest.fail("the two requests never both waited on the coordinator lock")
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(code for code, _ in results) == [200, 201]
    assert len({job_id for _, job_id in results}) == 1
    assert Job.objects.filter(owner=user).count() == 1
    assert IdempotencyKey.objects.filter(user=user, key="race").count() == 1
