"""When will a waiting job start? One estimate, from recent run times, played forward by the rules.

estimated_starts() is the one function: GET /jobs/{id} (`estimated_start_at`, `start_overdue`), the
queue console and the admin's job page all read it. It plays the queue forward from now as the
coordinator would run it, without new arrivals: the running jobs end after the time they should have
left, then, at each end, every waiting job that may start by the scheduling rules starts — a free
slot, free capacity on each of its models and in their capacity groups, and at the head of the line
of every model it needs (a fair line in its fair order; the jobs a pause holds step aside) — and
runs for its typical time. A job's estimate is the instant it starts in that play.

Run times are each kind of job's own (docs/scheduling.md#estimates): a normal job's, its model's last
RECENT completed normal jobs; a workflow's, its own last completed runs (its steps in a row, holding
all its models), else the sum of its models'. A running job has the mean of what those runs had left
at its age (a job that has run 5 s of runs lasting 4, 6 and 8 s has 2 s left on average, not the
mean's 1 s); one that ran past every recent run was expected to end when the mean ran out. A job that
waits for such a job should have started by then: its estimate is that past instant, marked overdue.
A held job (it needs a paused model) gets no estimate: an operator's resume starts it. At most
AHEAD_COUNTED jobs before the last asked one are played. A read, for the API and the console: nothing
under the coordinator lock calls it.
"""

import heapq
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, F, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from coordination.models import CatalogModel, Job, JobLine
from coordination.queue.fair import fair_ahead_many, fair_order
from coordination.queue.lines import ahead_of, line, line_key
from coordination.queue.groups import Group

RECENT = 50  # completed jobs of a kind that make its typical run time
AHEAD_COUNTED = 1000  # at most this many waiting jobs before the last asked one are played forward
_FIELDS = ("job_id", "kind", "status", "priority", "created_at", "started_at", "required_models", "held")


@dataclass(frozen=True)
class Estimate:
    """When a waiting job should start. `overdue`: that instant has passed while it still waits (the
    jobs it waits for ran longer than their kind usually does); it starts as soon as they end."""

    at: datetime
    overdue: bool = False


def _kind_of(job: Job) -> tuple:
    """Jobs with the same run times: a normal job's model, a workflow's models (its steps)."""
    return (job.kind, tuple(job.required_models))


def recent_run_seconds(kinds) -> dict[tuple, list[float]]:
    """How long each kind's last RECENT completed jobs ran, by _kind_of(): one query, each kind's
    completed jobs numbered newest first in a window."""
    kinds = set(kinds)
    # A workflow without runs yet is its models' normal runs in a row (_RunTimes.typical): read them too.
    kinds |= {(Job.Kind.NORMAL, (model,)) for kind, models in list(kinds) if kind == Job.Kind.WORKFLOW for model in models}
    models = sorted({models[0] for kind, models in kinds if kind == Job.Kind.NORMAL and models})
    workflows = [list(models) for kind, models in kinds if kind == Job.Kind.WORKFLOW]
    which = Q(kind=Job.Kind.NORMAL, model__in=models)
    for models_of in workflows:
        which |= Q(kind=Job.Kind.WORKFLOW, required_models=models_of)
    if not models and not workflows:
        return {}
    recent = (
        Job.objects.filter(which, status=Job.Status.COMPLETED, started_at__isnull=False, completed_at__isnull=False)
        .annotate(recency=Window(RowNumber(), partition_by=[F("kind"), F("required_models")], order_by=F("completed_at").desc()))
        .filter(recency__lte=RECENT)
        .values_list("kind", "required_models", "started_at", "completed_at")
    )
    runs: dict[tuple, list[float]] = {}
    for kind, required, started_at, completed_at in recent:
        runs.setdefault((kind, tuple(required)), []).append((completed_at - started_at).total_seconds())
    return runs


