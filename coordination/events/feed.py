"""Reading `job_events`, and a job shown as it was at one of them.

An event's `state` holds the job's changing fields as they were right after it (triggers.py); the
rest of a job (prompt, model, params, ...) never changes once accepted. So the job's JSON at an
event is today's JSON with those fields laid over it: a client that reconnects late is told what
happened in order (started, then completed), each time with the job as it was then.
"""

import threading
import time
from uuid import UUID

from django.db.models import Q
from django.utils.dateparse import parse_datetime

from coordination.api.serializers import AtProviderSerializer, JobSerializer
from coordination.events.triggers import STATE_COLUMNS, STEP_COLUMNS
from coordination.models import CatalogModel, Job, JobEvent
from coordination.selectors import job_queue_positions

# The events after which a job changes no more (the stream ends, a wait is over).
ENDS = frozenset(Job.FINISHED)


def ends_stream(event: str, state: dict) -> bool:
    """Whether a job's stream ends with this event: its end, unless the job completed with files still
    being kept (its job.files event then ends it)."""
    return event == "files" or event in ENDS and not state.get("files_copying")


# Events that may move other jobs' places in line: a job joined it, left it or moved in it.
LINE_CHANGES = frozenset({"submitted", "started", "requeued", "cancelled", "expired", "priority"})


_fair = {"until": 0.0, "any": False}


def fair_lines() -> bool:
    """Whether any line is fair (there an equal priority may go ahead): read at most every 30 s."""
    if time.monotonic() >= _fair["until"]:
        _fair.update(until=time.monotonic() + 30, any=CatalogModel.objects.filter(line_policy=CatalogModel.LinePolicy.FAIR).exists())
    return _fair["any"]


def latest_id() -> int:
    return JobEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def ids_between(low: int, high: int) -> set[int]:
    return set(JobEvent.objects.filter(id__gt=low, id__lte=high).values_list("id", flat=True))


def rows_after(after: int, *, also=(), job_id=None, limit: int | None = None) -> list[JobEvent]:
    """Events with an id above `after` (and those in `also`), oldest first."""
    condition = Q(id__gt=after) | Q(id__in=list(also)) if also else Q(id__gt=after)
    rows = JobEvent.objects.filter(condition)
    if job_id is not None:
        rows = rows.filter(job_id=job_id)
    rows = rows.order_by("id")
    return list(rows[:limit] if limit else rows)


def positions(job_ids) -> dict:
    """Live places in line of the waiting jobs among `job_ids` (one query)."""
    return job_queue_positions(list(job_ids)) if job_ids else {}


_rendering = threading.local()


def current(job: Job, position: int | None) -> dict:
    """The job's JSON now, as POST /jobs and GET /jobs answer it. One serializer per thread renders
    every job: DRF builds a serializer's fields when first used, which cost more than a job's rendering."""
    serializer = getattr(_rendering, "serializer", None)
    if serializer is None:
        serializer = _rendering.serializer = JobSerializer(context={})
    serializer.context["queue_positions"] = {job.job_id: position}
    return dict(serializer.to_representation(job))


_FIELDS = JobSerializer().fields


def as_of(job: Job, state: dict, position: int | None) -> dict:
    """The job's JSON as it was at an event with this `state`: its fields laid over today's job,
    formatted by the API's own serializer fields (the same times, ids and numbers as GET /jobs)."""
    data = current(job, position if state.get("status") == Job.Status.PENDING else None)
    for column in STATE_COLUMNS:
        value = _python(column, state.get(column))
        data[column] = None if value is None else _FIELDS[column].to_representation(value)
    if job.kind == Job.Kind.WORKFLOW:
        for column in STEP_COLUMNS:
            data[column] = state.get(column)
    if state.get("status") != Job.Status.COMPLETED:
        data["result"] = None  # a result exists from the completion on
    if isinstance(state.get("at_provider"), dict):  # a progress event: the job at its provider as it was then
        data["at_provider"] = dict(AtProviderSerializer(_at_provider(state["at_provider"])).data)
    return data


def _at_provider(said: dict) -> dict:
    return {**said, "since": parse_datetime(said["since"]) if said.get("since") else None}


def _python(column: str, value):
    if value is None:
        return None
    return Job._meta.get_field(column).to_python(value)


def as_uuid(value) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))
