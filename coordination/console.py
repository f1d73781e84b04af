"""Reads for the operators' queue console (admin → Queue console): slots, lines, events, metrics and
a timeline of the last 10 minutes, hour or day (zoomed to recent activity); capacity (groups, what is
free and why it is not used) in console_capacity.py; each model's last 24 hours in console_history.py.
A render makes the same few queries however many jobs wait or ran (tests/coordination/test_queue_console.py
holds it to 25)."""

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from coordination.console_capacity import QueueNow, console_capacity
from coordination.console_failed import console_failed
from coordination.console_history import model_history
from coordination.durations import span
from coordination.estimates import estimated_starts
from coordination.models import CatalogModel, Job, JobLine, JobQueueLog, JobQueueState, ProviderRun
from coordination.queue.fair import fair_order
from coordination.queue.lines import LINE_ORDER
from coordination.selectors import job_queue_positions

LINE_SHOWN = 10  # jobs shown per model line
EVENTS_SHOWN = 10  # the latest; older ones a page at a time (console_events)
TIMELINE_JOBS = 500  # the most recent jobs drawn; the page says when there were more


@dataclass(frozen=True)
class TimelineRange:
    key: str  # the `range` query parameter
    label: str  # on the link that chooses it
    heading: str  # "The last ..."
    window: timedelta
    # The narrowest it zooms to where all its activity is recent (timeline_start); None: never zooms.
    narrowest: timedelta | None


RANGES = {
    r.key: r
    for r in (
        TimelineRange("10m", "10 min", "10 minutes", timedelta(minutes=10), None),
        TimelineRange("1h", "1 h", "hour", timedelta(hours=1), timedelta(minutes=5)),
        TimelineRange("24h", "24 h", "24 hours", timedelta(hours=24), timedelta(hours=1)),
    )
}
DEFAULT_RANGE = "1h"
ZOOM_MARGIN = 0.05  # of the zoomed picture's width, left clear before its first bar
# Labelled ticks at every multiple of the first of these (clock time) that leaves at most MAX_TICKS.
TICK_STEPS = [timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30)] + [timedelta(hours=h) for h in (1, 2, 3, 6)]
MAX_TICKS = 8


def timeline_range(value: str | None) -> TimelineRange:
    """The range a `?range=` asks for; anything else (missing, mistyped) is the default."""
    return RANGES.get(value or "", RANGES[DEFAULT_RANGE])


def console_mode() -> dict:
    slots = settings.COORDINATOR_MAX_ACTIVE_JOBS
    return {"slots": slots, "serialized": slots == 1}


def console_slots(now: datetime) -> list[dict]:
    slots = list(JobQueueState.objects.filter(id__lte=settings.COORDINATOR_MAX_ACTIVE_JOBS).order_by("id"))
    # Jobs waiting at their provider (no worker process holds them): what the provider last said.
    at_provider = {
        run.job_id: run
        for run in ProviderRun.objects.filter(
            state=ProviderRun.State.IN_FLIGHT, job_id__in=[slot.active_job_id for slot in slots if slot.active_job_id],
            job__attempt=F("attempt"),
        ).only("job_id", "provider_job_id", "provider_status", "progress", "watcher")
    }
    return [
        {
            "id": slot.id,
            "job_id": slot.active_job_id,
            "kind": slot.active_job_type,
            "models": ", ".join(slot.active_models or []),
            "running_for": int((now - slot.started_at).total_seconds()) if slot.started_at else None,
            "at_provider": at_provider.get(slot.active_job_id),
        }
        for slot in slots
    ]


def console_lines(catalog: list[CatalogModel], now: datetime, in_use: Counter) -> list[dict]:
    """Each model's first LINE_SHOWN waiting jobs in the order the line takes them (a fair line in its
    owners' turns), each with its owner, why it waits, its place in line and its expected start: the
    numbers GET /jobs/{id} answers (selectors.job_queue_positions, estimates.estimated_starts). Its
    heading: policy, line limit, and how many running jobs use the model (`in_use`, by model)."""
    fair = {
        model.name for model in catalog
        if model.line_policy == CatalogModel.LinePolicy.FAIR and settings.COORDINATOR_MAX_ACTIVE_JOBS > 1
    }
    # Every first-come line's head in one query: the rows numbered within their model's line.
    place = Window(RowNumber(), partition_by=F("model"), order_by=list(LINE_ORDER))
    rows = list(
        JobLine.objects.filter(model__in=[model.name for model in catalog if model.name not in fair])
        .annotate(place=place).filter(place__lte=LINE_SHOWN).select_related("job", "job__owner").order_by("model", "place")
    )
    for model in sorted(fair):
        rows.extend(fair_order(model, LINE_SHOWN))  # in the turns the owners take
    waiting = dict(JobLine.objects.values("model").annotate(n=Count("id")).values_list("model", "n"))
    jobs = list({row.job_id: row.job for row in rows}.values())
    places = job_queue_positions([job.job_id for job in jobs])
    etas = estimated_starts(jobs, now=now)
    by_model: dict[str, list] = {}
    for row in rows:
        job = row.job
        by_model.setdefault(row.model, []).append({
            "position": places.get(job.job_id), "job_id": job.job_id, "kind": job.kind, "priority": job.priority,
            "owner": job.owner.get_username() if job.owner else "", "reason": job.conflict_reason or "",
            "blocked_by": job.blocked_by_job_id, "held": job.held, "eta": etas.get(job.job_id),
            "models": job.required_models,
        })
    return [
        {"model": model.name, "capacity": model.capacity, "enabled": model.enabled, "paused": model.paused,
         "fair": model.name in fair, "waiting": waiting.get(model.name, 0), "jobs": by_model.get(model.name, []),
         "policy": model.line_policy, "limit": model.max_waiting, "running": in_use[model.name]}
        for model in catalog
    ]


