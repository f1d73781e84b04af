"""Accepting jobs: a submission checked, then inserted and started or queued under the coordinator lock
(one job, or a batch in one lock hold). The rest of a job's life is in jobs.py."""

import logging
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from coordination.estimates import line_retry_after
from coordination.services.input_files import input_refs_check
from coordination.exceptions import (
    CoordinationError, DuplicateJob, InvalidJob, LineFull, NotAllowed, PendingLimitReached, UnknownModel,
)
from coordination.models import CatalogModel, Job, JobQueueLog
from coordination.queue import LockedQueue
from coordination.queue.lines import owner_waiting
from coordination.queue.snapshot import Arrival
from coordination.transitions import job_accepted
from coordination.webhook_targets import webhook_set

logger = logging.getLogger("job_coordinator")

PROMPT_MAX_LENGTH = 4000


def catalog_model_get(*, name: str, catalog: dict[str, CatalogModel] | None = None) -> CatalogModel:
    """The enabled catalog model `name`. `catalog`: the whole catalog by name (in name order), read
    once by a caller that checks many jobs, so that checking them costs no query each."""
    model = CatalogModel.objects.filter(name=name).first() if catalog is None else catalog.get(name)
    if model is None or not model.enabled:
        if catalog is None:
            known = ", ".join(CatalogModel.objects.filter(enabled=True).values_list("name", flat=True))
        else:
            known = ", ".join(entry.name for entry in catalog.values() if entry.enabled)
        problem = f"Unknown model '{name}'" if model is None else f"Model '{name}' is disabled by an operator"
        raise UnknownModel(f"{problem}. Known models: {known}.", field="model")
    return model


def priority_check(*, owner, priority: int) -> None:
    if priority > 0 and not (owner is not None and owner.is_staff):
        raise NotAllowed("Only staff may submit jobs with a priority above 0.", field="priority")


def pending_limit_check(*, owner, adding: int = 1, queue: LockedQueue | None = None) -> None:
    """Refuse `adding` new jobs (a batch: all of them, as if none could start) unless their owner's
    waiting jobs and they fit in the most jobs waiting that one user may have.

    Called under the coordinator lock (`queue`, whose snapshot counted them), so two submissions at
    once cannot both slip under the limit. Staff (operators, the benchmark, load tests) and jobs
    without an owner are not limited.
    """
    limit = settings.COORDINATOR_MAX_PENDING_PER_USER
    if owner is None or owner.is_staff or not limit:
        return
    waiting = queue.owner_waiting(owner, limit) if queue is not None else owner_waiting(owner, limit)
    if waiting + adding <= limit:
        return
    if adding == 1:
        raise PendingLimitReached(
            f"You have {waiting} jobs waiting; the limit is {limit} (COORDINATOR_MAX_PENDING_PER_USER). "
            "Submit more once some have started, or cancel some."
        )
    raise PendingLimitReached(
        f"You have {waiting} jobs waiting and the batch adds {adding}; the limit is {limit} "
        "(COORDINATOR_MAX_PENDING_PER_USER), and every job of a batch counts. "
        f"Send at most {max(limit - waiting, 0)} now, or cancel some."
    )


def job_accept(*, job: Job, on_create: Callable[[Job], None] | None = None) -> Job:
    """Insert a new job and start it or queue it, in one transaction under the coordinator lock.

    `on_create(job)` runs in that transaction right after the insert (a workflow's execution row, an
    idempotency key): if it raises, the job is rolled back with it.
    """
    if not job.required_models:
        raise InvalidJob("A job must require at least one model.", field="model")
    _accept([job], on_insert=on_create)
    return job


def _accept(jobs: list[Job], *, on_insert: Callable[[Job], None] | None = None,
            on_admitted: Callable[[list[Job]], None] | None = None) -> None:
    """Accept `jobs` (one owner's, in order) in one transaction under the coordinator lock.
    `on_insert(job)` runs once a job is inserted, `on_admitted(jobs)` once all are."""
    with _retry_after_when_full(), transaction.atomic():
        arriving = [Arrival(models=list(job.required_models), priority=job.priority, dedupe_key=job.dedupe_key) for job in jobs]
        with LockedQueue(snapshot=True, arriving=arriving, owner=jobs[0].owner, ends_transaction=True) as queue:
            pending_limit_check(owner=jobs[0].owner, adding=len(jobs), queue=queue)
            for job in jobs:  # each in turn: the next one's place depends on this one
                _admit_new(queue, job, on_insert)
            if on_admitted is not None:
                on_admitted(jobs)


@contextmanager
def _retry_after_when_full():
    """Around a transaction under the coordinator lock: a full line's refusal (LineFull) gets its
    Retry-After here, once the transaction has rolled back, for the lock reads no estimate."""
    try:
        yield
    except LineFull as refused:
        raise refused.with_retry_after(line_retry_after(refused.model)) from None


