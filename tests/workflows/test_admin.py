"""The workflows' admin pages: each step up (view, change, delete) needs its own permission, whatever
the admin adds on top of it; an edit of a definition is audited and changes only later jobs."""

import json

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from coordination.exceptions import WorkflowNotFound
from coordination.models import CatalogModel, JobQueueLog
from coordination.services import job_complete
from tests.factories import UserFactory
from tests.helpers import execute_workflow, fresh
from workflows.models import WorkflowDefinition, WorkflowExecution
from workflows.services import workflow_execute

pytestmark = pytest.mark.django_db

RUNS = reverse("admin:workflows_workflowexecution_changelist")
WORKFLOW = "knight-style-img-to-video"


def staff_with(*codenames: str) -> Client:
    """A logged-in staff user (not a superuser) holding exactly these permissions."""
    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    assert user.user_permissions.count() == len(codenames)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def finished_run(user) -> WorkflowExecution:
    job = execute_workflow(user)
    job_complete(job_id=job.job_id, attempt=1, result={"output": "done"})
    return WorkflowExecution.objects.get(job_id=job.job_id)


@pytest.mark.parametrize(
    "codenames",
    [("view_workflowexecution",), ("view_workflowexecution", "change_workflowexecution")],
    ids=["view-only", "view-and-change"],
)
def test_a_user_without_the_delete_permission_cannot_delete_a_finished_run(finished_run, codenames):
    client = staff_with(*codenames)
    url = reverse("admin:workflows_workflowexecution_delete", args=[finished_run.pk])

    changelist = client.get(RUNS)
    by_action = client.post(RUNS, {"action": "delete_selected", ACTION_CHECKBOX_NAME: [str(finished_run.pk)], "post": "yes"})
    survived_action = WorkflowExecution.objects.filter(pk=finished_run.pk).exists()
    by_page = client.post(url, {"post": "yes"})

    assert survived_action, "deleted through the changelist's 'Delete selected'"
    assert WorkflowExecution.objects.filter(pk=finished_run.pk).exists(), "deleted through its delete page"
    assert (changelist.status_code, by_action.status_code, by_page.status_code) == (200, 200, 403)
    assert b"delete_selected" not in changelist.content
    assert client.get(url).status_code == 403


