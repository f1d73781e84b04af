"""Retry in the admin (issue 28, item 2): the console's "Failed" section, and the retry page it and
the jobs list's bulk action open: a preview that changes nothing, then a "Yes" that makes the linked
jobs, for operators only."""

import threading
import uuid
from datetime import timedelta
from urllib.parse import parse_qs

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from coordination.exceptions import InvalidTransition
from coordination.models import Job, JobQueueLog
from coordination.services import job_claim, job_fail, job_resubmit
from tests.factories import UserFactory
from tests.helpers import fresh, submit, submit_confirmation

pytestmark = pytest.mark.django_db

RETRY = "admin:queue-console-retry"


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))
    return client


def failed(job: Job, error: str = "provider said no") -> Job:
    job_claim(job_id=job.job_id, attempt=1)
    job_fail(job_id=job.job_id, attempt=1, error=error, retry=False)
    return fresh(job)


def bulk_retry(client, *jobs: Job):
    return client.post(reverse("admin:coordination_job_changelist"),
                       {"action": "retry_jobs", "_selected_action": [str(job.job_id) for job in jobs]})


def test_the_bulk_action_previews_then_yes_makes_a_linked_job_for_each_ended_one(staff_client, staff_user, user):
    first = failed(submit(user, model="flux-dev", prompt="a castle"))
    second = failed(submit(user, prompt="a knight"))
    running = submit(user, model="minimax/video-01")

    response = bulk_retry(staff_client, first, second, running)
    assert response.status_code == 302
    path, _, query = response.url.partition("?")
    assert path == reverse(RETRY)
    assert sorted(parse_qs(query)["job"]) == sorted(str(job.job_id) for job in (first, second, running))
    preview = staff_client.get(response.url)
    page = preview.content.decode()
    assert "Retry jobs?" in page and "a new job with its request, for its owner" in page
    assert "nothing: it is running; only a job that has ended can be retried" in page
    assert not Job.objects.filter(retry_of__isnull=False).exists()  # the preview changed nothing
    assert not JobQueueLog.objects.filter(event_type="resubmitted").exists()

    page = submit_confirmation(staff_client, preview, follow=True).content.decode()

    made = {job.retry_of_id: job for job in Job.objects.filter(retry_of__isnull=False)}
    assert set(made) == {first.job_id, second.job_id}
    assert (made[first.job_id].prompt, made[first.job_id].model, made[first.job_id].owner) == ("a castle", "flux-dev", user)
    assert "Retried 2 job(s): new job(s)" in page and f"Job {running.job_id} is running" in page
    assert {row.job_id: row.details["actor"] for row in JobQueueLog.objects.filter(event_type="resubmitted")} == {
        first.job_id: f"admin:{staff_user.username}", second.job_id: f"admin:{staff_user.username}",
    }


def test_a_second_yes_makes_no_second_job(staff_client, user):
    old = failed(submit(user))
    preview = staff_client.get(reverse(RETRY), {"job": str(old.job_id)})

    submit_confirmation(staff_client, preview, follow=True)
    page = submit_confirmation(staff_client, preview, follow=True).content.decode()

    assert Job.objects.filter(retry_of=old).count() == 1
    assert f"Job {old.job_id} was retried since the preview" in page


@pytest.mark.django_db(transaction=True)
def test_two_yes_at_the_same_moment_make_one_job(user):
    """Two operators' "Yes" (or one double click) for the same preview, on two connections at once:
    the count of retries each saw is checked under the coordinator lock, so one makes the job."""
    old = failed(submit(user))
    start, outcomes = threading.Barrier(2), []

    def yes():
        start.wait(5)
        try:
            outcomes.append(job_resubmit(job_id=old.job_id, actor="admin:operator", retries_seen=0).job_id)
        except InvalidTransition as refused:
            outcomes.append(str(refused))
        finally:
            connection.close()

    threads = [threading.Thread(target=yes) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert Job.objects.filter(retry_of=old).count() == 1
    assert sorted(map(type, outcomes), key=str) == [str, uuid.UUID]
    assert "was retried since the preview" in next(o for o in outcomes if isinstance(o, str))
    assert JobQueueLog.objects.filter(job_id=old.job_id, event_type="resubmitted").count() == 1


def test_a_view_only_staff_user_can_neither_offer_nor_run_a_retry(client, user):
    watcher = UserFactory(is_staff=True)
    watcher.user_permissions.add(Permission.objects.get(codename="view_job"))
    client.force_login(watcher)
    old = failed(submit(user))

    jobs_list = client.get(reverse("admin:coordination_job_changelist")).content.decode()
    console = client.get(reverse("admin:queue-console")).content.decode()

    assert "retry_jobs" not in jobs_list
    assert str(old.job_id) in console and reverse(RETRY) not in console
    assert client.get(reverse(RETRY), {"job": str(old.job_id)}).status_code == 403
    response = client.post(reverse(RETRY), {"confirmed": "yes", "job": str(old.job_id), "retries": f"{old.job_id}:0"})
    assert response.status_code == 403
    assert not Job.objects.filter(retry_of=old).exists()


def test_the_console_lists_the_last_days_failures_by_model_with_their_errors(staff_client, user):
    flux = failed(submit(user, model="flux-dev"), error="flux said no")
    motion = failed(submit(user), error="motion timed out")
    old = failed(submit(user, model="flux-dev"), error="too old to list")
    Job.objects.filter(pk=old.pk).update(completed_at=timezone.now() - timedelta(hours=25))
    expired = submit(user, model="minimax/video-01", max_wait_seconds=60)
    blocker = submit(user, model="minimax/video-01")
    Job.objects.filter(pk=expired.pk).update(status=Job.Status.EXPIRED, completed_at=timezone.now(),
                                             error="not started by then")

    page = staff_client.get(reverse("admin:queue-console")).content.decode()
    failed_section = page[page.index('id="failed"'):page.index('id="timeline-heading"')]

    assert [model for model in ("minimax/video-01", "motion-2.0-fast", "flux-dev") if f"<h3>{model}</h3>" in failed_section] \
        == ["minimax/video-01", "motion-2.0-fast", "flux-dev"]
    assert failed_section.index("minimax/video-01") < failed_section.index("motion-2.0-fast") < failed_section.index("flux-dev")
    for job, error in ((flux, "flux said no"), (motion, "motion timed out"), (expired, "not started by then")):
        assert f'data-failed="{job.job_id}"' in failed_section and error in failed_section
        assert f'{reverse(RETRY)}?job={job.job_id}' in failed_section
        assert reverse("admin:coordination_job_change", args=[job.job_id]) in failed_section
    assert str(old.job_id) not in failed_section and str(blocker.job_id) not in failed_section
