from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Tell the coordinator how workflow jobs run, where their waiting shows and how one is retried:
        # coordination never imports workflows (imports flow one way). Imported here: apps.py loads
        # before the models.
        from functools import partial

        from coordination.kinds import job_kind_register
        from coordination.models import Job
        from coordination.outputs.steps import step_files_keep
        from workflows.services import workflow_blocked_changed, workflow_resubmit, workflow_run

        # A step's files are kept before the next step runs (coordination/outputs/steps.py): handed in
        # here, as the services layer does not import coordination.outputs.
        job_kind_register(Job.Kind.WORKFLOW, run=partial(workflow_run, keep_files=step_files_keep),
                          blocked_changed=workflow_blocked_changed, resubmit=workflow_resubmit)
