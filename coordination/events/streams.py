"""Server-Sent Events streams and answers that wait, as asynchronous code: an open stream or a waiting
answer is a coroutine and a Subscription (hub.py), holding no thread and no database connection
while it waits. What each starts from is read once, on the request's threads (under ASGI the
process's shared pool: jobqueue_site/asgi.py).
"""

import asyncio
import re
import threading
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings

from coordination.events import feed
from coordination.events.hub import Item, Subscription, encode, hub, item_of
from coordination.models import Job, JobEvent, JobFile
from coordination.selectors import jobs_shown

KEEPALIVE = b": keepalive\n\n"  # every COORDINATOR_EVENTS_KEEPALIVE seconds of quiet
REPLAY_LIMIT = 1000  # /queue/events: events resent after a reconnect, at most
_LAST_EVENT_ID = re.compile(r"^(\d+)(?::(\d+))?$")


@dataclass(frozen=True)
class Resume:
    """A Last-Event-ID we sent: the last event the client has, and its place in line then."""

    event_id: int
    position: int | None

    @classmethod
    def parse(cls, header: str | None) -> "Resume | None":
        match = _LAST_EVENT_ID.match((header or "").strip())
        if not match:
            return None
        return cls(int(match[1]), int(match[2]) if match[2] else None)


class _Opening:
    """A subscription being opened on a thread for a coroutine that may be gone by the time it is
    (the client left, so its task was cancelled while it waited for the thread): whichever of the two
    comes second drops it, so that none is left behind."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subscription: Subscription | None = None
        self._abandoned = False

    def subscribe(self, job_id=None, *, render: bool = True) -> Subscription:
        """Subscribe before reading what the subscriber starts from (hub.subscribe says why)."""
        subscription = hub.subscribe(job_id, render=render)
        with self._lock:
            if not self._abandoned:
                self._subscription = subscription
                return subscription
        hub.unsubscribe(subscription)
        raise asyncio.CancelledError("the request was gone before its stream opened")

    def close(self) -> None:
        with self._lock:
            self._abandoned = True
            subscription, self._subscription = self._subscription, None
        if subscription is not None:
            hub.unsubscribe(subscription)


async def _opened(open_stream, *args):
    """`open_stream(opening, *args)` on the request's threads: (subscription, first items), and the
    opening to close once done with them."""
    opening = _Opening()
    try:
        return opening, *await sync_to_async(open_stream)(opening, *args)
    except BaseException:
        opening.close()
        raise


async def _stream(open_stream, *args, end_with_job: bool):
    """A stream's frames; its subscription goes when the stream does (its end, or the client gone)."""
    opening, subscription, first = await _opened(open_stream, *args)
    try:
        async for frame in _frames(subscription, first, end_with_job=end_with_job):
            yield frame
    finally:
        opening.close()


async def _frames(subscription: Subscription, first: list[Item], *, end_with_job: bool):
    subscription.attach()
    for item in first:
        yield item.frame()
        if end_with_job and item.ends_stream:
            return
    while True:
        items = await subscription.get(settings.COORDINATOR_EVENTS_KEEPALIVE)
        if items is None:
            yield KEEPALIVE
            continue
        for item in items:
            yield item.frame()
            if end_with_job and item.ends_stream:
                return


# --- one job: GET /jobs/{id}/events ------------------------------------------------------------------


