"""The operators' console: every page renders, history is read-only, and the usage guide's two
troubleshooting fixes ("Clear stale queue", "Reset state") work as admin actions with a
confirmation page."""

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ, Schedule, Task
from django_q.signing import SignedPackage
from rest_framework.authtoken.models import Token

from coordination import services
from coordination.models import (
    CapacityGroup, CatalogModel, InputFile, Job, JobFile, JobQueueLog, JobQueueState, ProviderRun, WebhookDelivery,
)
from tests.factories import JobRowFactory
from tests.helpers import submit_confirmation
from workflows.services import workflow_execute

pytestmark = pytest.mark.django_db

JOB_CHANGELIST = reverse("admin:coordination_job_changelist")
STATE_CHANGELIST = reverse("admin:coordination_jobqueuestate_changelist")


@pytest.fixture
def console(staff_user) -> Client:
    return logged_in(staff_user)


def logged_in(user) -> Client:
    # The session remembers a hash of the password: log in the user as stored (UserFactory sets
    # the password after saving, so the factory's instance differs from its row).
    client = Client()
    client.force_login(type(user).objects.get(pk=user.pk))
    return client


def submit(owner, model: str = "motion-2.0-fast", prompt: str = "A knight riding a horse") -> Job:
    return services.job_submit(owner=owner, model=model, prompt=prompt)


def submit_workflow(owner) -> Job:
    return workflow_execute(
        owner=owner, workflow_id="knight-style-img-to-video", inputs={"input_image": "https://example.com/user.jpg"}
    )


def running_row(model: str = "flux-dev") -> Job:
    """A running job written by hand (no slot row names it unless the test says so)."""
    return JobRowFactory(status=Job.Status.RUNNING, model=model, job_type="image", started_at=timezone.now(), attempt=1)


def events(job: Job) -> list[str]:
    return list(JobQueueLog.objects.filter(job_id=job.job_id).order_by("id").values_list("event_type", flat=True))


def finish_behind_the_coordinators_back(job: Job) -> None:
    """What a crashed worker or the guide's hand-written SQL leaves: the job finished, its slot
    freed, but nobody re-decided the jobs that waited for it."""
    Job.objects.filter(pk=job.pk).update(status=Job.Status.COMPLETED, completed_at=timezone.now())
    JobQueueState.objects.filter(active_job_id=job.job_id).update(
        active_job_id=None, active_job_type=None, active_models=[], started_at=None
    )


def slot_one() -> JobQueueState:
    return JobQueueState.objects.get(pk=1)


# --- every page renders ---------------------------------------------------------------------------


@pytest.fixture
def one_of_each(user, staff_user):
    """A row for every model the admin shows, so each change page has something to show."""
    normal = submit(user)
    submit_workflow(user)
    Group.objects.create(name="operators")
    CapacityGroup.objects.create(name="acme-api-key", capacity=2).catalog_models.set(CatalogModel.objects.all()[:2])
    WebhookDelivery.objects.create(
        webhook_id="msg_example", job=normal, event_type="job.completed", url="https://example.com/hook", payload={}
    )
    Token.objects.create(user=staff_user)
    ProviderRun.objects.create(
        job=normal, attempt=1, model=normal.model, style="poll", provider_job_id="prov-1",
        status_url="https://provider.example/jobs/prov-1", provider_status="running",
        submitted_at=timezone.now(), deadline_at=timezone.now(),
    )
    InputFile.objects.create(owner=staff_user, storage_name="inputs/x/y.png", size=3, sha256="0" * 64,
                             content_type="image/png")
    JobFile.objects.create(job=normal, n=0, source_url="https://cdn.example/out.png", state="stored", size=3,
                           content_type="image/png", next_try_at=timezone.now(), created_at=timezone.now())
    Schedule.objects.create(name="reaper", func="coordination.tasks.reaper_schedule", schedule_type=Schedule.MINUTES, minutes=1)
    now = timezone.now()
    for success in (True, False):
        Task.objects.create(
            id=f"task{int(success)}".ljust(32, "0"), name=f"job {normal.job_id} attempt 1",
            func="coordination.tasks.run_job", args=(str(normal.job_id), 1), started=now, stopped=now,
            success=success, result=None, attempt_count=1,
        )
    payload = {"id": "q" * 32, "name": "queued task", "func": "coordination.tasks.run_job", "args": (), "kwargs": {}}
    OrmQ.objects.create(key="jobqueue", payload=SignedPackage.dumps(payload), lock=None)


