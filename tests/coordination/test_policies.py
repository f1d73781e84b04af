"""Scheduling policies (issue 11): capacity groups, start-by deadlines, de-duplication, line limits.

Each changes nothing when unused (the rest of the suite runs without them); here each is used."""

from datetime import timedelta

import pytest
from django.utils import timezone

from coordination.exceptions import DuplicateJob, InvalidJob, LineFull
from coordination import selectors
from coordination.models import CapacityGroup, CatalogModel, Job, JobLine, JobQueueLog, LineShare
from coordination.queue.lines import line_key
from coordination.recovery import reaper_pass
from coordination.services import capacity_group_save, catalog_model_save, job_complete, jobs_submit_batch, model_pause
from tests.helpers import assert_honest_waiting, at_once, events, execute_workflow, fresh, log_row, submit

pytestmark = pytest.mark.django_db

IMAGE, VIDEO, OTHER_VIDEO = "flux-dev", "motion-2.0-fast", "minimax/video-01"


def complete(job: Job) -> None:
    job_complete(job_id=job.job_id, attempt=fresh(job).attempt, result={"output": "done"})


# --- capacity groups ------------------------------------------------------------------------------


@pytest.fixture
def four_slots(settings):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 4


def group(name: str, capacity: int, *models: str) -> CapacityGroup:
    made = CapacityGroup(name=name, capacity=capacity)
    capacity_group_save(group=made, models=list(CatalogModel.objects.filter(name__in=models)), actor="test")
    return made


@pytest.mark.usefixtures("four_slots")
class TestCapacityGroups:
    def test_a_full_group_holds_back_a_job_on_another_of_its_models_and_says_so(self, user):
        group("acme-key", 1, VIDEO, OTHER_VIDEO)
        running = submit(user, model=VIDEO)
        waiting = submit(user, model=OTHER_VIDEO)
        free = submit(user, model=IMAGE)  # not in the group: starts beside it

        assert fresh(running).status == fresh(free).status == Job.Status.RUNNING
        waiting = fresh(waiting)
        assert waiting.status == Job.Status.PENDING
        assert waiting.conflict_reason == "Capacity group acme-key full: 1 of 1 running"
        assert waiting.blocked_by_job_id == running.job_id
        assert_honest_waiting()

        complete(running)

        assert fresh(waiting).status == Job.Status.RUNNING

    def test_a_job_counts_once_in_a_group_however_many_of_its_models_it_uses(self, user):
        group("studio", 2, "nano-banana-pro-leonardo", VIDEO, IMAGE)
        workflow = execute_workflow(user)  # nano-banana-pro-leonardo and motion-2.0-fast: one job of two
        image = submit(user, model=IMAGE)
        third = submit(user, model=OTHER_VIDEO)  # outside the group

        assert fresh(workflow).status == fresh(image).status == fresh(third).status == Job.Status.RUNNING
        late = submit(user, model=IMAGE, prompt="late")
        assert fresh(late).conflict_reason.startswith("Model conflict")  # flux-dev itself is busy (capacity 1)

    def test_raising_a_groups_capacity_starts_its_waiting_jobs_at_once(self, user):
        acme = group("acme-key", 1, VIDEO, OTHER_VIDEO)
        submit(user, model=VIDEO)
        waiting = submit(user, model=OTHER_VIDEO)
        assert fresh(waiting).status == Job.Status.PENDING

        acme.capacity = 2
        report = capacity_group_save(group=acme, models=None, actor="admin:ops")

        assert fresh(waiting).status == Job.Status.RUNNING
        assert report["started"] == [str(waiting.job_id)]
        row = JobQueueLog.objects.filter(event_type=JobQueueLog.Event.GROUP_CHANGED).order_by("id").last()
        assert row.details["actor"] == "admin:ops" and row.details["changes"] == {"capacity": [1, 2]}

    def test_taking_a_model_out_of_a_group_starts_its_job_and_lowering_stops_nothing(self, user):
        acme = group("acme-key", 2, VIDEO, OTHER_VIDEO)
        first, second = submit(user, model=VIDEO), submit(user, model=OTHER_VIDEO)
        acme.capacity = 1
        capacity_group_save(group=acme, models=None, actor="test")
        assert fresh(first).status == fresh(second).status == Job.Status.RUNNING  # lowering stops no job

        complete(first)
        blocked = submit(user, model=VIDEO)
        assert fresh(blocked).conflict_reason == "Capacity group acme-key full: 1 of 1 running"

        capacity_group_save(group=acme, models=list(CatalogModel.objects.filter(name=OTHER_VIDEO)), actor="test")

        assert fresh(blocked).status == Job.Status.RUNNING

    def test_the_api_lists_a_waiting_jobs_groups(self, api, user):
        group("acme-key", 1, VIDEO, OTHER_VIDEO)
        running = submit(user, model=VIDEO)
        waiting = submit(user, model=OTHER_VIDEO)

        body = api.get(f"/jobs/{waiting.job_id}").json()

        assert body["waiting_for"] == [
            {"model": OTHER_VIDEO, "held_by": [], "jobs_ahead": 0, "paused": False,
             "groups": [{"name": "acme-key", "running": 1, "capacity": 1}]},
        ]
        assert body["blocked_by_job_id"] == str(running.job_id)

    def test_metrics_show_each_groups_running_jobs_and_capacity(self, client, staff_user, user):
        group("acme-key", 3, VIDEO, OTHER_VIDEO)
        submit(user, model=VIDEO)
        submit(user, model=OTHER_VIDEO)
        client.force_login(staff_user)

        text = client.get("/metrics").content.decode()

        assert 'jobqueue_group_jobs_running{group="acme-key"} 2.0' in text
        assert 'jobqueue_group_capacity{group="acme-key"} 3.0' in text


