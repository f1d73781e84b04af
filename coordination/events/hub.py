"""One listener per web process: it reads each new `job_events` row once and hands it to every
stream and waiting answer of this process that wants it.

A stream or a wait costs no thread and no database connection while it waits: it is a
Subscription, a small buffer that this process's one listener thread fills and that the event loop
drains. The thread wakes on PostgreSQL's NOTIFY (its own LISTEN connection: one per process, not
per client) and reads the new rows with one query, renders each job's JSON once for all who want
it, and every half second re-counts the places in line of the waiting jobs being watched (one
query). It starts with the first subscriber and stops a little after the last one left.

Ordering. Row ids come from a sequence, so a transaction may commit a smaller id after a larger one
was read: an id skipped over is looked for again for HOLE_SECONDS. One job's rows are written under
that job's row lock, so they are always committed in id order.
"""

import asyncio
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import psycopg
from django.db import DatabaseError, InterfaceError, connection
from rest_framework.utils.encoders import JSONEncoder

from coordination.events import feed
from coordination.events.triggers import CHANNEL
from coordination.selectors import jobs_shown

logger = logging.getLogger(__name__)

WAKE_SECONDS = 1.0  # read even without a notification this often (and notice a stop)
MIN_GAP_SECONDS = 0.01  # at most one read per this: a burst of commits is read as one
POSITIONS_SECONDS = 0.5  # places in line are counted again at most this often
# A change near the head of a long line moves every watched job behind it: their place-in-line events
# go out this many at a time, between reads, so that a job's own change is never stuck behind them.
MOVES_PER_SLICE = 100
SLICE_WAIT_SECONDS = 0.2  # at most this long for the last slice to be written
HOLE_SECONDS = 30.0
LINGER_SECONDS = 5.0  # the thread stays this long after the last subscriber left (reconnects)
RETRY_SECONDS = 2.0  # after a database error


@dataclass(frozen=True)
class Item:
    """One event for a subscriber: an SSE frame's id, name and data (the job's JSON, or None for a
    wait), and whether the job ended with it."""

    id: str
    event: str
    data: str | None
    ends: bool
    fields: dict | None = None  # `data` before encoding, for the next place-in-line event
    # Whether the job's stream ends with it: its end, or, while the files of a job that completed are
    # being kept (coordination/outputs), their job.files event that follows (None: as `ends`).
    last: bool | None = None

    @property
    def ends_stream(self) -> bool:
        return self.ends if self.last is None else self.last

    def frame(self) -> bytes:
        return f"id: {self.id}\nevent: {self.event}\ndata: {self.data}\n\n".encode()


def item_of(row, job, place: int | None) -> Item:
    """A job_events row as an event: the job as it was then (`job` None: only whether it ended)."""
    fields = feed.as_of(job, row.state, place) if job is not None else None
    return Item(str(row.id), f"job.{row.event}", encode(fields) if fields is not None else None, row.event in feed.ENDS,
                fields, feed.ends_stream(row.event, row.state))


def encode(data: dict) -> str:
    """JSON as the API writes it (DRF's encoder: times in ISO 8601, ids as text)."""
    return json.dumps(data, cls=JSONEncoder, separators=(",", ":"), ensure_ascii=False)