def registered_models():
    return sorted(admin.site._registry, key=lambda model: model._meta.label)


def test_every_changelist_and_change_page_renders(console, one_of_each):
    for model in registered_models():
        opts = model._meta
        changelist = console.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        assert changelist.status_code == 200, opts.label
        obj = model._default_manager.first()
        assert obj is not None, f"one_of_each makes no {opts.label}"
        change = console.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))
        assert change.status_code == 200, opts.label


def test_the_admin_index_lists_the_coordinators_tables(console):
    response = console.get(reverse("admin:index"))

    assert response.status_code == 200
    for url in (JOB_CHANGELIST, STATE_CHANGELIST, reverse("admin:coordination_jobqueuelog_changelist"),
                reverse("admin:coordination_catalogmodel_changelist"),
                reverse("admin:workflows_workflowdefinition_changelist")):
        assert url.encode() in response.content


def test_job_changelist_shows_why_a_job_waits(console, user):
    running = submit(user)
    waiting = submit(user, prompt="A dragon flying")

    response = console.get(JOB_CHANGELIST)

    assert f"Model conflict: motion-2.0-fast in use by normal job {running.job_id}" in response.content.decode()
    assert str(waiting.job_id) in response.content.decode()


def test_operators_find_a_job_and_its_log_rows_by_id(console, user):
    running = submit(user)
    waiting = submit(user, prompt="A dragon flying")
    fragment = str(waiting.job_id)[:8]

    jobs = console.get(JOB_CHANGELIST, {"q": fragment})
    log = console.get(reverse("admin:coordination_jobqueuelog_changelist"), {"q": str(waiting.job_id)})

    # Listed rows, not links: the waiting job's reason links to the running job it waits for.
    assert [job.job_id for job in jobs.context["cl"].result_list] == [waiting.job_id]
    assert str(waiting.job_id) in jobs.content.decode()
    assert log.status_code == 200
    rows = list(log.context["cl"].result_list)
    assert {row.job_id for row in rows} == {waiting.job_id}
    assert {row.event_type for row in rows} == {"submitted", "blocked"}


def test_job_changelist_filters_by_status_and_by_day(console, user):
    running = submit(user)
    waiting = submit(user, prompt="A dragon flying")
    today = timezone.localdate(running.created_at)

    pending = console.get(JOB_CHANGELIST, {"status__exact": "pending"})
    by_day = console.get(
        JOB_CHANGELIST, {"created_at__year": today.year, "created_at__month": today.month, "created_at__day": today.day}
    )

    # Listed rows, not links: the waiting job's reason links to the running job it waits for.
    assert [job.job_id for job in pending.context["cl"].result_list] == [waiting.job_id]
    assert f"/admin/coordination/job/{waiting.job_id}/" in pending.content.decode()
    assert by_day.status_code == 200
    assert {job.job_id for job in by_day.context["cl"].result_list} == {running.job_id, waiting.job_id}


@pytest.mark.parametrize(
    "url",
    [reverse("admin:index"), JOB_CHANGELIST, STATE_CHANGELIST, reverse("admin:coordination_jobqueuelog_changelist")],
)
def test_non_staff_user_is_sent_to_the_login_page(user, url):
    client = logged_in(user)

    response = client.get(url)

    assert client.get("/jobs").status_code == 200  # logged in, just not staff
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_anonymous_visitor_is_sent_to_the_login_page():
    response = Client().get(JOB_CHANGELIST)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


