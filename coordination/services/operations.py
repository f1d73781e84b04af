"""The operators' console actions: pause and resume a model, change a waiting job's priority,
dispatch now, and reconcile slots with running jobs and leases.

Each is one transaction under the coordinator lock that writes its audit row (with the operator's
name) and ends by starting whatever may start, so none of them can break I1-I4 (docs/design.md). Their previews
(selectors.py) read the same things without the lock.
"""

import logging

from django.db import transaction
from django.utils import timezone

from coordination.exceptions import InvalidJob, InvalidTransition, UnknownModel
from coordination.models import CatalogModel, Job, JobLine, JobQueueLog
from coordination.queue import LockedQueue, line, nearest_behind
from coordination.queue.fair import shares_enter, shares_leave
from coordination.queue.lines import heads_of, on_models, passing
from coordination.queue.reconcile import JOB_IN_NO_SLOT, differences
from coordination.queue.attempts import catalog_timeouts, running_check
from coordination.services.repairs import running_repair
from coordination.services.jobs import _locked_job

logger = logging.getLogger("job_coordinator")

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000


def model_pause(*, name: str, paused: bool, actor: str) -> dict:
    """Pause (no new job starts on the model; running ones carry on) or resume it.

    While paused, the model's jobs keep their place in line but hold back no job that does not need
    it. Pausing re-decides the first job in the model's line (it says "Model paused" at once) and the
    jobs that waited behind one of its jobs without needing the model (they pass it now); resuming
    re-decides the jobs that waited on the pause. Both then start whatever may start.

    Cost: the jobs re-decided are those that name one of the model's jobs; in a mixed serialized line
    that is up to one per waiting job of the model, so this is an operator action, not a hot path."""
    with transaction.atomic(), LockedQueue() as queue:
        model = CatalogModel.objects.filter(name=name).first()
        if model is None:
            known = ", ".join(CatalogModel.objects.values_list("name", flat=True))
            raise UnknownModel(f"Unknown model {name!r}. Known models: {known}.")
        if model.paused == paused:
            state = "paused" if paused else "not paused"
            raise InvalidTransition(f"Model {name} is already {state}; nothing changed.")
        CatalogModel.objects.filter(pk=model.pk).update(paused=paused)
        queue.catalog_changed()
        _hold(name, paused=paused, still_paused=queue.paused)
        verb = "paused" if paused else "resumed"
        logger.info("[COORDINATOR] Model %s %s by %s", name, verb, actor)
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.MODEL_PAUSED if paused else JobQueueLog.Event.MODEL_RESUMED,
            details={"model": name, "actor": actor},
        )
        started = [job.job_id for job in queue.dispatch()]
        if paused:
            affected = [head for head in heads_of([name]).values() if head is not None] + list(passing(name))
        else:
            # The jobs that waited for the operator: they name no job (the first in its line, and any
            # job ahead of which only jobs held by another paused model stand).
            in_its_line = JobLine.objects.filter(model=name).values("job_id")
            affected = list(line().filter(blocked_by_job_id=None, job_id__in=in_its_line))
        for job in affected:
            if job.job_id not in started and queue.reassess(job):
                started.append(job.job_id)
    return {"model": name, "paused": paused, "started": [str(job_id) for job_id in started]}


def _hold(name: str, *, paused: bool, still_paused: set[str]) -> None:
    """Mark the waiting jobs of `name` held (paused) or not (resumed, unless another model they need
    is still paused), job and line rows alike: the operator's action pays for every one of them once,
    so that the decisions made meanwhile stay one index probe each."""
    its_jobs = on_models([name])
    if not paused:
        its_jobs = JobLine.objects.filter(model=name).exclude(job_id__in=on_models(still_paused)).values("job_id")
    Job.objects.filter(job_id__in=its_jobs).update(held=paused)
    JobLine.objects.filter(job_id__in=its_jobs).update(held=paused)