@dataclass(eq=False)
class Subscription:
    """What one stream or wait hears. Filled by the hub's thread, drained by the event loop."""

    job_id: object = None  # None: every job's events (staff's /queue/events)
    render: bool = True  # False: only whether the job ended (a wait)
    # A per-job stream: the event ids it has sent (or read with the job), the last job JSON it sent
    # and its place in line then (None unless waiting), so the hub can tell it when that changes.
    seen: set = field(default_factory=set)
    last_fields: dict | None = None
    last_id: str = "0"
    position: int | None = None
    _items: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _ready: asyncio.Event | None = None

    def sent(self, item: Item) -> None:
        """Remember `item` as the last the client has (first items, or one the hub put)."""
        self.last_id = item.id.split(":")[0]
        if item.fields is not None:
            self.last_fields = item.fields
            self.position = item.fields.get("queue_position") if item.fields.get("status") == "pending" else None

    def put(self, item: Item, row_id: int | None = None):
        """From the hub's thread: keep `item`, unless its row was seen already (read with what the
        subscriber started from; a per-job stream also remembers each row it is given). Returns what
        to wake (wake() below), or None if there is nothing to wake yet."""
        with self._lock:
            if row_id is not None:
                if row_id in self.seen:
                    return None
                if self.job_id is not None:  # every job's stream would remember rows without end
                    self.seen.add(row_id)
            self.sent(item)
            self._items.append(item)
            return (self._loop, self._ready) if self._loop is not None else None

    def begin(self, first: list[Item], read: set[int]) -> None:
        """What the subscriber starts from: `first` (its first items) and the ids of the rows it read
        with them. The hub may have put some of those rows already (they committed between subscribing
        and reading): dropped, as read; rows it put that are newer stay queued, after `first`."""
        with self._lock:
            self.seen |= read
            kept = deque(item for item in self._items if _row_id(item) not in read)
            self._items = kept
            if not kept:  # else the newer queued items already say where the client will stand
                for item in first:
                    self.sent(item)

    def attach(self) -> None:
        """From the event loop that will drain it, before the first get()."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._ready = asyncio.Event()
            if self._items:
                self._ready.set()

    async def get(self, timeout: float) -> list[Item] | None:
        """The items put since the last call; None after `timeout` seconds without any."""
        try:
            async with asyncio.timeout(timeout):  # a timer, not a task per wait as wait_for makes
                await self._ready.wait()
        except TimeoutError:
            return None
        self._ready.clear()  # before draining: an item put meanwhile sets it again
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items


def _row_id(item: Item) -> int | None:
    head = item.id.split(":")[0]
    return int(head) if head.isdigit() else None


def wake(pending, flushed: threading.Event | None = None) -> None:
    """Wake the subscriptions put to, with one call into each event loop (not one per subscription:
    a change that moves a thousand waiting jobs wakes the loop once). `flushed` is set once each loop
    has run the woken streams, which have then written their frames."""
    by_loop: dict = {}
    for pair in pending:
        if pair is not None:
            by_loop.setdefault(pair[0], []).append(pair[1])
    for loop, events in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, events, flushed)
        except RuntimeError:
            pass  # its loop closed: those streams are gone, and unsubscribe themselves


def _set_all(events, flushed) -> None:
    for event in events:
        event.set()  # each schedules its stream's next step: after them (in order) comes the mark
    if flushed is not None:
        asyncio.get_running_loop().call_soon(flushed.set)


class Hub:
    def __init__(self):
        self._lock = threading.Lock()
        self._subscriptions: dict[object, set[Subscription]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cursor = 0
        self._holes: dict[int, float] = {}
        self._positions_due: float | None = None
        self._moves: deque = deque()  # (subscription, new place) still to send
        self._slice_written = threading.Event()
        self._slice_written.set()
        self._idle_since: float | None = None

    # --- subscribers (any thread) -------------------------------------------------------------

    def subscribe(self, job_id=None, *, render: bool = True) -> Subscription:
        """Register before reading what the subscriber starts from: every row committed from now on
        reaches it (it skips those it has read itself, by id). May read the database (the first
        subscriber starts the thread from the newest row)."""
        subscription = Subscription(job_id=feed.as_uuid(job_id) if job_id is not None else None, render=render)
        while True:
            with self._lock:
                if self._thread is not None and self._thread.is_alive():
                    self._subscriptions.setdefault(subscription.job_id, set()).add(subscription)
                    self._idle_since = None
                    return subscription
            # No thread: where it starts from is read without the lock (a slow database must not
            # stall the streams that unsubscribe meanwhile), then it starts, unless another did.
            start = self._starting_point()
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._start(*start)
                    self._subscriptions.setdefault(subscription.job_id, set()).add(subscription)
                    self._idle_since = None
                    return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            group = self._subscriptions.get(subscription.job_id)
            if group is not None:
                group.discard(subscription)
                if not group:
                    del self._subscriptions[subscription.job_id]
            if not self._subscriptions:
                self._idle_since = time.monotonic()

    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(group) for group in self._subscriptions.values())

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread now and close its connections (tests; a process shutting down)."""
        with self._lock:
            thread = self._thread
            self._stop.set()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._stop.clear()
            self._thread = None

    @staticmethod
    def _starting_point() -> tuple[int, dict]:
        newest = feed.latest_id()
        # Ids below the newest that are not there yet may belong to transactions still open.
        low = max(newest - 1000, 0)
        now = time.monotonic()
        return newest, {i: now for i in set(range(low + 1, newest + 1)) - feed.ids_between(low, newest)}

    def _start(self, cursor: int, holes: dict) -> None:
        self._cursor, self._holes = cursor, holes
        self._positions_due = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="job-events-hub", daemon=True)
        self._thread.start()

    # --- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        listener = None
        try:
            while not self._done():
                try:
                    if listener is None:
                        listener = _listen()
                    self._wait(listener)
                    self._read_and_dispatch()
                except (DatabaseError, InterfaceError, psycopg.Error) as error:
                    logger.warning("Job events: database unavailable (%s); trying again in %s s", error, RETRY_SECONDS)
                    listener = _close(listener)
                    connection.close()
                    self._stop.wait(RETRY_SECONDS)
                except Exception:  # a bug must not leave every stream of the process silent: say it, go on
                    logger.exception("Job events: reading or sending failed; trying again in %s s", RETRY_SECONDS)
                    self._stop.wait(RETRY_SECONDS)
        finally:
            _close(listener)
            connection.close()

    def _done(self) -> bool:
        with self._lock:
            if self._stop.is_set():
                return True
            if self._idle_since is not None and time.monotonic() - self._idle_since > LINGER_SECONDS:
                self._thread = None
                return True
            return False

    def _wait(self, listener) -> None:
        timeout = WAKE_SECONDS
        if self._moves:
            timeout = MIN_GAP_SECONDS
        elif self._positions_due is not None:
            timeout = max(0.0, min(timeout, self._positions_due - time.monotonic()))
        for _ in listener.notifies(timeout=timeout, stop_after=1):
            pass
        for _ in listener.notifies(timeout=0):  # the rest that came with it
            pass
        self._stop.wait(MIN_GAP_SECONDS)  # let a burst of commits gather: one read for all

    def _read_and_dispatch(self) -> None:
        now = time.monotonic()
        self._holes = {i: seen for i, seen in self._holes.items() if now - seen < HOLE_SECONDS}
        rows = feed.rows_after(self._cursor, also=self._holes)
        if rows:
            newest = max(row.id for row in rows)
            found = {row.id for row in rows}
            for missing in set(range(self._cursor + 1, newest)) - found:
                self._holes[missing] = now
            for row in found:
                self._holes.pop(row, None)
            self._cursor = max(self._cursor, newest)
            self._dispatch(rows)
            if self._positions_due is None and self._may_move_watched(rows):
                self._positions_due = now + POSITIONS_SECONDS
        if self._positions_due is not None and time.monotonic() >= self._positions_due:
            self._positions_due = None
            self._recount_positions()
        self._send_moves()

    def _may_move_watched(self, rows) -> bool:
        """Whether these events may have moved a watched waiting job in line. A job that joins the line
        moves only those of a lower priority (it queues behind its equals; on a fair line another
        owner's job of the same priority may go ahead); one that started at once never stood in it."""
        lowest, known = None, False
        for row in rows:
            if row.event == "submitted":
                if row.state.get("status") != "pending":
                    continue
                if not known:
                    with self._lock:
                        lowest = min((s.last_fields.get("priority", 0) for job_id, group in self._subscriptions.items()
                                      if job_id is not None for s in group if s.position is not None and s.last_fields),
                                     default=None)
                    known = True
                priority = row.state.get("priority", 0)
                if lowest is not None and (priority > lowest or priority == lowest and feed.fair_lines()):
                    return True
            elif row.event in feed.LINE_CHANGES:
                return True
        return False

    def _dispatch(self, rows) -> None:
        with self._lock:
            by_job = {row.job_id: list(self._subscriptions[row.job_id]) for row in rows if row.job_id in self._subscriptions}
            everyone = list(self._subscriptions.get(None, ()))
        wanted = [row for row in rows if everyone or row.job_id in by_job]
        if not wanted:
            return
        rendered = {row.job_id for row in wanted if everyone or any(s.render for s in by_job[row.job_id])}
        jobs = jobs_shown(rendered)
        places = feed.positions([row.job_id for row in wanted if row.job_id in jobs and row.state.get("status") == "pending"])
        woken = []
        for row in wanted:
            job = jobs.get(row.job_id)
            if job is None and row.job_id in rendered:
                continue  # deleted since (an operator's clean-up): nothing to show
            item = item_of(row, job, places.get(row.job_id))
            woken += [subscription.put(item, row.id) for subscription in by_job.get(row.job_id, ())]
            woken += [subscription.put(item, row.id) for subscription in everyone]
        wake(woken)

    def _recount_positions(self) -> None:
        """Tell each per-job stream of a waiting job its new place in line, if it moved."""
        with self._lock:
            waiting = [s for group in self._subscriptions.values() for s in group
                       if s.job_id is not None and s.render and s.position is not None]
        if not waiting:
            return
        places = feed.positions({s.job_id for s in waiting})
        self._moves = deque((s, places[s.job_id]) for s in waiting if places.get(s.job_id) not in (None, s.position))

    def _send_moves(self) -> None:
        """One slice of the place-in-line events, sent once the event loop has written the last one:
        slices go out no faster than the loop writes them, so that what the next read brings (a job's
        own change) waits behind one slice at most."""
        if not self._moves:
            return
        self._slice_written.wait(SLICE_WAIT_SECONDS)  # then on regardless: its loop may be gone
        woken = []
        for _ in range(min(MOVES_PER_SLICE, len(self._moves))):
            subscription, place = self._moves.popleft()
            # Skipped if its own event came first: it left the line, or already says this place.
            if subscription.last_fields is not None and subscription.position not in (None, place):
                fields = {**subscription.last_fields, "queue_position": place}
                woken.append(subscription.put(Item(f"{subscription.last_id}:{place}", "job.queue_position",
                                                   encode(fields), False, fields)))
        if any(woken):
            self._slice_written.clear()
        wake(woken, self._slice_written)


def _listen():
    """A connection of its own that only LISTENs (a connection that runs queries may drop
    notifications that arrive meanwhile)."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    params.pop("pool", None)
    listener = psycopg.connect(**params, autocommit=True)
    listener.execute(f"LISTEN {CHANNEL}")
    return listener


def _close(listener) -> None:
    if listener is not None:
        try:
            listener.close()
        except psycopg.Error:
            pass
    return None


hub = Hub()  # this process's