# --- history is read-only -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_name",
    ["coordination_jobqueuelog", "coordination_jobqueuestate", "coordination_job", "workflows_workflowexecution"],
)
def test_log_state_and_job_rows_cannot_be_added_by_hand(console, model_name):
    changelist = console.get(reverse(f"admin:{model_name}_changelist"))
    add_url = reverse(f"admin:{model_name}_add")

    assert add_url.encode() not in changelist.content
    assert console.get(add_url).status_code == 403
    assert console.post(add_url, {}).status_code == 403


def test_log_rows_cannot_be_changed_or_deleted(console, user):
    job = submit(user)
    row = JobQueueLog.objects.get(job_id=job.job_id, event_type="started")

    change = console.post(
        reverse("admin:coordination_jobqueuelog_change", args=[row.pk]), {"event_type": "completed"}
    )
    delete = console.post(reverse("admin:coordination_jobqueuelog_delete", args=[row.pk]), {"post": "yes"})

    assert change.status_code == 403
    assert delete.status_code == 403
    row.refresh_from_db()
    assert row.event_type == "started"


def test_slot_rows_cannot_be_changed_or_deleted(console, user):
    job = submit(user)
    url = reverse("admin:coordination_jobqueuestate_change", args=[1])

    change = console.post(url, {"active_job_id": "", "active_models": "[]"})
    delete = console.post(reverse("admin:coordination_jobqueuestate_delete", args=[1]), {"post": "yes"})

    assert change.status_code == 403
    assert delete.status_code == 403
    assert slot_one().active_job_id == job.job_id


def test_a_job_can_be_viewed_but_not_saved_in_the_admin(console, user):
    # Saving would write the whole row back outside the coordinator lock; states change only
    # through the coordinator (the API, the worker, the actions).
    job = submit(user)
    url = reverse("admin:coordination_job_change", args=[job.pk])

    page = console.get(url)
    response = console.post(url, {"_save": "Save"})

    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert response.status_code == 403
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING
    assert events(job) == ["submitted", "started"]


def test_a_waiting_or_running_job_cannot_be_deleted_behind_the_coordinators_back(console, user):
    running = submit(user)
    waiting = submit(user, prompt="A dragon flying")

    for job in (running, waiting):
        response = console.post(reverse("admin:coordination_job_delete", args=[job.pk]), {"post": "yes"})
        assert response.status_code == 403
    for action in ("delete_selected", "delete_finished"):  # the first is not offered; the second skips them
        console.post(JOB_CHANGELIST, {"action": action, ACTION_CHECKBOX_NAME: [str(waiting.pk)], "post": "yes"})

    assert set(Job.objects.values_list("status", flat=True)) == {"running", "pending"}
    assert b"delete_selected" not in console.get(JOB_CHANGELIST).content


def test_bulk_delete_takes_the_finished_jobs_among_those_ticked_after_djangos_confirmation(console, user):
    done = submit(user)
    services.job_complete(job_id=done.job_id, attempt=1)
    running = submit(user, prompt="still running")
    ticked = {"action": "delete_finished", ACTION_CHECKBOX_NAME: [str(done.pk), str(running.pk)]}

    page = console.post(JOB_CHANGELIST, ticked, follow=True).content.decode()
    assert "Are you sure you want to delete the selected" in page
    assert "1 waiting or running job(s) among those selected will be left alone" in page
    console.post(JOB_CHANGELIST, {**ticked, "post": "yes"})

    assert list(Job.objects.values_list("job_id", flat=True)) == [running.job_id]


