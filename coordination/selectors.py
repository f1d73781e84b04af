"""Reads for the API, the admin and templates."""

import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

import orjson
from django.conf import settings
from django.contrib.postgres.expressions import ArraySubquery
from django.db import connection
from django.db.models import Case, Count, DurationField, F, IntegerField, OuterRef, Prefetch, QuerySet, Value, When, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from coordination.estimates import Estimate, job_wait
from coordination.exceptions import InvalidTransition, JobNotFound, ModelNotFound, NotAllowed
from coordination.models import CatalogModel, Job, JobFile, JobLine, JobQueueState, ProviderRun
from coordination.queue.fair import fair_ahead_many
from coordination.queue import LINE_ORDER, ahead_of, line, line_position, stale_waiting
from coordination.queue.lines import count_ahead, model_line, passing
from coordination.queue.reconcile import differences, running_jobs
from coordination.queue.snapshot import from_row
from coordination.queue.attempts import catalog_timeouts

LINE_PREVIEW = 20  # jobs listed per line in a preview

# Operating the queue (the admin's actions, the console's, acting on another user's job): superusers have it.
OPERATE = "coordination.operate_queue"


def _retried_as(job_id) -> QuerySet[Job]:
    """The ids of the jobs made from `job_id` (an OuterRef in a subquery) by a retry, oldest first."""
    return Job.objects.filter(retry_of=job_id).order_by("created_at", "job_id").values("job_id")


def job_retried_as(job_id) -> list:
    """The API's `retried_as` of one job read on its own (selectors.with_retries reads it with the job)."""
    return list(_retried_as(job_id).values_list("job_id", flat=True))


def with_retries(jobs: QuerySet[Job]) -> QuerySet[Job]:
    """`jobs` each with the ids of its retries (`retried_ids`, the API's `retried_as`) in the same
    query: a subquery per row on the retry_of index, not one query per job."""
    return jobs.annotate(retried_ids=ArraySubquery(_retried_as(OuterRef("pk"))))


def with_runs(jobs: QuerySet[Job], *, runs: bool = True) -> QuerySet[Job]:
    """`jobs` with their runs at a provider and their kept files read in one more query each for the lot
    (the API's `at_provider` and `result.files`), and their retries in the same query (with_retries).
    `runs` False: what shows no run at a provider (a webhook's body) reads none and shows none."""
    in_flight = ProviderRun.objects.filter(state=ProviderRun.State.IN_FLIGHT) if runs else ProviderRun.objects.none()
    return with_retries(jobs).prefetch_related(
        Prefetch("provider_runs", queryset=in_flight, to_attr="runs_in_flight"),
        Prefetch("files", queryset=JobFile.objects.order_by("n"), to_attr="files_kept"),
    )


@cache
def _shown_sql() -> str:
    jobs, files, runs = Job._meta.db_table, JobFile._meta.db_table, ProviderRun._meta.db_table
    execution = Job._meta.get_field("workflow_execution").related_model
    retry_of = Job._meta.get_field("retry_of").column
    return f"""
SELECT json_agg(json_build_array(
    j,
    ARRAY(SELECT r.job_id FROM {jobs} AS r WHERE r.{retry_of} = j.job_id ORDER BY r.created_at, r.job_id),
    (SELECT w FROM {execution._meta.db_table} AS w WHERE w.{execution._meta.get_field("job").column} = j.job_id),
    (SELECT json_agg(f ORDER BY f.n) FROM {files} AS f WHERE f.{JobFile._meta.get_field("job").column} = j.job_id),
    CASE WHEN %(runs)s THEN (SELECT json_agg(p ORDER BY p.id) FROM {runs} AS p
                              WHERE p.{ProviderRun._meta.get_field("job").column} = j.job_id AND p.state = %(in_flight)s) END
))::text
FROM {jobs} AS j WHERE j.job_id = ANY(%(ids)s::uuid[])"""


