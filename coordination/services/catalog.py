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

from coordination.models import CatalogModel, JobLine, JobQueueLog
from coordination.queue import LockedQueue, line

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
    with transaction.atomic():
        queue = LockedQueue()
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
        queue.catalog_changed()
        summary = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changes.items()) or "nothing changed"
        logger.info("[COORDINATOR] Model %s %s by %s: %s", model.name, "changed" if before else "added", actor, summary)
        started = [job.job_id for job in queue.dispatch()]
        if before is not None and "capacity" in changes:
            # Jobs in its line that name a pending job still wait behind it; those naming a running
            # job (a conflict, or the job that went first and now runs) or none were told something
            # about the model that may no longer hold.
            its_line = JobLine.objects.filter(model=model.name).values("job_id")
            on_running = Q(blocked_by_job_id__in=list(queue.running)) | Q(blocked_by_job_id=None)
            for job in line().filter(on_running, job_id__in=its_line):
                if queue.reassess(job):
                    started.append(job.job_id)
        started = [str(job_id) for job_id in started]
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.MODEL_CHANGED,
            details={"model": model.name, "actor": actor, "changes": changes, "started": started},
        )
    return {"model": model.name, "changes": changes, "started": started}
