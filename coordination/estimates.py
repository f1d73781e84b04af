"""When will a waiting job start? An estimate from each model's recent run times.

For every model a job needs: the time left on the jobs holding it (their model's typical run time
less what they have run), plus the jobs before it in that model's line, each taking the typical time,
shared over the model's capacity. The job starts when its slowest model frees: the largest of those.
In serialized mode every job before it in the whole line runs first, one at a time. A job held by a
paused model gets no estimate (None): it starts when an operator resumes the model; the jobs of a
paused model that it does not need are not counted before it (they step aside). A read, for the
API and the console; the coordinator never uses it.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from coordination.models import CatalogModel, Job, JobLine
from coordination.queue.lines import ahead_of, line

RECENT = 50  # completed jobs per model that make its typical run time


def typical_run_seconds(model: str) -> float:
    """Mean run time of the model's last RECENT completed jobs; its simulated default if it has none."""
    # Normal jobs on the model (a workflow's run spans several models and says little about one).
    recent = Job.objects.filter(status=Job.Status.COMPLETED, model=model).order_by("-completed_at")[:RECENT]
    durations = [
        (job.completed_at - job.started_at).total_seconds()
        for job in recent.only("started_at", "completed_at")
        if job.started_at and job.completed_at
    ]
    if durations:
        return sum(durations) / len(durations)
    catalog = CatalogModel.objects.filter(name=model).only("default_simulate_seconds").first()
    return catalog.default_simulate_seconds if catalog else 0.0


def estimated_start(job: Job, *, now: datetime | None = None) -> datetime | None:
    if job.status != Job.Status.PENDING:
        return None
    if job.held:
        return None  # it needs a paused model: it starts when an operator resumes it, no time to give
    now = now or timezone.now()
    typical = {model: typical_run_seconds(model) for model in job.required_models}
    running = list(Job.objects.filter(status=Job.Status.RUNNING).only("started_at", "required_models", "model"))
    if settings.COORDINATOR_MAX_ACTIVE_JOBS == 1:
        # One at a time: what the running job has left, then everyone before it in the whole line.
        left = sum(max(0.0, _typical_for(r, typical) - _elapsed(r, now)) for r in running)
        # Held jobs (a paused model's) step aside: they run after it is resumed, not before this one.
        ahead = list(line().filter(ahead_of(job), held=False).only("model", "required_models")[:1000])
        return now + timedelta(seconds=left + sum(_typical_for(a, typical) for a in ahead))
    waits = []
    capacities = dict(CatalogModel.objects.filter(name__in=job.required_models).values_list("name", "capacity"))
    for model in job.required_models:
        holders_left = sum(
            max(0.0, typical[model] - _elapsed(r, now)) for r in running if model in r.required_models
        )
        ahead = JobLine.objects.filter(model=model, held=False).filter(ahead_of(job)).count()
        waits.append((holders_left + ahead * typical[model]) / max(1, capacities.get(model, 1)))
    return now + timedelta(seconds=max(waits, default=0.0))


def _elapsed(job: Job, now: datetime) -> float:
    return (now - job.started_at).total_seconds() if job.started_at else 0.0


def _typical_for(job: Job, cache: dict) -> float:
    for model in job.required_models:
        if model not in cache:
            cache[model] = typical_run_seconds(model)
    return max((cache[model] for model in job.required_models), default=0.0)
