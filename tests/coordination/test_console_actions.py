"""The queue console's actions through the admin, as an operator uses them: each page first shows
what will change and changes nothing; its "Yes" runs the action, audited with the operator's name."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from coordination.models import CatalogModel, Job, JobQueueLog, JobQueueState
from coordination.services import job_claim, job_complete, job_stopped
from tests.factories import UserFactory
from tests.helpers import fresh, submit, submit_confirmation

pytestmark = pytest.mark.django_db

CONSOLE = "admin:queue-console"


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))
    return client


def confirm(client, url: str, **params):
    """Open the action's preview page, press its "Yes", and follow the redirect back to the console."""
    return submit_confirmation(client, client.get(url, params), follow=True)


def audit_rows() -> list[tuple]:
    return list(JobQueueLog.objects.order_by("id").values_list("event_type", "details"))


def test_the_console_offers_every_action(staff_client, user):
    running, waiting = submit(user), submit(user)
    page = staff_client.get(reverse(CONSOLE)).content.decode()

    for name in ("dispatch", "reconcile", "clear-stale", "reset"):
        assert reverse(f"admin:queue-console-{name}") in page
    assert reverse("admin:queue-console-pause", args=["minimax/video-01"]) in page
    assert reverse("admin:queue-console-priority", args=[waiting.job_id]) in page
    assert f"{reverse('admin:queue-console-cancel')}?job={running.job_id}" in page


def test_pause_shows_the_line_then_pauses_and_resume_starts_the_waiter(staff_client, staff_user, user):
    running, waiting = submit(user), submit(user)
    url = reverse("admin:queue-console-pause", args=["motion-2.0-fast"])
    before = audit_rows()

    preview = staff_client.get(url).content.decode()

    assert "Pause model?" in preview and str(running.job_id) in preview and str(waiting.job_id) in preview
    assert "keeps running" in preview and "Model paused" in preview
    assert audit_rows() == before and not CatalogModel.objects.get(name="motion-2.0-fast").paused

    page = confirm(staff_client, url).content.decode()

    assert "Paused motion-2.0-fast." in page and ">paused<" in page
    assert JobQueueLog.objects.filter(event_type="model_paused").get().details == {
        "model": "motion-2.0-fast", "actor": f"admin:{staff_user.username}",
    }
    confirm(staff_client, reverse("admin:queue-console-cancel"), job=str(running.job_id))
    job_claim(job_id=running.job_id, attempt=1)
    job_stopped(job_id=running.job_id, attempt=1)  # as its worker reports a stop: the model frees
    assert fresh(running).error == f"Cancelled by admin:{staff_user.username}; stopped while running"
    assert fresh(waiting).status == Job.Status.PENDING  # ... but it is paused

    page = confirm(staff_client, reverse("admin:queue-console-resume", args=["motion-2.0-fast"])).content.decode()

    assert "Resumed motion-2.0-fast; started 1 job(s)." in page
    assert fresh(waiting).status == Job.Status.RUNNING


def test_priority_asks_shows_the_new_place_then_moves_the_job(staff_client, staff_user, user):
    submit(user)
    first, second = submit(user), submit(user)
    url = reverse("admin:queue-console-priority", args=[second.job_id])

    assert 'name="priority"' in staff_client.get(url).content.decode()  # step one: which priority
    preview = staff_client.get(url, {"priority": 7}).content.decode()
    assert "0 → 7" in preview and "2 → 1" in preview and fresh(second).priority == 0

    page = confirm(staff_client, url, priority="7").content.decode()

    assert f"Job {second.job_id}: priority 0 → 7" in page
    assert fresh(second).priority == 7 and fresh(first).blocked_by_job_id == second.job_id
    row = JobQueueLog.objects.get(event_type="priority_changed")
    assert row.details == {"from": 0, "to": 7, "actor": f"admin:{staff_user.username}"}


