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
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import DatabaseError, InterfaceError, connections

from coordination.outputs import store
from coordination.outputs.copy import Copied, CopyFailed, copy_file

logger = logging.getLogger(__name__)
TICK = 1.0  # seconds between looks for files to copy


class Copier:
    """`run` on the qcluster's event loop; the work on threads: the copies on COORDINATOR_COPY_THREADS
    of them, the claims and records on one more (`_look`), which a copy that ends wakes. No event loop
    step per file: a file costs its claim's and record's share, its copy, and two thread hand-offs."""

    def __init__(self):
        self.threads = settings.COORDINATOR_COPY_THREADS
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="copier")
        self._changed = threading.Condition()  # guards the three below; notified when a copy ends, and at a stop
        self._copying = 0  # copies under way on the copying threads
        self._copied: list[tuple] = []  # copies ended, their records not yet written: (due, outcome)
        self._stopping = threading.Event()

    async def run(self, stop: asyncio.Event) -> None:
        looking = threading.Thread(target=self._look, name="copier-db", daemon=True)
        looking.start()
        try:
            await stop.wait()
        finally:
            # A stop is not held up by a long copy: those under way give up at their next chunk, and are
            # copied again later, by this qcluster once restarted or another (a stop costs one of their tries).
            with self._changed:
                self._stopping.set()
                self._changed.notify_all()
            await asyncio.to_thread(looking.join)
            self._pool.shutdown()

    def _look(self) -> None:
        """Record the copies that ended (all at once), claim as many files as threads are free, and
        wait: for a copy to end, or the next tick. After a claim that took fewer files than it asked
        for (all that were due), the next claim waits for the tick; after one that took all it asked
        for, files may be waiting, so it claims again as soon as a copy ends. Stopping: no more claims;
        the copies under way end and are recorded, then the connection is closed."""
        next_claim = 0.0
        while True:
            with self._changed:
                copied, self._copied = self._copied, []
                copying, stopping = self._copying, self._stopping.is_set()
            try:
                if copied:
                    self._record(copied)
                if stopping:
                    if not copied and not copying:
                        break
                elif copying < self.threads and time.monotonic() >= next_claim:
                    asked = self.threads - copying
                    due = self._claim(asked)
                    next_claim = 0.0 if len(due) == asked else time.monotonic() + TICK
                    for one in due:
                        self._start(one)
            except Exception:  # a defect of ours: said, and the copier goes on at its next tick
                logger.exception("Copier: look failed")
                next_claim = time.monotonic() + TICK
            with self._changed:
                if self._stopping.is_set():
                    self._changed.wait_for(lambda: self._copied or not self._copying)
                else:
                    wait = TICK if self._copying == self.threads else max(0.0, next_claim - time.monotonic())
                    self._changed.wait_for(lambda: self._copied or self._stopping.is_set(), timeout=min(wait, TICK))
        _close_quietly()

    def _claim(self, limit: int) -> list:
        try:
            return claim(limit)
        except (DatabaseError, InterfaceError) as error:
            logger.warning("Copier: database unavailable (%s)", error)
            _close_quietly()
            return []

    def _start(self, due: store.Due) -> None:
        with self._changed:
            self._copying += 1
        self._pool.submit(self._copy, due)

    def _copy(self, due: store.Due) -> None:
        outcome = fetch(due, self._stopping.is_set)
        with self._changed:
            self._copying -= 1
            self._copied.append((due, outcome))
            self._changed.notify_all()

    def _record(self, copies: list[tuple]) -> None:
        try:
            store.files_settle(copies)
        except (DatabaseError, InterfaceError) as error:
            # Their holds lapse and a copier copies them again (one of their tries spent).
            logger.warning("Copier: %d file(s) copied but not recorded: database unavailable (%s)", len(copies), error)
            _close_quietly()
        except Exception:
            logger.exception("Copier: %d file(s) copied but not recorded", len(copies))


def _close_quietly() -> None:
    """Lets go of the thread's connection; one an outage broke may fail to close, which must not stop the copier."""
    try:
        connections.close_all()
    except Exception:
        logger.debug("Closing the copier's connection failed", exc_info=True)


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
