"""Housekeeping: pruning the audit log and the django-q2 schedules that run it."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_q.models import Schedule as QSchedule

from coordination.models import IdempotencyKey, JobEvent, JobQueueLog, JobQueueState
from coordination.queue import LockedQueue

PRUNE_BATCH = 5000
SCHEDULES = [
    {
        "name": "prune_queue_log",
        "func": "coordination.tasks.prune_queue_log",
        "kwargs": "days=7",
        "schedule_type": "D",
    },
    {
        # django-q2's scheduler fires about once a minute at most; workers also run a reaper pass
        # between jobs every COORDINATOR_REAPER_SECONDS (coordination.recovery.reaper_pass_if_due).
        "name": "reaper",
        "func": "coordination.tasks.reaper_schedule",
        "kwargs": "",
        "schedule_type": "I",
        "minutes": 1,
    },
]


def queue_log_prune(*, days: int, dry_run: bool = False, batch_size: int = PRUNE_BATCH) -> int:
    """Delete audit rows older than `days`, in batches so no single statement holds locks for long."""
    cutoff = timezone.now() - timedelta(days=days)
    old = JobQueueLog.objects.filter(created_at__lt=cutoff)
    if dry_run:
        return old.count()
    deleted = 0
    while True:
        ids = list(old.order_by("id").values_list("id", flat=True)[:batch_size])
        if not ids:
            return deleted
        deleted += JobQueueLog.objects.filter(id__in=ids).delete()[0]


def job_events_prune(*, hours: int = 24, batch_size: int = PRUNE_BATCH) -> int:
    """Live events older than a day: a stream that reconnects later gets its job as it is now.

    Ids follow time (one job's strictly, others' within a transaction's length), so the oldest rows
    are walked in key order, a batch at a time, until one holds nothing old enough."""
    cutoff = timezone.now() - timedelta(hours=hours)
    deleted = 0
    while True:
        rows = list(JobEvent.objects.order_by("id").values_list("id", "created_at")[:batch_size])
        old = [event_id for event_id, created_at in rows if created_at < cutoff]
        if old:
            deleted += JobEvent.objects.filter(id__in=old).delete()[0]
        if len(old) < batch_size:
            return deleted


def idempotency_keys_prune() -> int:
    """Keys older than 24 hours no longer protect anything; the daily prune removes them."""
    cutoff = timezone.now() - timedelta(hours=24)
    return IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()[0]


def schedules_ensure(Schedule=None) -> None:
    """Create or update the daily schedules by name; safe to run any number of times (a migration
    passes its historical Schedule)."""
    Schedule = Schedule or QSchedule
    for spec in SCHEDULES:
        defaults = {key: value for key, value in spec.items() if key != "name"}
        matches = Schedule.objects.filter(name=spec["name"]).order_by("id")
        first = matches.first()
        if first is None:
            Schedule.objects.create(name=spec["name"], **defaults)
        else:
            matches.exclude(pk=first.pk).delete()
            for key, value in defaults.items():
                setattr(first, key, value)
            first.save()


def slots_sync() -> dict:
    """Bring the slot rows in step with COORDINATOR_MAX_ACTIVE_JOBS (run at start-up).

    Missing rows 1..N are created; rows beyond N are removed once free (one still running a job
    keeps it until the job ends, and takes no new job). The waiting-jobs counter is recounted.
    """
    with transaction.atomic(), LockedQueue() as queue:
        surplus = JobQueueState.objects.filter(id__gt=settings.COORDINATOR_MAX_ACTIVE_JOBS)
        removed = surplus.filter(active_job_id__isnull=True).delete()[0]
        pending = queue.recount_pending()
        # Waiting jobs may fit in the new slots at once.
        started = queue.dispatch() if pending else []
    return {
        "slots": settings.COORDINATOR_MAX_ACTIVE_JOBS,
        "removed": removed,
        "busy_beyond": surplus.count(),
        "pending": pending,
        "started": len(started),
    }
