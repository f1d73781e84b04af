"""The copier: one per qcluster, in its main process beside the poller, copying the files completed
jobs produced into storage on COORDINATOR_COPY_THREADS threads (coordination/outputs/copy.py), so
that no job slot waits for a copy. Every second it claims what is due, as many as it has free threads."""

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

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            free = self.threads - self._busy
            if free > 0:
                try:
                    due = await loop.run_in_executor(self._pool, _threaded, claim, free)
                except (DatabaseError, InterfaceError) as error:
                    logger.warning("Copier: database unavailable (%s)", error)
                    due = []
                for one in due:
                    self._busy += 1
                    loop.run_in_executor(self._pool, _threaded, copy_one, one, self._stopping.is_set).add_done_callback(
                        self._done)
            try:
                await asyncio.wait_for(stop.wait(), TICK)
            except TimeoutError:
                pass
        # A stop is not held up by a long copy: those under way give up at their next chunk, and are
        # copied again later, by this qcluster once restarted or another (a stop costs one of their tries).
        self._stopping.set()
        await loop.run_in_executor(None, self._pool.shutdown)

    def _done(self, _future) -> None:
        self._busy -= 1



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
