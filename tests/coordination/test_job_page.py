"""The admin's job page (issue 28, item 1): what a job waits for or where it runs, its attempts, its
history as a timeline, its webhook deliveries and files, and the console's Cancel and Priority."""

import re
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from coordination.job_page import TIMELINE_SHOWN
from coordination.models import Job, JobEvent, JobFile, JobQueueLog, ProviderRun, WebhookAttempt, WebhookDelivery
from coordination.services import job_claim, job_complete, job_fail, job_resubmit
from tests.factories import UserFactory
from tests.helpers import events, execute_workflow, held_clock, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))
    return client


def job_page(client, job: Job) -> str:
    response = client.get(reverse("admin:coordination_job_change", args=[job.job_id]))
    assert response.status_code == 200
    return response.content.decode()


def section(page: str, element_id: str) -> str:
    """The element with this id, up to its closing tag (sections, cells and paragraphs do not nest here)."""
    start = page.index(f'id="{element_id}"')
    tag = page[page.rindex("<", 0, start) + 1:start].split()[0]
    return page[page.index(">", start) + 1:page.index(f"</{tag}>", start)]


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def second(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")


def link_to(job: Job) -> str:
    return f'href="{reverse("admin:coordination_job_change", args=[job.job_id])}"'


def test_a_waiting_job_says_why_links_what_it_waits_for_and_has_the_apis_place_and_start(staff_client, staff_api, user):
    running = submit(user)
    waiting = submit(user)
    now = timezone.now() + timedelta(seconds=1)

    with held_clock(now):
        body = staff_api.get(f"/jobs/{waiting.job_id}").json()
        page = job_page(staff_client, waiting)

    reason = section(page, "job-reason")
    assert "Model conflict: motion-2.0-fast in use by normal job" in text(reason) and link_to(running) in reason
    assert link_to(running) in section(page, "waiting-for")
    assert text(section(page, "job-place")) == str(body["queue_position"]) == "1"
    expected = datetime.fromisoformat(body["estimated_start_at"])
    assert text(section(page, "job-expected-start")) == second(expected)


def test_a_running_job_shows_its_slot_how_long_it_has_run_and_where(staff_client, user):
    running = submit(user)
    now = timezone.now() + timedelta(seconds=1)
    Job.objects.filter(pk=running.pk).update(started_at=now - timedelta(seconds=75))

    with held_clock(now):
        page = job_page(staff_client, running)

    assert text(section(page, "job-slot")) == "slot 1"
    assert text(section(page, "job-running-for")) == "1 min 15 s"
    assert text(section(page, "job-runner")) == "in a worker process: motion-2.0-fast on the simulated runner (leonardo)"


def test_a_job_at_its_provider_shows_what_the_provider_last_said_as_the_api_does(staff_client, staff_api, user):
    running = submit(user, model="flux-dev")
    job_claim(job_id=running.job_id, attempt=1)
    ProviderRun.objects.create(job_id=running.job_id, attempt=1, model="flux-dev", style="poll", provider_job_id="r-42",
                               provider_status="running", progress=0.45, submitted_at=timezone.now(),
                               deadline_at=timezone.now() + timedelta(minutes=5), watcher="poller-1")

    page = job_page(staff_client, running)
    at_provider = staff_api.get(f"/jobs/{running.job_id}").json()["at_provider"]

    assert (at_provider["provider_job_id"], at_provider["status"], at_provider["progress"]) == ("r-42", "running", 0.45)
    where = text(section(page, "job-runner"))
    assert where.startswith('at its provider as r-42 (poll), which last said "running", 45 %')
    assert "watched by poller poller-1" in where
    assert "r-42 (poll)" in text(section(page, "attempts"))


def test_an_ended_job_shows_its_error_and_how_long_it_ran(staff_client, user):
    failed = submit(user)
    job_fail(job_id=failed.job_id, attempt=1, error="provider said no")

    page = job_page(staff_client, failed)

    assert text(section(page, "job-error")) == "provider said no"
    assert "Ended: failed" in section(page, "ended")
    assert "Attempt 1 of at most 1" in text(section(page, "attempts"))


def test_the_timeline_lists_the_jobs_own_events_in_order_to_the_second(staff_client, user):
    first = submit(user)
    waiting = submit(user)
    submit(user, model="flux-dev")  # another job's events are not this one's
    job_claim(job_id=first.job_id, attempt=1)
    job_complete(job_id=first.job_id, attempt=1)  # the waiting job starts
    job_claim(job_id=waiting.job_id, attempt=1)
    job_complete(job_id=waiting.job_id, attempt=1)

    page = job_page(staff_client, waiting)

    timeline = section(page, "timeline")
    assert re.findall(r'<strong class="what">([^<]+)</strong>', timeline) == events(waiting) == [
        "submitted", "blocked", "started", "claimed", "completed"]
    blocked = JobQueueLog.objects.get(job_id=waiting.job_id, event_type="blocked")
    assert f'<span class="when">{second(blocked.created_at)}</span><strong class="what">blocked</strong>' in timeline
    assert link_to(first) in timeline  # what it waited for


def test_a_workflows_timeline_has_its_steps(staff_client, user):
    workflow = execute_workflow(user)
    job_claim(job_id=workflow.job_id, attempt=1)
    workflow.workflow_execution.current_step = 2
    workflow.workflow_execution.current_step_model = "motion-2.0-fast"
    workflow.workflow_execution.save()

    timeline = text(section(job_page(staff_client, workflow), "timeline"))

    assert "next step step 2 on motion-2.0-fast" in timeline


def test_webhook_deliveries_show_with_what_the_receiver_answered(staff_client, user, settings):
    settings.COORDINATOR_WEBHOOK_ALLOW_HTTP = settings.COORDINATOR_WEBHOOK_ALLOW_PRIVATE = True
    job = submit(user, webhook_url="http://127.0.0.1:9/hook")
    job_fail(job_id=job.job_id, attempt=1, error="no")
    delivery = WebhookDelivery.objects.get(job=job)
    WebhookAttempt.objects.create(delivery=delivery, status_code=500)
    WebhookAttempt.objects.create(delivery=delivery, status_code=204)

    deliveries = text(section(job_page(staff_client, job), "deliveries"))

    assert "To http://127.0.0.1:9/hook." in deliveries and "job.failed" in deliveries
    assert deliveries.index("HTTP 500") < deliveries.index("HTTP 204")


def test_a_job_without_a_webhook_or_files_shows_neither(staff_client, user):
    page = job_page(staff_client, submit(user))
    assert 'id="deliveries"' not in page and 'id="files"' not in page


def test_its_files_show_with_how_their_copy_stands_and_a_link_to_a_kept_one(staff_client, user):
    job = submit(user)
    job_claim(job_id=job.job_id, attempt=1)
    job_complete(job_id=job.job_id, attempt=1, result={"files": [
        {"source_url": "https://cdn.example.com/a.png", "content_type": "image/png"},
        {"source_url": "https://cdn.example.com/b.png", "content_type": "image/png"}]})
    JobFile.objects.filter(job=job, n=0).update(state=JobFile.State.STORED, size=2048, stored_at=timezone.now())

    files = section(job_page(staff_client, job), "files")

    assert f'<a href="/jobs/{job.job_id}/files/0?sig=' in files
    assert "https://cdn.example.com/b.png" in files and "copying" in text(files)


def operator_buttons(page: str) -> list[str]:
    return re.findall(r'id="job-(cancel|priority|retry)"', section(page, "job-actions"))


def test_an_operator_gets_cancel_and_priority_where_they_apply(staff_client, user):
    done = submit(user, model="flux-dev")
    job_fail(job_id=done.job_id, attempt=1, error="no")
    running = submit(user)
    waiting = submit(user)

    page = job_page(staff_client, waiting)

    assert operator_buttons(page) == ["cancel", "priority"]
    assert f'href="{reverse("admin:queue-console-cancel")}?job={waiting.job_id}"' in page
    assert f'href="{reverse("admin:queue-console-priority", args=[waiting.job_id])}"' in page
    assert operator_buttons(job_page(staff_client, running)) == ["cancel"]
    assert operator_buttons(job_page(staff_client, done)) == ["retry"]  # an ended job: its retry's preview
    assert f'href="{reverse("admin:queue-console-retry")}?job={done.job_id}"' in job_page(staff_client, done)


def test_a_retried_job_and_its_retry_link_to_each_other(staff_client, user):
    old = submit(user, model="flux-dev")
    job_fail(job_id=old.job_id, attempt=1, error="no")
    new = job_resubmit(job_id=old.job_id, actor="test")

    retried = section(job_page(staff_client, old), "job-retries")
    assert text(retried) == f"Retried as {str(new.job_id)[:8]} ." and link_to(new) in retried
    retry = section(job_page(staff_client, new), "job-retries")
    assert text(retry) == f"A retry of {str(old.job_id)[:8]} ." and link_to(old) in retry


def test_staff_who_may_only_watch_get_no_buttons(client, user):
    watcher = UserFactory(is_staff=True)
    watcher.user_permissions.add(Permission.objects.get(codename="view_job"))
    client.force_login(watcher)
    submit(user)
    waiting = submit(user)

    page = job_page(client, waiting)

    assert operator_buttons(page) == [] and 'id="job-reason"' in page


def test_the_internal_fields_are_grouped_apart_each_saying_what_it_is_for(staff_client, user):
    internals = section(job_page(staff_client, submit(user)), "internals")
    for name in ("attempt", "claimed_attempt", "lease_expires_at", "heartbeat_at", "cancel_requested_at", "held"):
        assert re.search(rf"<dt>{name}: .*?</dt>\s*<dd class=\"help\">\w", internals, re.S), name


def _history(job: Job, rows: int) -> None:
    """`rows` more audit rows, step events, and webhook deliveries with two answers each for `job`."""
    now = timezone.now()
    JobQueueLog.objects.bulk_create(JobQueueLog(job_id=job.job_id, job_type=job.kind, event_type="reblocked",
                                                conflict_reason="still waiting", details={"actor": "test"}) for _ in range(rows))
    JobEvent.objects.bulk_create(JobEvent(job_id=job.job_id, event="step", state={"current_step": n}, created_at=now)
                                 for n in range(rows))
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(job=job, webhook_id=f"msg_{job.job_id.hex[:8]}_{n}", event_type="job.started", url="https://x.test")
        for n in range(rows))
    WebhookAttempt.objects.bulk_create(WebhookAttempt(delivery=delivery, status_code=code)
                                       for delivery in deliveries for code in (500, 200))


def test_the_page_reads_the_same_number_of_queries_however_long_the_history(staff_client, user, django_assert_max_num_queries):
    submit(user)
    short, long = submit(user), submit(user)
    _history(short, 5)
    _history(long, 200)
    job_page(staff_client, short)  # the session and the user are read once more on a first request

    with django_assert_max_num_queries(20) as few:
        job_page(staff_client, short)
    with django_assert_max_num_queries(len(few.captured_queries)):
        page = job_page(staff_client, long)

    assert f"The latest {TIMELINE_SHOWN} of its events" in page
    assert len(re.findall(r'<strong class="what">', section(page, "timeline"))) == TIMELINE_SHOWN


def test_a_missing_job_sends_back_to_the_admin_index(staff_client):
    response = staff_client.get(reverse("admin:coordination_job_change", args=["0f7a8e63-6e35-467f-a7fd-bc53104827bd"]))
    assert response.status_code == 302 and response["Location"] == reverse("admin:index")
