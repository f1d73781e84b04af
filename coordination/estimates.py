"""When will a waiting job start? An estimate from each model's recent run times.

For every model a job needs: the time left on the jobs holding it (their model's typical run time
less what they have run), plus the jobs before it in that model's line, each taking the typical time,
shared over the model's capacity. The job starts when its slowest model frees: the largest of those.
In serialized mode every job before it in the whole line runs first, one at a time. A job held by a
paused model gets no estimate (None): it starts when an operator resumes the model; the jobs of a
paused model that it does not need are not counted before it (they step aside). A read, for the
API and the console; the coordinator never uses it.

estimated_start() is the rule for one job, read plainly: the definition the others are tested
against. estimated_starts() applies it to a list (the console) and job_wait() to one job with its
waiting_for (GET /jobs/{id}), each in a fixed number of queries; tests hold both equal to it.
"""

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, F, OuterRef, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from coordination.models import CatalogModel, Job, JobLine
from coordination.queue.fair import fair_ahead
from coordination.queue.lines import ahead_of, count_ahead, line, line_key
from coordination.queue.groups import Group

RECENT = 50  # completed jobs per model that make its typical run time
AHEAD_COUNTED = 1000  # serialized mode: at most this many jobs before a job are summed


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


def line_retry_after(model: str, *, now: datetime | None = None) -> int:
    """Seconds until a full line of `model` should move (its next job starts): what the soonest of its
    running jobs has left, by the model's typical run time; at least 1. For Retry-After, read once the
    refused submission's transaction is over (services/submit.py), never under the coordinator lock."""
    now = now or timezone.now()
    running = Job.objects.filter(status=Job.Status.RUNNING).only("started_at", "required_models")  # at most one per slot
    typical = typical_run_seconds(model)
    left = [max(0.0, typical - _elapsed(job, now)) for job in running if model in job.required_models]
    return max(1, math.ceil(min(left) if left else typical))


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
        ahead = list(line().filter(ahead_of(job), held=False).only("model", "required_models")[:AHEAD_COUNTED])
        return now + timedelta(seconds=left + sum(_typical_for(a, typical) for a in ahead))
    waits = []
    catalog = {
        name: (capacity, policy)
        for name, capacity, policy in CatalogModel.objects.filter(name__in=job.required_models)
        .values_list("name", "capacity", "line_policy")
    }
    capacities = {name: capacity for name, (capacity, _) in catalog.items()}
    for model in job.required_models:
        holders_left = sum(
            max(0.0, typical[model] - _elapsed(r, now)) for r in running if model in r.required_models
        )
        if model in catalog and catalog[model][1] == CatalogModel.LinePolicy.FAIR:
            ahead = fair_ahead(job, model)  # a fair line: the jobs its owners' turns put before it
        else:
            ahead = JobLine.objects.filter(model=model, held=False).filter(ahead_of(job)).count()
        waits.append((holders_left + ahead * typical[model]) / max(1, capacities.get(model, 1)))
    return now + timedelta(seconds=max(waits, default=0.0))


def typical_run_seconds_of(models, *, defaults: dict[str, float] | None = None) -> dict[str, float]:
    """typical_run_seconds() of several models in two queries: each model's last RECENT completed
    jobs numbered in one window query, then the catalog's defaults for models without any (one
    query fewer when the caller has read them: `defaults`, each model's default_simulate_seconds)."""
    models = sorted(set(models))
    recent = (
        Job.objects.filter(status=Job.Status.COMPLETED, model__in=models)
        .annotate(recency=Window(RowNumber(), partition_by=F("model"), order_by=F("completed_at").desc()))
        .filter(recency__lte=RECENT)
        .values_list("model", "started_at", "completed_at")
    )
    durations: dict[str, list[float]] = {}
    for model, started_at, completed_at in recent:
        if started_at and completed_at:
            durations.setdefault(model, []).append((completed_at - started_at).total_seconds())
    typical = {model: sum(values) / len(values) for model, values in durations.items()}
    missing = [model for model in models if model not in typical]
    if defaults is None:
        defaults = dict(CatalogModel.objects.filter(name__in=missing).values_list("name", "default_simulate_seconds"))
    return {**typical, **{model: defaults.get(model, 0.0) for model in missing}}


