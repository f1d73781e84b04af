"""The copier: one per qcluster, in its main process beside the poller, copying the files completed
jobs produced into storage on COORDINATOR_COPY_THREADS threads (coordination/outputs/copy.py), so
that no job slot waits for a copy. It claims what is due, as many files as it has free threads: every
second, and, while files wait (its last claim took as many as it asked for), again as soon as a copy
ends, so a backlog of small files goes as fast as the threads copy them, not a thread's worth a second.

The copying threads never touch the database: the claims and the records of how each copy went run
on one thread of their own, with one connection, kept between looks as the provider poller keeps
its own (a look a second that opened a connection each time would start a database backend a
second, all day); an outage's broken connection is closed and the next look opens another. The
copies that end while a record is being written are recorded together by the next
(store.files_settle)."""

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import DatabaseError, InterfaceError, connections

from coordination.outputs import store
from coordination.outputs.copy import Copied, CopyFailed, copy_file

logger = logging.getLogger(__name__)
TICK = 1.0  # seconds between looks for files to copy


class Copier:
    def __init__(self):
        self.threads = settings.COORDINATOR_COPY_THREADS
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="copier")
        self._database = ThreadPoolExecutor(max_workers=1, thread_name_prefix="copier-db")
        self._copying = 0  # copies under way on the copying threads
        self._copied: list[tuple] = []  # copies ended, their records not yet written: (due, outcome)
        self._recording = 0  # copies whose records are being written
        self._stopping = threading.Event()
        self._freed: asyncio.Event | None = None  # a copy ended, or its record (set on the event loop's thread)
        self._tasks: set[asyncio.Task] = set()  # the copies under way, each recorded when it ends

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._freed = asyncio.Event()
        while not stop.is_set():
            self._freed.clear()
            free = self.threads - self._copying
            waiting = free == 0  # every thread copies: files may be waiting too
            if free > 0:
                try:
                    due = await loop.run_in_executor(self._database, claim, free)
                except (DatabaseError, InterfaceError) as error:
                    logger.warning("Copier: database unavailable (%s)", error)
                    await loop.run_in_executor(self._database, _close_quietly)
                    due = []
                waiting = len(due) == free
                for one in due:
                    self._copying += 1
                    task = asyncio.ensure_future(self._copy(one))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            await _first(stop, self._freed if waiting else None, timeout=TICK)
        # A stop is not held up by a long copy: those under way give up at their next chunk, and are
        # copied again later, by this qcluster once restarted or another (a stop costs one of their tries).
        self._stopping.set()
        while self._working:  # each copy under way gives up and records it
            self._freed.clear()
            if self._copied and not self._recording:
                await self._record()
            else:
                await self._freed.wait()
        await loop.run_in_executor(self._database, _close_quietly)
        self._pool.shutdown()
        self._database.shutdown()

    @property
    def _working(self) -> bool:
        return bool(self._copying or self._copied or self._recording)

    async def _copy(self, due: store.Due) -> None:
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(self._pool, fetch, due, self._stopping.is_set)
        finally:
            self._copying -= 1
            self._freed.set()
        self._copied.append((due, outcome))
        if not self._recording:
            await self._record()

    async def _record(self) -> None:
        """Write the records of the copies that ended, all at once, until none is left."""
        loop = asyncio.get_running_loop()
        while self._copied:
            copies, self._copied = self._copied, []
            self._recording = len(copies)
            try:
                await loop.run_in_executor(self._database, store.files_settle, copies)
            except (DatabaseError, InterfaceError) as error:
                # Their holds lapse and a copier copies them again (one of their tries spent).
                logger.warning("Copier: %d file(s) copied but not recorded: database unavailable (%s)", len(copies), error)
                await loop.run_in_executor(self._database, _close_quietly)
            except Exception:
                logger.exception("Copier: %d file(s) copied but not recorded", len(copies))
            finally:
                self._recording = 0
                self._freed.set()


def _close_quietly() -> None:
    """Lets go of the thread's connection; one an outage broke may fail to close, which must not stop the copier."""
    try:
        connections.close_all()
    except Exception:
        logger.debug("Closing the copier's connection failed", exc_info=True)


async def _first(*events: asyncio.Event | None, timeout: float) -> None:
    """Returns once one of `events` (None: not waited for) is set, or after `timeout` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events if event is not None]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def claim(limit: int) -> list:
    return store.files_claim(limit=limit)


def fetch(due: store.Due, should_stop=lambda: False) -> Copied | CopyFailed | Exception:
    """Copy one file into storage (no database): what it came to, a failure included."""
    try:
        return copy_file(file_id=due.id, job_id=due.job_id, source_url=due.source_url,
                         claimed_type=due.content_type, trusted_host=due.trusted_host, should_stop=should_stop)
    except CopyFailed as failed:
        logger.warning("Copier: file %s of job %s not copied: %s", due.n, due.job_id, failed)
        return failed
    except Exception as error:  # storage refused, disk full, ...: tried again later
        logger.exception("Copier: file %s of job %s not copied", due.n, due.job_id)
        return error


def copy_one(due: store.Due, should_stop=lambda: False) -> None:
    """Copy one file and record how it went, on the calling thread."""
    store.files_settle([(due, fetch(due, should_stop))])
