"""Lines: the global one (pending jobs by priority, then acceptance order) and one per model.

Every query here is one probe of an index (`jobs_line_idx`, `job_model_lines_order_idx`) whose
cost does not grow with the number of waiting jobs, except the counts, which readers ask for and
decisions never do.
"""

from django.db.models import Exists, OuterRef, Q, QuerySet

from coordination.models import Job, JobLine

LINE_ORDER = ("-priority", "created_at", "job_id")
# The same index read backwards: from a job towards the head.
NEAREST_FIRST = ("priority", "-created_at", "-job_id")


def line() -> QuerySet[Job]:
    """Pending jobs in line order: priority (higher first), then acceptance order."""
    return Job.objects.filter(status=Job.Status.PENDING).order_by(*LINE_ORDER)


def model_line(model: str) -> QuerySet[JobLine]:
    return JobLine.objects.filter(model=model).order_by(*LINE_ORDER)


def _ahead(job: Job, *, same_priority: bool) -> Q:
    if not same_priority:
        return Q(priority__gt=job.priority)
    return Q(priority=job.priority) & (
        Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, job_id__lt=job.job_id)
    )


def ahead_of(job: Job) -> Q:
    """Rows (jobs or line rows) that stand before `job` in line."""
    return _ahead(job, same_priority=False) | _ahead(job, same_priority=True)


def nearest_ahead(rows: QuerySet, job: Job):
    """The row just before `job` in `rows`' line, or None: two index probes, not a scan.

    Split by priority so each probe is a plain range on the index, read backwards from `job`.
    """
    return (
        rows.filter(_ahead(job, same_priority=True)).order_by(*NEAREST_FIRST).first()
        or rows.filter(_ahead(job, same_priority=False)).order_by(*NEAREST_FIRST).first()
    )


def line_position(job: Job) -> int:
    """1 + how many jobs wait before `job` (a read: it counts)."""
    return line().filter(ahead_of(job)).count() + 1


def waiting_for(job: Job) -> list[dict]:
    """For each model a pending job needs: who holds it now and how many wait before it in its line."""
    holders: dict[str, list[Job]] = {}
    # In the order they started, as the coordinator names them: the first holder is the blocker.
    running_jobs = Job.objects.filter(status=Job.Status.RUNNING).order_by("started_at", "job_id")
    for running in running_jobs.only("job_id", "kind", "required_models"):
        for model in running.required_models:
            holders.setdefault(model, []).append(running)
    return [
        {
            "model": model,
            "held_by": [{"job_id": h.job_id, "kind": h.kind} for h in holders.get(model, [])],
            "jobs_ahead": JobLine.objects.filter(model=model).filter(ahead_of(job)).count(),
        }
        for model in job.required_models
    ]


def stale_waiting() -> QuerySet[Job]:
    """Waiting jobs that name a finished or missing job, or none. I4 says there are none, unless
    someone edited rows by hand (the guide's SQL). One anti-join."""
    live = Job.objects.filter(status__in=[Job.Status.PENDING, Job.Status.RUNNING], job_id=OuterRef("blocked_by_job_id"))
    return line().filter(~Exists(live))
