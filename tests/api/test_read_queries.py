"""Reads that don't grow with the page (issue 10, item 5): GET /jobs, GET /jobs/{id} and GET /queue/status
make a fixed number of queries, whatever the number of jobs they show or the jobs ahead of them.

The queue built here has everything a read has to describe: finished jobs (completed on several models,
failed, cancelled), running ones, normal and workflow jobs waiting behind them at several priorities,
and jobs held by a paused model, with one slot and with two. Six queries include the token lookup
(seven for one job).
"""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from coordination.estimates import estimated_start, job_wait
from coordination.models import Job
from coordination.queue import line, line_position, waiting_for
from coordination.queue.lines import line_key
from coordination.services import job_cancel, job_claim, job_complete, job_fail, model_pause
from tests.factories import UserFactory
from tests.helpers import execute_workflow, submit
from workflows.models import WorkflowExecution

pytestmark = pytest.mark.django_db

MAX_QUERIES = 6
# GET /jobs/{id} counts its place with the one count of a place (selectors.job_queue_positions) in a
# query of its own, beside what it waits for and its estimate (estimates.job_wait).
DETAIL_QUERIES = 7
MODELS = ["motion-2.0-fast", "flux-dev", "nano-banana-pro-leonardo", "minimax/video-01"]


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def run_to_the_end(job: Job, *, seconds: float, fail: bool = False) -> None:
    """Claim the (running) job and finish it, as having run `seconds`."""
    job_claim(job_id=job.job_id, attempt=1)
    if fail:
        job_fail(job_id=job.job_id, attempt=1, error="provider said no", retry=False)
    else:
        job_complete(job_id=job.job_id, attempt=1)
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(started_at=now - timedelta(seconds=seconds), completed_at=now)


def build_queue(owner, other, *, waiting: int) -> None:
    """History first (one job at a time, each runs at once), then the running jobs and a line of
    `waiting` jobs behind them on every model, a quarter of them workflows, some held by a pause."""
    for n, model in enumerate(MODELS * 2):
        run_to_the_end(submit(owner, model=model), seconds=5 + 3 * n, fail=(n == 5))
    run_to_the_end(execute_workflow(owner), seconds=30)
    first_running = submit(owner, model="motion-2.0-fast")
    Job.objects.filter(pk=first_running.pk).update(started_at=timezone.now() - timedelta(seconds=4))
    job_cancel(job_id=submit(owner, model="motion-2.0-fast").job_id)  # waits behind first_running: cancelled
    submit(other, model="flux-dev")  # someone else's: only staff list it
    for n in range(waiting):
        who = owner if n % 5 else other
        if n % 4 == 0:
            job = execute_workflow(who, priority=-(n % 3))
        else:
            job = submit(who, model=MODELS[n % len(MODELS)], priority=-(n % 3))
        assert job.status in (Job.Status.PENDING, Job.Status.RUNNING)
    # A workflow that is running says which step it is on.
    WorkflowExecution.objects.filter(job__status=Job.Status.RUNNING).update(current_step=1, current_step_model=MODELS[2])
    model_pause(name="minimax/video-01", paused=True, actor="test")


@pytest.fixture(params=[1, 2], ids=["one-slot", "two-slots"])
def busy_queue(request, settings, user):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = request.param
    settings.COORDINATOR_MAX_PENDING_PER_USER = 1000
    other = UserFactory()
    build_queue(user, other, waiting=120)
    assert line().filter(held=True).exists()
    assert Job.objects.filter(status=Job.Status.RUNNING).count() == request.param
    return user


@pytest.mark.parametrize("as_staff", [False, True], ids=["owner", "staff"])
def test_a_page_of_a_hundred_jobs_is_read_in_a_fixed_number_of_queries(busy_queue, django_assert_max_num_queries, as_staff):
    reader = UserFactory(is_staff=True) if as_staff else busy_queue
    client = token_client(reader)
    # The last page (newest first): the finished and running jobs, and the line behind them.
    offset = (Job.objects.all() if as_staff else Job.objects.filter(owner=reader)).count() - 100
    assert offset > 0

    with django_assert_max_num_queries(MAX_QUERIES):
        response = client.get("/jobs", {"limit": 100, "offset": offset})

    assert response.status_code == 200, response.content
    page = response.json()["results"]
    assert len(page) == 100
    assert {job["status"] for job in page} == {"pending", "running", "completed", "failed", "cancelled"}
    assert {job["kind"] for job in page} == {"normal", "workflow"}
    assert sum(job["queue_position"] is not None for job in page) > 50