def test_bad_input_is_explained_and_changes_nothing(staff_client, user):
    running, waiting = submit(user), submit(user)
    before = audit_rows()

    bad_priority = staff_client.get(reverse("admin:queue-console-priority", args=[waiting.job_id]), {"priority": "soon"})
    assert "Priority must be a whole number" in bad_priority.content.decode()
    assert 'id="confirm-form"' not in bad_priority.content.decode()
    pages = {
        "whole number from -1000 to 1000": staff_client.get(
            reverse("admin:queue-console-priority", args=[waiting.job_id]), {"priority": "5000"}),
        "only a waiting job&#x27;s priority can change": staff_client.get(
            reverse("admin:queue-console-priority", args=[running.job_id]), {"priority": "1"}),
        "Unknown model": staff_client.get(reverse("admin:queue-console-pause", args=["no-such-model"])),
        "is not a job id": staff_client.get(reverse("admin:queue-console-cancel"), {"job": "not-a-uuid"}),
        "No job chosen": staff_client.get(reverse("admin:queue-console-cancel")),
        "There is no slot": staff_client.get(reverse("admin:queue-console-reset"), {"slot": "²"}),
    }
    for message, response in pages.items():
        page = response.content.decode()
        assert response.status_code == 200 and message in page and 'id="confirm-form"' not in page, message
    # Posted straight at the action (no preview), bad input still changes nothing.
    for url, data in [(reverse("admin:queue-console-reset"), {"slot": "abc"}),
                      (reverse("admin:queue-console-reset"), {"slot": "1"}),  # no preview seen: refused
                      (reverse("admin:queue-console-cancel"), {"job": "nope"}),
                      (reverse("admin:queue-console-priority", args=[waiting.job_id]), {"priority": "5000"})]:
        page = staff_client.post(url, {"confirmed": "yes", **data}, follow=True).content.decode()
        assert "nothing was changed" in page or "whole number" in page, page
    assert audit_rows() == before and fresh(waiting).priority == 0 and fresh(running).status == Job.Status.RUNNING


def test_cancel_from_the_console_and_from_the_jobs_list(staff_client, user):
    running, first, second = submit(user), submit(user), submit(user)
    cancel = reverse("admin:queue-console-cancel")

    preview = staff_client.get(cancel, {"job": [str(running.job_id), str(first.job_id)]}).content.decode()
    assert "its worker is asked to stop" in preview and "cancelled now" in preview

    page = confirm(staff_client, cancel, job=[str(running.job_id), str(first.job_id)]).content.decode()

    assert "Cancelled 1 job(s); asked 1 running job(s) to stop." in page
    assert fresh(first).status == Job.Status.CANCELLED
    assert fresh(running).cancel_requested_at is not None

    # The jobs list's action leads to the same preview.
    response = staff_client.post(
        reverse("admin:coordination_job_changelist"), {"action": "cancel_jobs", "_selected_action": [str(second.job_id)]}
    )
    assert response.status_code == 302 and response.url == f"{cancel}?job={second.job_id}"


def test_dispatch_and_reconcile_preview_then_run(staff_client, staff_user, user):
    running, waiting = submit(user), submit(user)
    JobQueueState.objects.filter(id=1).update(active_job_id=None, active_job_type=None, active_models=[])  # by hand

    preview = staff_client.get(reverse("admin:queue-console-reconcile")).content.decode()
    assert "running job is in no slot" in preview and str(running.job_id) in preview
    assert JobQueueState.objects.get(id=1).active_job_id is None

    page = confirm(staff_client, reverse("admin:queue-console-reconcile")).content.decode()
    assert "Repaired 1 difference(s); started 0 job(s)." in page
    assert JobQueueState.objects.get(id=1).active_job_id == running.job_id

    assert "slots free" in staff_client.get(reverse("admin:queue-console-dispatch")).content.decode()
    page = confirm(staff_client, reverse("admin:queue-console-dispatch")).content.decode()
    assert "Dispatched: started 0 job(s)." in page and fresh(waiting).status == Job.Status.PENDING
    # Reconcile: one row for the difference, one for the run; dispatch: one.
    assert [details["actor"] for event, details in audit_rows() if event in ("reconciled", "dispatched")] == [
        f"admin:{staff_user.username}"
    ] * 3