# --- start-by deadlines ---------------------------------------------------------------------------


def overdue(job: Job) -> Job:
    """As if its deadline had passed: set by hand, since a test does not wait for a clock."""
    Job.objects.filter(pk=job.pk).update(start_by=timezone.now() - timedelta(seconds=1))
    return fresh(job)


class TestDeadlines:
    def test_max_wait_seconds_sets_start_by_from_now(self, user):
        before = timezone.now()
        job = submit(user, max_wait_seconds=90)
        assert before + timedelta(seconds=90) <= fresh(job).start_by <= timezone.now() + timedelta(seconds=90)

    @pytest.mark.parametrize(
        "policy, message",
        [
            ({"start_by": "past"}, "is in the past"),
            ({"start_by": "far"}, "at most 30 days ahead"),
            ({"max_wait_seconds": 31 * 86400}, "at most 2592000"),
            ({"max_wait_seconds": 0}, "1 or more"),
            ({"max_wait_seconds": 60, "start_by": "soon"}, "not both"),
        ],
    )
    def test_a_bad_deadline_is_refused_and_changes_nothing(self, user, policy, message):
        now = timezone.now()
        times = {"past": now - timedelta(minutes=1), "far": now + timedelta(days=31), "soon": now + timedelta(minutes=5)}
        policy = {key: times.get(value, value) if key == "start_by" else value for key, value in policy.items()}
        with pytest.raises(InvalidJob, match=message):
            submit(user, **policy)
        assert not Job.objects.exists()

    def test_a_waiting_job_past_its_deadline_expires_and_the_job_behind_it_moves_up(self, user):
        running = submit(user)
        deadline = submit(user, max_wait_seconds=60)
        behind = submit(user)
        assert fresh(behind).blocked_by_job_id == deadline.job_id
        overdue(deadline)

        reaper_pass()

        deadline = fresh(deadline)
        assert deadline.status == Job.Status.EXPIRED
        assert deadline.error == f"not started by {deadline.start_by.isoformat()}"
        assert events(deadline)[-1] == "expired"
        assert not JobLine.objects.filter(job_id=deadline.job_id).exists()
        assert fresh(behind).blocked_by_job_id == running.job_id
        assert_honest_waiting()

    def test_a_job_past_its_deadline_never_starts_when_its_turn_comes(self, user):
        running = submit(user)
        deadline = overdue(submit(user, max_wait_seconds=60))
        behind = submit(user)

        complete(running)

        assert fresh(deadline).status == Job.Status.EXPIRED and fresh(deadline).started_at is None
        assert fresh(behind).status == Job.Status.RUNNING

    def test_a_running_job_is_never_expired(self, user):
        job = overdue(submit(user, max_wait_seconds=60))  # it started at once
        reaper_pass()
        assert fresh(job).status == Job.Status.RUNNING

    def test_the_api_takes_a_deadline_and_refuses_a_bad_one(self, api):
        body = {"prompt": "A castle", "model": IMAGE}
        answer = api.post("/jobs", {**body, "start_by": "2031-01-01T10:00:00"}, format="json")
        assert answer.status_code == 400 and "time zone" in answer.json()["error"]
        answer = api.post("/jobs", {**body, "start_by": "2020-01-01T00:00:00Z"}, format="json")
        assert answer.status_code == 400 and "in the past" in answer.json()["error"]
        start_by = (timezone.now() + timedelta(hours=1)).isoformat()
        answer = api.post("/jobs", {**body, "start_by": start_by}, format="json")
        assert answer.status_code == 201 and answer.json()["start_by"] is not None


