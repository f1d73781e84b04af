from workflows.models import WorkflowDefinition


def workflow_list() -> list[WorkflowDefinition]:
    return list(WorkflowDefinition.objects.filter(enabled=True).prefetch_related("steps__default_model"))


def workflow_as_dict(workflow: WorkflowDefinition) -> dict:
    steps = sorted(workflow.steps.all(), key=lambda step: step.position)
    return {
        "id": workflow.workflow_id,
        "workflow_id": workflow.workflow_id,
        "name": workflow.name,
        "description": workflow.description,
        "inputs": workflow.inputs,
        "required_models": list(dict.fromkeys(step.default_model.name for step in steps)),
        "steps": [
            {"position": step.position, "name": step.name, "default_model": step.default_model.name}
            for step in steps
        ],
    }


def workflow_list_as_dicts() -> list[dict]:
    return [workflow_as_dict(workflow) for workflow in workflow_list()]
