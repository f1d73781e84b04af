"""Many clients and two workers at once, on PostgreSQL: the rules hold under real concurrency.

Four client processes submit jobs and workflows through the services at the same instant (random
models, random priorities, a staff owner) while two `qcluster` processes run them, with three
slots and one model of capacity 2. When every job has finished, the audit trail is replayed: all
transitions are serialized by the coordinator lock and each writes its `job_queue_log` row under
it, so the id order of the `submitted`/`started`/`completed` rows is the true order of events.
"""

import os
import subprocess
import sys
from collections import Counter

import pytest

from coordination.models import CatalogModel, Job, JobQueueLog
from tests.e2e import harness
from tests.e2e.harness import start_worker, wait_until
from tests.factories import UserFactory
from workflows.models import WorkflowDefinition, WorkflowStep

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SLOTS = 3
CLIENTS = 4
JOBS_PER_CLIENT = 40
SHARED_MODEL = "flux-dev"  # capacity 2: two of its jobs may run side by side, never three
# A second workflow, overlapping the guide's on one model: a workflow may then head one of its
# lines but not another, which is where rule 3 (docs/design.md) has something to decide.
THREE_MODELS = ("flux-dev", "nano-banana-pro-leonardo", "minimax/video-01")
DEADLINE = 90.0


def define_three_model_workflow() -> None:
    workflow = WorkflowDefinition.objects.create(workflow_id="race-three-models", name="Race", inputs=["input_image"])
    for position, model in enumerate(THREE_MODELS, start=1):
        step_model = CatalogModel.objects.get(name=model)
        WorkflowStep.objects.create(workflow=workflow, position=position, name=model, default_model=step_model)


def start_clients(tmp_path, staff_id: int, go_file) -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "jobqueue_site.settings",
        "DATABASE_URL": harness.test_database_url(),
        "COORDINATOR_MAX_ACTIVE_JOBS": str(SLOTS),
        "LOG_FILE": "",
    }
    clients = []
    for index in range(CLIENTS):
        command = [sys.executable, "-m", "tests.concurrency.submitter"]
        command += [str(index), str(JOBS_PER_CLIENT), str(staff_id), str(go_file)]
        with open(tmp_path / f"client-{index}.log", "w") as log:  # the client keeps its own handle
            clients.append(
                subprocess.Popen(command, cwd=harness.BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
            )
    return clients


def replay(rows, jobs: dict, capacities: dict) -> int:
    """Replay the audit trail in id order against rules 1-3 (docs/design.md); return the most jobs seen running."""
    waiting: set = set()
    running: set = set()
    most = 0

    def line_key(job: Job) -> tuple:
        return (-job.priority, job.created_at, job.job_id)

    for row_id, event, job_id in rows:
        job = jobs[job_id]
        if event == JobQueueLog.Event.SUBMITTED:
            waiting.add(job_id)
        elif event == JobQueueLog.Event.STARTED:
            assert job_id in waiting, f"log row {row_id}: {job_id} started but was not waiting (started twice?)"
            assert len(running) < SLOTS, f"log row {row_id}: {job_id} started with all {SLOTS} slots busy"
            in_use = Counter(model for other in running for model in jobs[other].required_models)
            for model in job.required_models:
                assert in_use[model] < capacities[model], f"log row {row_id}: {job_id} started on full {model} (I1)"
            for other_id in waiting - {job_id}:
                other = jobs[other_id]
                if line_key(other) < line_key(job):
                    shared = set(other.required_models) & set(job.required_models)
                    assert not shared, (
                        f"log row {row_id}: {job_id} (priority {job.priority}) started while {other_id} "
                        f"(priority {other.priority}), ahead of it in line for {shared}, still waited (I3)"
                    )
            waiting.remove(job_id)
            running.add(job_id)
            most = max(most, len(running))
        else:  # completed or failed
            running.remove(job_id)
    assert not waiting and not running
    return most


def test_concurrent_clients_and_two_workers_keep_exclusion_order_and_exactly_once(settings, tmp_path):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = SLOTS
    CatalogModel.objects.filter(name=SHARED_MODEL).update(capacity=2)
    define_three_model_workflow()
    capacities = dict(CatalogModel.objects.values_list("name", "capacity"))
    staff = UserFactory(is_staff=True)
    total = CLIENTS * JOBS_PER_CLIENT
    go_file = tmp_path / "go"

    workers, clients = [], []
    try:
        for n in range(2):
            workers.append(start_worker(tmp_path / f"qcluster-{n}.log", COORDINATOR_MAX_ACTIVE_JOBS=str(SLOTS)))
        clients = start_clients(tmp_path, staff.pk, go_file)
        for client in clients:  # every client is set up and connected: let them all go at once
            assert client.stdout.readline().strip() == "ready", (tmp_path / "client-0.log").read_text()
        go_file.touch()
        for index, client in enumerate(clients):
            out, _ = client.communicate(timeout=DEADLINE)
            assert client.returncode == 0, (tmp_path / f"client-{index}.log").read_text()
            assert len(out.split("\n")) - 1 == JOBS_PER_CLIENT
        wait_until(
            lambda: Job.objects.filter(status__in=Job.FINISHED).count() == total,
            timeout=DEADLINE,
            interval=0.2,
            message=f"all {total} jobs to finish",
        )
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
        for worker in workers:
            worker.stop()

    jobs = {job.job_id: job for job in Job.objects.all()}
    assert len(jobs) == total
    assert len({tuple(job.required_models) for job in jobs.values() if job.kind == Job.Kind.WORKFLOW}) == 2
    assert len({job.priority for job in jobs.values()}) > 1

    # Exactly once (I5): each job completed at its first attempt, claimed and run by one worker.
    for job in jobs.values():
        assert job.status == Job.Status.COMPLETED, (job.job_id, job.status, job.error)
        assert job.attempt == 1 and job.claimed_attempt == 1
        assert job.result["output"]
        assert job.started_at <= job.completed_at
    events = Counter(JobQueueLog.objects.values_list("job_id", "event_type"))
    for job in jobs.values():
        for event in ("submitted", "started", "claimed", "completed"):
            assert events[(job.job_id, event)] == 1, f"{job.job_id}: {events[(job.job_id, event)]} {event} rows"
        steps = len(job.required_models) if job.kind == Job.Kind.WORKFLOW else 0
        assert events[(job.job_id, "step_started")] == steps, "each workflow step ran once"
    assert not JobQueueLog.objects.filter(event_type__in=["failed", "refused", "cancelled"]).exists()

    rows = list(
        JobQueueLog.objects.filter(event_type__in=["submitted", "started", "completed", "failed"])
        .order_by("id")
        .values_list("id", "event_type", "job_id")
    )
    # The id order is the order in which the lock was held: the times agree with it.
    times = [
        jobs[job_id].started_at if event == "started" else jobs[job_id].completed_at
        for _, event, job_id in rows
        if event != "submitted"
    ]
    assert times == sorted(times)

    most_running = replay(rows, jobs, capacities)
    # Side by side for real: with this load all three slots were busy at some point.
    assert most_running == SLOTS
