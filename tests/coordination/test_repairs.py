"""The guide's two troubleshooting fixes, made safe: queue_clear_stale and queue_reset (docs/design.md, recovery)."""

import pytest
from django.db import connection
from django.utils import timezone

from coordination.exceptions import StaleAttempt
from coordination.models import CatalogModel, Job, JobQueueState, ProviderRun
from coordination.services import job_claim, job_complete, queue_clear_stale, queue_reset
from tests.helpers import assert_exclusion, assert_honest_waiting, events, fresh, log_row, submit
from tests.factories import JobRowFactory
from tests.guide_sql import CLEAR_STALE, RESET_STATE

pytestmark = pytest.mark.django_db



def _finished_blocker_with_waiters(count: int) -> tuple[Job, list[Job]]:
    """The guide's symptom: jobs have blocked_by_job_id, but the blocking job is completed."""
    done = JobRowFactory(status=Job.Status.COMPLETED, completed_at=timezone.now())
    waiters = [
        JobRowFactory(blocked_by_job_id=done.job_id, conflict_reason="Model conflict: stale", queued_at=timezone.now())
        for _ in range(count)
    ]
    return done, waiters


class TestClearStale:
    def test_a_job_stuck_behind_a_finished_job_is_started(self):
        done, (stuck,) = _finished_blocker_with_waiters(1)

        report = queue_clear_stale(actor="admin:ops")

        assert report == {"repaired": [str(stuck.job_id)], "started": [str(stuck.job_id)]}
        assert fresh(stuck).status == Job.Status.RUNNING
        cleared = log_row(stuck, "stale_cleared")
        assert cleared.details == {"actor": "admin:ops", "stale_blocker": str(done.job_id)}
        assert cleared.conflict_reason == "Model conflict: stale"
        assert events(stuck) == ["stale_cleared", "started"]

    def test_several_stuck_jobs_start_one_and_re_point_the_rest_in_line_order(self):
        _, (first, second, third) = _finished_blocker_with_waiters(3)

        report = queue_clear_stale(actor="admin:ops")

        assert sorted(report["repaired"]) == sorted(str(job.job_id) for job in (first, second, third))
        assert report["started"] == [str(first.job_id)]
        assert fresh(first).status == Job.Status.RUNNING
        assert fresh(second).blocked_by_job_id == first.job_id
        assert fresh(third).blocked_by_job_id == second.job_id
        assert_honest_waiting()
        assert_exclusion()

    def test_after_the_guides_sql_cleared_blockers_by_hand_waiters_get_them_back(self, user):
        running = submit(user)
        waiting = submit(user)
        with connection.cursor() as cursor:
            cursor.execute(CLEAR_STALE)
        assert fresh(waiting).blocked_by_job_id is None

        report = queue_clear_stale(actor="admin:ops")

        # Cleared blindly, the waiter could have started beside the running job; re-decided, it waits.
        assert report == {"repaired": [str(waiting.job_id)], "started": []}
        waiting = fresh(waiting)
        assert waiting.status == Job.Status.PENDING
        assert waiting.blocked_by_job_id == running.job_id
        assert waiting.conflict_reason == f"Model conflict: motion-2.0-fast in use by normal job {running.job_id}"
        assert waiting.queued_at is not None
        assert events(waiting)[-2:] == ["stale_cleared", "reblocked"]
        assert_honest_waiting()

    def test_a_healthy_queue_is_left_alone(self, user):
        running = submit(user)
        waiting = submit(user)
        before = events(waiting)

        report = queue_clear_stale(actor="admin:ops")

        assert report == {"repaired": [], "started": []}
        assert fresh(running).status == Job.Status.RUNNING
        assert fresh(waiting).blocked_by_job_id == running.job_id
        assert events(waiting) == before