def test_each_jobs_queue_position_on_a_page_is_its_place_in_the_line(busy_queue):
    """The positions a page shows, computed for the whole page at once, are the line's order, 1 first."""
    client = token_client(UserFactory(is_staff=True))
    places = {str(job_id): place for place, job_id in enumerate(line().values_list("job_id", flat=True), start=1)}

    shown = {}
    for offset in range(0, Job.objects.count(), 30):  # pages that start and end inside the line
        for job in client.get("/jobs", {"limit": 30, "offset": offset}).json()["results"]:
            shown[job["job_id"]] = job["queue_position"]

    assert {job_id: place for job_id, place in shown.items() if place is not None} == {
        job_id: places[job_id] for job_id in shown if job_id in places
    }
    assert len([place for place in shown.values() if place is not None]) == len(places)


def test_one_job_is_read_in_a_fixed_number_of_queries_whatever_it_waits_for(busy_queue, django_assert_max_num_queries):
    client = token_client(busy_queue)
    mine = Job.objects.filter(owner=busy_queue)
    waiting = mine.filter(status=Job.Status.PENDING)
    examples = {
        "the last waiting workflow": waiting.filter(kind=Job.Kind.WORKFLOW).order_by("-created_at").first(),
        "the last waiting normal job": waiting.filter(kind=Job.Kind.NORMAL, held=False).order_by("-created_at").first(),
        "a held job": waiting.filter(held=True).order_by("-created_at").first(),
        "the first in line": line().filter(owner=busy_queue).first(),
        "a running job": mine.filter(status=Job.Status.RUNNING).first(),
        "a completed workflow": mine.filter(status=Job.Status.COMPLETED, kind=Job.Kind.WORKFLOW).first(),
        "a failed job": mine.filter(status=Job.Status.FAILED).first(),
        "a cancelled job": mine.filter(status=Job.Status.CANCELLED).first(),
    }
    for name, job in examples.items():
        assert job is not None, name
        with django_assert_max_num_queries(DETAIL_QUERIES):
            response = client.get(f"/jobs/{job.job_id}")
        assert response.status_code == 200, (name, response.content)
        body = response.json()
        assert (body["waiting_for"] is None) == (job.status != Job.Status.PENDING), name


def test_one_jobs_reads_together_say_what_the_one_by_one_reads_say(busy_queue):
    """GET /jobs/{id} reads its facts once for all its models (estimates.job_wait, a count in the
    job's own query): the same values as counting and reading model by model."""
    now = timezone.now()
    client = token_client(UserFactory(is_staff=True))
    jobs = list(Job.objects.all())
    for job in jobs:
        wait = job_wait(job, now=now)
        pending = job.status == Job.Status.PENDING
        assert wait.waiting_for == (waiting_for(job) if pending else None), job
        assert wait.estimate == estimated_start(job, now=now), job
    for job in jobs[::7]:
        body = client.get(f"/jobs/{job.job_id}").json()
        assert body["queue_position"] == (line_position(job) if job.status == Job.Status.PENDING else None)
    assert sum(job_wait(job, now=now).estimate is not None for job in jobs) > 50


def test_queue_status_is_read_in_a_fixed_number_of_queries(busy_queue, django_assert_max_num_queries, settings):
    client = token_client(busy_queue)

    with django_assert_max_num_queries(MAX_QUERIES):
        response = client.get("/queue/status")

    assert response.status_code == 200, response.content
    status = response.json()
    assert len(status["active_jobs"]) == settings.COORDINATOR_MAX_ACTIVE_JOBS
    assert status["queue_length"] == line().count() > 100
    assert len(status["queued_jobs"]) == settings.COORDINATOR_STATUS_LIST_LIMIT


def test_the_slot_wait_read_with_the_job_says_what_counting_it_apart_says(busy_queue, settings):
    """job_detail counts the unheld jobs before a job in its own query; job_wait, given a job read
    without that count, counts them apart: the same numbers, and the same running jobs."""
    client = token_client(UserFactory(is_staff=True))
    running = list(Job.objects.filter(status=Job.Status.RUNNING).order_by("started_at", "job_id"))
    waiting = list(line())
    for job in waiting[::9]:
        body = client.get(f"/jobs/{job.job_id}").json()
        apart = job_wait(job).waiting_for_slot
        counted = sum(1 for other in waiting if not other.held and line_key(other) < line_key(job))
        assert body["waiting_for_slot"]["jobs_ahead"] == apart["jobs_ahead"] == counted, job
        assert body["waiting_for_slot"]["slots"] == settings.COORDINATOR_MAX_ACTIVE_JOBS
        assert [holder["job_id"] for holder in body["waiting_for_slot"]["held_by"]] == [str(r.job_id) for r in running]
