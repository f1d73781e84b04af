"""coordination.transitions: the legal edges of a job's status, and the one outcome rule."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from coordination.exceptions import InvalidTransition
from coordination.models import Job
from coordination.transitions import (
    RETRY,
    TRANSITIONS,
    attempt_outcome,
    job_cancelled_waiting,
    job_ended,
    job_requeued,
    job_started,
)
from coordination.writes import Writes
from tests.helpers import fresh, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def writes():
    """A transition's writes; `writes.sent()` writes them, as the coordinator does before COMMIT."""
    kept = Writes()

    def sent():
        with connection.cursor() as cursor:
            kept.flush(cursor)

    kept.sent = sent
    return kept


def test_an_edge_not_in_the_table_is_refused_and_changes_nothing(user, writes):
    running = submit(user)
    waiting = submit(user)
    job_ended(fresh(running), status=Job.Status.COMPLETED, now=timezone.now(), result={}, writes=writes)
    writes.sent()

    for edge in (
        lambda: job_started(fresh(running), now=timezone.now(), writes=writes),       # completed -> running
        lambda: job_requeued(fresh(running), writes=writes),                          # completed -> pending
        lambda: job_ended(fresh(waiting), status=Job.Status.FAILED, now=timezone.now(), writes=writes),  # pending -> failed
        lambda: job_cancelled_waiting(fresh(running), now=timezone.now(), reason="x", writes=writes),
    ):
        with pytest.raises(InvalidTransition):
            edge()
    writes.sent()

    assert (fresh(running).status, fresh(waiting).status) == (Job.Status.COMPLETED, Job.Status.PENDING)
    assert (Job.Status.COMPLETED, Job.Status.RUNNING) not in TRANSITIONS


def test_an_outcome_is_never_pending_or_running(user, writes):
    job = fresh(submit(user))
    with pytest.raises(InvalidTransition, match="not an outcome"):
        job_ended(job, status=Job.Status.PENDING, now=timezone.now(), writes=writes)
    writes.sent()
    assert fresh(job).status == Job.Status.RUNNING


@pytest.mark.parametrize(
    ("reported", "error", "cancel_asked", "retry", "attempt", "expected"),
    [
        ("completed", None, True, True, 1, ("completed", None)),  # it finished before it could stop
        ("failed", "boom", False, True, 1, (RETRY, "boom")),       # 1 of 2 attempts used
        ("failed", "boom", False, True, 2, ("failed", "boom")),    # none left
        ("failed", "boom", False, False, 1, ("failed", "boom")),   # a timeout: no retry
        ("failed", "boom", True, True, 1, ("cancelled", "Cancelled by ann; its last attempt failed: boom")),
        ("cancelled", "stopped while running", True, True, 1, ("cancelled", "Cancelled by ann; stopped while running")),
    ],
)
def test_one_rule_turns_how_an_attempt_ended_into_the_jobs_outcome(reported, error, cancel_asked, retry, attempt, expected):
    job = Job(attempt=attempt, cancel_requested_at=timezone.now() - timedelta(seconds=1) if cancel_asked else None)

    outcome = attempt_outcome(
        job, reported=reported, error=error, retry=retry, max_attempts=2, cancel_reason="Cancelled by ann"
    )

    assert (outcome.status, outcome.error) == expected
