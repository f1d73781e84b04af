"""Every SQL statement of the usage guide runs unchanged on PostgreSQL and returns what it says."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from coordination import services
from coordination.models import Job, JobQueueLog
from tests.guide_sql import (
    AVG_QUEUE_TIME,
    BLOCKED_LAST_HOUR,
    CLEAR_STALE,
    EVENTS,
    NULL_MODELS,
    PRUNE,
    QUEUED,
    RESET_STATE,
    STATE,
)
from workflows.services import workflow_execute

pytestmark = pytest.mark.django_db


def run(sql: str) -> tuple[list[str], list[tuple]]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        if cursor.description is None:
            return [], []
        return [column.name for column in cursor.description], cursor.fetchall()


@pytest.fixture
def workflow_then_normal(user):
    workflow = workflow_execute(owner=user, workflow_id="knight-style-img-to-video",
                                inputs={"input_image": "https://example.com/user.jpg"})
    normal = services.job_submit(owner=user, model="motion-2.0-fast", prompt="A cinematic video", job_type="video")
    return workflow, normal


def test_global_state_shows_the_active_workflow(workflow_then_normal):
    workflow, _ = workflow_then_normal
    columns, rows = run(STATE)
    assert columns == ["id", "active_job_id", "active_job_type", "active_models", "started_at"]
    assert len(rows) == 1
    slot_id, job_id, job_type, models, started_at = rows[0]
    assert (slot_id, job_id, job_type) == (1, workflow.job_id, "workflow")
    # Django's connection hands jsonb back as text; psql shows the same text.
    assert json.loads(models) == ["nano-banana-pro-leonardo", "motion-2.0-fast"]
    assert started_at is not None


def test_queued_jobs_lists_the_blocked_normal_job(workflow_then_normal):
    workflow, normal = workflow_then_normal
    columns, rows = run(QUEUED)
    assert columns == ["job_id", "job_type", "model", "blocked_by_job_id", "conflict_reason", "queued_at"]
    assert len(rows) == 1
    job_id, job_type, model, blocked_by, reason, queued_at = rows[0]
    assert (job_id, job_type, model, blocked_by) == (normal.job_id, "video", "motion-2.0-fast", workflow.job_id)
    assert reason.startswith("Model conflict: motion-2.0-fast in use")
    assert queued_at is not None


def test_queue_events_tell_the_story(workflow_then_normal):
    workflow, normal = workflow_then_normal
    services.job_claim(job_id=workflow.job_id, attempt=1)
    services.job_complete(job_id=workflow.job_id, attempt=1, result={"output": "x"})
    columns, rows = run(EVENTS)
    assert columns == ["job_id", "job_type", "event_type", "conflict_reason", "created_at"]
    story = [(job_id, job_type, event) for job_id, job_type, event, _, _ in reversed(rows)]
    expected = [
        (workflow.job_id, "workflow", "started"),
        (normal.job_id, "normal", "blocked"),
        (workflow.job_id, "workflow", "completed"),
        (normal.job_id, "normal", "started"),
    ]
    picked = [row for row in story if row[2] in {"started", "blocked", "completed"}]
    assert picked == expected
    blocked = [reason for job_id, _, event, reason, _ in rows if event == "blocked"]
    assert blocked[0].startswith("Model conflict: motion-2.0-fast in use by workflow job")


def test_troubleshooting_fix_runs_and_the_queue_recovers(user):
    first = services.job_submit(owner=user, model="flux-dev", prompt="one")
    second = services.job_submit(owner=user, model="flux-dev", prompt="two")
    third = services.job_submit(owner=user, model="motion-2.0-fast", prompt="three")
    services.job_claim(job_id=first.job_id, attempt=1)
    # The first job ends while the hand-run SQL below has not yet been applied...
    services.job_complete(job_id=first.job_id, attempt=1)
    # ...and an operator runs the guide's fix by hand anyway.
    run(CLEAR_STALE)
    run(RESET_STATE)
    assert run(STATE)[1][0][1:4] == (None, None, "[]")
    assert Job.objects.filter(status="pending", blocked_by_job_id__isnull=False).count() == 0

    # The running job still holds its model in `jobs`: the coordinator never starts a second one
    # on it, even though the slot row now looks free.
    fourth = services.job_submit(owner=user, model="flux-dev", prompt="four")
    assert fourth.status == "pending"
    report = services.queue_clear_stale(actor="test")
    assert str(third.job_id) in report["repaired"]
    for job in Job.objects.filter(status="pending"):
        assert Job.objects.get(pk=job.blocked_by_job_id).status in {"pending", "running"}
    second.refresh_from_db()
    assert second.status == "running"


def test_no_job_has_null_required_models(workflow_then_normal):
    assert run(NULL_MODELS)[1] == []


def test_prune_and_metrics_queries(workflow_then_normal, user):
    workflow, normal = workflow_then_normal
    old = JobQueueLog.objects.record(event_type="blocked", job=normal)
    JobQueueLog.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=8))
    assert run(BLOCKED_LAST_HOUR) == (["blocked_jobs"], [(1,)])
    run(PRUNE)
    assert not JobQueueLog.objects.filter(pk=old.pk).exists()

    services.job_claim(job_id=workflow.job_id, attempt=1)
    services.job_complete(job_id=workflow.job_id, attempt=1)
    columns, [(average,)] = run(AVG_QUEUE_TIME)
    assert columns == ["avg_queue_seconds"]
    normal.refresh_from_db()
    assert float(average) == pytest.approx((normal.started_at - normal.queued_at).total_seconds(), abs=1e-3)


@pytest.mark.migration_data
@pytest.mark.django_db
def test_slot_one_exists_from_the_start():
    # Before any job: the guide's `SELECT * FROM job_queue_state` shows the row the data migration wrote.
    assert run(STATE)[1] == [(1, None, None, "[]", None)]
