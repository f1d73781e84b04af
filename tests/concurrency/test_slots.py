"""Slots and capacities: jobs on free models run side by side (COORDINATOR_MAX_ACTIVE_JOBS > 1),
a model never runs more jobs than its capacity, waiting workflows are not overtaken (docs/design.md, rule 3), the
slot rows follow the setting, and a waiting job's detail says what it waits for, model by model."""

import pytest

from coordination.maintenance import slots_sync
from coordination.models import CatalogModel, Job, JobQueueState
from coordination.services import job_complete
from tests.helpers import assert_exclusion, assert_honest_waiting, execute_workflow, fresh, submit

pytestmark = pytest.mark.django_db

IMAGE, VIDEO, STYLE, MOTION = "flux-dev", "minimax/video-01", "nano-banana-pro-leonardo", "motion-2.0-fast"


def complete(job: Job) -> Job:
    return job_complete(job_id=job.job_id, attempt=fresh(job).attempt, result={"output": "done"})


def statuses(*jobs: Job) -> list[str]:
    return [fresh(job).status for job in jobs]


def slot_jobs() -> dict:
    return dict(JobQueueState.objects.order_by("id").values_list("id", "active_job_id"))


class TestFourSlots:
    @pytest.fixture(autouse=True)
    def four_slots(self, settings):
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 4

    def test_jobs_on_different_models_run_at_the_same_time_each_model_exclusive(self, user):
        jobs = [submit(user, model=model) for model in (IMAGE, VIDEO, STYLE, MOTION)]
        second_image = submit(user, model=IMAGE)

        assert statuses(*jobs) == [Job.Status.RUNNING] * 4
        assert slot_jobs() == {1: jobs[0].job_id, 2: jobs[1].job_id, 3: jobs[2].job_id, 4: jobs[3].job_id}
        second_image = fresh(second_image)
        assert second_image.status == Job.Status.PENDING
        assert second_image.blocked_by_job_id == jobs[0].job_id
        assert second_image.conflict_reason == f"Model conflict: {IMAGE} in use by normal job {jobs[0].job_id}"
        assert_exclusion(max_active=4)
        assert_honest_waiting()

        # Finishing another model's job frees a slot but not flux-dev: it still waits.
        complete(jobs[1])
        assert fresh(second_image).status == Job.Status.PENDING
        complete(jobs[0])
        assert fresh(second_image).status == Job.Status.RUNNING
        assert_exclusion(max_active=4)

    def test_a_model_with_capacity_two_runs_two_jobs_at_once_but_not_three(self, user):
        CatalogModel.objects.filter(name=IMAGE).update(capacity=2)
        first, second, third = (submit(user, model=IMAGE, prompt=f"image {n}") for n in range(3))

        assert statuses(first, second, third) == [Job.Status.RUNNING, Job.Status.RUNNING, Job.Status.PENDING]
        third = fresh(third)
        assert third.blocked_by_job_id == first.job_id
        assert third.conflict_reason == f"Model conflict: {IMAGE} in use by normal job {first.job_id}"
        assert_exclusion(max_active=4)

        complete(second)
        assert statuses(first, second, third) == [Job.Status.RUNNING, Job.Status.COMPLETED, Job.Status.RUNNING]
        assert_exclusion(max_active=4)

    def test_a_waiting_workflow_is_not_overtaken_by_later_jobs_on_its_free_model(self, user):
        busy = submit(user, model=STYLE)  # the workflow's first model is in use
        workflow = execute_workflow(user)  # needs STYLE and MOTION
        assert fresh(workflow).status == Job.Status.PENDING

        # A stream of jobs on MOTION, which is free: each waits behind the workflow (rule 3), even
        # while the job holding STYLE keeps being replaced by others that finish.
        stream = []
        for n in range(5):
            stream.append(submit(user, model=MOTION, prompt=f"video {n}"))
            waiter = fresh(stream[-1])
            assert waiter.status == Job.Status.PENDING
            assert waiter.conflict_reason.startswith(f"Waiting in line for {MOTION}: ")
        assert fresh(stream[0]).blocked_by_job_id == workflow.job_id
        assert fresh(stream[0]).conflict_reason == f"Waiting in line for {MOTION}: workflow job {workflow.job_id} goes first"
        unrelated = submit(user, model=IMAGE)  # a model nobody waits for is not held back
        assert fresh(unrelated).status == Job.Status.RUNNING
        assert_honest_waiting()

        complete(busy)  # STYLE frees: the workflow goes first, the stream still waits for MOTION
        assert fresh(workflow).status == Job.Status.RUNNING
        assert statuses(*stream) == [Job.Status.PENDING] * 5
        assert_honest_waiting()

        complete(workflow)  # then the stream, in order, one at a time (MOTION's capacity is 1)
        for n, job in enumerate(stream):
            expected = [Job.Status.COMPLETED] * n + [Job.Status.RUNNING] + [Job.Status.PENDING] * (4 - n)
            assert statuses(*stream) == expected
            complete(job)
        assert_exclusion(max_active=4)

    def test_a_later_job_may_not_jump_a_waiting_workflow_by_finishing_order_either(self, user):
        # The workflow waits for STYLE; a MOTION job ahead of it in line runs. When MOTION frees, the
        # workflow (still waiting for STYLE) keeps its place: the next MOTION job waits behind it.
        motion = submit(user, model=MOTION)
        style = submit(user, model=STYLE)
        workflow = execute_workflow(user)
        later = submit(user, model=MOTION, prompt="later")

        complete(motion)

        assert statuses(workflow, later) == [Job.Status.PENDING, Job.Status.PENDING]
        assert fresh(later).blocked_by_job_id == workflow.job_id
        assert fresh(workflow).blocked_by_job_id == style.job_id
        assert_honest_waiting()
        complete(style)
        assert statuses(workflow, later) == [Job.Status.RUNNING, Job.Status.PENDING]