# --- de-duplication -------------------------------------------------------------------------------


class TestDedupe:
    def test_a_second_live_job_with_the_key_is_refused_naming_the_first(self, user):
        first = submit(user, dedupe_key="render-42")
        with pytest.raises(DuplicateJob) as refused:
            submit(user, dedupe_key="render-42")
        assert refused.value.job_id == first.job_id and str(first.job_id) in refused.value.message
        assert Job.objects.count() == 1

    def test_keys_are_per_owner_and_free_again_once_the_job_ended(self, user, other_user):
        first = submit(user, dedupe_key="render-42")
        submit(other_user, dedupe_key="render-42", model=IMAGE)  # another owner's key
        complete(first)
        again = submit(user, dedupe_key="render-42")
        assert fresh(again).status in (Job.Status.PENDING, Job.Status.RUNNING)

    def test_replace_cancels_the_waiting_job_and_takes_its_place(self, user):
        running = submit(user)
        old = submit(user, dedupe_key="render-42", params={"simulate_seconds": 0, "v": 1})
        behind = submit(user)

        new = submit(user, dedupe_key="render-42", on_duplicate="replace", params={"simulate_seconds": 0, "v": 2})

        old = fresh(old)
        assert old.status == Job.Status.CANCELLED and old.error == f"replaced by {new.job_id}"
        assert log_row(old, "cancelled").details["replaced_by"] == str(new.job_id)
        new = fresh(new)
        assert new.created_at == old.created_at  # its place in line
        assert fresh(behind).blocked_by_job_id == new.job_id
        assert_honest_waiting()

        complete(running)

        assert fresh(new).status == Job.Status.RUNNING and fresh(behind).status == Job.Status.PENDING

    def test_a_replacement_for_other_models_is_simply_new_and_takes_no_place(self, user, other_user):
        submit(user)  # motion-2.0-fast busy
        placeholder = submit(user, model=IMAGE, dedupe_key="k")  # waits behind it (serialized mode)
        ahead = [submit(other_user, prompt=f"other {n}") for n in range(2)]

        new = submit(user, dedupe_key="k", on_duplicate="replace")

        assert fresh(placeholder).status == Job.Status.CANCELLED
        new = fresh(new)
        assert new.created_at > fresh(ahead[-1]).created_at and new.blocked_by_job_id == ahead[-1].job_id
        assert events(new) == ["submitted", "blocked"]

    def test_a_running_job_cannot_be_replaced(self, user):
        running = submit(user, dedupe_key="render-42")
        with pytest.raises(DuplicateJob, match="is running and cannot be replaced"):
            submit(user, dedupe_key="render-42", on_duplicate="replace")
        assert fresh(running).status == Job.Status.RUNNING and Job.objects.count() == 1

    def test_a_batch_may_not_name_a_key_twice(self, user):
        bodies = [{"model": IMAGE, "prompt": "a", "dedupe_key": "k"}, {"model": IMAGE, "prompt": "b", "dedupe_key": "k"}]
        with pytest.raises(InvalidJob, match=r"jobs\[1\].dedupe_key: jobs\[0\] has the same dedupe_key"):
            jobs_submit_batch(owner=user, bodies=bodies)

    def test_the_api_answers_409_with_the_live_jobs_id(self, api):
        body = {"prompt": "A castle", "model": IMAGE, "dedupe_key": "castle"}
        first = api.post("/jobs", body, format="json").json()
        answer = api.post("/jobs", body, format="json")
        assert answer.status_code == 409
        assert answer.json()["code"] == "duplicate" and answer.json()["job_id"] == first["job_id"]
        bad = api.post("/jobs", {**body, "dedupe_key": "tab\there"}, format="json")
        assert bad.status_code == 400 and "printable" in bad.json()["error"]


# --- line limits ----------------------------------------------------------------------------------


