"""Starting a workflow job and running its steps in order."""

from collections.abc import Callable
from functools import partial

from django.db import transaction

from coordination.exceptions import InvalidJob, StaleAttempt, WorkflowNotFound
from coordination.models import CatalogModel, Job, JobQueueLog
from coordination.services.input_files import input_refs_check, inputs_resolved
from coordination.runners import RunnerError, RunnerStopped, get_runner, runner_call
from coordination.services import PROMPT_MAX_LENGTH, catalog_model_get, job_accept, job_policies_set, priority_check
from workflows.models import WorkflowDefinition, WorkflowExecution


def workflow_get(*, workflow_id: str) -> WorkflowDefinition:
    workflow = WorkflowDefinition.objects.filter(workflow_id=workflow_id, enabled=True).first()
    if workflow is None:
        known = ", ".join(WorkflowDefinition.objects.filter(enabled=True).values_list("workflow_id", flat=True))
        raise WorkflowNotFound(f"Unknown workflow '{workflow_id}'. Known workflows: {known}.")
    return workflow


def workflow_execute(
    *,
    owner,
    workflow_id: str,
    inputs: dict,
    prompt: str = "",
    params: dict | None = None,
    priority: int = 0,
    on_create: Callable[[Job], None] | None = None,
    **policies,
) -> Job:
    """Accept a workflow job; it holds every model its steps use from start to end. `policies`: a
    deadline or a dedupe_key, as coordination.services.job_policies_set takes them."""
    workflow = workflow_get(workflow_id=workflow_id)
    missing = [name for name in workflow.inputs if not inputs.get(name)]
    if missing:
        raise InvalidJob(
            f"Workflow '{workflow_id}' needs input {', '.join(missing)}.", field=missing[0]
        )
    steps = workflow.ordered_steps()
    if not steps:
        raise InvalidJob(f"Workflow '{workflow_id}' has no steps; an operator must add some in the admin.")
    snapshot = [
        {"position": step.position, "name": step.name, "model": step.default_model.name,
         "prompt_template": step.prompt_template, "params": step.params}
        for step in steps
    ]
    return _workflow_accept(
        owner=owner, workflow=workflow, steps=snapshot, required=workflow.required_models(),
        job_type=steps[-1].default_model.media_type, inputs=inputs, prompt=prompt, params=params or {},
        priority=priority, on_create=on_create, **policies,
    )


def workflow_resubmit(*, job: Job, on_create: Callable[[Job], None] | None = None, **policies) -> Job:
    """A new workflow job with `job`'s request (its Retry): the steps, models and inputs its execution
    row kept when it was accepted, not the definition as it is now, whose edits change only the jobs
    accepted after them; the definition may even have been disabled since. Its models must still be
    in the catalog and enabled, as a normal job's model must."""
    execution = WorkflowExecution.objects.select_related("workflow").get(job_id=job.job_id)
    catalog = {model.name: model for model in CatalogModel.objects.order_by("name")}  # once, not per model
    for name in execution.required_models:
        catalog_model_get(name=name, catalog=catalog)
    return _workflow_accept(
        owner=job.owner, workflow=execution.workflow, steps=execution.steps, required=list(execution.required_models),
        job_type=job.job_type, inputs=execution.inputs, prompt=job.prompt, params=job.params, priority=job.priority,
        retry_of=job, on_create=on_create, **policies,
    )


def _workflow_accept(
    *, owner, workflow: WorkflowDefinition, steps: list[dict], required: list[str], job_type: str, inputs: dict,
    prompt: str, params: dict, priority: int, on_create: Callable[[Job], None] | None, retry_of: Job | None = None,
    **policies,
) -> Job:
    """Check a workflow job's request and accept it with its execution row, which keeps `steps` (the
    copy the job runs) and `inputs`. `retry_of`: the ended job it retries."""
    input_refs_check(owner=owner, values=inputs)  # file:<id>: the owner's own files only
    if len(prompt) > PROMPT_MAX_LENGTH:
        raise InvalidJob(f"The prompt is {len(prompt)} characters long; the limit is {PROMPT_MAX_LENGTH}.", field="prompt")
    priority_check(owner=owner, priority=priority)
    job = Job(
        kind=Job.Kind.WORKFLOW,
        job_type=job_type,
        model=None,
        prompt=prompt,
        params=params,
        owner=owner,
        priority=priority,
        required_models=required,
        retry_of=retry_of,
    )
    job_policies_set(job, **policies)

    def create_execution(job: Job) -> None:
        WorkflowExecution.objects.create(
            job=job, workflow=workflow, required_models=required, inputs=inputs, steps=steps
        )
        if on_create is not None:
            on_create(job)

    return job_accept(job=job, on_create=create_execution)


