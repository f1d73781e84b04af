"""An operator's edit of the model catalog (the admin's form), made through the coordinator.

A model's capacity is one of the coordinator's rules: raising it may let a waiting job start now, and
the jobs in the model's line say why they wait in terms of it. So, like a pause
(operations.model_pause), the edit is saved under the coordinator lock and audited with the
operator's name, and what it changes is decided again in the same transaction: the reaper is not
left to find a job that could have started.
"""

import logging

from django.db import transaction
from django.db.models import Q

from coordination.models import CapacityGroup, CatalogModel, JobLine, JobQueueLog
from coordination.queue import LockedQueue, line
from coordination.queue.fair import shares_rebuild
from coordination.queue.lines import names_one_behind

logger = logging.getLogger("job_coordinator")

# `paused` changes only through model_pause (the console), under the lock: a form read before a
# pause must not undo it when saved.
NOT_EDITED = ("id", "paused")


def catalog_model_save(*, model: CatalogModel, actor: str) -> dict:
    """Save `model` as the operator edited it (a new one, or an existing one except its pause), then
    start whatever may start now and, if its capacity changed, decide again for the jobs in its line
    that wait on running jobs or on no job (what they said may be out of date).

    Lowering a capacity stops no running job: the model takes no new one until fewer jobs than the
    new capacity run on it."""
    with transaction.atomic(), LockedQueue() as queue:
        before = CatalogModel.objects.filter(pk=model.pk).first() if model.pk is not None else None
        edited = [field for field in model._meta.concrete_fields if field.name not in NOT_EDITED]
        if before is None:
            model.save()
            changes = {field.name: [None, getattr(model, field.attname)] for field in edited}
        else:
            model.paused = before.paused
            model.save(update_fields=[field.name for field in edited])
            changes = {
                field.name: [getattr(before, field.attname), getattr(model, field.attname)]
                for field in edited if getattr(before, field.attname) != getattr(model, field.attname)
            }
        if "line_policy" in changes or (before is None and model.line_policy != CatalogModel.LinePolicy.FIFO):
            shares_rebuild(model.name, fair=model.line_policy == CatalogModel.LinePolicy.FAIR)
        summary = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changes.items()) or "nothing changed"
        logger.info("[COORDINATOR] Model %s %s by %s: %s", model.name, "changed" if before else "added", actor, summary)
        stale = before is not None and ("capacity" in changes or "line_policy" in changes)
        started = _decide_again(queue, {model.name} if stale else set(), reordered="line_policy" in changes)
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.MODEL_CHANGED,
            details={"model": model.name, "actor": actor, "changes": changes, "started": started},
        )
    return {"model": model.name, "changes": changes, "started": started}


def capacity_group_save(*, group: CapacityGroup, models: list[CatalogModel] | None, actor: str) -> dict:
    """Save a capacity group as the operator edited it (its capacity, and its member models when
    `models` is given), then decide again at once: start what the change lets start, and re-decide
    the waiting jobs of its models that wait on a running job or on none (what they said about the
    group may no longer hold). Deleting a group is capacity_group_delete."""
    with transaction.atomic(), LockedQueue() as queue:
        before = CapacityGroup.objects.filter(pk=group.pk).first() if group.pk is not None else None
        members_before = sorted(before.catalog_models.values_list("name", flat=True)) if before else []
        group.save()
        if models is not None:
            group.catalog_models.set(models)
        members = sorted(group.catalog_models.values_list("name", flat=True))
        changes = {}
        if before is None or before.capacity != group.capacity:
            changes["capacity"] = [before.capacity if before else None, group.capacity]
        if members != members_before:
            changes["models"] = [members_before, members]
        logger.info(
            "[COORDINATOR] Capacity group %s %s by %s: %s", group.name, "changed" if before else "added", actor,
            ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changes.items()) or "nothing changed",
        )
        started = _decide_again(queue, set(members) | set(members_before))
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.GROUP_CHANGED,
            details={"group": group.name, "actor": actor, "changes": changes, "started": started},
        )
    return {"group": group.name, "changes": changes, "started": started}


def capacity_group_delete(*, group: CapacityGroup, actor: str) -> dict:
    """Delete a capacity group: its models' waiting jobs may start at once."""
    with transaction.atomic(), LockedQueue() as queue:
        members = list(group.catalog_models.values_list("name", flat=True))
        name = group.name
        group.delete()
        logger.info("[COORDINATOR] Capacity group %s deleted by %s", name, actor)
        started = _decide_again(queue, set(members))
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.GROUP_CHANGED,
            details={"group": name, "actor": actor, "changes": {"deleted": [members, None]}, "started": started},
        )
    return {"group": name, "started": started}


def _decide_again(queue: LockedQueue, models: set[str], *, reordered: bool = False) -> list[str]:
    """After a catalog or group edit: read the catalog again, start what may start now, then decide
    again for the jobs in the lines of `models` that wait on a running job or on none. Jobs that name
    a pending job still wait behind it; the others were told something about these models (a
    conflict, a full group, the job that went first and now runs) that may no longer hold.

    `reordered`: the lines' order changed (fair, or first come first served again), so a job may
    now stand before the pending job it names (whose owner's turn came first): those are decided
    again too."""
    queue.catalog_changed()
    started = [job.job_id for job in queue.dispatch()]
    if not models:
        return [str(job_id) for job_id in started]
    its_lines = JobLine.objects.filter(model__in=models).values("job_id")
    stale = Q(blocked_by_job_id__in=list(queue.running)) | Q(blocked_by_job_id=None)
    if reordered:
        stale |= names_one_behind()
    for job in line().filter(stale, job_id__in=its_lines):
        if queue.reassess(job):
            started.append(job.job_id)
    return [str(job_id) for job_id in started]