class _RunTimes:
    """Each kind's typical run time, and what a running job has left, from recent_run_seconds()."""

    def __init__(self, runs: dict[tuple, list[float]], defaults: dict[str, float]):
        self.runs, self.defaults = runs, defaults

    def typical(self, kind: tuple) -> float:
        runs = self.runs.get(kind)
        if runs:
            return sum(runs) / len(runs)
        if kind[0] == Job.Kind.WORKFLOW:  # never run yet: its steps, one after another
            return sum(self.typical((Job.Kind.NORMAL, (model,))) for model in kind[1])
        return self.defaults.get(kind[1][0], 0.0) if kind[1] else 0.0

    def end(self, job: Job, now: datetime) -> tuple[datetime, bool]:
        """When a running job should end, and whether that is overdue: the mean of what the recent
        runs that lasted longer than it has run had left; if none did, when the mean ran out."""
        elapsed = (now - job.started_at).total_seconds() if job.started_at else 0.0
        runs = self.runs.get(_kind_of(job)) or [self.typical(_kind_of(job))]
        longer = [run - elapsed for run in runs if run > elapsed]
        if longer:
            return now + timedelta(seconds=sum(longer) / len(longer)), False
        planned = now + timedelta(seconds=sum(runs) / len(runs) - elapsed)
        return planned, planned < now


def estimated_starts(jobs: list[Job], *, now: datetime | None = None, before: list[Job] | None = None,
                     catalog: dict | None = None, groups: dict | None = None) -> dict:
    """The Estimate of each of `jobs` (None for a job that does not wait, or waits on a paused
    model), by job id: the queue played forward (see the module) with the jobs before it — before
    it in line, or in a fair line's turns. A fixed number of queries however many jobs: the running
    jobs and the waiting ones before the last asked (one), the catalog with its groups (one), recent
    run times (one), and for each fair line its turns (a few). A caller that read some already
    passes them: `before` (the running jobs and the unheld jobs before the one job asked, as
    job_wait reads them), `catalog` and `groups` (as _catalog_with_groups gives them)."""
    estimates = {job.job_id: None for job in jobs}
    asked = [job for job in jobs if job.status == Job.Status.PENDING and not job.held]
    if not asked:
        return estimates
    now = now or timezone.now()
    if before is None:
        before = _running_and_before(max(asked, key=line_key))
    running = [job for job in before if job.status == Job.Status.RUNNING]
    waiting = {job.job_id: job for job in before if job.status == Job.Status.PENDING and not job.held}
    waiting.update({job.job_id: job for job in asked})
    models = {model for job in [*waiting.values(), *running] for model in job.required_models}
    if catalog is None or groups is None or not models <= set(catalog):
        catalog, groups = _catalog_with_groups(models)
    # A fair line's turns may put a job that came later before an asked one: those join the play.
    turns: dict[str, dict] = {}
    if settings.COORDINATOR_MAX_ACTIVE_JOBS > 1:
        for model in sorted({m for job in asked for m in job.required_models}):
            if model in catalog and catalog[model].line_policy == CatalogModel.LinePolicy.FAIR:
                ahead = fair_ahead_many(model, [job.job_id for job in asked if model in job.required_models])
                for row in fair_order(model, min(AHEAD_COUNTED, max(ahead.values(), default=0))):
                    if not row.job.held:
                        waiting.setdefault(row.job_id, row.job)
                turns[model] = {}
    for model in turns:  # every job of the play in that line, numbered in its turns
        turns[model] = fair_ahead_many(model, [job.job_id for job in waiting.values() if model in job.required_models])
    models = {model for job in [*waiting.values(), *running] for model in job.required_models}
    if not models <= set(catalog):
        catalog, groups = _catalog_with_groups(models)
    order = sorted(waiting.values(), key=line_key)
    times = _RunTimes(
        recent_run_seconds({_kind_of(job) for job in [*order, *running]}),
        {name: row.default_simulate_seconds for name, row in catalog.items()},
    )

    def play(jobs: list[Job]) -> tuple[dict, bool]:
        return _play(jobs, running, catalog, groups, turns, times, now)

    played, crowded = play(order)
    if crowded and len(asked) > 1:
        # A job that came later took a slot (or a group's room) before an earlier one: each asked
        # job is played with only the jobs before it, as it is played alone.
        for job in asked:
            played[job.job_id] = play([other for other in order if _before(other, job, turns)] + [job])[0].get(job.job_id)
    for job in asked:
        estimates[job.job_id] = played.get(job.job_id)
    return estimates