def console_metrics(now: datetime) -> dict:
    """The guide's "Monitor Key Metrics", plus throughput: one pass over jobs, one count of blocks."""
    hour_ago = now - timedelta(hours=1)
    waited = ExpressionWrapper(F("started_at") - F("queued_at"), output_field=DurationField())
    jobs = Job.objects.aggregate(
        average=Avg(waited, filter=Q(queued_at__isnull=False, started_at__isnull=False)),
        completed_last_hour=Count("pk", filter=Q(status=Job.Status.COMPLETED, completed_at__gt=hour_ago)),
        waiting=Count("pk", filter=Q(status=Job.Status.PENDING)),
        running=Count("pk", filter=Q(status=Job.Status.RUNNING)),
    )
    average = jobs.pop("average")
    return {
        **jobs,
        "blocked_last_hour": JobQueueLog.objects.filter(event_type="blocked", created_at__gt=hour_ago).count(),
        "avg_queue_seconds": round(average.total_seconds(), 1) if average else None,
    }


@dataclass
class Bar:
    x: float
    width: float
    y: int
    height: int
    state: str  # "waiting" or "running"
    outcome: str  # the job's status: a run that failed or was cancelled is drawn apart
    job_id: str
    title: str


def _clock(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%H:%M:%S")


def _bar_title(job: Job, model: str, state: str, since: datetime, until: datetime | None, now: datetime) -> str:
    """The tooltip: which job, on which model, from when to when, and how it ended."""
    end = _clock(until) if until else "now"
    length = span(((until or now) - since).total_seconds())
    if state == "running":
        outcome = "still running" if job.status == Job.Status.RUNNING else job.status
        return f"{job.kind} job {job.job_id} on {model}: ran {_clock(since)} → {end} ({length}), {outcome}"
    if job.status == Job.Status.PENDING:
        outcome = "still waiting"
    elif job.started_at:
        outcome = "then started"
    else:
        outcome = f"{job.status} while waiting"
    return f"{job.kind} job {job.job_id} on {model}: waited {_clock(since)} → {end} ({length}), {outcome}"


def timeline_start(chosen: TimelineRange, now: datetime, first_activity: datetime | None) -> datetime:
    """Where the picture starts: at the range's start, or, in a range that zooms, when all its activity
    is recent (in the later half of it), shortly before that activity, so that its bars are wide enough
    to point at; never narrower than the range's `narrowest`."""
    start = now - chosen.window
    if chosen.narrowest is None or first_activity is None or now - first_activity > chosen.window / 2:
        return start
    return max(start, now - max((now - first_activity) / (1 - ZOOM_MARGIN), chosen.narrowest))


def tick_step(shown: timedelta) -> timedelta:
    return next((step for step in TICK_STEPS if shown / step <= MAX_TICKS), TICK_STEPS[-1])


def console_timeline(catalog: list[CatalogModel], now: datetime, chosen: TimelineRange, *, width: int = 800,
                     lane_height: int = 30, label_width: int = 190) -> dict:
    """One lane per model; for each job of the range one bar while it waited and one while it ran.

    Drawn in viewBox units: the page scales the whole picture to its width (at a laptop's, a lane is
    still ~28 px high, a run's bar ~13 px: each can be pointed at)."""
    range_start = now - chosen.window
    models = [model.name for model in catalog]
    lane = {model: index for index, model in enumerate(models)}
    # The waiting, the running and those that ended in the range, as one UNION ALL (they are apart): each
    # part reads its own index (the line's, the running jobs', jobs_completed_idx), never the whole
    # table, however long the history.
    shown = ("job_id", "kind", "status", "required_models", "created_at", "queued_at", "started_at", "completed_at")
    waiting, running, ended = (Job.objects.filter(part).only(*shown) for part in (
        Q(status=Job.Status.PENDING), Q(status=Job.Status.RUNNING), Q(completed_at__gt=range_start)))
    jobs = list(waiting.union(running, ended, all=True).order_by("-created_at")[:TIMELINE_JOBS + 1])
    more = len(jobs) > TIMELINE_JOBS

    # (since, until, job, model, state) of every bar the range holds, then the picture's start.
    spans = []
    for job in jobs[:TIMELINE_JOBS]:
        for model in job.required_models:
            if model not in lane:
                continue
            if job.queued_at:
                until = job.started_at or job.completed_at
                if (until or now) > range_start:
                    spans.append((job.queued_at, until, job, model, "waiting"))
            if job.started_at and (job.completed_at or now) > range_start:
                spans.append((job.started_at, job.completed_at, job, model, "running"))
    first_activity = max(range_start, min(since for since, *_ in spans)) if spans else None
    start = timeline_start(chosen, now, first_activity)
    shown = now - start
    scale = width / shown.total_seconds()

    def x_of(moment: datetime) -> float:
        return max(0.0, (moment - start).total_seconds() * scale)

    # A run's bar in the lane's upper half, a wait's below it.
    placement = {"running": (3, 14), "waiting": (19, 9)}
    bars: list[Bar] = []
    for since, until, job, model, state in spans:
        x = x_of(since)
        offset, height = placement[state]
        bars.append(Bar(x, max(2.0, x_of(until or now) - x), lane[model] * lane_height + offset, height, state,
                        job.status, str(job.job_id), _bar_title(job, model, state, since, until, now)))
    step = tick_step(shown).total_seconds()
    first_tick = (int(start.timestamp() // step) + 1) * step
    ticks = [
        {"x": x_of(datetime.fromtimestamp(moment, tz=start.tzinfo)),
         "label": timezone.localtime(datetime.fromtimestamp(moment, tz=start.tzinfo)).strftime("%H:%M")}
        for moment in _frange(first_tick, now.timestamp(), step)
        if (now.timestamp() - moment) * scale > 40  # leave room for "now"
    ]
    return {
        "range": chosen,
        "ranges": list(RANGES.values()),
        "start": start,
        "zoomed": start > range_start,
        "width": width,
        "label_width": label_width,
        "view_width": label_width + width + 20,
        "view_height": max(1, len(models)) * lane_height + 24,
        "height": max(1, len(models)) * lane_height,
        "lane_height": lane_height,
        "lanes": [{"model": model, "y": index * lane_height, "label_y": index * lane_height + lane_height // 2 + 4}
                  for index, model in enumerate(models)],
        "bars": bars,
        "more": more,
        "ticks": [*ticks, {"x": width, "label": "now"}],
    }


def _frange(first: float, last: float, step: float):
    moment = first
    while moment <= last:
        yield moment
        moment += step


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
    if details.get("new_job"):  # resubmitted: the retry it made
        parts.append(f"retried as {str(details['new_job'])[:8]}")
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


def console_events(*, before: str | None = None) -> dict:
    """The latest EVENTS_SHOWN audit events, or, with `before` (`?events_before=`, an audit row's id),
    the EVENTS_SHOWN before that row: a page further back that stays put while new events arrive (an
    offset would slide under the reader). `older` is the id to ask for the page after, if any."""
    rows = JobQueueLog.objects.order_by("-id")
    cursor = int(before) if before and before.isdigit() else None
    if cursor is not None:
        rows = rows.filter(id__lt=cursor)
    rows = list(rows[:EVENTS_SHOWN + 1])  # one more than shown says whether there are older ones
    shown = rows[:EVENTS_SHOWN]
    return {
        "rows": [
            {"created_at": row.created_at, "event_type": row.event_type, "job_id": row.job_id, "job_type": row.job_type,
             "reason": row.conflict_reason or "", "note": event_note(row.details or {})}
            for row in shown
        ],
        "older": shown[-1].id if len(rows) > EVENTS_SHOWN else None,
        "paged": cursor is not None,
    }


def console_context(*, range_key: str | None = None, events_before: str | None = None) -> dict:
    """Everything the console shows, read from one snapshot of the database: its sections never
    contradict one another (a job both waiting in a line and holding a group's room), however the
    queue moves while they are read."""
    with one_snapshot():
        now = timezone.now()
        catalog = list(CatalogModel.objects.order_by("name"))
        slots = console_slots(now)
        queue = QueueNow(catalog, slots)
        lines = console_lines(catalog, now, queue.models_in_use())
        return {
            "now": now,
            "mode": console_mode(),
            "slots": slots,
            "lines": lines,
            "capacity": console_capacity(queue, lines, slots),
            "events": console_events(before=events_before),
            "metrics": console_metrics(now),
            "timeline": console_timeline(catalog, now, timeline_range(range_key)),
            "history": model_history(catalog, now),
            "failed": console_failed(now),
            "refresh_seconds": 5,
        }


@contextmanager
def one_snapshot():
    """The reads inside see the database as of one instant: a read-only REPEATABLE READ transaction.
    Inside a caller's transaction (a test's) they are that transaction's reads already."""
    if connection.in_atomic_block:
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield
