"""Shared by the coordinator's service tests: submitting jobs, reading the audit trail and the
`[COORDINATOR]` lines, and checking the invariants of docs/design.md (I1-I6) against the database."""

import html
import logging
import re
import threading
from collections import Counter
from datetime import datetime
from unittest import mock

import pytest
from django.db import DatabaseError, connection, connections

from coordination.models import CatalogModel, Job, JobQueueLog
from coordination.queue import line
from coordination.services import job_submit
from workflows.services import workflow_execute

COORDINATOR_LOGGER = "job_coordinator"


class LineCollector(logging.Handler):
    """Keeps the messages a logger emits, in order (for a logger that does not propagate)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def coordinator_log(caplog):
    """caplog that sees the coordinator's lines.

    Settings give `job_coordinator` its own handler and `propagate: False` (its lines print bare),
    so caplog's handler on the root logger would never see them: attach it to the logger itself.
    """
    logger = logging.getLogger(COORDINATOR_LOGGER)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=COORDINATOR_LOGGER)
    yield caplog
    logger.removeHandler(caplog.handler)


# What a failed audit write raises: RuntimeError from the ORM's helper, a database error from the
# trigger that fails the coordinator's own INSERT (jq_apply).
AUDIT_FAILED = (RuntimeError, DatabaseError)


@pytest.fixture
def fail_audit(monkeypatch, request):
    """fail_audit("started"): the next audit write of that event raises, to prove the change and
    its audit row are one transaction (I6). A trigger also refuses the row, so the coordinator's
    own writes (jq_apply, coordination/writes.py) fail as the ORM's do."""
    from coordination.models import JobQueueLogManager

    def drop_trigger():
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS test_fail_audit ON job_queue_log")

    request.addfinalizer(drop_trigger)

    record = JobQueueLogManager.record

    def arm(event_type: str) -> None:
        def failing_record(self, *, event_type=None, _failing=event_type, **kwargs):
            if event_type == _failing:
                raise RuntimeError("audit write failed")
            return record(self, event_type=event_type, **kwargs)

        monkeypatch.setattr(JobQueueLogManager, "record", failing_record)
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE OR REPLACE FUNCTION test_fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE EXCEPTION 'audit write failed'; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER test_fail_audit BEFORE INSERT ON job_queue_log FOR EACH ROW "
                f"WHEN (NEW.event_type = '{event_type}') EXECUTE FUNCTION test_fail_audit()"
            )

    return arm


@pytest.fixture
def runner_calls(monkeypatch) -> list:
    """Every call the simulated runner gets (it still runs: only counted, nothing faked)."""
    from coordination.runners.simulated import SimulatedRunner

    calls = []
    run = SimulatedRunner.run

    def counting_run(self, call):
        calls.append(call)
        return run(self, call)

    monkeypatch.setattr(SimulatedRunner, "run", counting_run)
    return calls


def coordinator_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == COORDINATOR_LOGGER]


def assert_in_order(lines: list[str], expected: list[str]) -> None:
    """Each expected line appears word for word, in this order (other lines may come between)."""
    position = 0
    for wanted in expected:
        try:
            position = lines.index(wanted, position) + 1
        except ValueError:
            raise AssertionError(f"missing, or out of order: {wanted!r}\nlogged:\n" + "\n".join(lines)) from None


def submit(owner=None, *, model: str = "motion-2.0-fast", prompt: str = "A knight riding a horse", **kwargs) -> Job:
    params = kwargs.pop("params", {"simulate_seconds": 0})
    return job_submit(owner=owner, model=model, prompt=prompt, params=params, **kwargs)


def execute_workflow(owner=None, **kwargs) -> Job:
    """The guide's workflow: knight-style-img-to-video (nano-banana-pro-leonardo, then motion-2.0-fast)."""
    kwargs.setdefault("params", {"simulate_seconds": 0})
    inputs = {"input_image": "https://example.com/user.jpg"}
    return workflow_execute(owner=owner, workflow_id="knight-style-img-to-video", inputs=inputs, **kwargs)


def fresh(job: Job) -> Job:
    return Job.objects.get(pk=job.pk)


def events(job: Job) -> list[str]:
    """The job's audit trail, oldest first."""
    return list(JobQueueLog.objects.filter(job_id=job.job_id).order_by("id").values_list("event_type", flat=True))


def log_row(job: Job, event_type: str) -> JobQueueLog:
    return JobQueueLog.objects.get(job_id=job.job_id, event_type=event_type)


def assert_honest_waiting() -> None:
    """I4: every pending job names a blocker that is running or pending now, and says why. The one
    exception: the first job in a paused model's line waits for an operator, and says so."""
    paused = set(CatalogModel.objects.filter(paused=True).values_list("name", flat=True))
    for job in line():
        if job.blocked_by_job_id is None:
            prefix = "Model paused: "
            assert job.conflict_reason and job.conflict_reason.startswith(prefix), (
                f"pending job {job.job_id} names no blocker ({job.conflict_reason})"
            )
            named = job.conflict_reason.removeprefix(prefix).split(" (")[0].split(", ")
            assert set(named) <= paused & set(job.required_models), (
                f"pending job {job.job_id} says {job.conflict_reason!r}; paused now: {sorted(paused)}"
            )
            continue
        blocker = Job.objects.get(pk=job.blocked_by_job_id)
        assert blocker.status in (Job.Status.RUNNING, Job.Status.PENDING), (
            f"pending job {job.job_id} waits for {blocker.status} job {blocker.job_id}"
        )
        if job.conflict_reason and job.conflict_reason.startswith("Capacity group "):
            # "Capacity group <name> full: N of N running": it names a running job of the group.
            assert blocker.status == Job.Status.RUNNING, f"pending job {job.job_id} waits for a group on a {blocker.status} job"
            continue
        assert job.conflict_reason and str(job.blocked_by_job_id) in job.conflict_reason


def assert_exclusion(max_active: int = 1) -> None:
    """I1: no model beyond its capacity, no more running jobs than slots."""
    running = list(Job.objects.filter(status=Job.Status.RUNNING))
    assert len(running) <= max_active
    capacities = dict(CatalogModel.objects.values_list("name", "capacity"))
    in_use = Counter(model for job in running for model in job.required_models)
    for model, count in in_use.items():
        assert count <= capacities.get(model, 1), f"{model} used by {count} running jobs"


def submit_confirmation(client, preview, *, follow: bool = False):
    """Press "Yes, I'm sure" on an admin preview page, as a browser would: post the form's hidden
    fields back to the page's own URL."""
    page = preview.content.decode()
    assert 'id="confirm-form"' in page, "no confirmation form on this page:\n" + page[page.find('id="content"'):][:2000]
    form = page[page.index('id="confirm-form"'):]
    form = form[:form.index("</form>")]
    data: dict[str, list[str]] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form):
        data.setdefault(name, []).append(html.unescape(value))
    query = preview.request.get("QUERY_STRING")
    url = preview.request["PATH_INFO"] + (f"?{query}" if query else "")
    return client.post(url, data, follow=follow)


def at_once(target, count: int, *, timeout: float = 60) -> None:
    """Run `target()` in `count` threads released together (a barrier), each closing its database
    connection after, and wait for all of them (concurrency tests on PostgreSQL)."""
    barrier = threading.Barrier(count)

    def run():
        try:
            barrier.wait(timeout=timeout)
            target()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)


def held_clock(now: datetime):
    """The coordinator's clock (django.utils.timezone.now) held at `now`, as a context manager."""
    return mock.patch("django.utils.timezone.now", return_value=now)
