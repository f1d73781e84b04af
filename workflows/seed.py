"""The usage guide's catalog and workflow, written now (tests, after a flush). The data migration
coordination/0002 writes them on a fresh database through coordination.seed with historical models."""

from coordination.models import CatalogModel, JobQueueState
from coordination.seed import seed_catalog
from workflows.models import WorkflowDefinition, WorkflowStep


def seed_catalog_now() -> None:
    seed_catalog(CatalogModel, WorkflowDefinition, WorkflowStep, JobQueueState)
