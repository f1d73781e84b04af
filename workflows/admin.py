from functools import partial

from django.contrib import admin

from workflows.models import WorkflowDefinition, WorkflowExecution, WorkflowStep
from workflows.services import workflow_definition_save


class WorkflowStepInline(admin.TabularInline):
    model = WorkflowStep
    extra = 0
    ordering = ("position",)


@admin.register(WorkflowDefinition)
class WorkflowDefinitionAdmin(admin.ModelAdmin):
    list_display = ("workflow_id", "name", "enabled", "models")
    list_filter = ("enabled",)
    search_fields = ("workflow_id", "name")
    inlines = [WorkflowStepInline]

    @admin.display(description="required models")
    def models(self, workflow: WorkflowDefinition) -> str:
        return ", ".join(workflow.required_models())

    def save_model(self, request, obj, form, change):
        pass  # saved with its steps in save_related, through the service: one change, one audit row

    def save_related(self, request, form, formsets, change):
        workflow_definition_save(
            workflow=form.instance,
            actor=f"admin:{request.user.username}",
            save_steps=partial(super().save_related, request, form, formsets, change),
        )


@admin.register(WorkflowExecution)
class WorkflowExecutionAdmin(admin.ModelAdmin):
    list_display = ("job", "workflow", "current_step", "current_step_model", "blocked_by_job_id", "created_at")
    list_filter = ("workflow",)
    search_fields = ("job__job_id",)
    readonly_fields = [field.name for field in WorkflowExecution._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Django's own check first (the user's delete permission); then, the run of a waiting or
        # running job is still needed by its worker: it goes with its job.
        return super().has_delete_permission(request, obj) and (obj is None or obj.job.is_finished)