def _before(other: Job, job: Job, turns: dict) -> bool:
    """Whether `other` goes before `job`: in line, or in the turns of a fair line they share."""
    if line_key(other) < line_key(job):
        return True
    return any(
        other.job_id in places and places[other.job_id] < places.get(job.job_id, math.inf)
        for model, places in turns.items() if model in job.required_models
    )


def estimated_start(job: Job, *, now: datetime | None = None) -> Estimate | None:
    """estimated_starts() of one job."""
    return estimated_starts([job], now=now)[job.job_id]


def _running_and_before(job: Job) -> list[Job]:
    """The running jobs and the first AHEAD_COUNTED unheld waiting jobs before `job` in line: one query."""
    fields = _FIELDS
    jobs = Job.objects.filter(status=Job.Status.RUNNING).only(*fields).order_by()
    first_ahead = line().filter(ahead_of(job), held=False).values("pk")[:AHEAD_COUNTED]
    jobs = jobs.union(Job.objects.filter(pk__in=first_ahead).only(*fields).order_by(), all=True)
    return list(jobs.order_by("started_at", "job_id"))


def _play(order: list[Job], running: list[Job], catalog: dict, groups: dict, turns: dict, times: _RunTimes,
          now: datetime) -> tuple[dict, bool]:
    """Each of `order` (waiting jobs in line order) by the Estimate of its start, the queue played
    forward from `now` by the scheduling rules (docs/design.md, rules 1-3), without new arrivals; and
    whether a job started before one earlier in line while a slot or a group's room was short (then
    a job's start may depend on jobs behind it)."""
    slots = settings.COORDINATOR_MAX_ACTIVE_JOBS
    index = {job.job_id: n for n, job in enumerate(order)}
    lines: dict[str, list[Job]] = {}
    for job in order:
        for model in job.required_models:
            lines.setdefault(model, []).append(job)
    for model, places in turns.items():  # a fair line in its turns
        if model in lines:
            lines[model].sort(key=lambda job: (places.get(job.job_id, math.inf), index[job.job_id]))
    heads = {model: 0 for model in lines}  # each line's first job not yet started in the play
    holding = list(running)  # the jobs running at each instant of the play
    ends = []  # (when it ends in the play, n, overdue, when it was expected to end, job), soonest first
    for n, job in enumerate(running):
        end, overdue = times.end(job, now)
        heapq.heappush(ends, (max(end, now), n, overdue, end, job))
    started: dict = {}
    short = [False]  # a job heading its lines waited for a slot or a group's room
    earliest_waiting = [0]

    def room(job: Job) -> bool:
        for model in job.required_models:
            capacity = catalog[model].capacity if model in catalog else 1
            if sum(model in other.required_models for other in holding) >= capacity:
                return False
        if len(holding) >= slots or any(
            len(group.using(holding)) >= group.capacity for model in job.required_models for group in groups.get(model, ())
        ):
            short[0] = True
            return False
        return True

    def heads_all(job: Job) -> bool:
        return all(lines[model][heads[model]] is job for model in job.required_models)

    out_of_order = False

    def start_what_may(at: datetime, estimate: Estimate) -> None:
        nonlocal out_of_order
        while True:  # the first job in line that heads every line it needs and has room, again and again
            candidates = sorted({lines[m][heads[m]].job_id for m in lines if heads[m] < len(lines[m])}, key=index.get)
            job = next((order[index[c]] for c in candidates if heads_all(order[index[c]]) and room(order[index[c]])), None)
            if job is None:
                return
            started[job.job_id] = estimate
            while earliest_waiting[0] < len(order) and order[earliest_waiting[0]].job_id in started:
                earliest_waiting[0] += 1
            if index[job.job_id] > earliest_waiting[0]:
                out_of_order = True
            for model in job.required_models:
                heads[model] += 1
            holding.append(job)
            end = at + timedelta(seconds=times.typical(_kind_of(job)))
            heapq.heappush(ends, (end, len(running) + index[job.job_id], False, end, job))

    start_what_may(now, Estimate(now))
    while len(started) < len(order) and ends:
        at, _, overdue, planned, job = heapq.heappop(ends)
        holding.remove(job)
        start_what_may(at, Estimate(planned, True) if overdue else Estimate(at))
    return started, out_of_order and short[0]