def _admit_new(queue: LockedQueue, job: Job, on_create: Callable[[Job], None] | None = None) -> None:
    """Accepting one job, under the caller's lock: inserted (created_at taken under
    the lock, so line order is acceptance order), `on_create`, its `submitted` row, started or queued.
    A job whose dedupe_key a waiting job holds and that may replace it takes that job's place."""
    replaced = _dedupe(queue, job) if job.dedupe_key else None
    # It takes the replaced job's place only in the same lines: a job for other models is simply new.
    in_its_place = replaced is not None and list(replaced.required_models) == list(job.required_models)
    job_accepted(job, now=replaced.created_at if in_its_place else queue.now, writes=queue.writes)
    if on_create is not None:
        on_create(job)
    details = {"models": job.required_models}
    if replaced is not None:
        details["replaces"] = str(replaced.job_id)
    queue.record(event_type=JobQueueLog.Event.SUBMITTED, job=job, details=details)
    queue.admit(job, newest=not in_its_place)
    if replaced is not None:
        queue.settle_after(replaced.job_id)  # those that waited behind it now wait behind this one


def _dedupe(queue: LockedQueue, job: Job) -> Job | None:
    """The live job of the same owner with `job`'s dedupe_key, if any: refused (409) unless `job` may
    replace it and it still waits, in which case it is cancelled ("replaced by ...") and returned."""
    live = queue.live_twin(job)
    if live is None:
        return None
    if getattr(job, "on_duplicate", REJECT) != REPLACE:
        raise DuplicateJob(
            f"Job {live.job_id} ({live.status}) already has dedupe_key '{job.dedupe_key}'. Wait for it to end, "
            "cancel it, or send on_duplicate \"replace\" to take the place of a waiting one.",
            job_id=live.job_id,
        )
    if live.status != Job.Status.PENDING:
        raise DuplicateJob(
            f"Job {live.job_id} with dedupe_key '{job.dedupe_key}' is running and cannot be replaced; "
            "cancel it or wait for it to end.",
            job_id=live.job_id,
        )
    queue.cancel_waiting(
        live, reason=f"replaced by {job.job_id}",
        details={"by": getattr(job.owner, "username", None), "replaced_by": str(job.job_id)},
    )
    return live


REJECT, REPLACE = "reject", "replace"
DEADLINE_MAX = timedelta(days=30)
DEDUPE_KEY_MAX_LENGTH = 255


def job_policies_set(
    job: Job,
    *,
    start_by: datetime | None = None,
    max_wait_seconds: int | None = None,
    dedupe_key: str | None = None,
    on_duplicate: str | None = None,
    webhook_url: str | None = None,
    webhook_events_filter: list | None = None,
    now: datetime | None = None,
) -> None:
    """Check a submission's scheduling policies and set them on its job (not saved yet): a start-by
    deadline (`start_by`, or `max_wait_seconds` from now), and a dedupe_key with what to do when a
    live job of the same owner has it (`on_duplicate`: reject, the default, or replace)."""
    now = now or timezone.now()
    if start_by is not None and max_wait_seconds is not None:
        raise InvalidJob("Send start_by or max_wait_seconds, not both.", field="start_by")
    if max_wait_seconds is not None:
        if isinstance(max_wait_seconds, bool) or not isinstance(max_wait_seconds, int) or max_wait_seconds < 1:
            raise InvalidJob("max_wait_seconds must be a whole number of seconds, 1 or more.", field="max_wait_seconds")
        if max_wait_seconds > DEADLINE_MAX.total_seconds():
            raise InvalidJob(
                f"max_wait_seconds may be at most {int(DEADLINE_MAX.total_seconds())} (30 days).", field="max_wait_seconds"
            )
        start_by = now + timedelta(seconds=max_wait_seconds)
    elif start_by is not None:
        if start_by.tzinfo is None:
            raise InvalidJob("start_by needs a time zone, e.g. 2026-12-01T10:30:00Z.", field="start_by")
        if start_by <= now:
            raise InvalidJob(f"start_by {start_by.isoformat()} is in the past; give a time still to come.", field="start_by")
        if start_by > now + DEADLINE_MAX:
            raise InvalidJob(f"start_by may be at most 30 days ahead (until {(now + DEADLINE_MAX).isoformat()}).", field="start_by")
    if on_duplicate is not None and on_duplicate not in (REJECT, REPLACE):
        raise InvalidJob(f"on_duplicate must be \"{REJECT}\" or \"{REPLACE}\" (got '{on_duplicate}').", field="on_duplicate")
    if dedupe_key is not None:
        if not isinstance(dedupe_key, str) or not dedupe_key or len(dedupe_key) > DEDUPE_KEY_MAX_LENGTH or not dedupe_key.isprintable():
            raise InvalidJob(
                f"dedupe_key must be 1 to {DEDUPE_KEY_MAX_LENGTH} printable characters.", field="dedupe_key"
            )
    elif on_duplicate is not None:
        raise InvalidJob("on_duplicate applies to a dedupe_key: send one with it.", field="on_duplicate")
    job.start_by = start_by
    job.dedupe_key = dedupe_key
    job.on_duplicate = on_duplicate or REJECT
    webhook_set(job, webhook_url=webhook_url, webhook_events_filter=webhook_events_filter)


