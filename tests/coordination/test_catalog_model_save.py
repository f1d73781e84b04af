"""An operator's edit of the model catalog in the admin goes through the coordinator
(catalog_model_save): a capacity raised starts the waiting jobs it lets start at once, the reasons of
those still waiting stay true, and the edit is audited with the operator's name."""

import pytest
from django.test import Client
from django.urls import reverse

from coordination.exceptions import UnknownModel
from coordination.models import CatalogModel, Job, JobQueueLog
from coordination.services import catalog_model_save, job_complete, model_pause
from tests.helpers import assert_exclusion, assert_honest_waiting, fresh, submit

pytestmark = pytest.mark.django_db

# Every field the admin's change form posts; `paused` is read-only there (the console pauses).
FORM_FIELDS = (
    "name", "media_type", "runner", "capacity", "enabled", "default_simulate_seconds", "description",
    "max_attempts", "provider_url", "credential_env", "provider_style", "timeout_seconds",
    "max_connect_retries", "poll_interval_seconds", "callback_secret_env", "line_policy", "max_waiting",
)


@pytest.fixture
def console(staff_user) -> Client:
    client = Client()
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))
    return client


def edit(console: Client, name: str, **changes):
    """Open the model's change page in the admin and save it with `changes`, as an operator would."""
    model = CatalogModel.objects.get(name=name)
    url = reverse("admin:coordination_catalogmodel_change", args=[model.pk])
    assert console.get(url).status_code == 200
    values = {field: getattr(model, field) for field in FORM_FIELDS} | changes
    data = {field: "" if value is None else value for field, value in values.items() if value is not False}
    if data.get("enabled") is True:
        data["enabled"] = "on"
    response = console.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    return response


def model_changed_rows() -> list[dict]:
    return list(JobQueueLog.objects.filter(event_type="model_changed").order_by("id").values_list("details", flat=True))


def test_raising_a_capacity_starts_the_waiting_job_at_once(settings, console, staff_user, user, coordinator_log):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
    running = submit(user, model="flux-dev")
    waiting = submit(user, model="flux-dev", prompt="A second knight")
    assert fresh(waiting).conflict_reason == f"Model conflict: flux-dev in use by normal job {running.job_id}"

    edit(console, "flux-dev", capacity=2)

    waiting = fresh(waiting)
    assert waiting.status == Job.Status.RUNNING
    assert (waiting.blocked_by_job_id, waiting.conflict_reason) == (None, None)
    assert fresh(running).status == Job.Status.RUNNING
    assert f"[COORDINATOR] Set active job: {waiting.job_id} (normal) - Models: ['flux-dev']" in coordinator_log.messages
    assert f"[COORDINATOR] Model flux-dev changed by admin:{staff_user.username}: capacity 1 -> 2" in coordinator_log.messages
    assert model_changed_rows() == [
        {"model": "flux-dev", "actor": f"admin:{staff_user.username}", "changes": {"capacity": [1, 2]},
         "started": [str(waiting.job_id)]},
    ]
    assert_exclusion(max_active=2)


def test_the_jobs_still_waiting_after_a_raise_say_what_they_wait_for_now(settings, console, user):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 3
    first = submit(user, model="flux-dev")
    second = submit(user, model="flux-dev", prompt="two")
    third = submit(user, model="flux-dev", prompt="three")
    assert fresh(third).blocked_by_job_id == second.job_id  # in line behind the second

    edit(console, "flux-dev", capacity=2)

    assert fresh(second).status == Job.Status.RUNNING
    third = fresh(third)
    assert third.status == Job.Status.PENDING
    # Not "Waiting in line for flux-dev: ... second goes first": the second went; the model is full now.
    assert third.blocked_by_job_id == first.job_id
    assert third.conflict_reason == f"Model conflict: flux-dev in use by normal job {first.job_id}"
    assert_honest_waiting()
    assert_exclusion(max_active=3)


