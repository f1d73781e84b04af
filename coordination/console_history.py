"""The queue console's history at a glance: per model over the last 24 hours, the jobs that finished
each hour (failures apart) and how long jobs waited to start (p50 and p95, each hour and over the
day), drawn on the server as small SVG charts, as the timeline is.

One query however many jobs ran, aggregated in PostgreSQL: a job counts once under each model it used
(a workflow under each of its models), hours are clock hours (date_trunc), and a wait is
selectors.time_in_line(), the measure /metrics' jobqueue_job_queue_seconds uses too."""

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from coordination.durations import span
from coordination.models import CatalogModel, Job
from coordination.selectors import time_in_line

HOURS = 24  # bars per chart: this clock hour and the 23 before it
BAR_PITCH = 10  # viewBox units per hour: one hour is a target 10 px wide
BAR_WIDTH = 8
CHART_HEIGHT = 32
SMALLEST_BAR = 2  # a lone failure beside a busy hour's completions still shows
ENDED_OTHERWISE = (Job.Status.CANCELLED, Job.Status.EXPIRED)

# The jobs of the window, one row per (job, model it used), grouped three ways at once: by the hour
# each ended (counts), by the hour each started (waits), and over the whole window (both).
HISTORY_SQL = """
SELECT model, GROUPING(ended_hour, started_hour), ended_hour, started_hour,
       COUNT(*) FILTER (WHERE ended_hour IS NOT NULL AND status = %s),
       COUNT(*) FILTER (WHERE ended_hour IS NOT NULL AND status = %s),
       COUNT(*) FILTER (WHERE ended_hour IS NOT NULL AND status = ANY(%s)),
       COUNT(*) FILTER (WHERE started_hour IS NOT NULL),
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM waited))
           FILTER (WHERE started_hour IS NOT NULL)
FROM (
    SELECT used.model, job.status, job.waited,
           CASE WHEN job.completed_at >= %s THEN date_trunc('hour', job.completed_at) END AS ended_hour,
           CASE WHEN job.started_at >= %s THEN date_trunc('hour', job.started_at) END AS started_hour
    FROM ({jobs}) job CROSS JOIN LATERAL jsonb_array_elements_text(job.required_models) AS used(model)
    WHERE used.model = ANY(%s)
) per_model
GROUP BY GROUPING SETS ((model, ended_hour), (model, started_hour), (model))
"""
BY_ENDED_HOUR, BY_STARTED_HOUR, WHOLE_WINDOW = 1, 2, 3  # what GROUPING(ended_hour, started_hour) says


@dataclass(frozen=True)
class Segment:
    x: int
    y: float
    height: float
    css: str  # the timeline's classes, so a colour means the same in both
    width: int = BAR_WIDTH


@dataclass(frozen=True)
class HourBar:
    """One hour: a clear rect the whole hour wide and the chart high (so the hour can be pointed at,
    bar or no bar), named by its title, with the bars standing in it."""

    x: int
    title: str  # the hour and its numbers: the tooltip and the accessible name
    segments: tuple[Segment, ...]
    width: int = BAR_PITCH
    height: int = CHART_HEIGHT


@dataclass(frozen=True)
class Counts:
    completed: int = 0
    failed: int = 0
    ended_otherwise: int = 0  # cancelled or expired

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.ended_otherwise


@dataclass(frozen=True)
class Waits:
    started: int = 0
    p50: float | None = None  # seconds
    p95: float | None = None


@dataclass(frozen=True)
class ModelHistory:
    model: str
    counts: Counts
    waits: Waits
    finished_bars: list[HourBar]
    wait_bars: list[HourBar]

    @property
    def p50(self) -> str:
        return "—" if self.waits.p50 is None else span(self.waits.p50)

    @property
    def p95(self) -> str:
        return "—" if self.waits.p95 is None else span(self.waits.p95)


def history_hours(now: datetime) -> list[datetime]:
    """The clock hours the charts show, oldest first: the one `now` is in and the 23 before it (in
    UTC, as date_trunc reads them: Django's connections run in UTC)."""
    this_hour = now.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)
    return [this_hour - timedelta(hours=HOURS - 1 - index) for index in range(HOURS)]


def _history_rows(models: list[str], since: datetime) -> list[tuple]:
    # The ORM says which jobs and what each waited (time_in_line); the per-model rows (a lateral
    # unnest of required_models) and the grouping sets it cannot say, hence the SELECT around it.
    jobs = (
        Job.objects.order_by().filter(Q(completed_at__gte=since) | Q(started_at__gte=since))
        .annotate(waited=time_in_line()).values_list("required_models", "status", "started_at", "completed_at", "waited")
    )
    sql, params = jobs.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(HISTORY_SQL.format(jobs=sql), [  # in the order the placeholders stand
            Job.Status.COMPLETED, Job.Status.FAILED, list(ENDED_OTHERWISE), since, since, *params, models,
        ])
        return cursor.fetchall()