def estimated_starts(jobs: list[Job], *, now: datetime | None = None) -> dict:
    """estimated_start() of each of `jobs`, by job id, in at most five queries however many jobs."""
    estimates = {job.job_id: None for job in jobs}
    waiting = [job for job in jobs if job.status == Job.Status.PENDING and not job.held]
    if not waiting:
        return estimates
    now = now or timezone.now()
    running = list(Job.objects.filter(status=Job.Status.RUNNING).only("started_at", "required_models", "model"))
    if settings.COORDINATOR_MAX_ACTIVE_JOBS == 1:
        # The head of the unheld line once: the jobs before any job in it are a prefix of it, and a
        # job further back has all of it before it (estimated_start counts AHEAD_COUNTED at most).
        head = list(line().filter(held=False).only("job_id", "model", "required_models")[:AHEAD_COUNTED])
        typical = typical_run_seconds_of({m for j in [*waiting, *running, *head] for m in j.required_models})
        left = sum(max(0.0, _typical_for(r, typical) - _elapsed(r, now)) for r in running)
        before, place = [0.0], {}
        for index, job in enumerate(head):
            place[job.job_id] = index
            before.append(before[-1] + _typical_for(job, typical))
        for job in waiting:
            estimates[job.job_id] = now + timedelta(seconds=left + before[place.get(job.job_id, len(head))])
        return estimates
    models = {model for job in waiting for model in job.required_models}
    typical = typical_run_seconds_of(models)
    catalog = list(CatalogModel.objects.filter(name__in=models).values_list("name", "capacity", "line_policy"))
    capacities = {name: capacity for name, capacity, _ in catalog}
    fair = {name for name, _, policy in catalog if policy == CatalogModel.LinePolicy.FAIR}
    holders_left = {
        model: sum(max(0.0, typical[model] - _elapsed(r, now)) for r in running if model in r.required_models)
        for model in models
    }
    # Each waiting job's rows, each with the unheld rows before it in its model's line: one query.
    ahead = {
        (job_id, model): count
        for job_id, model, count in JobLine.objects.filter(job_id__in=[job.job_id for job in waiting])
        .annotate(ahead=count_ahead(JobLine.objects.filter(model=OuterRef("model"), held=False)))
        .values_list("job_id", "model", "ahead")
    }
    for job in waiting:  # a fair line's order is its owners' turns: one read per job in one
        for model in fair.intersection(job.required_models):
            ahead[(job.job_id, model)] = fair_ahead(job, model)
    for job in waiting:
        waits = [
            (holders_left[model] + ahead.get((job.job_id, model), 0) * typical[model]) / max(1, capacities.get(model, 1))
            for model in job.required_models
        ]
        estimates[job.job_id] = now + timedelta(seconds=max(waits, default=0.0))
    return estimates


def _elapsed(job: Job, now: datetime) -> float:
    return (now - job.started_at).total_seconds() if job.started_at else 0.0


def _typical_for(job: Job, cache: dict) -> float:
    for model in job.required_models:
        if model not in cache:
            cache[model] = typical_run_seconds(model)
    return max((cache[model] for model in job.required_models), default=0.0)


# --- GET /jobs/{job_id}: what a waiting job waits for, and when it should start, read together ---


@dataclass(frozen=True)
class Wait:
    """A waiting job's `waiting_for` (model by model: who holds it, how many wait before it in its
    line, whether an operator paused it), `estimated_start_at`, and `waiting_for_slot` (every slot
    is busy: how many there are, the jobs holding them, how many wait before it in the whole line);
    all None for a job that does not wait, the estimate None while a paused model holds it, and the
    slot wait None while a slot is free."""

    waiting_for: list[dict] | None = None
    estimated_start_at: datetime | None = None
    waiting_for_slot: dict | None = None


def job_wait(job: Job, *, now: datetime | None = None) -> Wait:
    """The API's answer for one job, from one read of each fact its two parts share: the jobs that run
    before it, its place in each of its models' lines, their catalog rows, their recent run times.
    Four queries at most (three for a held job, none for a job that does not wait), however long
    the line and however many models: the values queue.waiting_for() and estimated_start() give
    by reading them one model at a time. With every slot busy, one more counts the jobs before it
    in the whole line, unless the job was read with that count (`unheld_before`, as job_detail does)."""
    if job.status != Job.Status.PENDING:
        return Wait()
    serialized = settings.COORDINATOR_MAX_ACTIVE_JOBS == 1
    before = _jobs_before(job, serialized=serialized)
    running = [other for other in before if other.status == Job.Status.RUNNING]
    in_lines = _ahead_in_lines(job)  # a fair line's counts follow below, once the catalog is read
    models = set(job.required_models)
    if serialized:
        models.update(model for other in before for model in other.required_models)
    catalog, groups = _catalog_with_groups(models)
    if not serialized:
        for model in job.required_models:
            if model in catalog and catalog[model].line_policy == CatalogModel.LinePolicy.FAIR:
                count = fair_ahead(job, model)
                in_lines[model] = (count, count)
    waiting_for = [
        {
            "model": model,
            # In the order they started, as the coordinator names them: the first holder is the blocker.
            "held_by": [{"job_id": r.job_id, "kind": r.kind} for r in running if model in r.required_models],
            "jobs_ahead": in_lines.get(model, (0, 0))[0],
            "paused": model in catalog and catalog[model].paused,
            "groups": [group.use(running) for group in groups.get(model, ())],
        }
        for model in job.required_models
    ]
    # Its models may all be free and it still waits: for a slot (in serialized mode, the single one).
    slot = _slot_wait(job, running)
    if job.held:
        # It starts when an operator resumes its model: no time to give.
        return Wait(waiting_for=waiting_for, waiting_for_slot=slot)
    now = now or timezone.now()
    typical = typical_run_seconds_of(
        models, defaults={name: row.default_simulate_seconds for name, row in catalog.items()}
    )
    # Summed in the order estimated_start() reads them (newest first), so the sums are the same floats.
    running = sorted(running, key=lambda r: r.created_at, reverse=True)
    if serialized:
        # One at a time: what the running job has left, then everyone before it in the whole line
        # (held jobs step aside: they run after their model is resumed, not before this one).
        ahead = sorted((other for other in before if other.status == Job.Status.PENDING), key=line_key)
        left = sum(max(0.0, _typical_for(r, typical) - _elapsed(r, now)) for r in running)
        return Wait(waiting_for, now + timedelta(seconds=left + sum(_typical_for(a, typical) for a in ahead)), slot)
    waits = []
    for model in job.required_models:
        holders_left = sum(max(0.0, typical[model] - _elapsed(r, now)) for r in running if model in r.required_models)
        unheld_ahead = in_lines.get(model, (0, 0))[1]
        capacity = catalog[model].capacity if model in catalog else 1
        waits.append((holders_left + unheld_ahead * typical[model]) / max(1, capacity))
    return Wait(waiting_for, now + timedelta(seconds=max(waits, default=0.0)), slot)