def jobs_shown(job_ids, *, runs: bool = True) -> dict:
    """The jobs `job_ids`, by id, with_runs's way (their retries, their workflow's execution, their kept
    files and, with `runs`, their runs in flight at a provider), in one statement that is built once:
    what a batch of webhooks and the live streams render, many times a second. Building and compiling
    with_runs's querysets took about 4 ms of CPU a call, for any number of jobs; a test holds the two
    to the same JSON of every job."""
    ids = sorted({str(job_id) for job_id in job_ids})
    if not ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(_shown_sql(), {"runs": runs, "in_flight": ProviderRun.State.IN_FLIGHT, "ids": ids})
        (answer,) = cursor.fetchone()
    execution = Job._meta.get_field("workflow_execution")
    shown = {}
    for row, retried, workflow, files, in_flight in orjson.loads(answer) if answer else ():
        job = from_row(row)
        job.retried_ids = [uuid.UUID(job_id) for job_id in retried]
        execution.set_cached_value(job, from_row(workflow, execution.related_model) if workflow else None)
        job.files_kept = [from_row(file, JobFile) for file in files or ()]
        job.runs_in_flight = [from_row(run, ProviderRun) for run in in_flight or ()]
        shown[job.job_id] = job
    return shown


def run_at_provider(job: Job, runs) -> ProviderRun | None:
    """Among `runs` (the job's runs at a provider, or those in flight), the one a running normal job's
    current attempt waits in at its provider, holding no worker process: the API's `at_provider` and
    the job page's. `runs` is not read for any other job (a queryset stays unevaluated)."""
    if job.status != Job.Status.RUNNING or job.kind != Job.Kind.NORMAL:
        return None
    return next((run for run in runs if run.attempt == job.attempt and run.state == ProviderRun.State.IN_FLIGHT), None)


def job_list(*, user, status: str | None = None, kind: str | None = None, model: str | None = None) -> QuerySet[Job]:
    jobs = with_runs(Job.objects.select_related("workflow_execution").order_by("-created_at"))
    if not user.is_staff:
        jobs = jobs.filter(owner=user)
    if status:
        jobs = jobs.filter(status=status)
    if kind:
        jobs = jobs.filter(kind=kind)
    if model:
        jobs = jobs.filter(model=model)
    return jobs


def catalog_model_names() -> list[str]:
    """Every model in the catalog, enabled or not, by name."""
    return list(CatalogModel.objects.order_by("name").values_list("name", flat=True))


def catalog_model_list(*, user) -> QuerySet[CatalogModel]:
    """The catalog as `user` may see it: staff every model; anyone else the enabled ones, those they may submit to."""
    models = CatalogModel.objects.order_by("name")
    return models if user.is_staff else models.filter(enabled=True)


def catalog_model_find(*, user, name: str) -> CatalogModel:
    """One model of catalog_model_list(user); a model it does not show is not found."""
    model = catalog_model_list(user=user).filter(name=name).first()
    if model is None:
        raise ModelNotFound(f"No model {name}. GET /models lists the models you can submit to.")
    return model


def job_get(*, user, job_id, jobs: QuerySet[Job] | None = None) -> Job:
    """A job its owner (or staff) may see; anyone else is told it does not exist."""
    jobs = Job.objects.select_related("workflow_execution") if jobs is None else jobs
    try:
        job = jobs.get(pk=uuid.UUID(str(job_id)))
    except (Job.DoesNotExist, ValueError):
        raise JobNotFound(f"No job {job_id}.") from None
    if not user.is_staff and job.owner_id != user.pk:
        raise JobNotFound(f"No job {job_id}.")
    return job


def job_to_change(*, user, job_id) -> Job:
    """A job `user` may act on (cancel, retry) through the API: their own, or, for staff, anyone's
    once they may operate the queue (the admin's rule too: a view-only staff user writes nothing;
    NotAllowed, 403). Anyone else is told it does not exist (job_get)."""
    job = job_get(user=user, job_id=job_id)
    if job.owner_id != user.pk and not user.has_perm(OPERATE):
        raise NotAllowed(f"Job {job.job_id} is another user's: acting on it needs the permission to operate the queue "
                         f"({OPERATE}); you may only read it.")
    return job