class TestSlotsSync:
    def test_creates_the_rows_for_every_slot(self, settings):
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 3

        report = slots_sync()

        assert list(JobQueueState.objects.order_by("id").values_list("id", flat=True)) == [1, 2, 3]
        assert report == {"slots": 3, "removed": 0, "busy_beyond": 0, "pending": 0, "started": 0}

    def test_more_slots_start_the_jobs_that_now_fit(self, settings, user):
        image = submit(user, model=IMAGE)
        video = submit(user, model=VIDEO)  # serialized mode: waits although its model is free
        assert fresh(video).status == Job.Status.PENDING

        settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
        report = slots_sync()

        assert report["started"] == 1
        assert statuses(image, video) == [Job.Status.RUNNING, Job.Status.RUNNING]
        assert slot_jobs() == {1: image.job_id, 2: video.job_id}

    def test_fewer_slots_remove_free_rows_and_keep_a_busy_one_until_its_job_ends(self, settings, user):
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 3
        first, second, third = (submit(user, model=model) for model in (IMAGE, VIDEO, STYLE))
        complete(second)  # slot 2 is free, slots 1 and 3 are busy
        assert slot_jobs() == {1: first.job_id, 2: None, 3: third.job_id}

        settings.COORDINATOR_MAX_ACTIVE_JOBS = 1
        report = slots_sync()

        assert report == {"slots": 1, "removed": 1, "busy_beyond": 1, "pending": 0, "started": 0}
        assert slot_jobs() == {1: first.job_id, 3: third.job_id}
        # Two jobs still run, more than the one slot: a new job waits, whatever its model.
        waiting = submit(user, model=MOTION)
        assert fresh(waiting).status == Job.Status.PENDING

        complete(third)  # its slot is freed, and takes no new job: the one slot is still busy
        assert slot_jobs() == {1: first.job_id, 3: None}
        assert fresh(waiting).status == Job.Status.PENDING
        assert slots_sync()["removed"] == 1
        assert slot_jobs() == {1: first.job_id}

        complete(first)
        assert fresh(waiting).status == Job.Status.RUNNING
        assert slot_jobs() == {1: waiting.job_id}


class TestWaitingFor:
    """GET /jobs/{id}: a waiting job says, for each model it needs, who holds it and how many wait
    before it in that model's line."""

    @pytest.fixture(autouse=True)
    def two_slots(self, settings):
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 2

    def test_a_waiting_workflow_and_a_job_behind_it(self, api, user):
        running = submit(user, model=MOTION)
        workflow = execute_workflow(user)
        behind = submit(user, model=MOTION, prompt="behind")

        body = api.get(f"/jobs/{workflow.job_id}").json()
        assert body["status"] == "pending"
        assert body["queue_position"] == 1
        assert body["waiting_for"] == [
            {"model": STYLE, "held_by": [], "jobs_ahead": 0, "paused": False, "groups": []},
            {"model": MOTION, "held_by": [{"job_id": str(running.job_id), "kind": "normal"}], "jobs_ahead": 0,
             "paused": False, "groups": []},
        ]

        body = api.get(f"/jobs/{behind.job_id}").json()
        assert body["queue_position"] == 2
        assert body["waiting_for"] == [
            {"model": MOTION, "held_by": [{"job_id": str(running.job_id), "kind": "normal"}], "jobs_ahead": 1,
             "paused": False, "groups": []},
        ]

    def test_every_holder_of_a_model_of_capacity_two_is_named_in_start_order(self, api, user):
        CatalogModel.objects.filter(name=IMAGE).update(capacity=2)
        first, second = submit(user, model=IMAGE), submit(user, model=IMAGE)
        third = submit(user, model=IMAGE, prompt="third")  # the model is full (and so are both slots)

        body = api.get(f"/jobs/{third.job_id}").json()
        assert body["blocked_by_job_id"] == str(first.job_id)
        assert body["waiting_for"] == [
            {
                "model": IMAGE,
                "held_by": [
                    {"job_id": str(first.job_id), "kind": "normal"},
                    {"job_id": str(second.job_id), "kind": "normal"},
                ],
                "jobs_ahead": 0,
                "paused": False,
                "groups": [],
            }
        ]

    def test_a_running_job_waits_for_nothing(self, api, user):
        running = submit(user, model=MOTION)

        body = api.get(f"/jobs/{running.job_id}").json()

        assert body["status"] == "running"
        assert body["waiting_for"] is None
        assert body["queue_position"] is None