@dataclass(frozen=True)
class _CatalogRow:
    name: str
    paused: bool
    capacity: int
    default_simulate_seconds: float
    line_policy: str


def _catalog_with_groups(models) -> tuple[dict[str, _CatalogRow], dict[str, list[Group]]]:
    """The catalog rows of `models`, and for each its capacity groups (as groups.groups_by_model gives
    them), in one query: a row per model, group and member."""
    rows = CatalogModel.objects.filter(name__in=models).values_list(
        "name", "paused", "capacity", "default_simulate_seconds", "line_policy",
        "capacity_groups__name", "capacity_groups__capacity", "capacity_groups__catalog_models__name",
    )
    catalog, members = {}, {}
    for name, paused, capacity, seconds, policy, group, group_capacity, member in rows:
        catalog[name] = _CatalogRow(name, paused, capacity, seconds, policy)
        if group is not None:
            members.setdefault((name, group, group_capacity), set()).add(member)
    groups: dict[str, list[Group]] = {}
    for (name, group, capacity), names in sorted(members.items()):
        groups.setdefault(name, []).append(Group(group, capacity, frozenset(names)))
    return catalog, groups


def _slot_wait(job: Job, running: list[Job]) -> dict | None:
    """Every slot busy: the slots, their jobs (in the order they started), and how many jobs wait
    before `job` in the whole line, not counting those a pause holds (they step aside for it). The
    count comes with the job when its reader annotated it (`unheld_before`, selectors.job_detail);
    else it is one query."""
    slots = settings.COORDINATOR_MAX_ACTIVE_JOBS
    if len(running) < slots:
        return None
    ahead = getattr(job, "unheld_before", None)
    if ahead is None:
        ahead = line().filter(ahead_of(job), held=False).count()
    return {"slots": slots, "held_by": [{"job_id": r.job_id, "kind": r.kind} for r in running], "jobs_ahead": ahead}


def _jobs_before(job: Job, *, serialized: bool) -> list[Job]:
    """The running jobs, in the order they started; in serialized mode also the unheld jobs before
    `job` in line (AHEAD_COUNTED at most), which run before it one at a time. One query."""
    fields = ("job_id", "kind", "status", "priority", "created_at", "started_at", "required_models")
    jobs = Job.objects.filter(status=Job.Status.RUNNING).only(*fields).order_by()
    if serialized:
        # The first AHEAD_COUNTED in line order, as estimated_start() takes them, picked by id in a subquery.
        first_ahead = line().filter(ahead_of(job), held=False).values("pk")[:AHEAD_COUNTED]
        jobs = jobs.union(Job.objects.filter(pk__in=first_ahead).only(*fields).order_by(), all=True)
    return list(jobs.order_by("started_at", "job_id"))


def _ahead_in_lines(job: Job) -> dict[str, tuple[int, int]]:
    """For each model `job` needs: how many wait before it in that model's line, and how many of
    those are not held by a pause. One query (the rows before it, counted by model)."""
    rows = (
        JobLine.objects.filter(model__in=job.required_models)
        .filter(ahead_of(job))
        .values("model")
        .annotate(ahead=Count("pk"), unheld=Count("pk", filter=Q(held=False)))
        .order_by()
    )
    return {row["model"]: (row["ahead"], row["unheld"]) for row in rows}