@dataclass(frozen=True)
class JobDetail:
    """GET /jobs/{job_id}: the job, its live place in line, what it waits for and when it should start."""

    job: Job
    queue_position: int | None
    waiting_for: list[dict] | None
    estimate: Estimate | None
    waiting_for_slot: dict | None = None


def job_detail(*, user, job_id) -> JobDetail:
    """The job (with the jobs a pause does not hold before it counted in the same query, for its
    slot wait), its place in line (job_queue_positions, the one count of a place), and what it waits
    for with its estimate (estimates.job_wait, which reads estimated_starts, the one estimate): a
    fixed number of queries, however long the line and however many models."""

    def when_waiting(count):
        return Case(When(status=Job.Status.PENDING, then=count), output_field=IntegerField())

    jobs = with_retries(Job.objects.select_related("workflow_execution")).annotate(
        unheld_before=when_waiting(count_ahead(line().filter(held=False))),
    )
    job = job_get(user=user, job_id=job_id, jobs=jobs)
    wait = job_wait(job)
    return JobDetail(
        job=job,
        queue_position=job_queue_position(job),
        waiting_for=wait.waiting_for,
        estimate=wait.estimate,
        waiting_for_slot=wait.waiting_for_slot,
    )


def jobs_in_order(job_ids: list) -> list[Job]:
    """The jobs (a batch's answer), in the order of `job_ids`, in one query."""
    jobs = with_runs(Job.objects.select_related("workflow_execution")).in_bulk(job_ids)
    return [jobs[job_id] for job_id in job_ids if job_id in jobs]


def job_batch(*, first: Job, size: int) -> list[Job]:
    """The batch of `size` jobs that `first` opened (its Idempotency-Key's job), in its order.

    A batch is accepted at one instant, by one owner, its job ids ascending in the batch's order
    (services.jobs_submit_batch): one range on the same instant and owner, in one query. Jobs
    since deleted are missing from the answer."""
    return list(
        with_retries(Job.objects.select_related("workflow_execution"))
        .filter(owner_id=first.owner_id, created_at=first.created_at, job_id__gte=first.job_id)
        .order_by("job_id")[:size]
    )


def job_queue_position(job: Job) -> int | None:
    """A job's place in line: job_queue_positions() of one job."""
    if job.status != Job.Status.PENDING:
        return None
    return job_queue_positions([job.job_id]).get(job.job_id)


def _fair_places(places: dict, fair: dict) -> dict:
    """`places` with the normal jobs that wait in a fair line (with more than one slot; `fair`: job id
    → that line's model) numbered in that line's fair order instead: their place is in that line,
    where the owners take turns. Three queries per fair model (fair_ahead_many)."""
    if settings.COORDINATOR_MAX_ACTIVE_JOBS == 1 or not fair:
        return places
    by_model: dict[str, list] = {}
    for job_id, model in fair.items():
        by_model.setdefault(model, []).append(job_id)
    for model, job_ids in by_model.items():
        for job_id, ahead in fair_ahead_many(model, job_ids).items():
            places[job_id] = ahead + 1
    return places


