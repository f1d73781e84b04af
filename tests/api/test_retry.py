"""POST /jobs/{id}/retry (issue 28, item 2): an ended job made again as a new job with the request it
was accepted with, linked both ways, submitted as any job is, audited `resubmitted`."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from coordination.models import CatalogModel, Job, JobQueueLog
from coordination.services import job_cancel, job_claim, job_complete, job_fail
from tests.factories import UserFactory
from tests.helpers import coordinator_lines, execute_workflow, fresh, submit
from workflows.models import WorkflowExecution, WorkflowStep

pytestmark = pytest.mark.django_db

REQUEST_FIELDS = ("kind", "job_type", "model", "required_models", "prompt", "params", "priority", "client_ref",
                  "dedupe_key", "webhook_url", "webhook_events_filter")


def failed(job: Job) -> Job:
    """`job`, which runs, failed for good by its worker."""
    job_claim(job_id=job.job_id, attempt=1)
    job_fail(job_id=job.job_id, attempt=1, error="provider said no", retry=False)
    return fresh(job)


def retry(client, job: Job, **headers):
    return client.post(f"/jobs/{job.job_id}/retry", **headers)


def test_a_retry_is_a_new_job_with_the_same_request_linked_both_ways(api, user):
    old = failed(submit(user, model="flux-dev", prompt="A castle at dusk", params={"simulate_seconds": 0, "seed": 7},
                        priority=-3, dedupe_key="castle"))

    response = retry(api, old)

    assert response.status_code == 201, response.content
    new = response.json()
    assert new["job_id"] != str(old.job_id) and new["status"] == "running"  # flux-dev is free: it starts
    assert new["retry_of"] == str(old.job_id) and new["retried_as"] == []
    assert {field: new[field] for field in REQUEST_FIELDS} == {
        "kind": "normal", "job_type": "image", "model": "flux-dev", "required_models": ["flux-dev"],
        "prompt": "A castle at dusk", "params": {"simulate_seconds": 0, "seed": 7}, "priority": -3, "client_ref": None,
        "dedupe_key": "castle", "webhook_url": None, "webhook_events_filter": None,
    }
    assert Job.objects.get(pk=new["job_id"]).owner == user
    again = api.get(f"/jobs/{old.job_id}").json()
    assert again["retried_as"] == [new["job_id"]] and again["status"] == "failed" and again["retry_of"] is None
    listed = {job["job_id"]: job for job in api.get("/jobs").json()["results"]}
    assert listed[str(old.job_id)]["retried_as"] == [new["job_id"]]
    assert listed[new["job_id"]]["retry_of"] == str(old.job_id)


def test_every_ended_job_may_be_retried_and_a_retry_again(api, user):
    running = submit(user)
    waiting = submit(user, dedupe_key="second")
    job_cancel(job_id=waiting.job_id)
    job_claim(job_id=running.job_id, attempt=1)
    job_complete(job_id=running.job_id, attempt=1)

    first = retry(api, running).json()  # completed: run again
    cancelled_again = retry(api, waiting)
    retried_twice = retry(api, failed(Job.objects.get(pk=first["job_id"]))).json()

    assert cancelled_again.status_code == 201 and cancelled_again.json()["retry_of"] == str(waiting.job_id)
    assert retried_twice["retry_of"] == first["job_id"]
    assert api.get(f"/jobs/{first['job_id']}").json()["retried_as"] == [retried_twice["job_id"]]


def test_a_deadline_gives_the_retry_as_long_to_wait_as_the_job_had(api, user, settings):
    running = submit(user)
    expired = submit(user, max_wait_seconds=600)
    Job.objects.filter(pk=expired.pk).update(status=Job.Status.EXPIRED, blocked_by_job_id=None, conflict_reason=None)

    new = retry(api, expired).json()

    assert new["status"] == "pending" and fresh(running).status == Job.Status.RUNNING
    start_by = Job.objects.get(pk=new["job_id"]).start_by
    assert timedelta(seconds=590) < start_by - timezone.now() <= timedelta(seconds=601)


def test_a_workflow_is_retried_from_its_own_copy_of_its_steps_after_its_definition_changed(api, user):
    old = failed(execute_workflow(user, prompt="at dawn"))
    kept = WorkflowExecution.objects.get(job=old)
    steps = WorkflowStep.objects.filter(workflow_id=kept.workflow_id)
    steps.update(prompt_template="changed since", default_model=CatalogModel.objects.get(name="flux-dev"))

    response = retry(api, old)

    assert response.status_code == 201, response.content
    new = response.json()
    assert new["workflow_id"] == kept.workflow_id and new["retry_of"] == str(old.job_id)
    assert new["required_models"] == kept.required_models == ["nano-banana-pro-leonardo", "motion-2.0-fast"]
    execution = WorkflowExecution.objects.get(job_id=new["job_id"])
    assert execution.steps == kept.steps and "changed since" not in str(execution.steps)
    assert execution.inputs == kept.inputs and new["prompt"] == "at dawn"


def test_its_owner_or_staff_may_retry_it_anyone_else_is_told_it_does_not_exist(api, staff_api, user, other_user):
    old = failed(submit(user))
    stranger = APIClient()
    stranger.force_authenticate(other_user)

    refused = retry(stranger, old)
    by_staff = retry(staff_api, old)

    assert refused.status_code == 404 and refused.json()["code"] == "not_found"
    assert by_staff.status_code == 201
    assert Job.objects.get(pk=by_staff.json()["job_id"]).owner == user  # still the owner's job
    assert retry(api, old).status_code == 201
    assert Job.objects.filter(retry_of=old).count() == 2
    assert retry(api, Job(job_id="00000000-0000-0000-0000-000000000000")).status_code == 404


def test_staff_who_may_only_read_cannot_retry_or_cancel_another_users_job(user):
    watcher = UserFactory(is_staff=True)  # staff, without the permission to operate the queue
    reader = APIClient()
    reader.force_authenticate(watcher)
    old, waiting = failed(submit(user)), submit(user, model="flux-dev")

    refused = retry(reader, old)
    cancel = reader.post(f"/jobs/{waiting.job_id}/cancel")

    assert refused.status_code == 403 and "operate the queue" in refused.json()["error"]
    assert cancel.status_code == 403 and fresh(waiting).status in (Job.Status.PENDING, Job.Status.RUNNING)
    assert not Job.objects.filter(retry_of=old).exists()
    assert reader.get(f"/jobs/{old.job_id}").status_code == 200  # reading stays theirs
    watcher.user_permissions.add(Permission.objects.get(codename="operate_queue"))
    watcher = type(watcher).objects.get(pk=watcher.pk)  # permissions are cached per user object
    reader.force_authenticate(watcher)
    assert retry(reader, old).status_code == 201


def test_a_job_that_has_not_ended_is_refused_with_409_and_nothing_changes(api, user):
    running, waiting = submit(user), submit(user)
    before = JobQueueLog.objects.count()

    for job in (running, waiting):
        response = retry(api, job)
        assert response.status_code == 409, response.content
        assert response.json()["code"] == "conflict"
        assert f"Job {job.job_id} is {job.status}: only a job that has ended" in response.json()["error"]
    assert Job.objects.count() == 2 and JobQueueLog.objects.count() == before


def test_the_same_idempotency_key_twice_makes_one_job(api, user):
    old = failed(submit(user))

    first = retry(api, old, HTTP_IDEMPOTENCY_KEY="retry-1")
    again = retry(api, old, HTTP_IDEMPOTENCY_KEY="retry-1")

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["job_id"] == first.json()["job_id"]
    assert Job.objects.filter(retry_of=old).count() == 1
    assert JobQueueLog.objects.filter(event_type="resubmitted").count() == 1


def test_the_retry_is_audited_on_the_old_jobs_trail_with_who_did_it(api, user):
    old = failed(submit(user))

    new = retry(api, old).json()

    row = JobQueueLog.objects.get(event_type=JobQueueLog.Event.RESUBMITTED)
    assert row.job_id == old.job_id and row.details == {"new_job": new["job_id"], "actor": f"api:{user.username}"}
    assert JobQueueLog.objects.filter(job_id=new["job_id"], event_type="submitted").exists()


def test_a_retry_that_may_start_starts_and_one_that_must_wait_waits_saying_why(api, user, coordinator_log):
    old = failed(submit(user))
    first = retry(api, old).json()
    coordinator_log.clear()

    second = retry(api, old).json()

    assert first["status"] == "running"
    assert second["status"] == "pending" and second["blocked_by_job_id"] == first["job_id"]
    assert f"motion-2.0-fast in use by normal job {first['job_id']}" in second["conflict_reason"]
    lines = coordinator_lines(coordinator_log)
    assert f"[COORDINATOR] Checking if job {second['job_id']} can start - Models: ['motion-2.0-fast']" in lines
    assert f"[COORDINATOR] Job {old.job_id} retried as job {second['job_id']} by api:{user.username}" in lines


def test_a_retry_is_refused_for_what_a_submission_would_be(api, user):
    old = failed(submit(user, model="flux-dev"))
    CatalogModel.objects.filter(name="flux-dev").update(enabled=False)

    response = retry(api, old)

    assert response.status_code == 400 and "disabled by an operator" in response.json()["error"]
    assert not Job.objects.filter(retry_of=old).exists()
    assert not JobQueueLog.objects.filter(event_type="resubmitted").exists()


def test_the_links_are_read_in_a_fixed_number_of_queries_however_many_jobs_have_retries(api, user, settings):
    settings.COORDINATOR_MAX_PENDING_PER_USER = 1000

    def queries_for_a_page(retried: int) -> int:
        for _ in range(retried):
            old = failed(submit(user))
            for _ in range(2):
                failed(Job.objects.get(pk=retry(api, old).json()["job_id"]))  # the model is free: it runs
        with CaptureQueriesContext(connection) as page:
            listed = api.get("/jobs", {"limit": 500}).json()["results"]
        assert sum(len(job["retried_as"]) for job in listed) == Job.objects.filter(retry_of__isnull=False).count()
        with CaptureQueriesContext(connection) as one:
            api.get(f"/jobs/{old.job_id}")
        return len(page), len(one)

    few = queries_for_a_page(2)
    assert queries_for_a_page(20) == few  # 22 jobs with retries listed, not 2


def test_a_workflow_whose_model_was_disabled_since_is_refused_naming_it(api, user):
    old = failed(execute_workflow(user))
    CatalogModel.objects.filter(name="nano-banana-pro-leonardo").update(enabled=False)

    response = retry(api, old)

    assert response.status_code == 400
    assert "Model 'nano-banana-pro-leonardo' is disabled by an operator" in response.json()["error"]
    assert "motion-2.0-fast" in response.json()["error"]  # the known models, all of them
    assert not Job.objects.filter(retry_of=old).exists()
