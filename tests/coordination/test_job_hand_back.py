"""A stopping worker's side of the coordinator (docs/design.md, I2's exception; docs/operating.md,
stopping a worker): job_hand_back, and a report that starts nothing. The whole stop, with real
processes, is tests/e2e/test_stopping.py."""

import pytest

from coordination.models import Job
from coordination.queue.locked import WAITS_FOR_WORKER
from coordination.recovery import reaper_pass
from coordination.services import job_claim, job_hand_back, job_report
from tests.helpers import events, fresh, log_row, submit

pytestmark = pytest.mark.django_db


def test_a_job_handed_back_waits_again_first_in_line_with_its_attempt_not_counted(user):
    running, behind = submit(user), submit(user)
    job_claim(job_id=running.job_id, attempt=1)

    assert job_hand_back(job_id=running.job_id, attempt=1, began=True, reason="its worker stopped") is not None

    running, behind = fresh(running), fresh(behind)
    assert (running.status, running.attempt, running.claimed_attempt, running.lease_expires_at) == ("pending", 0, 0, None)
    assert (running.blocked_by_job_id, running.conflict_reason) == (None, WAITS_FOR_WORKER)
    assert (behind.status, behind.blocked_by_job_id) == ("pending", running.job_id)  # its place kept
    assert log_row(running, "retried").details == {"attempt": 1, "handed_back": True, "attempt_used": False,
                                                    "reason": "its worker stopped"}
    assert not Job.objects.filter(status="running").exists()  # nothing started

    reaper_pass()  # the next worker's, as it starts

    running = fresh(running)
    assert (running.status, running.attempt) == ("running", 1)  # a model of max_attempts 1 runs it again
    assert fresh(behind).status == "pending"


def test_a_stopping_workers_report_ends_its_job_and_starts_nothing(user):
    running, waiting = submit(user), submit(user)
    job_claim(job_id=running.job_id, attempt=1)

    job_report(job_id=running.job_id, attempt=1, status=Job.Status.COMPLETED, result={"output": "x"}, starts=False)

    assert fresh(running).status == "completed"
    waiting = fresh(waiting)
    assert (waiting.status, waiting.blocked_by_job_id, waiting.conflict_reason) == ("pending", None, WAITS_FOR_WORKER)
    assert events(waiting)[-1] == "reblocked"

    reaper_pass()

    assert fresh(waiting).status == "running"


def test_only_the_attempt_as_its_worker_holds_it_is_handed_back(user):
    job = submit(user)  # started, its task not yet taken by any worker

    assert job_hand_back(job_id=job.job_id, attempt=1, began=True, reason="r") is None  # never claimed
    assert job_hand_back(job_id=job.job_id, attempt=2, began=False, reason="r") is None  # not its attempt
    assert (fresh(job).status, fresh(job).attempt) == ("running", 1)

    assert job_hand_back(job_id=job.job_id, attempt=1, began=False, reason="sent to a stopping worker") is not None
    assert (fresh(job).status, fresh(job).attempt) == ("pending", 0)
