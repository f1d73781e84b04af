import pytest

from coordination.models import CatalogModel, JobQueueState
from workflows.models import WorkflowDefinition


@pytest.mark.migration_data
@pytest.mark.django_db
def test_the_data_migration_seeds_the_guides_catalog_workflow_and_slot():
    assert sorted(CatalogModel.objects.values_list("name", flat=True)) == [
        "flux-dev", "minimax/video-01", "motion-2.0-fast", "nano-banana-pro-leonardo",
    ]
    workflow = WorkflowDefinition.objects.get(workflow_id="knight-style-img-to-video")
    assert [(step.name, step.default_model.name) for step in workflow.ordered_steps()] == [
        ("style", "nano-banana-pro-leonardo"), ("animate", "motion-2.0-fast"),
    ]
    assert list(JobQueueState.objects.values_list("id", "active_job_id")) == [(1, None)]