def job_queue_positions(job_ids) -> dict:
    """The live place in line of each waiting job among `job_ids` (jobs that do not wait are left
    out): the one count of a place, which GET /jobs/{id} answers as `queue_position` and every list,
    the console, the admin and the event stream show. In the whole line, in one query; a normal job
    in a fair line (with more than one slot) in that line's fair order (_fair_places).

    The line is numbered once, in its own order (ROW_NUMBER() over LINE_ORDER, the order
    jobs_line_idx keeps), and only the asked rows are kept: one pass over the waiting jobs
    however many are asked, where a count per job would read the line up to each of them."""
    pk = Job._meta.pk
    ids = [pk.get_db_prep_value(job_id, connection) for job_id in job_ids]
    if not ids:
        return {}
    numbered = line().order_by().annotate(place=Window(RowNumber(), order_by=list(LINE_ORDER)))
    sql, params = numbered.values_list("job_id", "place", "kind", "model").query.sql_with_params()
    # The ids are kept outside the numbering (beside it, a WHERE would number only the asked rows),
    # which the ORM cannot say: hence the SELECT around its query. It also says which of them wait
    # in a fair line (their model's policy).
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT numbered.job_id, numbered.place, numbered.kind, numbered.model, catalog.line_policy "
            f"FROM ({sql}) numbered LEFT JOIN {CatalogModel._meta.db_table} catalog ON catalog.name = numbered.model "
            f"WHERE numbered.job_id IN ({', '.join(['%s'] * len(ids))})",
            [*params, *ids],
        )
        rows = cursor.fetchall()
    places = {pk.to_python(job_id): place for job_id, place, _, _, _ in rows}
    fair = {
        pk.to_python(job_id): model for job_id, _, kind, model, policy in rows
        if kind == Job.Kind.NORMAL and policy == CatalogModel.LinePolicy.FAIR
    }
    return _fair_places(places, fair)


def time_in_line() -> Case:
    """How long a job that started had waited for it: started_at - queued_at, 0 for one that never
    waited (queued_at is set only when a job has to wait). The one measure of a wait: /metrics'
    jobqueue_job_queue_seconds and the console's history (console_history.py) both read it."""
    return Case(
        When(queued_at__isnull=True, then=Value(timedelta(0))),
        default=F("started_at") - F("queued_at"),
        output_field=DurationField(),
    )


def queue_status(*, user=None) -> dict:
    """The usage guide's /queue/status, with every slot's job in `active_jobs`.

    `user`: who asks. Staff (and None: the operators' own tools) see every waiting job in full; any
    other user sees their own in full and everyone else's only as place in line, kind and models.
    """
    slots = list(JobQueueState.objects.filter(id__lte=settings.COORDINATOR_MAX_ACTIVE_JOBS).order_by("id"))
    active = [
        {
            "slot": slot.id,
            "job_id": slot.active_job_id,
            "job_type": slot.active_job_type,
            "models": slot.active_models or [],
            "started_at": slot.started_at,
        }
        for slot in slots
        if slot.active_job_id
    ]
    first = active[0] if active else {"job_id": None, "job_type": None, "models": []}
    waiting = line()
    limit = settings.COORDINATOR_STATUS_LIST_LIMIT
    sees_all = user is None or user.is_staff
    listed = list(waiting[:limit])
    places = job_queue_positions([job.job_id for job in listed])  # as GET /jobs/{id} says them
    queued = [
        {
            "job_id": job.job_id,
            "kind": job.kind,
            "model": job.model,
            "required_models": job.required_models,
            "priority": job.priority,
            "queue_position": position,
            "blocked_by_job_id": job.blocked_by_job_id,
            "conflict_reason": job.conflict_reason,
            "queued_at": job.queued_at,
        }
        if sees_all or job.owner_id == user.pk
        else {"queue_position": position, "kind": job.kind, "required_models": job.required_models}
        for position, job in ((places.get(job.job_id), job) for job in listed)
    ]
    return {
        "active_job": {"job_id": first["job_id"], "job_type": first["job_type"], "models": first["models"]},
        "active_jobs": active,
        "queued_jobs": queued,
        "queue_length": waiting.count(),
    }