def _height(value: float, peak: float) -> float:
    return 0.0 if not value else max(SMALLEST_BAR, value / peak * CHART_HEIGHT)


def _stack(x: int, parts: list[tuple[float, str]], peak: float) -> tuple[Segment, ...]:
    """Bars standing on the baseline, one on another, first part lowest."""
    segments, top = [], float(CHART_HEIGHT)
    for value, css in parts:
        height = _height(value, peak)
        if height:
            top -= height
            segments.append(Segment(x + (BAR_PITCH - BAR_WIDTH) // 2, round(top, 1), round(height, 1), css))
    return tuple(segments)


def _hour_label(hour: datetime, now: datetime) -> str:
    start = timezone.localtime(hour).strftime("%H:%M")
    end = hour + timedelta(hours=1)
    return f"{start}–{'now' if end > now else timezone.localtime(end).strftime('%H:%M')}"


def _finished_bars(hours: list[datetime], by_hour: dict, now: datetime) -> list[HourBar]:
    peak = max([counts.finished for counts in by_hour.values()] + [1])
    bars = []
    for index, hour in enumerate(hours):
        counts = by_hour.get(hour, Counts())
        x = index * BAR_PITCH
        if counts.finished:
            said = f"{counts.completed} completed, {counts.failed} failed"
            if counts.ended_otherwise:
                said += f", {counts.ended_otherwise} cancelled or expired"
        else:
            said = "none finished"
        parts = [(counts.completed, "running completed"), (counts.failed, "running failed"),
                 (counts.ended_otherwise, "running cancelled")]
        bars.append(HourBar(x, f"{_hour_label(hour, now)}: {said}", _stack(x, parts, peak)))
    return bars


def _wait_bars(hours: list[datetime], by_hour: dict, now: datetime) -> list[HourBar]:
    """Each hour's p95 wait, its p50 drawn over it (the two yellows overlap darker), to the row's
    longest p95."""
    peak = max([waits.p95 or 0 for waits in by_hour.values()]) if by_hour else 0
    bars = []
    for index, hour in enumerate(hours):
        waits = by_hour.get(hour, Waits())
        x = index * BAR_PITCH
        if not waits.started:
            bars.append(HourBar(x, f"{_hour_label(hour, now)}: none started", ()))
            continue
        segments = tuple(
            # A job that started at once still gets a sliver: the hour had starts.
            Segment(x + (BAR_PITCH - BAR_WIDTH) // 2, round(CHART_HEIGHT - height, 1), round(height, 1), "waiting")
            for height in (max(1.0, _height(seconds, peak or 1)) for seconds in (waits.p95, waits.p50))
        )
        said = f"{waits.started} started, waited p50 {span(waits.p50)}, p95 {span(waits.p95)}"
        bars.append(HourBar(x, f"{_hour_label(hour, now)}: {said}", segments))
    return bars


def model_history(catalog: list[CatalogModel], now: datetime) -> dict:
    """Per catalog model (every one, a model no job used drawn empty): what finished each of the last
    24 clock hours and how long the jobs that started then had waited; and the charts' size. One query."""
    hours = history_hours(now)
    finished: dict[str, dict] = {}
    waited: dict[str, dict] = {}
    totals: dict[str, tuple[Counts, Waits]] = {}
    for model, grouping, ended, started, completed, failed, otherwise, starts, percentiles in _history_rows(
        [model.name for model in catalog], hours[0]
    ):
        counts = Counts(completed, failed, otherwise)
        waits = Waits(starts, *(percentiles or (None, None)))
        if grouping == BY_ENDED_HOUR and ended is not None:
            finished.setdefault(model, {})[ended] = counts
        elif grouping == BY_STARTED_HOUR and started is not None:
            waited.setdefault(model, {})[started] = waits
        elif grouping == WHOLE_WINDOW:
            totals[model] = (counts, waits)
    rows = [
        ModelHistory(
            model.name, *totals.get(model.name, (Counts(), Waits())),
            _finished_bars(hours, finished.get(model.name, {}), now), _wait_bars(hours, waited.get(model.name, {}), now),
        )
        for model in catalog
    ]
    return {"models": rows, "width": HOURS * BAR_PITCH, "height": CHART_HEIGHT}
