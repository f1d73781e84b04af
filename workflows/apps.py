from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Tell the coordinator how workflow jobs run and where their waiting shows: coordination never
        # imports workflows (imports flow one way). Imported here: apps.py loads before the models.
        from coordination.kinds import job_kind_register
        from coordination.models import Job
        from workflows.services import workflow_blocked_changed, workflow_run

        job_kind_register(Job.Kind.WORKFLOW, run=workflow_run, blocked_changed=workflow_blocked_changed)
