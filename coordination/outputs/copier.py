"""The copier: one per qcluster, in its main process beside the poller, copying the files completed
jobs produced into storage on COORDINATOR_COPY_THREADS threads (coordination/outputs/copy.py), so
that no job slot waits for a copy. It claims what is due, as many files as it has free threads: every
second, and, while files wait (its last claim took as many as it asked for), again as soon as a copy
ends, so a backlog of small files goes as fast as the threads copy them, not a thread's worth a second."""

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import DatabaseError, InterfaceError, connections

from coordination.outputs import store
from coordination.outputs.copy import CopyFailed, copy_file

logger = logging.getLogger(__name__)
TICK = 1.0  # seconds between looks for files to copy


class Copier:
    def __init__(self):
        self.threads = settings.COORDINATOR_COPY_THREADS
        self._pool = ThreadPoolExecutor(max_workers=self.threads + 1, thread_name_prefix="copier")
        self._busy = 0
        self._stopping = threading.Event()
        self._freed: asyncio.Event | None = None  # a copy ended (set on the event loop's thread)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._freed = asyncio.Event()
        while not stop.is_set():
            self._freed.clear()
            free = self.threads - self._busy
            waiting = free == 0  # every thread copies: files may be waiting too
            if free > 0:
                try:
                    due = await loop.run_in_executor(self._pool, _threaded, claim, free)
                except (DatabaseError, InterfaceError) as error:
                    logger.warning("Copier: database unavailable (%s)", error)
                    due = []
                waiting = len(due) == free
                for one in due:
                    self._busy += 1
                    loop.run_in_executor(self._pool, _threaded, copy_one, one, self._stopping.is_set).add_done_callback(
                        self._done)
            await _first(stop, self._freed if waiting else None, timeout=TICK)
        # A stop is not held up by a long copy: those under way give up at their next chunk, and are
        # copied again later, by this qcluster once restarted or another (a stop costs one of their tries).
        self._stopping.set()
        await loop.run_in_executor(None, self._pool.shutdown)

    def _done(self, _future) -> None:
        self._busy -= 1
        self._freed.set()


async def _first(*events: asyncio.Event | None, timeout: float) -> None:
    """Returns once one of `events` (None: not waited for) is set, or after `timeout` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events if event is not None]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _threaded(work, *args):
    """`work(*args)` on a copier thread, which then lets go of its database connection."""
    try:
        return work(*args)
    finally:
        connections.close_all()


def claim(limit: int) -> list:
    return store.files_claim(limit=limit)


def copy_one(due: store.Due, should_stop=lambda: False) -> None:
    """Copy one file and record how it went."""
    try:
        copied = copy_file(file_id=due.id, job_id=due.job_id, source_url=due.source_url,
                           claimed_type=due.content_type, trusted_host=store.trusted_host(due.model),
                           should_stop=should_stop)
    except CopyFailed as failed:
        logger.warning("Copier: file %s of job %s not copied: %s", due.n, due.job_id, failed)
        store.file_failed(due, error=str(failed), again=failed.again)
    except Exception as error:  # storage refused, disk full, ...: tried again later
        logger.exception("Copier: file %s of job %s not copied", due.n, due.job_id)
        store.file_failed(due, error=f"{type(error).__name__}: {error}", again=True)
    else:
        store.file_stored(due, storage_name=copied.storage_name, size=copied.size, sha256=copied.sha256,
                          content_type=copied.content_type)