def test_lowering_a_capacity_stops_no_running_job_and_holds_the_next_to_it(settings, console, user):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 3
    CatalogModel.objects.filter(name="flux-dev").update(capacity=2)
    first, second = submit(user, model="flux-dev"), submit(user, model="flux-dev", prompt="two")
    third = submit(user, model="flux-dev", prompt="three")
    assert [fresh(job).status for job in (first, second, third)] == ["running", "running", "pending"]

    edit(console, "flux-dev", capacity=1)

    assert [fresh(job).status for job in (first, second, third)] == ["running", "running", "pending"]
    assert_honest_waiting()
    job_complete(job_id=first.job_id, attempt=1)
    assert fresh(third).status == Job.Status.PENDING  # one still runs: that is the new capacity
    assert fresh(third).blocked_by_job_id == second.job_id
    assert_honest_waiting()
    job_complete(job_id=second.job_id, attempt=1)
    assert fresh(third).status == Job.Status.RUNNING


def test_enabling_a_disabled_model_lets_it_take_jobs_again(console, staff_user, user):
    CatalogModel.objects.filter(name="minimax/video-01").update(enabled=False)
    with pytest.raises(UnknownModel):
        submit(user, model="minimax/video-01")

    edit(console, "minimax/video-01", enabled=True)

    assert submit(user, model="minimax/video-01").status == Job.Status.RUNNING
    assert model_changed_rows() == [
        {"model": "minimax/video-01", "actor": f"admin:{staff_user.username}", "changes": {"enabled": [False, True]},
         "started": []},
    ]


def test_disabling_a_model_from_the_list_goes_through_the_coordinator_and_leaves_its_jobs_be(console, user):
    running = submit(user, model="flux-dev")
    waiting = submit(user, model="flux-dev", prompt="two")
    models = list(CatalogModel.objects.order_by("name"))
    changelist = reverse("admin:coordination_catalogmodel_changelist")
    data = {"form-TOTAL_FORMS": len(models), "form-INITIAL_FORMS": len(models), "_save": "Save"}
    for i, model in enumerate(models):
        data[f"form-{i}-id"] = model.pk
        if model.enabled and model.name != "flux-dev":
            data[f"form-{i}-enabled"] = "on"

    assert console.post(changelist, data).status_code == 302

    assert CatalogModel.objects.get(name="flux-dev").enabled is False
    assert [row["changes"] for row in model_changed_rows()] == [{"enabled": [True, False]}]
    # Accepted jobs keep their model: a disabled model only takes no new ones.
    assert (fresh(running).status, fresh(waiting).status) == ("running", "pending")
    assert_honest_waiting()


def test_a_pause_made_after_the_form_was_read_stands(user):
    edited = CatalogModel.objects.get(name="flux-dev")  # what the admin's form was built from
    model_pause(name="flux-dev", paused=True, actor="admin:other")  # meanwhile, in the console
    edited.description = "Paused meanwhile"

    catalog_model_save(model=edited, actor="admin:ops")

    model = CatalogModel.objects.get(name="flux-dev")
    assert (model.paused, model.description) == (True, "Paused meanwhile")
    assert submit(user, model="flux-dev").status == Job.Status.PENDING


def test_the_admin_still_takes_the_deadline_under_its_old_name(console):
    edit(console, "flux-dev", max_runtime_seconds=45)  # merged into timeout_seconds (migration 0021)
    assert CatalogModel.objects.get(name="flux-dev").timeout_seconds == 45

    edit(console, "flux-dev", timeout_seconds=30, max_runtime_seconds=60)  # both: the smaller, as the merge did
    assert CatalogModel.objects.get(name="flux-dev").timeout_seconds == 30


def test_a_model_added_in_the_admin_is_audited(console, staff_user, user):
    data = {field: "" for field in FORM_FIELDS} | {
        "name": "sdxl-turbo", "media_type": "image", "runner": "simulated", "capacity": 1, "enabled": "on",
        "default_simulate_seconds": 1, "max_attempts": 1, "provider_style": "sync", "timeout_seconds": 600,
        "max_connect_retries": 3, "poll_interval_seconds": 5, "line_policy": "fifo",
    }

    response = console.post(reverse("admin:coordination_catalogmodel_add"), data)

    assert response.status_code == 302
    assert submit(user, model="sdxl-turbo").status == Job.Status.RUNNING
    [row] = model_changed_rows()
    assert (row["model"], row["actor"], row["changes"]["capacity"]) == ("sdxl-turbo", f"admin:{staff_user.username}", [None, 1])
