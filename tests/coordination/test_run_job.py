"""coordination.tasks.run_job, called in-process as django-q2 would call it (docs/design.md: life of a job, I5)."""

from datetime import datetime

import pytest

from coordination.models import Job
from coordination.runners.simulated import SimulatedRunner
from coordination.services import job_cancel
from coordination.tasks import run_job
from tests.helpers import events, fresh, log_row, submit

pytestmark = pytest.mark.django_db




def test_run_job_completes_the_job_with_the_runners_result(user, runner_calls):
    job = submit(user, prompt="A knight riding a horse", params={"simulate_seconds": 0})

    run_job(str(job.job_id), 1)

    job = fresh(job)
    assert job.status == Job.Status.COMPLETED
    began = datetime.fromisoformat(job.result.pop("runner_started_at"))
    assert job.started_at <= began <= job.completed_at
    assert job.result == {
        "runner": "simulated",
        "model": "motion-2.0-fast",
        "output": f"simulated://motion-2.0-fast/{job.job_id}",
        "files": [{"source_url": f"simulated://motion-2.0-fast/{job.job_id}", "content_type": "video/mp4"}],
        "seconds": 0.0,
        "prompt": "A knight riding a horse",
        "inputs": {},
    }
    assert job.error is None
    assert len(runner_calls) == 1
    assert runner_calls[0].params == {"simulate_seconds": 0}
    assert events(job) == ["submitted", "started", "claimed", "completed"]
    assert job.claimed_attempt == 1


def test_the_worker_that_finishes_a_job_runs_the_job_it_started(user, runner_calls):
    """The hand-off: the next job runs at once in the same worker, and its own delivery does nothing."""
    first = submit(user)
    second = submit(user)

    run_job(str(first.job_id), 1)

    assert fresh(second).status == Job.Status.COMPLETED
    assert [call.job_id for call in runner_calls] == [first.job_id, second.job_id]
    assert events(second) == ["submitted", "blocked", "started", "claimed", "completed"]
    assert log_row(second, "claimed").details == {"attempt": 1, "handoff": True}

    run_job(str(second.job_id), 1)  # its task, delivered by the broker afterwards

    assert len(runner_calls) == 2


def test_simulate_fail_fails_the_job_with_its_message(user, runner_calls):
    job = submit(user, params={"simulate_seconds": 0, "simulate_fail": "GPU out of memory"})
    waiting = submit(user)

    run_job(str(job.job_id), 1)

    job = fresh(job)
    assert job.status == Job.Status.FAILED
    assert job.error == "GPU out of memory"
    assert job.result is None
    assert log_row(job, "failed").details == {"attempt": 1, "error": "GPU out of memory"}
    # The failure freed the model: the waiting job was handed to this worker and ran.
    assert [call.job_id for call in runner_calls] == [job.job_id, waiting.job_id]
    assert fresh(waiting).status == Job.Status.COMPLETED


def test_simulate_fail_true_says_which_model_failed(user):
    job = submit(user, params={"simulate_seconds": 0, "simulate_fail": True})

    run_job(str(job.job_id), 1)

    assert fresh(job).error == "Simulated failure of motion-2.0-fast"


def test_a_second_delivery_of_a_finished_attempt_does_nothing(user, runner_calls):
    job = submit(user)
    run_job(str(job.job_id), 1)
    finished = fresh(job)

    run_job(str(job.job_id), 1)

    assert len(runner_calls) == 1
    assert fresh(job).completed_at == finished.completed_at
    assert events(job) == ["submitted", "started", "claimed", "completed"]


def test_a_second_delivery_while_the_first_still_runs_does_nothing(user, runner_calls, monkeypatch):
    """A worker killed mid-job: django-q2 delivers the task again, but the attempt was claimed once."""
    job = submit(user)
    seen_by_second_delivery = []
    run = SimulatedRunner.run  # counts into runner_calls

    def redelivered_meanwhile(self, call):
        if not seen_by_second_delivery:
            # While the first delivery's runner runs, the same (job_id, attempt) comes again.
            run_job(str(job.job_id), 1)
            seen_by_second_delivery.append(fresh(job).status)
        return run(self, call)

    monkeypatch.setattr(SimulatedRunner, "run", redelivered_meanwhile)
    run_job(str(job.job_id), 1)

    assert seen_by_second_delivery == [Job.Status.RUNNING]
    assert len(runner_calls) == 1
    assert fresh(job).status == Job.Status.COMPLETED
    assert events(job) == ["submitted", "started", "claimed", "completed"]


def test_a_task_for_an_old_attempt_does_nothing(user, runner_calls):
    job = submit(user)
    # The job was restarted since this task was enqueued (as recovery would): attempt 2 is current.
    Job.objects.filter(pk=job.pk).update(attempt=2)

    run_job(str(job.job_id), 1)

    assert runner_calls == []
    job = fresh(job)
    assert (job.status, job.claimed_attempt) == (Job.Status.RUNNING, 0)
    assert "claimed" not in events(job)


def test_a_task_for_a_cancelled_job_does_nothing(user, runner_calls):
    submit(user)
    waiting = submit(user)
    job_cancel(job_id=waiting.job_id, user=user)

    run_job(str(waiting.job_id), 1)

    assert runner_calls == []
    assert fresh(waiting).status == Job.Status.CANCELLED
    assert events(waiting) == ["submitted", "blocked", "cancelled"]


def test_a_task_for_a_job_that_never_started_does_nothing(user, runner_calls):
    submit(user)
    waiting = submit(user)

    run_job(str(waiting.job_id), 0)
    run_job(str(waiting.job_id), 1)

    assert runner_calls == []
    assert fresh(waiting).status == Job.Status.PENDING


def test_a_job_ended_elsewhere_while_its_runner_ran_keeps_that_outcome(user, monkeypatch):
    """The runner finishes after an operator reset evicted the job: its result is refused, logged."""
    from coordination.services import queue_reset

    job = submit(user)
    run = SimulatedRunner.run

    def evicted_meanwhile(self, call):
        queue_reset(actor="admin:ops", slot_ids=[1])
        return run(self, call)

    monkeypatch.setattr(SimulatedRunner, "run", evicted_meanwhile)
    run_job(str(job.job_id), 1)

    job = fresh(job)
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("Evicted by admin:ops")
    assert job.result is None
    assert events(job)[-1] == "refused"
