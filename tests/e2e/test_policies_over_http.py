"""The scheduling policies as a client meets them: HTTP to a live server, a real qcluster running the jobs."""

import pytest

from rest_framework.authtoken.models import Token

from coordination.models import CapacityGroup, CatalogModel, Job
from coordination.services import capacity_group_save, catalog_model_save
from tests.e2e.harness import HttpApi, start_worker, wait_until
from tests.factories import UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

VIDEO, OTHER_VIDEO, IMAGE = "motion-2.0-fast", "minimax/video-01", "flux-dev"


def ended(job_id) -> Job | None:
    job = Job.objects.get(pk=job_id)
    return job if job.status in Job.FINISHED else None


@pytest.fixture
def slots_worker(settings, tmp_path):
    """Four slots for the live server (this process) and the worker alike; the reaper every second."""
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 4
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_MAX_ACTIVE_JOBS="4", COORDINATOR_REAPER_SECONDS="1")
    yield worker
    worker.stop()


def test_a_capacity_group_holds_a_job_until_its_group_has_room(http, slots_worker):
    capacity_group_save(
        group=CapacityGroup(name="acme-key", capacity=1),
        models=list(CatalogModel.objects.filter(name__in=[VIDEO, OTHER_VIDEO])), actor="test",
    )
    status, first = http.post("/jobs", {"prompt": "A knight", "model": VIDEO, "params": {"simulate_seconds": 1}})
    assert status == 201 and first["status"] == "running"
    status, held = http.post("/jobs", {"prompt": "A dragon", "model": OTHER_VIDEO, "params": {"simulate_seconds": 0}})
    assert status == 201 and held["status"] == "pending"
    assert held["conflict_reason"] == "Capacity group acme-key full: 1 of 1 running"
    assert held["blocked_by_job_id"] == first["job_id"]
    _, detail = http.get(f"/jobs/{held['job_id']}")
    assert detail["waiting_for"][0]["groups"] == [{"name": "acme-key", "running": 1, "capacity": 1}]

    first_job = wait_until(lambda: ended(first["job_id"]), timeout=30, message="the first job to end")
    held_job = wait_until(lambda: ended(held["job_id"]), timeout=30, message="the held job to end")
    assert first_job.status == held_job.status == Job.Status.COMPLETED
    assert held_job.started_at >= first_job.completed_at


def test_a_job_not_started_by_its_deadline_expires(http, slots_worker):
    status, running = http.post("/jobs", {"prompt": "A knight", "model": VIDEO, "params": {"simulate_seconds": 30}})
    assert status == 201 and running["status"] == "running"
    status, late = http.post("/jobs", {"prompt": "A dragon", "model": VIDEO, "max_wait_seconds": 1})
    assert status == 201 and late["status"] == "pending" and late["start_by"] is not None

    # The reaper (every second here) expires it within a second or two of its deadline.
    job = wait_until(lambda: ended(late["job_id"]), timeout=20, message="the late job to expire")
    assert job.status == Job.Status.EXPIRED and job.started_at is None
    assert job.error.startswith("not started by ")
    _, answer = http.get(f"/jobs/{late['job_id']}")
    assert answer["status"] == "expired"
    status, cancelled = http.post(f"/jobs/{running['job_id']}/cancel", {})
    assert status == 202
    status, bad = http.post("/jobs", {"prompt": "A dragon", "model": VIDEO, "start_by": "2020-01-01T00:00:00Z"})
    assert status == 400 and "in the past" in bad["error"]


def test_a_duplicate_is_refused_or_replaces_the_waiting_one(http, worker):
    body = {"prompt": "A knight", "model": VIDEO, "params": {"simulate_seconds": 2}}
    _, running = http.post("/jobs", body)
    status, first = http.post("/jobs", {**body, "dedupe_key": "scene-7"})
    assert status == 201 and first["status"] == "pending"

    status, refused = http.post("/jobs", {**body, "dedupe_key": "scene-7"})
    assert status == 409 and refused["code"] == "duplicate" and refused["job_id"] == first["job_id"]

    status, second = http.post("/jobs", {**body, "prompt": "A knight, take two", "dedupe_key": "scene-7",
                                         "on_duplicate": "replace", "params": {"simulate_seconds": 0}})
    assert status == 201
    _, old = http.get(f"/jobs/{first['job_id']}")
    assert old["status"] == "cancelled" and old["error"] == f"replaced by {second['job_id']}"

    done = wait_until(lambda: ended(second["job_id"]), timeout=30, message="the replacing job to run")
    assert done.status == Job.Status.COMPLETED and done.result["prompt"] == "A knight, take two"
    status, again = http.post("/jobs", {**body, "dedupe_key": "scene-7", "params": {"simulate_seconds": 0}})
    assert status == 201, "the key is free once its job ended"


def test_a_full_line_answers_429_with_retry_after(http, worker):
    CatalogModel.objects.filter(name=VIDEO).update(max_waiting=1)
    body = {"prompt": "A knight", "model": VIDEO, "params": {"simulate_seconds": 5}}
    assert http.post("/jobs", body)[1]["status"] == "running"
    assert http.post("/jobs", body)[1]["status"] == "pending"

    status, refused = http.post("/jobs", body)

    assert status == 429 and refused["code"] == "line_full"
    assert "The line of motion-2.0-fast is full" in refused["error"]
    # From the line's estimate: the model's typical run (its catalog default, with no history) less what has run.
    typical = CatalogModel.objects.get(name=VIDEO).default_simulate_seconds
    assert 1 <= int(http.last_headers["Retry-After"]) <= typical
    assert Job.objects.count() == 2


def test_a_fair_line_lets_a_second_user_in_before_the_first_users_backlog(http, live_server, slots_worker):
    catalog = CatalogModel.objects.get(name=VIDEO)
    catalog.line_policy = CatalogModel.LinePolicy.FAIR
    catalog_model_save(model=catalog, actor="test")
    other = HttpApi(live_server.url, Token.objects.create(user=UserFactory()).key)
    body = {"prompt": "A knight", "model": VIDEO, "params": {"simulate_seconds": 0.3}}
    # The first runs (long enough for the other user's job to be submitted and looked at while it
    # waits, however slow the machine), three wait.
    backlog = [http.post("/jobs", {**body, "params": {"simulate_seconds": 3}})[1]]
    backlog += [http.post("/jobs", body)[1] for _ in range(3)]
    status, single = other.post("/jobs", {**body, "prompt": "A dragon"})
    assert status == 201 and single["status"] == "pending"
    _, detail = other.get(f"/jobs/{single['job_id']}")
    assert (detail["status"], detail["queue_position"]) == ("pending", 1), "first in the fair line: its owner never had a turn"

    jobs = [wait_until(lambda job_id=job["job_id"]: ended(job_id), timeout=30, message="every job to end")
            for job in [*backlog, single]]
    started = sorted(jobs, key=lambda job: job.started_at)
    assert [str(job.job_id) for job in started] == [
        backlog[0]["job_id"], single["job_id"], backlog[1]["job_id"], backlog[2]["job_id"], backlog[3]["job_id"],
    ]
