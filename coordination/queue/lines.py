"""Lines: the global one (pending jobs by priority, then acceptance order) and one per model.

Every query here is one probe of an index (`jobs_line_idx`, `job_model_lines_order_idx`) whose
cost does not grow with the number of waiting jobs, except the counts, which readers ask for and
decisions never do.
"""

from types import SimpleNamespace

from django.db import connection
from django.db.models import Exists, F, Func, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from coordination.models import CatalogModel, Job, JobLine
from coordination.queue.groups import groups_by_model

PAUSED_PREFIX = "Model paused"

LINE_ORDER = ("-priority", "created_at", "job_id")
# The same index read backwards: from a job towards the head.
NEAREST_FIRST = ("priority", "-created_at", "-job_id")


def line() -> QuerySet[Job]:
    """Pending jobs in line order: priority (higher first), then acceptance order."""
    return Job.objects.filter(status=Job.Status.PENDING).order_by(*LINE_ORDER)


def model_line(model: str) -> QuerySet[JobLine]:
    return JobLine.objects.filter(model=model).order_by(*LINE_ORDER)


def line_key(job: Job) -> tuple:
    return (-job.priority, job.created_at, job.job_id)


def on_models(models) -> QuerySet:
    """The ids of waiting jobs that need one of `models` (their line rows)."""
    return JobLine.objects.filter(model__in=list(models)).values("job_id")


def passing(model: str) -> QuerySet[Job]:
    """Waiting jobs that wait behind one of `model`'s jobs without needing `model`: a pause of it
    lets them pass (the pause re-decides them; its preview lists them)."""
    its_jobs = on_models([model])
    return line().filter(blocked_by_job_id__in=its_jobs).exclude(job_id__in=its_jobs)


def heads_of(models: list[str], *, unheld: bool = False) -> dict[str, Job | None]:
    """The first waiting job in each model's line: one index probe per model, sent as one query
    (a LATERAL join). `unheld`: passing over the jobs a pause holds (`held`), still
    one probe (job_model_lines_unheld_idx)."""
    if not models:
        return {}
    table = JobLine._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT m.name, head.job_id FROM unnest(%s::text[]) AS m(name)
                LEFT JOIN LATERAL (
                    SELECT l.job_id FROM {table} l WHERE l.model = m.name {"AND NOT l.held" if unheld else ""}
                    ORDER BY l.priority DESC, l.created_at ASC, l.job_id ASC LIMIT 1
                ) AS head ON true""",
            [models],
        )
        head_ids = dict(cursor.fetchall())
    jobs = Job.objects.in_bulk([job_id for job_id in head_ids.values() if job_id])
    return {model: jobs.get(head_ids.get(model)) for model in models}


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


def nearest_behind(rows: QuerySet, job: Job):
    """The row just after `job` in `rows`' line, or None: two index probes, as nearest_ahead."""
    same_priority_behind = Q(priority=job.priority) & (
        Q(created_at__gt=job.created_at) | Q(created_at=job.created_at, job_id__gt=job.job_id)
    )
    return (
        rows.filter(same_priority_behind).order_by(*LINE_ORDER).first()
        or rows.filter(priority__lt=job.priority).order_by(*LINE_ORDER).first()
    )


# The outer query's row, as ahead_of() reads a job: "the rows before this one in line" for each row
# of a list, in that list's own query.
_OUTER_ROW = SimpleNamespace(priority=OuterRef("priority"), created_at=OuterRef("created_at"), job_id=OuterRef("job_id"))


def count_ahead(rows: QuerySet) -> Coalesce:
    """How many of `rows` (jobs or line rows) stand before the outer query's row in line: a
    subquery, so that a whole list gets its places in one query instead of one count per row."""
    before = rows.filter(ahead_of(_OUTER_ROW)).order_by().annotate(n=Func(F("pk"), function="COUNT")).values("n")
    return Coalesce(Subquery(before, output_field=IntegerField()), 0)


def names_one_behind() -> Exists:
    """Whether the outer query's waiting job names a waiting job that stands behind it in line (a
    subquery): in a fair line another owner's later job may go first; in a plain one, never."""
    return Exists(line().filter(job_id=OuterRef("blocked_by_job_id")).exclude(ahead_of(_OUTER_ROW)))


def owner_waiting(owner, limit: int) -> int:
    """How many of `owner`'s jobs wait, counted no further than `limit` (one index range)."""
    return Job.objects.filter(owner=owner, status=Job.Status.PENDING).order_by()[:limit].count()


def line_position(job: Job) -> int:
    """1 + how many jobs wait before `job` (a read: it counts)."""
    return line().filter(ahead_of(job)).count() + 1


def waiting_for(job: Job) -> list[dict]:
    """For each model a pending job needs: who holds it now, how many wait before it in its line, and
    whether an operator paused it (read now, so it is true even where the job's reason is older)."""
    holders: dict[str, list[Job]] = {}
    # In the order they started, as the coordinator names them: the first holder is the blocker.
    running_jobs = Job.objects.filter(status=Job.Status.RUNNING).order_by("started_at", "job_id")
    for running in running_jobs.only("job_id", "kind", "required_models"):
        for model in running.required_models:
            holders.setdefault(model, []).append(running)
    paused = set(paused_models().filter(name__in=job.required_models).values_list("name", flat=True))
    running = list(running_jobs.only("job_id", "required_models"))
    groups = groups_by_model()
    return [
        {
            "model": model,
            "held_by": [{"job_id": h.job_id, "kind": h.kind} for h in holders.get(model, [])],
            "jobs_ahead": JobLine.objects.filter(model=model).filter(ahead_of(job)).count(),
            "paused": model in paused,
            "groups": [group.use(running) for group in groups.get(model, ())],
        }
        for model in job.required_models
    ]


def stale_waiting() -> QuerySet[Job]:
    """Waiting jobs that name a finished or missing job, or none. I4 (docs/design.md) says there are none, unless
    someone edited rows by hand (the guide's SQL). One anti-join.

    The one honest wait without a job to name is the first job in a paused model's line: it waits
    for an operator, so it is not stale while it is held (it needs a paused model)."""
    live = Job.objects.filter(status__in=[Job.Status.PENDING, Job.Status.RUNNING], job_id=OuterRef("blocked_by_job_id"))
    waits_for_operator = Q(blocked_by_job_id=None, conflict_reason__startswith=PAUSED_PREFIX, held=True)
    return line().filter(~Exists(live)).exclude(waits_for_operator)


def paused_models() -> QuerySet:
    return CatalogModel.objects.filter(paused=True).values("name")