def test_a_user_with_the_delete_permission_may_delete_a_finished_run(finished_run):
    client = staff_with("view_workflowexecution", "delete_workflowexecution")

    response = client.post(
        reverse("admin:workflows_workflowexecution_delete", args=[finished_run.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not WorkflowExecution.objects.filter(pk=finished_run.pk).exists()


def test_even_the_delete_permission_does_not_delete_the_run_of_an_unfinished_job(user):
    running = execute_workflow(user).workflow_execution
    client = staff_with("view_workflowexecution", "delete_workflowexecution")

    response = client.post(reverse("admin:workflows_workflowexecution_delete", args=[running.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert WorkflowExecution.objects.filter(pk=running.pk).exists()


def test_a_view_only_user_cannot_change_or_add_a_workflow_definition():
    client = staff_with("view_workflowdefinition")
    url = reverse("admin:workflows_workflowdefinition_change", args=[WORKFLOW])

    assert client.get(url).status_code == 200
    assert client.post(url, {"workflow_id": WORKFLOW, "name": "Renamed"}).status_code == 403
    assert client.post(reverse("admin:workflows_workflowdefinition_add"), {"workflow_id": "new"}).status_code == 403

    assert WorkflowDefinition.objects.get(pk=WORKFLOW).name == "Knight style: image to video"
    assert not WorkflowDefinition.objects.filter(pk="new").exists()


def test_a_user_who_may_change_a_workflow_definition_cannot_delete_it():
    client = staff_with("view_workflowdefinition", "change_workflowdefinition")

    response = client.post(reverse("admin:workflows_workflowdefinition_delete", args=[WORKFLOW]), {"post": "yes"})

    assert response.status_code == 403
    assert WorkflowDefinition.objects.filter(pk=WORKFLOW).exists()


# --- an edit of a definition goes through workflow_definition_save --------------------------------


def definition_form(workflow: WorkflowDefinition, **changes) -> dict:
    """What the definition's change page posts: its fields and its step rows (the inline)."""
    data = {"workflow_id": workflow.workflow_id, "name": workflow.name, "description": workflow.description,
            "inputs": json.dumps(workflow.inputs), "enabled": "on" if workflow.enabled else ""}
    steps = workflow.ordered_steps()
    data |= {"steps-TOTAL_FORMS": len(steps), "steps-INITIAL_FORMS": len(steps),
             "steps-MIN_NUM_FORMS": 0, "steps-MAX_NUM_FORMS": 1000}
    for i, step in enumerate(steps):
        data |= {f"steps-{i}-id": step.pk, f"steps-{i}-workflow": workflow.pk, f"steps-{i}-position": step.position,
                 f"steps-{i}-name": step.name, f"steps-{i}-default_model": step.default_model_id,
                 f"steps-{i}-prompt_template": step.prompt_template, f"steps-{i}-params": json.dumps(step.params)}
    return {key: value for key, value in (data | changes).items() if value != ""}


def test_a_definition_edited_in_the_admin_is_audited_and_changes_only_later_jobs(staff_user, user):
    client = Client()
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))
    workflow = WorkflowDefinition.objects.get(pk=WORKFLOW)
    accepted = execute_workflow(user)
    waiting = execute_workflow(user)
    video = CatalogModel.objects.get(name="minimax/video-01")

    response = client.post(
        reverse("admin:workflows_workflowdefinition_change", args=[WORKFLOW]),
        definition_form(workflow, **{"steps-1-default_model": video.pk}),
    )

    assert response.status_code == 302
    assert WorkflowDefinition.objects.get(pk=WORKFLOW).required_models() == ["nano-banana-pro-leonardo", "minimax/video-01"]
    [row] = JobQueueLog.objects.filter(event_type="workflow_changed")
    assert row.details == {
        "workflow": WORKFLOW, "actor": f"admin:{staff_user.username}", "created": False, "enabled": True,
        "models": [["nano-banana-pro-leonardo", "motion-2.0-fast"], ["nano-banana-pro-leonardo", "minimax/video-01"]],
    }
    # The jobs already accepted keep the steps they were accepted with; the next one takes the new ones.
    for job in (accepted, waiting):
        assert fresh(job).required_models == ["nano-banana-pro-leonardo", "motion-2.0-fast"]
        assert [step["model"] for step in fresh(job).workflow_execution.steps] == ["nano-banana-pro-leonardo", "motion-2.0-fast"]
    assert execute_workflow(user).required_models == ["nano-banana-pro-leonardo", "minimax/video-01"]


def test_a_definition_disabled_in_the_admin_takes_no_new_job_and_says_who_disabled_it(staff_user, user):
    client = Client()
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))
    workflow = WorkflowDefinition.objects.get(pk=WORKFLOW)

    client.post(reverse("admin:workflows_workflowdefinition_change", args=[WORKFLOW]), definition_form(workflow, enabled=""))

    with pytest.raises(WorkflowNotFound):
        execute_workflow(user)
    [row] = JobQueueLog.objects.filter(event_type="workflow_changed")
    assert (row.details["actor"], row.details["enabled"]) == (f"admin:{staff_user.username}", False)


def test_a_definition_added_in_the_admin_is_saved_with_its_steps(staff_user, user):
    client = Client()
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))
    flux = CatalogModel.objects.get(name="flux-dev")
    data = {"workflow_id": "flux-twice", "name": "Flux twice", "inputs": "[]", "enabled": "on",
            "steps-TOTAL_FORMS": 2, "steps-INITIAL_FORMS": 0, "steps-MIN_NUM_FORMS": 0, "steps-MAX_NUM_FORMS": 1000}
    for i in range(2):
        data |= {f"steps-{i}-position": i + 1, f"steps-{i}-name": f"pass {i + 1}",
                 f"steps-{i}-default_model": flux.pk, f"steps-{i}-params": "{}"}

    response = client.post(reverse("admin:workflows_workflowdefinition_add"), data)

    assert response.status_code == 302
    assert [step.name for step in WorkflowDefinition.objects.get(pk="flux-twice").ordered_steps()] == ["pass 1", "pass 2"]
    [row] = JobQueueLog.objects.filter(event_type="workflow_changed")
    assert (row.details["created"], row.details["models"]) == (True, [[], ["flux-dev"]])
    job = workflow_execute(owner=user, workflow_id="flux-twice", inputs={})
    assert (job.status, job.required_models) == ("running", ["flux-dev"])