def line_retry_after(model: str, *, now: datetime | None = None) -> int:
    """Seconds until a full line of `model` should move (its next job starts): the soonest end of
    its running jobs, by their kinds' recent run times (as estimated_starts() reads them); at least
    1. For Retry-After, read once the refused submission's transaction is over (services/submit.py),
    never under the coordinator lock."""
    now = now or timezone.now()
    running = [job for job in Job.objects.filter(status=Job.Status.RUNNING).only(*_FIELDS) if model in job.required_models]
    kinds = {_kind_of(job) for job in running} | {(Job.Kind.NORMAL, (model,))}
    defaults = dict(CatalogModel.objects.filter(name=model).values_list("name", "default_simulate_seconds"))
    times = _RunTimes(recent_run_seconds(kinds), defaults)
    left = [(times.end(job, now)[0] - now).total_seconds() for job in running]
    return max(1, math.ceil(min(left) if left else times.typical((Job.Kind.NORMAL, (model,)))))


# --- GET /jobs/{job_id}: what a waiting job waits for, and when it should start, read together ---


@dataclass(frozen=True)
class Wait:
    """A waiting job's `waiting_for` (model by model: who holds it, how many wait before it in its
    line, whether an operator paused it), its Estimate (`estimated_start_at`, `start_overdue`), and
    `waiting_for_slot` (every slot is busy: how many there are, the jobs holding them, how many wait
    before it in the whole line); all None for a job that does not wait, the estimate None while a
    paused model holds it, and the slot wait None while a slot is free."""

    waiting_for: list[dict] | None = None
    estimate: Estimate | None = None
    waiting_for_slot: dict | None = None


def job_wait(job: Job, *, now: datetime | None = None) -> Wait:
    """The API's answer for one job, from one read of each fact its parts share: the jobs that run
    or wait before it, its place in each of its models' lines, their catalog rows, and (for the
    estimate, estimated_starts()) recent run times. Four queries (three for a held job, none for a
    job that does not wait), three more per fair line, however long the line and however many
    models. With every slot busy, one more counts the jobs before it in the whole line, unless the
    job was read with that count (`unheld_before`, as job_detail does)."""
    if job.status != Job.Status.PENDING:
        return Wait()
    before = _running_and_before(job)
    running = [other for other in before if other.status == Job.Status.RUNNING]
    in_lines = _ahead_in_lines(job)  # a fair line's counts follow below, once the catalog is read
    models = {model for other in [job, *before] for model in other.required_models}
    catalog, groups = _catalog_with_groups(models)
    if settings.COORDINATOR_MAX_ACTIVE_JOBS > 1:
        for model in job.required_models:
            if model in catalog and catalog[model].line_policy == CatalogModel.LinePolicy.FAIR:
                count = fair_ahead_many(model, [job.job_id]).get(job.job_id, 0)
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
    estimate = estimated_starts([job], now=now, before=before, catalog=catalog, groups=groups)[job.job_id]
    return Wait(waiting_for=waiting_for, estimate=estimate, waiting_for_slot=slot)


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
