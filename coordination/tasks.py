"""The worker task django-q2 runs: claim the job for its attempt, run it, report the outcome."""

import logging

from coordination.exceptions import StaleAttempt
from coordination.models import CatalogModel, Job
from coordination.runners import RunnerCall, get_runner
from coordination.services import job_claim, job_complete, job_fail

logger = logging.getLogger(__name__)


def run_job(job_id: str, attempt: int) -> None:
    job = job_claim(job_id=job_id, attempt=attempt)
    if job is None:
        # Delivered again, or the job moved on (cancelled, reset, a newer attempt): not ours to run.
        logger.info("Job %s attempt %s is not ours to run any more; skipping", job_id, attempt)
        return
    try:
        result = _run(job, attempt)
    except Exception as exc:  # any failure of the runner is the job's failure, recorded
        logger.info("Job %s attempt %s failed: %s", job_id, attempt, exc)
        _report(job_fail, job_id=job.job_id, attempt=attempt, error=str(exc) or type(exc).__name__)
        return
    _report(job_complete, job_id=job.job_id, attempt=attempt, result=result)


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


def _report(service, **kwargs) -> None:
    try:
        service(**kwargs)
    except StaleAttempt:
        # Already logged and audited by the service: the outcome was decided elsewhere.
        pass


def prune_queue_log(days: int = 7) -> int:
    from coordination.maintenance import queue_log_prune

    return queue_log_prune(days=days)