class TestReset:
    def test_resetting_a_busy_slot_evicts_its_job_as_failed_and_starts_the_next(self, user):
        running = submit(user)
        waiting = submit(user)

        report = queue_reset(actor="admin:ops", slot_ids=[1])

        assert report == {"evicted": [str(running.job_id)], "stopping": [], "started": [str(waiting.job_id)]}
        running = fresh(running)
        assert running.status == Job.Status.FAILED
        assert running.error == "Evicted by admin:ops: slot 1 was reset while the job ran"
        assert events(running) == ["submitted", "started", "state_reset", "failed"]
        assert log_row(running, "state_reset").details == {
            "actor": "admin:ops", "slot": 1, "active_job_id": str(running.job_id)
        }
        assert fresh(waiting).status == Job.Status.RUNNING
        assert JobQueueState.objects.get(id=1).active_job_id == waiting.job_id
        assert_exclusion()
        assert_honest_waiting()

    def test_a_job_at_a_provider_is_stopped_there_first_and_keeps_its_slot_meanwhile(self, user):
        """Ending it now would leave its provider's job running while the next job got its model (a
        provider's own limit overrun): its run is marked to stop, and its poller cancels it there and
        fails it (tests/e2e/test_providers.py)."""
        CatalogModel.objects.filter(name="flux-dev").update(
            runner="http", provider="generic", provider_url="https://provider.example/jobs", provider_style="poll")
        running = submit(user, model="flux-dev")
        waiting = submit(user, model="flux-dev")
        job_claim(job_id=running.job_id, attempt=1)
        ProviderRun.objects.create(
            job=running, attempt=1, model="flux-dev", style="poll", provider_job_id="prov-1",
            status_url="https://provider.example/jobs/prov-1", submitted_at=timezone.now(), deadline_at=timezone.now(),
        )

        report = queue_reset(actor="admin:ops", slot_ids=[1])

        assert report == {"evicted": [], "stopping": [str(running.job_id)], "started": []}
        assert fresh(running).status == Job.Status.RUNNING and fresh(waiting).status == Job.Status.PENDING
        assert JobQueueState.objects.get(id=1).active_job_id == running.job_id
        assert ProviderRun.objects.get(job=running).stop_reason == "Evicted by admin:ops: slot 1 was reset while the job ran"
        assert events(running) == ["submitted", "started", "claimed", "state_reset"]
        assert_exclusion()
        assert_honest_waiting()

    def test_the_evicted_jobs_worker_cannot_report_it_afterwards(self, user):
        running = submit(user)
        queue_reset(actor="admin:ops", slot_ids=[1])

        with pytest.raises(StaleAttempt):
            job_complete(job_id=running.job_id, attempt=1, result={})

        assert fresh(running).status == Job.Status.FAILED

    def test_resetting_an_idle_slot_only_logs_it(self, db):
        report = queue_reset(actor="admin:ops", slot_ids=[1])

        assert report == {"evicted": [], "stopping": [], "started": []}
        slot = JobQueueState.objects.get(id=1)
        assert (slot.active_job_id, slot.active_job_type, slot.active_models) == (None, None, [])

    def test_a_slot_naming_a_finished_job_is_cleared_without_evicting_anything(self, user):
        done = JobRowFactory(status=Job.Status.COMPLETED, completed_at=timezone.now())
        JobQueueState.objects.filter(id=1).update(
            active_job_id=done.job_id, active_job_type="normal", active_models=["motion-2.0-fast"]
        )

        report = queue_reset(actor="admin:ops", slot_ids=[1])

        assert report == {"evicted": [], "stopping": [], "started": []}
        assert fresh(done).status == Job.Status.COMPLETED
        assert JobQueueState.objects.get(id=1).active_job_id is None

    def test_a_slot_naming_a_finished_job_does_not_stop_new_jobs(self, user):
        done = JobRowFactory(status=Job.Status.COMPLETED, completed_at=timezone.now())
        JobQueueState.objects.filter(id=1).update(active_job_id=done.job_id, active_job_type="normal")

        job = submit(user)

        assert fresh(job).status == Job.Status.RUNNING
        assert JobQueueState.objects.get(id=1).active_job_id == job.job_id

    def test_a_slot_freed_by_hand_never_lets_a_second_job_start(self, user):
        """The guide's reset SQL run while a job runs: the slot looks free, the model is not."""
        running = submit(user)
        JobQueueState.objects.filter(id=1).update(active_job_id=None, active_job_type=None, active_models=[])

        same_model = submit(user)
        other_model = submit(user, model="flux-dev")

        assert fresh(same_model).status == Job.Status.PENDING
        assert fresh(same_model).blocked_by_job_id == running.job_id
        assert fresh(other_model).status == Job.Status.PENDING
        assert_exclusion()
        assert_honest_waiting()

    def test_reset_with_two_slots_evicts_only_the_chosen_slot(self, settings, user):
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
        image = submit(user, model="flux-dev")
        video = submit(user, model="motion-2.0-fast")
        waiting = submit(user, model="motion-2.0-fast")

        report = queue_reset(actor="admin:ops", slot_ids=[2])

        assert report == {"evicted": [str(video.job_id)], "stopping": [], "started": [str(waiting.job_id)]}
        assert fresh(image).status == Job.Status.RUNNING
        assert fresh(video).status == Job.Status.FAILED
        assert fresh(waiting).status == Job.Status.RUNNING
        assert_exclusion(max_active=2)


def test_the_guides_reset_sql_runs_unchanged_and_the_coordinator_stays_safe(user):
    running = submit(user)
    with connection.cursor() as cursor:
        cursor.execute(RESET_STATE)
        assert cursor.rowcount == 1

    later = submit(user, model="flux-dev")

    assert fresh(later).status == Job.Status.PENDING
    assert fresh(later).blocked_by_job_id == running.job_id
    assert_exclusion()