def _step_begin(*, job_id, attempt: int, index: int, step_name: str, model: str) -> None:
    """Record which step runs now; refuse if this worker no longer owns the job's attempt."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status != Job.Status.RUNNING or job.attempt != attempt:
            raise StaleAttempt(f"Job {job_id} moved on ({job.status}, attempt {job.attempt}); stopping its workflow")
        WorkflowExecution.objects.filter(job_id=job_id).update(current_step=index, current_step_model=model)
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.STEP_STARTED,
            job=job,
            details={"step": index, "name": step_name, "model": model, "attempt": attempt},
        )


def workflow_blocked_changed(job: Job, writes) -> None:
    """Under the coordinator lock: the execution row shows what its job waits for (the guide's column),
    written with the transition's other changes."""
    writes.update_where(WorkflowExecution, "job_id", job.job_id, blocked_by_job_id=job.blocked_by_job_id)


def workflow_run(*, job: Job, attempt: int, should_stop=lambda: False, keep_files: Callable | None = None) -> dict:
    """Run the steps in order, each step's output feeding the next; a failing step fails the whole.
    `keep_files` (coordination.outputs.steps.step_files_keep, handed over by workflows/apps.py): keeps a
    step's files before the next step runs, which then gets links to the kept copies (docs/outputs.md)."""
    execution = WorkflowExecution.objects.get(job_id=job.job_id)
    catalog = {model.name: model for model in CatalogModel.objects.filter(name__in=execution.required_models)}
    outputs: list[dict] = []
    inputs = dict(execution.inputs)
    for index, step in enumerate(execution.steps, start=1):
        name, model = step["name"], catalog[step["model"]]
        _step_begin(job_id=job.job_id, attempt=attempt, index=index, step_name=name, model=model.name)
        template = step["prompt_template"]
        # Its input files (file:<id>) as signed links or files to upload, for this call only: never stored.
        resolved = partial(inputs_resolved, owner_id=job.owner_id, model=model)
        call = runner_call(
            model,
            job_id=job.job_id,
            prompt=template.replace("{prompt}", job.prompt) if template else job.prompt,
            params=resolved({**step["params"], **job.params}),
            inputs=resolved(inputs),
            should_stop=should_stop,
            started_at=job.started_at.timestamp() if job.started_at else None,
        )
        try:
            output = get_runner(model.runner).run(call)
        except RunnerStopped:
            raise
        except Exception as exc:
            raise RunnerError(f"Step {index} ({name}, {model.name}) failed: {exc}") from exc
        outputs.append({"step": index, "name": name, "model": model.name, "output": output})
        # Fenced like everything a worker writes: a lost worker's late step changes nothing.
        WorkflowExecution.objects.filter(
            job_id=job.job_id, job__status=Job.Status.RUNNING, job__attempt=attempt
        ).update(step_outputs=outputs)
        inputs = {"input": output.get("output"), "previous_step": name}
        if keep_files is not None and index < len(execution.steps):
            following = catalog[execution.steps[index]["model"]]
            first_n = sum(len(done["output"].get("files") or []) for done in outputs[:-1])
            inputs = keep_files(job_id=job.job_id, attempt=attempt, step=index, model=model.name,
                                files=output.get("files") or [], first_n=first_n, values=inputs,
                                next_model=following, should_stop=should_stop)
    # Every step's files (each step's result lists its own), each saying which step made it.
    files = [{**file, "step": step["step"]} for step in outputs for file in step["output"].get("files", [])]
    return {"output": outputs[-1]["output"].get("output") if outputs else None, "steps": outputs, "files": files}


def workflow_definition_save(
    *, workflow: WorkflowDefinition, actor: str, save_steps: Callable[[], None] = lambda: None
) -> dict:
    """Save an operator's edit of a workflow definition and of its steps (`save_steps` writes them:
    the admin's step rows), as one transaction with its audit row naming the operator.

    Nothing waiting is decided again, so the coordinator lock is not taken: an accepted workflow job
    holds a copy of its steps and of its required models (WorkflowExecution.steps, Job.required_models),
    so an edit changes only the jobs accepted after it."""
    with transaction.atomic():
        before = WorkflowDefinition.objects.filter(pk=workflow.pk).first()
        models_before = before.required_models() if before is not None else []
        workflow.save()
        save_steps()
        models = workflow.required_models()
        details = {"workflow": workflow.workflow_id, "actor": actor, "created": before is None, "enabled": workflow.enabled}
        if models != models_before:
            details["models"] = [models_before, models]
        JobQueueLog.objects.record(event_type=JobQueueLog.Event.WORKFLOW_CHANGED, details=details)
    return details