class TestLineLimits:
    def test_a_submit_beyond_max_waiting_is_refused_with_retry_after_and_changes_nothing(self, user):
        CatalogModel.objects.filter(name=VIDEO).update(max_waiting=2)
        running = submit(user, params={"simulate_seconds": 30})
        submit(user), submit(user)
        jobs, audit = Job.objects.count(), JobQueueLog.objects.count()

        with pytest.raises(LineFull) as refused:
            submit(user)

        assert "The line of motion-2.0-fast is full: 2 jobs wait" in refused.value.message
        assert 1 <= refused.value.retry_after <= 30
        assert (Job.objects.count(), JobQueueLog.objects.count()) == (jobs, audit)
        submit(user, model=IMAGE)  # other lines are not limited
        complete(running)
        submit(user)  # one started, so there is room again

    def test_a_job_that_starts_at_once_is_not_held_by_the_limit(self, user):
        CatalogModel.objects.filter(name=VIDEO).update(max_waiting=0)
        job = submit(user)
        assert fresh(job).status == Job.Status.RUNNING
        with pytest.raises(LineFull):
            submit(user)

    def test_the_api_answers_429_with_retry_after(self, api, user):
        CatalogModel.objects.filter(name=VIDEO).update(max_waiting=0)
        submit(user)
        answer = api.post("/jobs", {"prompt": "A knight", "model": VIDEO}, format="json")
        assert answer.status_code == 429 and answer.json()["code"] == "line_full"
        assert int(answer["Retry-After"]) >= 1


@pytest.mark.django_db(transaction=True)
def test_a_line_limit_holds_under_concurrent_submits(user):
    """Eight threads submit at once into a line that may hold three: exactly three wait."""
    CatalogModel.objects.filter(name=VIDEO).update(max_waiting=3)
    submit(user, params={"simulate_seconds": 30})
    outcomes = []

    def one():
        try:
            submit(user)
            outcomes.append("accepted")
        except LineFull:
            outcomes.append("refused")

    at_once(one, 8)
    assert sorted(outcomes) == ["accepted"] * 3 + ["refused"] * 5
    assert JobLine.objects.filter(model=VIDEO).count() == 3


# --- fair lines -----------------------------------------------------------------------------------


def fair(model: str = VIDEO) -> None:
    catalog = CatalogModel.objects.get(name=model)
    catalog.line_policy = CatalogModel.LinePolicy.FAIR
    catalog_model_save(model=catalog, actor="test")


def run_next(model: str = VIDEO) -> Job:
    """Complete the job running on `model`; return the job that starts on it then."""
    running = Job.objects.get(status=Job.Status.RUNNING, model=model)
    complete(running)
    return Job.objects.get(status=Job.Status.RUNNING, model=model)