def job_build(
    *,
    owner,
    model: str,
    prompt: str,
    job_type: str | None = None,
    params: dict | None = None,
    priority: int = 0,
    client_ref: str | None = None,
    catalog: dict[str, CatalogModel] | None = None,
    **policies,
) -> Job:
    """Check a submission and make its job, not saved yet (job_accept or jobs_submit_batch accept it).
    `catalog`: as catalog_model_get takes it; `policies`: as job_policies_set takes them."""
    catalog = catalog_model_get(name=model, catalog=catalog)
    if not prompt or not prompt.strip():
        raise InvalidJob("A prompt is required: describe what to generate.", field="prompt")
    if len(prompt) > PROMPT_MAX_LENGTH:
        raise InvalidJob(
            f"The prompt is {len(prompt)} characters long; the limit is {PROMPT_MAX_LENGTH}.", field="prompt"
        )
    if job_type is not None and job_type != catalog.media_type:
        raise InvalidJob(
            f"Model '{model}' makes {catalog.media_type}s, so job_type must be '{catalog.media_type}' (got '{job_type}').",
            field="job_type",
        )
    priority_check(owner=owner, priority=priority)
    input_refs_check(owner=owner, values=params, field="params")  # file:<id>: the owner's own files only
    job = Job(
        kind=Job.Kind.NORMAL,
        job_type=catalog.media_type,
        model=catalog.name,
        prompt=prompt,
        params=params or {},
        owner=owner,
        priority=priority,
        client_ref=client_ref,
        required_models=[catalog.name],
    )
    job_policies_set(job, **policies)
    return job


def job_submit(
    *,
    owner,
    model: str,
    prompt: str,
    job_type: str | None = None,
    params: dict | None = None,
    priority: int = 0,
    on_create: Callable[[Job], None] | None = None,
    **policies,
) -> Job:
    job = job_build(
        owner=owner, model=model, prompt=prompt, job_type=job_type, params=params, priority=priority, **policies
    )
    return job_accept(job=job, on_create=on_create)


BATCH_MAX_JOBS = 1000


def jobs_submit_batch(
    *, owner, bodies: list[dict], on_create: Callable[[list[Job]], None] | None = None
) -> list[Job]:
    """Accept several jobs at once (POST /jobs/batch), in their order, as that many job_submit calls
    in a row would, but in one transaction under one hold of the coordinator lock.

    Each body holds job_build's arguments. All are checked before any is accepted: one bad body
    refuses the batch, its error naming the body (`jobs[3].model: Unknown model ...`); so does a
    batch that would take its owner past the pending-jobs limit (every job counts). `on_create(jobs)`
    runs in the transaction once the jobs are inserted (an idempotency key).
    """
    if not bodies:
        raise InvalidJob("A batch needs at least one job in \"jobs\".", field="jobs")
    if len(bodies) > BATCH_MAX_JOBS:
        raise InvalidJob(
            f"A batch holds at most {BATCH_MAX_JOBS} jobs (got {len(bodies)}); send the rest in another batch.",
            field="jobs",
        )
    catalog = {model.name: model for model in CatalogModel.objects.order_by("name")}  # once, not per body
    jobs = []
    for index, body in enumerate(bodies):
        try:
            jobs.append(job_build(owner=owner, catalog=catalog, **body))
        except CoordinationError as error:
            where = f"jobs[{index}].{error.field}" if error.field else f"jobs[{index}]"
            raise type(error)(f"{where}: {error.message}", field=where) from None
    keys: dict[str, int] = {}
    for index, job in enumerate(jobs):
        if job.dedupe_key is not None and keys.setdefault(job.dedupe_key, index) != index:
            where = f"jobs[{index}].dedupe_key"
            raise InvalidJob(f"{where}: jobs[{keys[job.dedupe_key]}] has the same dedupe_key; a batch names a key once.", field=where)
    # The batch is accepted at one instant, so every job has the same created_at; line order breaks
    # that tie by job_id. Ids handed out in ascending order keep the line in the batch's order.
    for job, job_id in zip(jobs, sorted(job.job_id for job in jobs)):
        job.job_id = job_id
    _accept(jobs, on_admitted=on_create)
    return jobs
