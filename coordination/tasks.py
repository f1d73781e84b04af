"""The worker task django-q2 runs: claim the job for its attempt, run it, report the outcome."""

import logging
import time

from django.conf import settings

from coordination.exceptions import StaleAttempt
from coordination.models import CatalogModel, Job
from coordination.runners import RunnerCall, get_runner
from coordination.services import job_claim, job_complete, job_fail, job_finish_and_take_next

logger = logging.getLogger(__name__)


def run_job(job_id: str, attempt: int) -> None:
    """Run the job for this attempt, then every job handed to this worker by its finish.

    When a job ends, the coordinator starts the next one in the same transaction; the worker takes
    it there (claimed, so its own delivery does nothing) and runs it at once. That hop is what makes
    back-to-back jobs fast in serialized mode. Hand-offs stop once the task has used up one job
    timeout, so a task never outlives django-q2's timeout (twice the job timeout).
    """
    job = job_claim(job_id=job_id, attempt=attempt)
    if job is None:
        # Delivered again, or the job moved on (cancelled, reset, a newer attempt): not ours to run.
        logger.info("Job %s attempt %s is not ours to run any more; skipping", job_id, attempt)
        return
    handoff_until = time.monotonic() + settings.COORDINATOR_JOB_TIMEOUT
    while job is not None:
        job = _run_and_report(job, take_next=time.monotonic() < handoff_until)


def _run_and_report(job: Job, *, take_next: bool) -> Job | None:
    attempt = job.attempt
    try:
        result = _run(job, attempt)
    except Exception as exc:  # any failure of the runner is the job's failure, recorded
        logger.info("Job %s attempt %s failed: %s", job.job_id, attempt, exc)
        outcome = {"status": Job.Status.FAILED, "error": str(exc) or type(exc).__name__}
    else:
        outcome = {"status": Job.Status.COMPLETED, "result": result}
    try:
        if take_next:
            return job_finish_and_take_next(job_id=job.job_id, attempt=attempt, **outcome)
        _finish_only(job_id=job.job_id, attempt=attempt, **outcome)
    except StaleAttempt:
        # Already logged and audited by the service: the outcome was decided elsewhere.
        pass
    return None


def _finish_only(*, job_id, attempt: int, status: str, result: dict | None = None, error: str | None = None) -> None:
    if status == Job.Status.COMPLETED:
        job_complete(job_id=job_id, attempt=attempt, result=result)
    else:
        job_fail(job_id=job_id, attempt=attempt, error=error)


def _run(job: Job, attempt: int) -> dict:
    if job.kind == Job.Kind.WORKFLOW:
        from workflows.services import workflow_run

        return workflow_run(job=job, attempt=attempt)
    model = CatalogModel.objects.get(name=job.model)
    call = RunnerCall(
        job_id=job.job_id,
        model=model.name,
        prompt=job.prompt,
        params=job.params,
        default_seconds=model.default_simulate_seconds,
    )
    return get_runner(model.runner).run(call)


def prune_queue_log(days: int = 7) -> int:
    from coordination.maintenance import queue_log_prune

    return queue_log_prune(days=days)