def queue_clear_stale_preview() -> dict:
    """What "Clear stale queue" would repair: waiting jobs whose blocker is finished, missing or unset."""
    stale = list(stale_waiting().only("job_id", "kind", "blocked_by_job_id", "conflict_reason"))
    blockers = dict(
        Job.objects.filter(job_id__in={job.blocked_by_job_id for job in stale if job.blocked_by_job_id}).values_list(
            "job_id", "status"
        )
    )
    rows = []
    for job in stale:
        blocker_status = blockers.get(job.blocked_by_job_id) if job.blocked_by_job_id else None
        problem = (
            "no blocker recorded" if job.blocked_by_job_id is None
            else f"blocker is {blocker_status}" if blocker_status else "blocker does not exist"
        )
        rows.append({"job_id": job.job_id, "kind": job.kind, "blocked_by_job_id": job.blocked_by_job_id,
                     "problem": problem, "conflict_reason": job.conflict_reason})
    return {"columns": ["job_id", "kind", "blocked_by_job_id", "problem", "conflict_reason"], "rows": rows,
            "empty": "No waiting job points at a finished or missing job; nothing to repair, the queue will only be dispatched."}


def queue_reset_preview(*, slot_ids: list[int]) -> dict:
    """What "Reset state" would do to each chosen slot."""
    slots = list(JobQueueState.objects.filter(id__in=slot_ids).order_by("id"))
    jobs = {job.job_id: job for job in Job.objects.filter(job_id__in=[s.active_job_id for s in slots if s.active_job_id])}
    at_provider = {job_id for job_id, attempt in ProviderRun.objects.filter(
        job_id__in=list(jobs), state=ProviderRun.State.IN_FLIGHT).values_list("job_id", "attempt")
        if jobs[job_id].attempt == attempt}
    rows = []
    for slot in slots:
        job = jobs.get(slot.active_job_id)
        if slot.active_job_id is None:
            effect = "already free"
        elif job is not None and job.status == Job.Status.RUNNING and job.job_id in at_provider:
            effect = ("job is running at its provider: it will be cancelled there, then ended as failed and the slot "
                      "freed once the provider confirms (or the cancel grace passes)")
        elif job is not None and job.status == Job.Status.RUNNING:
            effect = "job is running: it will be ended as failed, then the slot freed"
        else:
            effect = "slot names a job that is not running: the slot is freed"
        rows.append({"slot": slot.id, "active_job_id": slot.active_job_id, "active_models": ", ".join(slot.active_models or []),
                     "effect": effect})
    return {"columns": ["slot", "active_job_id", "active_models", "effect"], "rows": rows, "empty": "No slot selected."}


# --- previews of the operators' console actions (services/operations.py) ----------------------


def _preview(columns: list[str], rows: list[dict], empty: str) -> dict:
    return {"columns": columns, "rows": rows, "empty": empty}


def model_pause_preview(*, name: str, paused: bool) -> dict:
    """What pausing (or resuming) a model will touch: the jobs running on it, and its line."""
    running = Job.objects.filter(status=Job.Status.RUNNING).order_by("started_at")
    rows = [
        {"job_id": job.job_id, "status": "running", "place": "holds it",
         "effect": "keeps running" if paused else "unchanged"}
        for job in running if name in job.required_models
    ]
    waiting = list(model_line(name).select_related("job")[:LINE_PREVIEW])
    for position, row in enumerate(waiting, start=1):
        if paused:
            effect = "waits with the reason \"Model paused\"" if position == 1 else "waits in line behind the job before it"
        else:
            effect = "starts now if its models and a slot are free" if position == 1 else "waits in line behind the job before it"
        rows.append({"job_id": row.job_id, "status": "pending", "place": f"{position} in its line", "effect": effect})
    total = JobLine.objects.filter(model=name).count()
    if total > len(waiting):
        rows.append({"job_id": None, "status": "pending", "place": f"{len(waiting) + 1}-{total}", "effect": "wait in line"})
    if paused:
        for job in passing(name)[:LINE_PREVIEW]:
            rows.append({"job_id": job.job_id, "status": "pending", "place": f"behind a job that needs {name}",
                         "effect": f"does not need {name}, so it passes that job: starts if it may, else waits for what it needs"})
    return _preview(["job_id", "status", "place", "effect"], rows, f"No job runs on or waits for {name}.")