@pytest.mark.usefixtures("four_slots")
class TestFairLines:
    def test_owners_take_turns_so_a_single_job_does_not_wait_behind_anothers_many(self, user, other_user, staff_user):
        fair()
        a = [submit(user, prompt=f"a{i}") for i in range(5)]  # a0 runs, a1-a4 wait
        b = submit(other_user, prompt="b0")
        c = submit(staff_user, prompt="c0")

        # b and c have never had a turn: they go before a's next job, in the order they came.
        assert [run_next().job_id for _ in range(4)] == [b.job_id, c.job_id, a[1].job_id, a[2].job_id]
        assert_honest_waiting()

    def test_the_next_owner_is_the_one_who_started_least_recently(self, user, other_user):
        fair()
        first = submit(user, prompt="a0")
        a1, a2 = submit(user, prompt="a1"), submit(user, prompt="a2")
        b0, b1 = submit(other_user, prompt="b0"), submit(other_user, prompt="b1")

        order = [run_next().job_id for _ in range(4)]

        assert order == [b0.job_id, a1.job_id, b1.job_id, a2.job_id]
        assert fresh(first).status == Job.Status.COMPLETED

    def test_priority_still_comes_first(self, user, other_user, staff_user):
        fair()
        submit(staff_user, prompt="running")
        low = submit(other_user, prompt="never started, low priority")
        high = submit(staff_user, prompt="staff, high priority", priority=5)
        assert run_next().job_id == high.job_id
        assert run_next().job_id == low.job_id

    def test_the_place_in_line_and_the_api_follow_the_fair_order(self, api, user, other_user):
        fair()
        submit(user, prompt="a0")
        a1, a2 = submit(user, prompt="a1"), submit(user, prompt="a2")
        b0 = submit(other_user, prompt="b0")

        assert [selectors.job_queue_position(fresh(job)) for job in (b0, a1, a2)] == [1, 2, 3]
        body = api.get(f"/jobs/{a2.job_id}").json()
        assert body["queue_position"] == 3 and body["waiting_for"][0]["jobs_ahead"] == 2
        assert [job["queue_position"] for job in api.get("/jobs").json()["results"] if job["status"] == "pending"] == [3, 2]

    def test_a_line_made_fair_with_jobs_waiting_takes_turns_from_then_on(self, user, other_user):
        submit(user, prompt="a0")
        a1 = submit(user, prompt="a1")
        a2 = submit(user, prompt="a2")
        b0 = submit(other_user, prompt="b0")
        fair()
        assert LineShare.objects.filter(model=VIDEO, waiting__gt=0).count() == 2
        # Nobody has had a turn since: the owners go by their oldest job, then take turns.
        assert [run_next().job_id for _ in range(3)] == [a1.job_id, b0.job_id, a2.job_id]

    def test_a_fair_line_made_first_come_first_served_again_names_no_job_behind_a_waiting_one(
        self, user, other_user, staff_user
    ):
        """In a fair line a job may wait behind another owner's later job (that owner's turn comes
        first); once the line is plain again, that later job stands behind it, so it is decided again."""
        fair()
        first = submit(user, prompt="a0")  # motion-2.0-fast busy
        mine = execute_workflow(user)  # nano-banana-pro-leonardo, then motion-2.0-fast
        theirs = execute_workflow(other_user)
        image = submit(staff_user, model="nano-banana-pro-leonardo", prompt="urgent", priority=5)  # nano busy too
        complete(first)
        # motion-2.0-fast is free, and there the other owner's turn comes first; theirs needs the
        # image's model as well, so neither workflow starts.
        assert fresh(mine).blocked_by_job_id == theirs.job_id and fresh(theirs).status == Job.Status.PENDING

        catalog = CatalogModel.objects.get(name=VIDEO)
        catalog.line_policy = CatalogModel.LinePolicy.FIFO
        catalog_model_save(model=catalog, actor="test")

        for job in (fresh(mine), fresh(theirs)):
            blocker = Job.objects.get(pk=job.blocked_by_job_id)
            assert blocker.status == Job.Status.RUNNING or line_key(blocker) < line_key(job), (
                f"{job.job_id} waits behind {blocker.job_id}, which is behind it")
        assert fresh(mine).blocked_by_job_id == image.job_id
        assert_honest_waiting()

    def test_an_owners_job_held_by_a_pause_does_not_hold_back_its_job_on_a_free_fair_line(self, user):
        fair()
        fair("nano-banana-pro-leonardo")
        model_pause(name="motion-2.0-fast", paused=True, actor="test")
        workflow = execute_workflow(user)  # needs the paused model: held
        image = submit(user, model="nano-banana-pro-leonardo", prompt="mine too")
        assert fresh(workflow).status == Job.Status.PENDING and fresh(image).status == Job.Status.RUNNING

    def test_serialized_mode_stays_global_fifo(self, settings, user, other_user):
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 1
        fair()
        submit(user, prompt="a0")
        a1 = submit(user, prompt="a1")
        b0 = submit(other_user, prompt="b0")
        assert run_next().job_id == a1.job_id and fresh(b0).status == Job.Status.PENDING

    def test_a_two_model_job_still_starts_only_at_the_head_of_every_line(self, user, other_user):
        fair()
        fair("nano-banana-pro-leonardo")
        submit(user, prompt="a0")  # motion-2.0-fast busy
        workflow = execute_workflow(user)  # needs nano-banana-pro-leonardo and motion-2.0-fast
        image = submit(other_user, model="nano-banana-pro-leonardo", prompt="b0")
        # Neither owner has had a turn on nano-banana-pro-leonardo: the workflow came first, so the
        # image waits for it there although its model is free (docs/design.md, rule 3: the workflow cannot starve).
        assert fresh(image).status == Job.Status.PENDING and fresh(image).blocked_by_job_id == workflow.job_id

        complete(Job.objects.get(status=Job.Status.RUNNING, model=VIDEO))

        assert fresh(workflow).status == Job.Status.RUNNING
        assert fresh(image).status == Job.Status.PENDING
        assert_honest_waiting()
