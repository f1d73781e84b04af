"""Reads for the operators' queue console (admin → Queue console): slots, lines, events, metrics and
the last hour as a timeline, all bounded queries."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Avg, DurationField, ExpressionWrapper, F, Q
from django.utils import timezone

from coordination.estimates import estimated_start
from coordination.models import CatalogModel, Job, JobLine, JobQueueLog, JobQueueState
from coordination.queue.lines import model_line

LINE_SHOWN = 10  # jobs shown per model line
EVENTS_SHOWN = 20
TIMELINE_WINDOW = timedelta(hours=1)
TIMELINE_JOBS = 500


def console_slots(now: datetime) -> list[dict]:
    slots = list(JobQueueState.objects.filter(id__lte=settings.COORDINATOR_MAX_ACTIVE_JOBS).order_by("id"))
    return [
        {
            "id": slot.id,
            "job_id": slot.active_job_id,
            "kind": slot.active_job_type,
            "models": ", ".join(slot.active_models or []),
            "running_for": int((now - slot.started_at).total_seconds()) if slot.started_at else None,
        }
        for slot in slots
    ]


def console_lines() -> list[dict]:
    lines = []
    for model in CatalogModel.objects.order_by("name"):
        rows = list(model_line(model.name).select_related("job")[:LINE_SHOWN])
        waiting = JobLine.objects.filter(model=model.name).count()
        lines.append({
            "model": model.name,
            "capacity": model.capacity,
            "enabled": model.enabled,
            "paused": model.paused,
            "waiting": waiting,
            "jobs": [
                {"position": position, "job_id": row.job_id, "kind": row.job.kind, "priority": row.priority,
                 "eta": estimated_start(row.job)}
                for position, row in enumerate(rows, start=1)
            ],
        })
    return lines


def console_metrics(now: datetime) -> dict:
    """The guide's "Monitor Key Metrics", plus throughput."""
    hour_ago = now - timedelta(hours=1)
    waited = ExpressionWrapper(F("started_at") - F("queued_at"), output_field=DurationField())
    average = Job.objects.filter(queued_at__isnull=False, started_at__isnull=False).aggregate(value=Avg(waited))["value"]
    return {
        "blocked_last_hour": JobQueueLog.objects.filter(event_type="blocked", created_at__gt=hour_ago).count(),
        "avg_queue_seconds": round(average.total_seconds(), 1) if average else None,
        "completed_last_hour": Job.objects.filter(status=Job.Status.COMPLETED, completed_at__gt=hour_ago).count(),
        "waiting": Job.objects.filter(status=Job.Status.PENDING).count(),
        "running": Job.objects.filter(status=Job.Status.RUNNING).count(),
    }


@dataclass
class Bar:
    x: float
    width: float
    y: int
    state: str  # "waiting" or "running"
    outcome: str  # the job's status: a run that failed or was cancelled is drawn apart
    job_id: str
    title: str


def console_timeline(now: datetime, *, width: int = 900, lane_height: int = 26) -> dict:
    """One lane per model; for each job of the last hour one bar while it waited and one while it ran."""
    start = now - TIMELINE_WINDOW
    models = list(CatalogModel.objects.order_by("name").values_list("name", flat=True))
    lane = {model: index for index, model in enumerate(models)}
    jobs = Job.objects.filter(
        Q(status__in=[Job.Status.PENDING, Job.Status.RUNNING]) | Q(completed_at__gt=start)
    ).order_by("-created_at")[:TIMELINE_JOBS]
    scale = width / TIMELINE_WINDOW.total_seconds()

    def x_of(moment: datetime) -> float:
        return max(0.0, (moment - start).total_seconds() * scale)

    bars: list[Bar] = []
    for job in jobs:
        for model in job.required_models:
            if model not in lane:
                continue
            y = lane[model] * lane_height
            waited_from = job.queued_at
            if waited_from:
                until = job.started_at or job.completed_at or now
                if until > start:
                    bars.append(Bar(x_of(waited_from), max(1.0, x_of(until) - x_of(waited_from)), y + 14, "waiting",
                                    job.status, str(job.job_id), f"{job.job_id} waited for {model}"))
            if job.started_at:
                until = job.completed_at or now
                if until > start:
                    bars.append(Bar(x_of(job.started_at), max(1.0, x_of(until) - x_of(job.started_at)), y + 2,
                                    "running", job.status, str(job.job_id), f"{job.job_id} ran on {model} ({job.status})"))
    return {
        "width": width,
        "height": max(1, len(models)) * lane_height,
        "lane_height": lane_height,
        "lanes": [{"model": model, "y": index * lane_height} for index, model in enumerate(models)],
        "bars": bars,
        "ticks": [{"x": minute * width / 60, "label": f"-{60 - minute} min" if minute < 60 else "now"}
                  for minute in range(0, 61, 10)],
    }


def event_note(details: dict) -> str:
    """The parts of an audit row's details an operator scans for: who, on what, what went wrong."""
    parts = []
    if details.get("actor") or details.get("by"):
        parts.append(f"by {details.get('actor') or details.get('by')}")
    if details.get("model"):
        parts.append(f"model {details['model']}")
    if "from" in details and "to" in details:
        parts.append(f"priority {details['from']} → {details['to']}")
    if details.get("slot"):
        parts.append(f"slot {details['slot']}")
    if details.get("problem"):
        parts.append(details["problem"])
    for key in ("error", "reason"):
        if details.get(key):
            parts.append(str(details[key]))
    if isinstance(details.get("repaired"), int):
        parts.append(f"repaired {details['repaired']}")
    if isinstance(details.get("started"), list) and details["started"]:
        parts.append(f"started {len(details['started'])}")
    return " · ".join(parts)


def console_events() -> list[dict]:
    return [
        {"created_at": row.created_at, "event_type": row.event_type, "job_id": row.job_id, "job_type": row.job_type,
         "reason": row.conflict_reason or "", "note": event_note(row.details or {})}
        for row in JobQueueLog.objects.order_by("-id")[:EVENTS_SHOWN]
    ]


def console_context() -> dict:
    now = timezone.now()
    return {
        "now": now,
        "slots": console_slots(now),
        "lines": console_lines(),
        "events": console_events(),
        "metrics": console_metrics(now),
        "timeline": console_timeline(now),
        "refresh_seconds": 5,
    }