def job_priority_preview(*, job_id, priority: int | None) -> dict:
    """Where a waiting job stands now, and where the new priority would put it (None: only now)."""
    job = Job.objects.filter(job_id=job_id).first()
    if job is None:
        raise JobNotFound(f"No job {job_id}.")
    if job.status != Job.Status.PENDING:
        raise InvalidTransition(f"Job {job.job_id} is {job.status}; only a waiting job's priority can change.")
    ahead_now = line_position(job)
    if priority is None:
        row = {"job_id": job.job_id, "priority": job.priority, "place in line": ahead_now}
        return _preview(list(row), [row], "")
    moved = Job(job_id=job.job_id, priority=priority, created_at=job.created_at)
    ahead_then = line().exclude(job_id=job.job_id).filter(ahead_of(moved)).count() + 1
    row = {"job_id": job.job_id, "priority": f"{job.priority} → {priority}", "place in line": f"{ahead_now} → {ahead_then}",
           "effect": "decided again: it starts now if it may, else it waits behind the job now before it"}
    return _preview(list(row), [row], "")


def job_cancel_preview(*, job_ids: list) -> dict:
    """What cancelling each job does: a waiting job ends now; a running one is asked to stop."""
    rows = []
    for job in Job.objects.filter(job_id__in=job_ids).order_by("created_at"):
        if job.status == Job.Status.PENDING:
            effect = "cancelled now; the jobs behind it are decided again"
        elif job.status == Job.Status.RUNNING:
            effect = "its worker is asked to stop; its models are freed once it has"
        else:
            effect = f"nothing: it is already {job.status}"
        rows.append({"job_id": job.job_id, "kind": job.kind, "models": ", ".join(job.required_models),
                     "status": job.status, "effect": effect})
    return _preview(["job_id", "kind", "models", "status", "effect"], rows, "No job selected.")


def job_retry_preview(*, job_ids: list) -> dict:
    """What retrying each job does (services.job_resubmit): an ended job is made again as a new job of
    its owner's, with its request, which starts or waits as any new job; any other is left alone.
    `retries` counts the retries it has had: the "Yes" refuses a job retried since (a second click)."""
    rows = []
    jobs = Job.objects.filter(job_id__in=job_ids).select_related("owner").annotate(retries=Count("retried_as"))
    for job in jobs.order_by("created_at"):
        if job.is_finished:
            effect = ("a new job with its request, for its owner: it starts if its models and a slot are free, "
                      "else it waits in line")
        else:
            effect = f"nothing: it is {job.status}; only a job that has ended can be retried"
        rows.append({"job_id": job.job_id, "kind": job.kind, "models": ", ".join(job.required_models),
                     "status": job.status, "owner": job.owner.get_username() if job.owner else None,
                     "retries": job.retries, "effect": effect})
    return _preview(["job_id", "kind", "models", "status", "owner", "retries", "effect"], rows, "No job selected.")


def queue_dispatch_preview() -> dict:
    """How many wait and how many slots are free; I2 (docs/design.md) says no waiting job may start by the rules."""
    running = Job.objects.filter(status=Job.Status.RUNNING).count()
    free = max(settings.COORDINATOR_MAX_ACTIVE_JOBS - running, 0)
    row = {"waiting": Job.objects.filter(status=Job.Status.PENDING).count(), "slots free": free,
           "effect": "every waiting job that may start by the rules starts now, in line order" if free
           else "none can start: every slot is busy (the next starts when one frees, without this)"}
    return _preview(list(row), [row], "")


def queue_reconcile_preview() -> dict:
    """The differences between slot rows, running jobs and leases, and the repair for each."""
    slots = list(JobQueueState.objects.order_by("id"))
    found = differences(slots, running_jobs(), now=timezone.now(), timeouts=catalog_timeouts())
    preview = _preview(["problem", "slot", "job_id", "found", "repair"], [d.as_row() for d in found],
                       "Slots, running jobs and leases agree: nothing to repair.")
    return {**preview, "keys": [d.key for d in found]}