def test_a_finished_job_may_be_deleted(console, user):
    job = submit(user)
    services.job_complete(job_id=job.job_id, attempt=1, result={"output": "done"})

    response = console.post(reverse("admin:coordination_job_delete", args=[job.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Job.objects.filter(pk=job.pk).exists()


def test_the_run_of_an_unfinished_workflow_cannot_be_deleted(console, user):
    job = submit_workflow(user)
    execution = job.workflow_execution

    response = console.post(reverse("admin:workflows_workflowexecution_delete", args=[execution.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert Job.objects.get(pk=job.pk).workflow_execution == execution


def test_a_finished_workflow_job_may_be_deleted_with_its_run(console, user):
    job = submit_workflow(user)
    services.job_complete(job_id=job.job_id, attempt=1, result={"output": "done"})

    response = console.post(reverse("admin:coordination_job_delete", args=[job.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Job.objects.filter(pk=job.pk).exists()


def test_log_and_state_changelists_offer_no_bulk_delete(console):
    for url in (STATE_CHANGELIST, reverse("admin:coordination_jobqueuelog_changelist")):
        assert b"delete_selected" not in console.get(url).content


# --- "Clear stale queue" --------------------------------------------------------------------------


def clear_stale(console, job: Job, confirmed: str | None = None):
    """The jobs list's action, which opens the console's preview; `confirmed` presses its "Yes"."""
    preview = console.post(
        JOB_CHANGELIST, {"action": "clear_stale_queue", ACTION_CHECKBOX_NAME: [str(job.pk)]}, follow=True
    )
    return submit_confirmation(console, preview) if confirmed else preview


def test_clear_stale_queue_asks_first_and_lists_what_it_would_repair(console, user):
    blocker = submit(user)
    stale = submit(user, prompt="A dragon flying")
    finish_behind_the_coordinators_back(blocker)

    response = clear_stale(console, stale)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Clear stale queue?" in page
    assert str(stale.job_id) in page
    assert str(blocker.job_id) in page
    assert "blocker is completed" in page
    assert 'name="confirmed" value="yes"' in page
    # Nothing was changed by asking.
    stale.refresh_from_db()
    assert stale.status == Job.Status.PENDING
    assert stale.blocked_by_job_id == blocker.job_id
    assert not JobQueueLog.objects.filter(event_type="stale_cleared").exists()


def test_clear_stale_queue_preview_leaves_out_jobs_that_wait_for_a_live_job(console, user):
    blocker = submit(user)
    stale = submit(user, prompt="A dragon flying")
    finish_behind_the_coordinators_back(blocker)
    live = running_row()
    waits_for_live = JobRowFactory(
        model="flux-dev", job_type="image", blocked_by_job_id=live.job_id,
        conflict_reason=f"Model conflict: flux-dev in use by normal job {live.job_id}", queued_at=timezone.now(),
    )

    page = clear_stale(console, stale).content.decode()

    assert str(stale.job_id) in page
    assert str(waits_for_live.job_id) not in page


def test_clear_stale_queue_when_nothing_is_stale_says_so(console, user):
    submit(user)
    waiting = submit(user, prompt="A dragon flying")

    page = clear_stale(console, waiting).content.decode()

    assert "nothing to repair" in page


def test_confirmed_clear_stale_queue_starts_the_stuck_job(console, user, staff_user):
    blocker = submit(user)
    stale = submit(user, prompt="A dragon flying")
    finish_behind_the_coordinators_back(blocker)

    response = clear_stale(console, stale, confirmed="yes")

    assert response.status_code == 302
    stale.refresh_from_db()
    assert stale.status == Job.Status.RUNNING
    assert stale.blocked_by_job_id is None and stale.conflict_reason is None
    assert slot_one().active_job_id == stale.job_id
    assert events(stale)[-2:] == ["stale_cleared", "started"]
    log = JobQueueLog.objects.get(job_id=stale.job_id, event_type="stale_cleared")
    assert log.details["stale_blocker"] == str(blocker.job_id)
    assert log.details["actor"] == f"admin:{staff_user.username}"
    messages = [str(m) for m in console.get(JOB_CHANGELIST).context["messages"]]
    assert any("Repaired 1 waiting job(s); started 1" in m for m in messages), messages


def test_confirmed_clear_stale_queue_points_the_job_at_the_job_it_really_waits_for(console, user):
    blocker = submit(user)
    stale = submit(user, prompt="A dragon flying")
    finish_behind_the_coordinators_back(blocker)
    # Meanwhile another job holds the only slot (written by hand, as the stale case was).
    live = running_row()
    JobQueueState.objects.filter(pk=1).update(
        active_job_id=live.job_id, active_job_type="normal", active_models=["flux-dev"]
    )

    clear_stale(console, stale, confirmed="yes")

    stale.refresh_from_db()
    assert stale.status == Job.Status.PENDING
    assert stale.blocked_by_job_id == live.job_id
    assert str(live.job_id) in stale.conflict_reason
    assert "one job at a time" in stale.conflict_reason
    assert "stale_cleared" in events(stale)
    assert slot_one().active_job_id == live.job_id


def test_confirmed_clear_stale_queue_starts_a_job_left_waiting_with_no_blocker(console, user):
    # The guide's other symptom: the slot is free, yet a job still waits.
    stuck = JobRowFactory(model="flux-dev", job_type="image", queued_at=timezone.now())

    clear_stale(console, stuck, confirmed="yes")

    stuck.refresh_from_db()
    assert stuck.status == Job.Status.RUNNING
    assert slot_one().active_job_id == stuck.job_id


# --- "Reset state" --------------------------------------------------------------------------------


def reset_state(console, *slot_ids: int, confirmed: str | None = None):
    """The slots list's action, which opens the console's preview; `confirmed` presses its "Yes"."""
    preview = console.post(
        STATE_CHANGELIST, {"action": "reset_state", ACTION_CHECKBOX_NAME: [str(i) for i in slot_ids]}, follow=True
    )
    return submit_confirmation(console, preview) if confirmed else preview


def test_reset_state_asks_first_and_says_what_will_happen_to_the_running_job(console, user):
    running = submit(user)
    waiting = submit(user, prompt="A dragon flying")

    response = reset_state(console, 1)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Reset state?" in page
    assert str(running.job_id) in page
    assert "ended as failed" in page
    assert 'name="confirmed" value="yes"' in page
    # Nothing was changed by asking.
    running.refresh_from_db()
    waiting.refresh_from_db()
    assert running.status == Job.Status.RUNNING
    assert waiting.status == Job.Status.PENDING
    assert slot_one().active_job_id == running.job_id
    assert not JobQueueLog.objects.filter(event_type="state_reset").exists()


def test_confirmed_reset_state_fails_the_running_job_and_starts_the_next(console, user):
    running = submit(user)
    waiting = submit(user, prompt="A dragon flying")

    response = reset_state(console, 1, confirmed="yes")

    assert response.status_code == 302
    running.refresh_from_db()
    waiting.refresh_from_db()
    assert running.status == Job.Status.FAILED
    assert running.completed_at is not None
    assert "reset" in running.error
    assert waiting.status == Job.Status.RUNNING
    assert waiting.blocked_by_job_id is None
    slot = slot_one()
    assert slot.active_job_id == waiting.job_id
    assert slot.active_models == ["motion-2.0-fast"]
    assert events(running)[-2:] == ["state_reset", "failed"]
    assert events(waiting)[-1] == "started"
    assert Job.objects.filter(status=Job.Status.RUNNING).count() == 1
    messages = [str(m) for m in console.get(STATE_CHANGELIST).context["messages"]]
    assert any("failed 1 running job(s); started 1" in m for m in messages), messages


def test_confirmed_reset_state_with_nothing_waiting_leaves_the_slot_free(console, user):
    running = submit(user)

    reset_state(console, 1, confirmed="yes")

    running.refresh_from_db()
    assert running.status == Job.Status.FAILED
    slot = slot_one()
    assert slot.active_job_id is None
    assert slot.active_models == []
    assert console.get("/admin/").status_code == 200


def test_reset_state_of_a_slot_naming_a_finished_job_frees_it_without_touching_the_job(console, user):
    blocker = submit(user)
    waiting = submit(user, prompt="A dragon flying")
    Job.objects.filter(pk=blocker.pk).update(status=Job.Status.COMPLETED, completed_at=timezone.now())

    page = reset_state(console, 1).content.decode()
    assert "not running" in page
    reset_state(console, 1, confirmed="yes")

    blocker.refresh_from_db()
    waiting.refresh_from_db()
    assert blocker.status == Job.Status.COMPLETED
    assert waiting.status == Job.Status.RUNNING
    assert slot_one().active_job_id == waiting.job_id
    assert JobQueueLog.objects.filter(event_type="state_reset").count() == 1
    assert "failed" not in events(blocker)


def test_a_staff_user_who_may_only_view_jobs_deletes_none(client, user):
    from django.contrib.auth.models import Permission
    from tests.factories import UserFactory

    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_job"))
    client.force_login(viewer)
    done = submit(user)
    services.job_complete(job_id=done.job_id, attempt=1)

    client.post(JOB_CHANGELIST, {"action": "delete_finished", ACTION_CHECKBOX_NAME: [str(done.pk)], "post": "yes"})

    assert Job.objects.filter(pk=done.pk).exists()


# --- each step up needs its own permission (view < change < delete; operate for the actions) ------


def staff_with(*codenames: str) -> Client:
    """A logged-in staff user (not a superuser) holding exactly these permissions."""
    from django.contrib.auth.models import Permission
    from tests.factories import UserFactory

    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    assert user.user_permissions.count() == len(codenames)
    return logged_in(user)


def test_a_staff_user_who_may_view_and_change_jobs_deletes_no_finished_one(user):
    client = staff_with("view_job", "change_job")
    done = submit(user)
    services.job_complete(job_id=done.job_id, attempt=1)

    client.post(JOB_CHANGELIST, {"action": "delete_finished", ACTION_CHECKBOX_NAME: [str(done.pk)], "post": "yes"})
    page = client.post(reverse("admin:coordination_job_delete", args=[done.pk]), {"post": "yes"})

    assert page.status_code == 403
    assert Job.objects.filter(pk=done.pk).exists()


def test_a_view_only_user_cannot_change_a_catalog_model():
    from coordination.models import CatalogModel

    client = staff_with("view_catalogmodel")
    model = CatalogModel.objects.get(name="flux-dev")

    response = client.post(reverse("admin:coordination_catalogmodel_change", args=[model.pk]), {"capacity": 5})

    assert response.status_code == 403
    assert CatalogModel.objects.get(pk=model.pk).capacity == 1


def test_a_user_who_may_change_a_catalog_model_cannot_delete_it():
    from coordination.models import CatalogModel

    client = staff_with("view_catalogmodel", "change_catalogmodel")
    model = CatalogModel.objects.get(name="minimax/video-01")

    response = client.post(reverse("admin:coordination_catalogmodel_delete", args=[model.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert CatalogModel.objects.filter(pk=model.pk).exists()


def test_without_the_operate_permission_the_lists_offer_no_queue_action(user):
    # Every table permission, but not "Can operate the queue".
    client = staff_with("view_job", "change_job", "delete_job", "view_jobqueuestate", "change_jobqueuestate")
    running = submit(user)
    waiting = submit(user, prompt="A dragon flying")

    jobs = client.get(JOB_CHANGELIST).content.decode()
    slots = client.get(STATE_CHANGELIST).content.decode()
    for action in ("cancel_jobs", "clear_stale_queue"):
        response = client.post(JOB_CHANGELIST, {"action": action, ACTION_CHECKBOX_NAME: [str(waiting.pk)]})
        assert not response.get("Location", "").startswith(reverse("admin:queue-console")), action
    response = client.post(STATE_CHANGELIST, {"action": "reset_state", ACTION_CHECKBOX_NAME: ["1"]})

    assert not response.get("Location", "").startswith(reverse("admin:queue-console"))
    assert 'value="cancel_jobs"' not in jobs and 'value="clear_stale_queue"' not in jobs
    assert 'value="reset_state"' not in slots
    assert 'value="delete_finished"' in jobs  # the permissions it does have still count
    assert {fresh.status for fresh in Job.objects.filter(pk__in=[running.pk, waiting.pk])} == {"running", "pending"}
