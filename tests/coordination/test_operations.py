"""The operators' actions (issue 5): pause and resume a model, change a waiting job's priority,
dispatch now and the reconciler. Each is audited with the operator's name and keeps I1-I4 (docs/design.md)."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from coordination.exceptions import InvalidJob, InvalidTransition, UnknownModel
from coordination.models import CatalogModel, Job, JobLine, JobQueueLog, JobQueueState
from coordination.queue import line
from coordination.selectors import queue_reconcile_preview
from coordination.services import (
    job_cancel,
    job_claim,
    job_complete,
    job_priority_set,
    model_pause,
    queue_clear_stale,
    queue_dispatch,
    queue_reconcile,
)
from tests.guide_sql import RESET_STATE
from tests.factories import JobRowFactory
from tests.helpers import assert_exclusion, assert_honest_waiting, events, execute_workflow, fresh, submit

pytestmark = pytest.mark.django_db

PAUSED_FLUX = "Model paused: flux-dev (an operator paused it; the job starts once it is resumed)"


def audit(event_type: str) -> list[JobQueueLog]:
    return list(JobQueueLog.objects.filter(event_type=event_type).order_by("id"))


class TestPause:
    def test_a_job_for_a_paused_model_waits_saying_so_and_starts_when_it_is_resumed(self, user, coordinator_log):
        model_pause(name="flux-dev", paused=True, actor="admin:ops")

        job = submit(user, model="flux-dev")

        assert job.status == Job.Status.PENDING
        assert job.blocked_by_job_id is None and job.conflict_reason == PAUSED_FLUX
        assert f"[COORDINATOR] Marked job {job.job_id} as queued (blocked by no job: model paused)" in coordinator_log.messages
        assert_honest_waiting()
        # Not stale: the repairs leave a job that waits for an operator alone.
        assert queue_clear_stale(actor="admin:ops") == {"repaired": [], "started": []}

        report = model_pause(name="flux-dev", paused=False, actor="admin:ops")

        assert report["started"] == [str(job.job_id)]
        assert fresh(job).status == Job.Status.RUNNING
        assert [(row.event_type, row.details) for row in audit("model_paused") + audit("model_resumed")] == [
            ("model_paused", {"model": "flux-dev", "actor": "admin:ops"}),
            ("model_resumed", {"model": "flux-dev", "actor": "admin:ops"}),
        ]
        assert "[COORDINATOR] Model flux-dev paused by admin:ops" in coordinator_log.messages

    @override_settings(COORDINATOR_MAX_ACTIVE_JOBS=2)
    def test_pausing_keeps_the_running_job_and_the_first_waiter_says_paused_at_once(self, user):
        running = submit(user, model="flux-dev")
        first, second = submit(user, model="flux-dev"), submit(user, model="flux-dev")
        other = submit(user, model="motion-2.0-fast")
        assert fresh(first).blocked_by_job_id == running.job_id

        model_pause(name="flux-dev", paused=True, actor="admin:ops")

        assert fresh(running).status == Job.Status.RUNNING  # a pause stops no running job
        assert fresh(other).status == Job.Status.RUNNING  # other models carry on
        assert (fresh(first).blocked_by_job_id, fresh(first).conflict_reason) == (None, PAUSED_FLUX)
        assert fresh(second).blocked_by_job_id == first.job_id  # in line behind it, as ever
        job_complete(job_id=running.job_id, attempt=1)
        assert fresh(first).status == Job.Status.PENDING  # the freed model starts nothing
        assert_honest_waiting()

        model_pause(name="flux-dev", paused=False, actor="admin:ops")

        assert fresh(first).status == Job.Status.RUNNING
        assert fresh(second).blocked_by_job_id == first.job_id
        assert_honest_waiting()
        assert_exclusion(max_active=2)

    @override_settings(COORDINATOR_MAX_ACTIVE_JOBS=2)
    def test_a_resumed_model_still_held_by_a_running_job_names_that_job(self, user):
        running = submit(user, model="flux-dev")
        model_pause(name="flux-dev", paused=True, actor="admin:ops")
        waiting = submit(user, model="flux-dev")
        assert fresh(waiting).blocked_by_job_id is None

        model_pause(name="flux-dev", paused=False, actor="admin:ops")

        assert fresh(waiting).blocked_by_job_id == running.job_id
        assert "in use by" in fresh(waiting).conflict_reason
        assert_honest_waiting()

    def test_other_models_jobs_pass_a_paused_models_jobs_which_keep_their_place(self, user):
        """Serialized mode too: a paused model holds its own jobs, not the whole line."""
        model_pause(name="flux-dev", paused=True, actor="admin:ops")
        paused_job = submit(user, model="flux-dev")
        passing = submit(user, model="motion-2.0-fast")
        later = submit(user, model="flux-dev")

        assert fresh(passing).status == Job.Status.RUNNING
        assert fresh(later).blocked_by_job_id == paused_job.job_id
        job_complete(job_id=passing.job_id, attempt=1)
        assert fresh(paused_job).status == Job.Status.PENDING

        model_pause(name="flux-dev", paused=False, actor="admin:ops")

        assert fresh(paused_job).status == Job.Status.RUNNING  # its place in line kept
        assert fresh(later).blocked_by_job_id == paused_job.job_id
        assert_honest_waiting()

    def test_pausing_lets_the_jobs_waiting_behind_its_jobs_pass(self, user):
        running = submit(user, model="motion-2.0-fast")
        held = submit(user, model="flux-dev")
        behind = submit(user, model="nano-banana-pro-leonardo")
        assert fresh(behind).blocked_by_job_id == held.job_id

        model_pause(name="flux-dev", paused=True, actor="admin:ops")

        assert fresh(behind).blocked_by_job_id == running.job_id  # re-pointed past the paused job
        assert (fresh(held).blocked_by_job_id, fresh(held).conflict_reason) == (None, PAUSED_FLUX)
        job_complete(job_id=running.job_id, attempt=1)
        assert fresh(behind).status == Job.Status.RUNNING
        assert fresh(held).status == Job.Status.PENDING
        assert_honest_waiting()

    @override_settings(COORDINATOR_MAX_ACTIVE_JOBS=2)
    def test_a_workflow_on_a_paused_model_holds_back_no_job_of_its_other_model(self, user):
        workflow = execute_workflow(user)  # nano-banana-pro-leonardo, then motion-2.0-fast
        job_complete(job_id=workflow.job_id, attempt=1)
        model_pause(name="nano-banana-pro-leonardo", paused=True, actor="admin:ops")
        held = execute_workflow(user)
        motion = submit(user, model="motion-2.0-fast")

        assert fresh(held).blocked_by_job_id is None and fresh(held).conflict_reason.startswith("Model paused")
        assert fresh(motion).status == Job.Status.RUNNING  # passes the held workflow in motion's line
        assert_honest_waiting()

    def test_the_api_says_which_models_are_paused_also_for_jobs_further_back(self, api, user):
        model_pause(name="flux-dev", paused=True, actor="admin:ops")
        first, second = submit(user, model="flux-dev"), submit(user, model="flux-dev")

        body = api.get(f"/jobs/{second.job_id}").json()

        assert body["conflict_reason"].startswith("Waiting in line for flux-dev: ")
        assert body["waiting_for"] == [{"model": "flux-dev", "held_by": [], "jobs_ahead": 1, "paused": True, "groups": []}]
        assert body["estimated_start_at"] is None
        assert api.get(f"/jobs/{first.job_id}").json()["conflict_reason"] == PAUSED_FLUX

    def test_pausing_twice_or_an_unknown_model_is_refused_and_changes_nothing(self):
        model_pause(name="flux-dev", paused=True, actor="admin:ops")

        with pytest.raises(InvalidTransition, match="already paused"):
            model_pause(name="flux-dev", paused=True, actor="admin:ops")
        with pytest.raises(InvalidTransition, match="already not paused"):
            model_pause(name="motion-2.0-fast", paused=False, actor="admin:ops")
        with pytest.raises(UnknownModel, match="Known models: .*flux-dev"):
            model_pause(name="no-such-model", paused=True, actor="admin:ops")
        assert len(audit("model_paused")) == 1 and audit("model_resumed") == []

    def test_a_paused_waiter_whose_reason_was_erased_by_hand_is_repaired(self, user):
        model_pause(name="flux-dev", paused=True, actor="admin:ops")
        submit(user, model="motion-2.0-fast")
        waiting = submit(user, model="flux-dev")
        Job.objects.filter(pk=waiting.pk).update(conflict_reason=None)

        assert queue_clear_stale(actor="admin:ops")["repaired"] == [str(waiting.job_id)]
        assert_honest_waiting()


class TestPriority:
    def test_raising_a_waiting_job_puts_it_first_and_re_points_the_line(self, user):
        running = submit(user)
        first, second, third = submit(user), submit(user), submit(user)

        report = job_priority_set(job_id=third.job_id, priority=5, actor="admin:ops")

        assert report == {"job_id": str(third.job_id), "from": 0, "to": 5, "started": []}
        assert [job.job_id for job in line()] == [third.job_id, first.job_id, second.job_id]
        assert set(JobLine.objects.filter(job_id=third.job_id).values_list("priority", flat=True)) == {5}
        assert fresh(third).blocked_by_job_id == running.job_id
        assert fresh(first).blocked_by_job_id == third.job_id
        assert fresh(second).blocked_by_job_id == first.job_id
        assert_honest_waiting()
        row = JobQueueLog.objects.get(job_id=third.job_id, event_type="priority_changed")
        assert row.details == {"from": 0, "to": 5, "actor": "admin:ops"}

        job_complete(job_id=running.job_id, attempt=1)
        assert fresh(third).status == Job.Status.RUNNING

    def test_lowering_the_first_waiter_lets_the_next_one_go_first(self, user):
        running = submit(user)
        first, second = submit(user), submit(user)

        job_priority_set(job_id=first.job_id, priority=-1, actor="admin:ops")

        assert fresh(second).blocked_by_job_id == running.job_id
        assert fresh(first).blocked_by_job_id == second.job_id
        assert_honest_waiting()
        job_complete(job_id=running.job_id, attempt=1)
        assert fresh(second).status == Job.Status.RUNNING

    @override_settings(COORDINATOR_MAX_ACTIVE_JOBS=2)
    def test_a_job_raised_past_a_blocked_workflow_may_start_at_once(self, user):
        holder = submit(user, model="flux-dev")
        blocked = submit(user, model="flux-dev")
        both = submit(user, model="motion-2.0-fast", params={"simulate_seconds": 0})
        assert fresh(both).status == Job.Status.RUNNING  # a free model, a free slot
        job_complete(job_id=both.job_id, attempt=1)
        assert fresh(blocked).blocked_by_job_id == holder.job_id

        job_priority_set(job_id=blocked.job_id, priority=3, actor="admin:ops")

        assert fresh(blocked).status == Job.Status.PENDING  # still behind the running holder
        assert_honest_waiting()

    def test_a_running_job_or_a_bad_priority_is_refused_and_changes_nothing(self, user):
        running, waiting = submit(user), submit(user)

        with pytest.raises(InvalidTransition, match="only a waiting job's priority can change"):
            job_priority_set(job_id=running.job_id, priority=3, actor="admin:ops")
        for bad in (1001, -1001, "3", 2.5, True):
            with pytest.raises(InvalidJob, match="whole number from -1000 to 1000"):
                job_priority_set(job_id=waiting.job_id, priority=bad, actor="admin:ops")
        assert fresh(waiting).priority == 0 and audit("priority_changed") == []


class TestDispatch:
    def test_dispatch_starts_what_a_hand_edit_left_startable_and_is_audited(self, user):
        model_pause(name="flux-dev", paused=True, actor="admin:ops")
        waiting = submit(user, model="flux-dev")
        CatalogModel.objects.filter(name="flux-dev").update(paused=False)  # by hand, not through the console

        assert queue_dispatch(actor="admin:ops") == {"started": [str(waiting.job_id)]}
        assert audit("dispatched")[0].details == {"actor": "admin:ops", "started": [str(waiting.job_id)]}
        assert queue_dispatch(actor="admin:ops") == {"started": []}


class TestReconcile:
    def test_nothing_to_repair_while_the_records_agree(self, user):
        submit(user), submit(user)
        assert queue_reconcile_preview()["rows"] == []
        assert queue_reconcile(actor="admin:ops") == {"repaired": [], "not_repaired": [], "started": []}
        assert [row.details for row in audit("reconciled")] == [
            {"actor": "admin:ops", "repaired": 0, "not_repaired": [], "started": []}
        ]

    def test_the_guides_reset_sql_on_a_running_job_is_put_back_not_overlapped(self, user):
        running, waiting = submit(user), submit(user)
        with connection.cursor() as cursor:
            cursor.execute(RESET_STATE)

        preview = queue_reconcile_preview()["rows"]
        report = queue_reconcile(actor="admin:ops")

        assert [(row["problem"], row["job_id"]) for row in preview] == [("running job is in no slot", str(running.job_id))]
        assert report["repaired"] == preview and report["started"] == []
        slot = JobQueueState.objects.get(id=1)
        assert (slot.active_job_id, slot.active_models) == (running.job_id, ["motion-2.0-fast"])
        assert fresh(waiting).status == Job.Status.PENDING
        assert audit("reconciled")[0].details["actor"] == "admin:ops"

    def test_a_slot_naming_a_finished_job_is_freed(self, user):
        finished = submit(user)
        job_cancel(job_id=finished.job_id, user=user)  # asks it to stop; it runs on
        Job.objects.filter(pk=finished.pk).update(status=Job.Status.COMPLETED)  # by hand: slot left behind

        (row,) = queue_reconcile_preview()["rows"]
        assert row["problem"] == "slot names a job that is not running"

        queue_reconcile(actor="admin:ops")
        assert JobQueueState.objects.get(id=1).active_job_id is None

    @override_settings(COORDINATOR_LEASE_SECONDS=30)
    def test_a_lapsed_lease_is_shown_then_ended_and_the_next_job_starts(self, user):
        lost, waiting = submit(user), submit(user)
        job_claim(job_id=lost.job_id, attempt=1)
        Job.objects.filter(pk=lost.pk).update(
            heartbeat_at=timezone.now() - timedelta(minutes=2), lease_expires_at=timezone.now() - timedelta(minutes=1)
        )

        (row,) = queue_reconcile_preview()["rows"]
        assert (row["problem"], row["job_id"]) == ("running attempt needs recovery", str(lost.job_id))
        assert row["found"].startswith("worker lost: lease expired at")

        report = queue_reconcile(actor="admin:ops")

        assert fresh(lost).status == Job.Status.FAILED and fresh(lost).error.startswith("worker lost")
        assert report["started"] == [str(waiting.job_id)]
        assert events(lost)[-3:] == ["reconciled", "lease_expired", "failed"]
        assert_exclusion()

    def test_a_running_job_with_no_slot_row_to_take_it_is_reported_not_repaired(self, user):
        holder = submit(user)
        stray = JobRowFactory(model="flux-dev", status=Job.Status.RUNNING, started_at=timezone.now(), attempt=1,
                              lease_expires_at=timezone.now() + timedelta(minutes=5))  # written by hand

        report = queue_reconcile(actor="admin:ops")

        assert report["repaired"] == []
        assert [(row["job_id"], row["why"]) for row in report["not_repaired"]] == [
            (str(stray.job_id), "no free slot row to write it into")
        ]
        assert JobQueueState.objects.get(id=1).active_job_id == holder.job_id
        (summary,) = audit("reconciled")  # the run, with nothing repaired
        assert summary.job_id is None and summary.details["repaired"] == 0
        assert summary.details["not_repaired"][0]["job_id"] == str(stray.job_id)

    def test_a_lapsed_attempt_asked_to_stop_is_shown_and_ended_as_cancelled(self, user):
        lost = submit(user)
        job_claim(job_id=lost.job_id, attempt=1)
        job_cancel(job_id=lost.job_id, user=user)
        Job.objects.filter(pk=lost.pk).update(
            heartbeat_at=timezone.now() - timedelta(minutes=2), lease_expires_at=timezone.now() - timedelta(minutes=1)
        )

        (row,) = queue_reconcile_preview()["rows"]
        assert row["repair"] == "end it as cancelled (a stop was asked for it)"
        queue_reconcile(actor="admin:ops")
        assert fresh(lost).status == Job.Status.CANCELLED
