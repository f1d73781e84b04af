"""GET /jobs/{job_id} of a waiting job says when it waits for a slot, not only for its models (issue
9, item 5): with every slot busy, `waiting_for_slot` names the slots, the jobs holding them and how
many jobs stand before it in the whole line; otherwise it is null."""

import pytest

from coordination.models import Job
from coordination.services import job_cancel, model_pause
from tests.helpers import execute_workflow, submit

pytestmark = pytest.mark.django_db


def detail(api, job: Job) -> dict:
    response = api.get(f"/jobs/{job.job_id}")
    assert response.status_code == 200, response.content
    return response.json()


def holder(job: Job) -> dict:
    return {"job_id": str(job.job_id), "kind": job.kind}


class TestSerializedMode:
    """One slot (the default): a job whose model is free still waits, for the single slot."""

    def test_a_job_on_a_free_model_says_it_waits_for_the_single_slot_and_who_holds_it(self, api, user):
        running = submit(user, model="motion-2.0-fast")
        waiting = submit(user, model="flux-dev")

        body = detail(api, waiting)

        assert body["status"] == "pending"
        # Its own model is free: waiting_for alone said nothing of why it waits.
        assert body["waiting_for"] == [{"model": "flux-dev", "held_by": [], "jobs_ahead": 0, "paused": False, "groups": []}]
        assert body["waiting_for_slot"] == {"slots": 1, "held_by": [holder(running)], "jobs_ahead": 0}

    def test_jobs_ahead_counts_every_job_before_it_in_the_whole_line(self, api, user):
        running = submit(user, model="motion-2.0-fast")
        submit(user, model="motion-2.0-fast")
        execute_workflow(user)
        waiting = submit(user, model="flux-dev")

        body = detail(api, waiting)

        assert body["waiting_for_slot"] == {"slots": 1, "held_by": [holder(running)], "jobs_ahead": 2}
        assert body["queue_position"] == 3

    def test_jobs_a_paused_model_holds_step_aside_so_they_are_not_ahead(self, api, user):
        submit(user, model="motion-2.0-fast")
        submit(user, model="minimax/video-01")  # waits, then is held by the pause
        model_pause(name="minimax/video-01", paused=True, actor="test")
        waiting = submit(user, model="flux-dev")

        body = detail(api, waiting)

        assert body["waiting_for_slot"]["jobs_ahead"] == 0
        assert body["queue_position"] == 2  # it still stands behind the held job in the line

    def test_a_running_workflow_holds_the_slot_as_a_workflow(self, api, user):
        workflow = execute_workflow(user)
        waiting = submit(user, model="flux-dev")

        assert detail(api, waiting)["waiting_for_slot"]["held_by"] == [{"job_id": str(workflow.job_id), "kind": "workflow"}]


class TestSeveralSlots:
    def test_a_job_behind_its_model_with_a_slot_free_does_not_wait_for_a_slot(self, api, user, settings):
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
        running = submit(user, model="motion-2.0-fast")
        waiting = submit(user, model="motion-2.0-fast")

        body = detail(api, waiting)

        assert body["waiting_for"][0]["held_by"] == [holder(running)]
        assert body["waiting_for_slot"] is None

    def test_with_every_slot_busy_it_names_all_their_jobs_in_the_order_they_started(self, api, user, settings):
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
        first = submit(user, model="motion-2.0-fast")
        second = submit(user, model="flux-dev")
        waiting = submit(user, model="nano-banana-pro-leonardo")

        body = detail(api, waiting)

        assert body["waiting_for"] == [
            {"model": "nano-banana-pro-leonardo", "held_by": [], "jobs_ahead": 0, "paused": False, "groups": []}
        ]
        assert body["waiting_for_slot"] == {"slots": 2, "held_by": [holder(first), holder(second)], "jobs_ahead": 0}


def test_a_job_that_does_not_wait_has_no_slot_wait(api, user):
    running = submit(user, model="motion-2.0-fast")
    cancelled = submit(user, model="flux-dev")
    job_cancel(job_id=cancelled.job_id)

    assert detail(api, running)["waiting_for_slot"] is None
    assert detail(api, cancelled)["waiting_for_slot"] is None


def test_the_list_does_not_carry_it(api, user):
    submit(user, model="motion-2.0-fast")
    submit(user, model="flux-dev")

    assert all("waiting_for_slot" not in job for job in api.get("/jobs").json()["results"])