def test_clear_stale_and_reset_are_on_the_console(staff_client, staff_user, user):
    running, waiting = submit(user), submit(user)
    reset = reverse("admin:queue-console-reset")

    preview = staff_client.get(reset, {"slot": 1}).content.decode()
    assert "job is running: it will be ended as failed" in preview and fresh(running).status == Job.Status.RUNNING

    page = confirm(staff_client, reset, slot="1").content.decode()

    assert "Reset 1 slot(s); failed 1 running job(s); started 1." in page
    assert fresh(running).status == Job.Status.FAILED and fresh(waiting).status == Job.Status.RUNNING
    page = confirm(staff_client, reverse("admin:queue-console-clear-stale")).content.decode()
    assert "Repaired 0 waiting job(s); started 0." in page
    assert JobQueueLog.objects.filter(event_type="stale_cleared", job_id=None).get().details == {
        "actor": f"admin:{staff_user.username}", "repaired": 0, "started": [],
    }


def test_only_staff_reach_the_actions(client, user):
    client.force_login(user)
    response = client.get(reverse("admin:queue-console-dispatch"))
    assert response.status_code == 302 and "/login/" in response.url
    response = client.post(reverse("admin:queue-console-dispatch"), {"confirmed": "yes"})
    assert response.status_code == 302 and not JobQueueLog.objects.filter(event_type="dispatched").exists()


def test_staff_without_the_operate_permission_may_watch_but_not_act(client, user):
    watcher = UserFactory(is_staff=True)
    watcher.user_permissions.add(Permission.objects.get(codename="view_job"))
    client.force_login(watcher)
    running = submit(user)

    page = client.get(reverse(CONSOLE)).content.decode()
    assert str(running.job_id) in page and "needs the permission" in page
    assert reverse("admin:queue-console-reset") not in page
    assert client.get(reverse("admin:queue-console-reset"), {"slot": 1}).status_code == 403
    response = client.post(reverse("admin:queue-console-reset"), {"confirmed": "yes", "slot": "1"})
    assert response.status_code == 403 and fresh(running).status == Job.Status.RUNNING

    watcher.user_permissions.add(Permission.objects.get(codename="operate_queue"))
    client.force_login(type(watcher).objects.get(pk=watcher.pk))  # permissions are cached per user object
    assert client.get(reverse("admin:queue-console-reset"), {"slot": 1}).status_code == 200


def test_reset_refuses_when_the_slot_shows_another_job_than_the_preview_did(staff_client, user):
    first, second = submit(user), submit(user)
    preview = staff_client.get(reverse("admin:queue-console-reset"), {"slot": 1})
    assert str(first.job_id) in preview.content.decode()
    job_complete(job_id=first.job_id, attempt=1)  # meanwhile: the first ends, the second starts in slot 1

    page = submit_confirmation(staff_client, preview, follow=True).content.decode()

    assert f"Slot 1 now shows job {second.job_id}, not {first.job_id} as the preview did" in page
    assert fresh(second).status == Job.Status.RUNNING
    assert not JobQueueLog.objects.filter(event_type="state_reset").exists()


def test_reconcile_repairs_what_its_preview_showed_and_nothing_else(staff_client, user):
    submit(user), submit(user)
    preview = staff_client.get(reverse("admin:queue-console-reconcile"))
    assert "nothing to repair" in preview.content.decode()
    JobQueueState.objects.filter(id=1).update(active_job_id=None, active_job_type=None, active_models=[])  # after the look

    page = submit_confirmation(staff_client, preview, follow=True).content.decode()

    assert "Repaired 0 difference(s)" in page
    assert JobQueueState.objects.get(id=1).active_job_id is None  # left for the next look
