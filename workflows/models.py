"""Workflow definitions (edited in the admin) and the execution record of each workflow job."""

from django.db import models
from django.utils import timezone


class WorkflowDefinition(models.Model):
    workflow_id = models.SlugField(max_length=100, primary_key=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    enabled = models.BooleanField(default=True)
    # Inputs a client must send to execute it, e.g. ["input_image"].
    inputs = models.JSONField(default=list, blank=True)

    class Meta:
        db_table = "workflow_definitions"
        ordering = ["workflow_id"]

    def __str__(self) -> str:
        return self.workflow_id

    def ordered_steps(self) -> list["WorkflowStep"]:
        return list(self.steps.select_related("default_model").order_by("position"))

    def required_models(self) -> list[str]:
        """Every model its steps use, in step order, each once: what the workflow holds while it runs."""
        return list(dict.fromkeys(step.default_model.name for step in self.ordered_steps()))


class WorkflowStep(models.Model):
    workflow = models.ForeignKey(WorkflowDefinition, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=100)
    default_model = models.ForeignKey("coordination.CatalogModel", on_delete=models.PROTECT, related_name="+")
    prompt_template = models.TextField(
        blank=True, default="", help_text="Prompt for this step; {prompt} is the workflow's own prompt."
    )
    params = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "workflow_steps"
        ordering = ["workflow", "position"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "position"], name="workflow_steps_unique_position")
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} step {self.position}: {self.name}"


class WorkflowExecution(models.Model):
    """The run of one workflow job: which step it is on and what each step produced."""

    job = models.OneToOneField(
        "coordination.Job", on_delete=models.CASCADE, related_name="workflow_execution", db_column="job_id"
    )
    workflow = models.ForeignKey(
        WorkflowDefinition, on_delete=models.PROTECT, related_name="executions", db_column="workflow_id"
    )
    required_models = models.JSONField(default=list)
    current_step = models.PositiveSmallIntegerField(null=True, blank=True)
    current_step_model = models.CharField(max_length=100, null=True, blank=True)
    blocked_by_job_id = models.UUIDField(null=True, blank=True)
    inputs = models.JSONField(default=dict, blank=True)
    # The steps as they were when the job was accepted: the job holds exactly these models, so an
    # operator editing the definition later cannot make a queued or running job call another one.
    steps = models.JSONField(default=list, blank=True)
    step_outputs = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "workflow_executions"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.workflow_id} for job {self.job_id}"