def job_priority_set(*, job_id, priority: int, actor: str) -> dict:
    """Move a waiting job to another priority: its place in every line it stands in changes, so it,
    the jobs that waited behind it and the jobs now behind it are decided again."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidJob(f"Priority must be a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}.", field="priority")
    with transaction.atomic(), LockedQueue() as queue:
        job = _locked_job(job_id)
        if job.status != Job.Status.PENDING:
            raise InvalidTransition(f"Job {job.job_id} is {job.status}; only a waiting job's priority can change.")
        previous = job.priority
        if previous == priority:
            return {"job_id": str(job.job_id), "from": previous, "to": priority, "started": []}
        waited_behind_it = list(line().filter(blocked_by_job_id=job.job_id))
        job.priority = priority
        job.save(update_fields=["priority"])
        JobLine.objects.filter(job_id=job.job_id).update(priority=priority)
        fair = [model for model in job.required_models if model in queue.fair_models]
        if fair:  # its owner's count moves from the old priority to the new one
            shares_leave(job, fair, priority=previous)
            shares_enter(job, fair)
        logger.info("[COORDINATOR] Job %s priority changed from %s to %s by %s", job.job_id, previous, priority, actor)
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.PRIORITY_CHANGED,
            job=job,
            details={"from": previous, "to": priority, "actor": actor},
        )
        now_behind_it = [nearest_behind(line(), job)] + [
            row.job for model in job.required_models
            if (row := nearest_behind(JobLine.objects.filter(model=model).select_related("job"), job))
        ]
        started = [started_job.job_id for started_job in queue.dispatch()]
        seen = set(started)
        for other in [job, *waited_behind_it, *now_behind_it]:
            if other is None or other.job_id in seen:
                continue
            seen.add(other.job_id)
            if queue.reassess(other):
                started.append(other.job_id)
    return {"job_id": str(job.job_id), "from": previous, "to": priority, "started": [str(i) for i in started]}


def queue_dispatch(*, actor: str) -> dict:
    """Start every waiting job that may start now. I2 (docs/design.md) says there is none; this is the operator's
    way to prove it, or to act on a change made outside the coordinator (the guide's SQL)."""
    with transaction.atomic(), LockedQueue() as queue:
        started = [str(job.job_id) for job in queue.dispatch()]
        JobQueueLog.objects.record(event_type=JobQueueLog.Event.DISPATCHED, details={"actor": actor, "started": started})
    return {"started": started}


def queue_reconcile(*, actor: str, only: set[str] | None = None) -> dict:
    """Compare slot rows, running jobs and leases under the lock, repair each difference (audited,
    one row each), then start what may start.

    `only`: the keys of the differences the operator's preview showed; a difference found now that
    the preview did not show is left for the next look, and one shown that is gone is reported."""
    with transaction.atomic(), LockedQueue() as queue:
        now = timezone.now()
        timeouts = catalog_timeouts()
        found = differences(queue.slots, queue.running, now=now, timeouts=timeouts)
        not_repaired = [{"key": key, "why": "no longer found"}
                        for key in sorted((only or set()) - {difference.key for difference in found})]
        if only is not None:
            found = [difference for difference in found if difference.key in only]
        running_before = set(queue.running)
        repaired, ended = [], []
        # Slot rows first: a freed row may then take a running job that no row shows.
        for difference in sorted(found, key=lambda d: d.slot is None):
            job = queue.running_job(difference.job_id)
            if difference.slot is None and job is None:  # ended by an earlier repair of this pass
                not_repaired.append({**difference.as_row(), "why": "no longer running"})
                continue
            if difference.problem == JOB_IN_NO_SLOT and queue.free_slot_row() is None:
                not_repaired.append({**difference.as_row(), "why": "no free slot row to write it into"})
                continue
            JobQueueLog.objects.record(
                event_type=JobQueueLog.Event.RECONCILED, job=job, details={"actor": actor, **difference.as_row()}
            )
            repaired.append(difference.as_row())
            if difference.slot is not None:
                _slot_repair(queue, difference)
            elif difference.problem == JOB_IN_NO_SLOT:
                _slot_assign(queue, job)
            else:
                running_repair(queue, job, now, *running_check(job, now, timeouts))
                if job.job_id not in queue.running:
                    ended.append(job.job_id)
        queue.settle_after(*ended)
        # Ending an attempt starts the next job already; report every job that started here.
        started = [str(job_id) for job_id in queue.running if job_id not in running_before]
        # One row for the run itself, also when there was nothing to repair: the operator's look is on record.
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.RECONCILED,
            details={"actor": actor, "repaired": len(repaired), "not_repaired": not_repaired, "started": started},
        )
    logger.info("[COORDINATOR] Reconciled by %s: %d difference(s) repaired", actor, len(repaired))
    return {"repaired": repaired, "not_repaired": not_repaired, "started": started}


def _slot_repair(queue: LockedQueue, difference) -> None:
    slot = next(slot for slot in queue.slots if slot.id == difference.slot)
    job = queue.running.get(slot.active_job_id)
    named_elsewhere = any(other.id < slot.id and other.active_job_id == slot.active_job_id for other in queue.slots)
    if job is None or named_elsewhere:
        queue.empty_slot(slot)
    else:
        slot.active_job_type, slot.active_models = job.kind, list(job.required_models)
        slot.save()


def _slot_assign(queue: LockedQueue, job: Job) -> None:
    slot = queue.free_slot_row()
    slot.active_job_id, slot.active_job_type = job.job_id, job.kind
    slot.active_models, slot.started_at = list(job.required_models), job.started_at
    slot.save()
