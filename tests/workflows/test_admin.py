"""The workflows' admin pages honour Django's permissions: each step up (view, change, delete) needs
its own permission, whatever the admin adds on top of it."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from coordination.services import job_complete
from tests.factories import UserFactory
from tests.helpers import execute_workflow
from workflows.models import WorkflowDefinition, WorkflowExecution

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
