"""Reads for the API, the admin and templates."""

import uuid

from django.conf import settings
from django.db.models import QuerySet

from coordination.exceptions import JobNotFound
from coordination.models import Job, JobQueueState
from coordination.queue import line, line_position, stale_waiting


def job_list(*, user, status: str | None = None, kind: str | None = None, model: str | None = None) -> QuerySet[Job]:
    jobs = Job.objects.select_related("workflow_execution").order_by("-created_at")
    if not user.is_staff:
        jobs = jobs.filter(owner=user)
    if status:
        jobs = jobs.filter(status=status)
    if kind:
        jobs = jobs.filter(kind=kind)
    if model:
        jobs = jobs.filter(model=model)
    return jobs


def job_get(*, user, job_id) -> Job:
    """A job its owner (or staff) may see; anyone else is told it does not exist."""
    try:
        job = Job.objects.select_related("workflow_execution").get(pk=uuid.UUID(str(job_id)))
    except (Job.DoesNotExist, ValueError):
        raise JobNotFound(f"No job {job_id}.") from None
    if not user.is_staff and job.owner_id != user.pk:
        raise JobNotFound(f"No job {job_id}.")
    return job


def job_queue_position(job: Job) -> int | None:
    return line_position(job) if job.status == Job.Status.PENDING else None


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
        for position, job in enumerate(waiting[:limit], start=1)
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
    rows = []
    for slot in slots:
        job = jobs.get(slot.active_job_id)
        if slot.active_job_id is None:
            effect = "already free"
        elif job is not None and job.status == Job.Status.RUNNING:
            effect = "job is running: it will be ended as failed, then the slot freed"
        else:
            effect = "slot names a job that is not running: the slot is freed"
        rows.append({"slot": slot.id, "active_job_id": slot.active_job_id, "active_models": ", ".join(slot.active_models or []),
                     "effect": effect})
    return {"columns": ["slot", "active_job_id", "active_models", "effect"], "rows": rows, "empty": "No slot selected."}