def job_stream_open(opening: _Opening, job_id, resume: Resume | None) -> tuple[Subscription, list[Item]]:
    """Subscribe, then read what the client starts from: the job now (a new stream), or the events
    it missed (a reconnect). Runs in a thread."""
    subscription = opening.subscribe(job_id)
    rows = list(JobEvent.objects.filter(job_id=job_id).order_by("id"))
    job = Job.objects.select_related("workflow_execution").get(pk=job_id)
    place = feed.positions([job_id]).get(job_id) if job.status == Job.Status.PENDING else None
    newest = str(rows[-1].id) if rows else "0"
    missed = [row for row in rows if resume is not None and row.id > resume.event_id]
    if resume is None or not missed and job.is_finished:
        # A new stream; or a reconnect to a job that ended, whose events are gone (pruned after a day).
        fields = feed.current(job, place)
        copying = job.is_finished and JobFile.objects.filter(job_id=job_id, state=JobFile.State.COPYING).exists()
        first = [Item(f"{newest}:{place}" if place is not None else newest, "job.state", encode(fields),
                      job.is_finished, fields, job.is_finished and not copying)]
    else:
        first = [item_of(row, job, place) for row in missed]
        if not missed and place is not None and place != resume.position:
            fields = feed.current(job, place)
            first.append(Item(f"{newest}:{place}", "job.queue_position", encode(fields), False, fields))
    if not first:
        subscription.last_id, subscription.position = newest, resume.position
        subscription.last_fields = feed.current(job, place)
    subscription.begin(first, {row.id for row in rows})
    return subscription, first


def job_has_ended_for(resume: Resume | None, job: Job) -> bool:
    """A reconnect to a job that ended (its files kept), after its last event: nothing more will come (answered 204,
    which tells a browser's EventSource to stop reconnecting). A job with no events left (pruned, or
    older than them) sent its state as `0`."""
    if resume is None or not job.is_finished:
        return False
    if JobFile.objects.filter(job_id=job.job_id, state=JobFile.State.COPYING).exists():
        return False  # its job.files event is still to come
    newest = JobEvent.objects.filter(job_id=job.job_id).order_by("-id").values_list("id", flat=True).first()
    return resume.event_id >= newest if newest is not None else resume.event_id == 0


def job_stream(job_id, resume: Resume | None):
    """The frames of one job's stream: what it starts from, then every change; it ends after the
    job's terminal event. A comment line now and then keeps proxies from closing it."""
    return _stream(job_stream_open, job_id, resume, end_with_job=True)


# --- every job: GET /queue/events (staff) ------------------------------------------------------------


def queue_stream_open(opening: _Opening, resume: Resume | None, status) -> tuple[Subscription, list[Item]]:
    """Subscribe to every job's events, then read the queue's status (a new stream) or the events
    missed (a reconnect: at most REPLAY_LIMIT, else the status again). `status()`: /queue/status."""
    subscription = opening.subscribe(None)
    newest = feed.latest_id()
    missed = feed.rows_after(resume.event_id, limit=REPLAY_LIMIT + 1) if resume is not None else None
    if missed is None or len(missed) > REPLAY_LIMIT:
        first, missed = [Item(str(newest), "queue.status", encode(status()), False)], []
    else:
        jobs = jobs_shown({row.job_id for row in missed})
        places = feed.positions([row.job_id for row in missed if row.state.get("status") == "pending"])
        first = [item_of(row, jobs[row.job_id], places.get(row.job_id)) for row in missed if row.job_id in jobs]
    subscription.begin(first, {row.id for row in missed})
    return subscription, first


def queue_stream(resume: Resume | None, status):
    return _stream(queue_stream_open, resume, status, end_with_job=False)


# --- answers that wait: Prefer: wait=N ---------------------------------------------------------------


def _waiter_open(opening: _Opening, job_id) -> tuple[Subscription, bool]:
    # Any ending the hub brings from now on counts: nothing is skipped as read.
    subscription = opening.subscribe(job_id, render=False)
    return subscription, Job.objects.filter(pk=job_id, status__in=Job.FINISHED).exists()


async def wait_until_ended(job_id, seconds: float) -> bool:
    """Wait until the job has ended or `seconds` passed; whether it ended."""
    opening, subscription, ended = await _opened(_waiter_open, job_id)
    try:
        if ended:
            return True
        subscription.attach()
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + seconds
        while (remaining := deadline - loop_time()) > 0:
            items = await subscription.get(remaining)
            if items and any(item.ends for item in items):
                return True
        return False
    finally:
        opening.close()
