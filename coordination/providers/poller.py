"""The poller: one per qcluster (coordination's `qcluster` command runs it in the cluster's main
process), watching every job its cluster's workers left at a provider.

One event loop and one `httpx.AsyncClient` with at most COORDINATOR_POLLER_CONCURRENCY requests open;
one thread for the database (one connection). Every COORDINATOR_POLLER_TICK seconds it adopts runs
nobody watches or whose poller died (one statement; then one to read those it took) and looks for
cancels asked for (one); every third of a lease it renews the leases of all the jobs it watches (one
statement) and reads them all again (one). Between ticks it asks each provider
about each job at the model's poll interval (a callback provider's job: ten times as seldom, as a
safety net); a provider's limit or outage is waited out (its Retry-After, else back-off) by asking
again later, holding no request open meanwhile. Each outcome (a provider's last
word, a timeout, a cancel) is reported through the coordinator: those that come together, in one
transaction, in the background while polls go on, with what providers said of the jobs still at them
(a status, a progress: stored when it changes, a progress at most twice a second per job). A cancel
asked for is sent to the provider (its adapter's way); the job ends cancelled
once the provider confirms, or after COORDINATOR_PROVIDER_CANCEL_GRACE seconds saying it did not. A job
the coordinator ends otherwise (its deadline, here or by the reaper; an operator's Reset state or reconcile:
provider_runs.stop_reason) is stopped the same way and then fails, never retried: until then it keeps its
slot and models, so a provider's own in-flight limit is never overrun. A run whose job no longer runs
(an orphan) is cancelled at the provider and closed, with a warning: no run is dropped without a word.
"""

import asyncio
import heapq
import logging
import os
import random
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, InterfaceError, connection, connections
from django.utils import timezone

from coordination.models import CatalogModel
from coordination.providers import store
from coordination.runners import client as provider_client
from coordination.runners import runner_call
from coordination.runners.adapters import adapter_of
from coordination.runners.base import Provider, RunnerError
from coordination.runners.client import AskAgain, Status

logger = logging.getLogger(__name__)

SAFETY_NET_FACTOR = 10  # a callback provider's job is polled this many times less often
DEFAULT_INTERVAL = 5.0  # seconds, for a run whose provider is not known yet (the catalog's default)
POLL_TOGETHER = 0.2  # seconds: polls falling due this close together are sent at once
QUESTION_TIMEOUT = 60.0  # seconds one poll may wait for its answer (a provider that hangs holds no slot longer)
ADOPT_AT_ONCE = 5000
PROGRESS_EVERY = 0.5  # seconds: a job's progress is stored (and streamed) at most this often


class Poller:
    def __init__(self, *, name: str | None = None):
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.watched: dict[int, store.Watched] = {}
        self._due: list[tuple[float, int]] = []  # (monotonic time of its next poll, run id)
        self._next: dict[int, float] = {}  # each run's next poll: an entry of _due at another time is stale
        self._asking: set[int] = set()  # runs with a request out now
        self._endings: list[store.Ending] = []
        self._seen: dict[int, store.Seen] = {}  # what providers now say of jobs still at them, to be stored
        self._providers: dict[str, Provider] = {}
        self._last_known: dict[str, Provider] = {}  # kept when the catalog no longer says (see _provider)
        self._stop: asyncio.Event | None = None
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poller-db")
        self._wakeup = asyncio.Event()  # an outcome to report, a poll due sooner than the loop thought, a stop
        self._sleeping_until = 0.0  # when the loop wakes by itself (0: it is awake)
        self._providers_read_at = 0.0
        self._whole_due = 0.0  # when to renew every lease and read every run again
        self._flushing: asyncio.Task | None = None
        # What it did since its last report line (every COORDINATOR_POLLER_REPORT seconds).
        self.counts = {"ticks": 0, "statements": 0, "polls": 0, "ended": 0}
        self._counts_logged_at = time.monotonic()

    def _count_statement(self, execute, sql, params, many, context):
        self.counts["statements"] += 1
        return execute(sql, params, many, context)

    async def _in_db(self, function, *args, **kwargs):
        def counted():
            with connection.execute_wrapper(self._count_statement):
                return function(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._db, counted)

    def _log_counts(self) -> None:
        """One line now and then: how many jobs it watches, and what that cost the database."""
        seconds = time.monotonic() - self._counts_logged_at
        if seconds < settings.COORDINATOR_POLLER_REPORT:
            return
        counts = self.counts
        logger.info(
            "Provider poller %s: watching %s jobs; in the last %.0f s %s polls, %s ended, %s ticks, %s statements "
            "(%.1f per tick)", self.name, len(self.watched), seconds, counts["polls"], counts["ended"], counts["ticks"],
            counts["statements"], counts["statements"] / max(1, counts["ticks"]),
        )
        self.counts = dict.fromkeys(counts, 0)
        self._counts_logged_at = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        concurrency = settings.COORDINATOR_POLLER_CONCURRENCY
        self._gate = asyncio.Semaphore(concurrency)
        logger.info("Provider poller %s started", self.name)
        self._stop = stop
        stopping = asyncio.ensure_future(self._wake_on(stop))
        async with provider_client.new_pooled_client(max_connections=concurrency) as client:
            next_tick = 0.0
            backoff = 1.0
            while not stop.is_set():
                if time.monotonic() >= next_tick:
                    try:
                        await self._tick()
                        backoff = 1.0
                    except (DatabaseError, InterfaceError) as error:
                        # The database refused us (too many clients, an outage): back off, carry on.
                        logger.warning("Provider poller %s: database unavailable (%s); again in %.0f s", self.name, error, backoff)
                        await self._in_db(connections.close_all)
                        next_tick = time.monotonic() + backoff
                        backoff = min(backoff * 2, 30.0)
                        await self._sleep(backoff)
                        continue
                    next_tick = time.monotonic() + settings.COORDINATOR_POLLER_TICK
                self._ask_due(client)
                if (self._endings or self._seen) and (self._flushing is None or self._flushing.done()):
                    # In the background: polls keep going out while the database ends a batch.
                    self._flushing = asyncio.ensure_future(self._flush_endings())
                wake = min(next_tick, self._due[0][0] if self._due else next_tick)
                await self._sleep(max(0.0, wake - time.monotonic()))
        stopping.cancel()
        if self._flushing is not None:
            await self._flushing
        await self._flush_endings(last=True)
        await self._in_db(store.watches_release, watcher=self.name)
        await self._in_db(connections.close_all)
        self._db.shutdown(wait=True)
        logger.info("Provider poller %s stopped", self.name)

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wakeup.set()

    async def _sleep(self, seconds: float) -> None:
        """Until `seconds` have passed or something wakes it (new tasks, a timer each time: a wake-up
        per answer cost as much CPU as the answer's request)."""
        self._wakeup.clear()
        if self._stop is not None and self._stop.is_set():  # asked to stop while it was awake
            return
        self._sleeping_until = time.monotonic() + seconds
        try:
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()
        except TimeoutError:
            pass
        self._sleeping_until = 0.0

    def _push(self, at: float, run_id: int) -> None:
        """The run's next poll is at `at` (monotonic), whatever was planned for it before."""
        self._next[run_id] = at
        heapq.heappush(self._due, (at, run_id))
        if at < self._sleeping_until:  # sooner than the loop means to look: wake it
            self._wakeup.set()

    async def _tick(self) -> None:
        """Adopt what nobody watches and look for cancels, every tick; renew every lease and read all
        its runs again (dropping those that ended elsewhere) every third of a lease. Reading and renewing
        a thousand runs each second cost the database 250 ms a second."""
        if time.monotonic() - self._providers_read_at > 30:  # an operator's catalog edits, within 30 s
            self._providers, self._providers_read_at = {}, time.monotonic()
        whole = time.monotonic() >= self._whole_due
        if whole:
            await self._in_db(store.watches_renew, watcher=self.name)
            self._whole_due = time.monotonic() + settings.COORDINATOR_LEASE_SECONDS / 3
        adopted = await self._in_db(store.watches_adopt, watcher=self.name, limit=ADOPT_AT_ONCE)
        if whole:
            current = await self._in_db(store.watches_read, watcher=self.name)
        else:
            current = await self._in_db(store.watches_read, watcher=self.name, run_ids=adopted) if adopted else []
            for run_id, cancel_requested, stop_reason in await self._in_db(store.watches_stopping, watcher=self.name):
                known = self.watched.get(run_id)
                if known is not None and not known.stopping:
                    known.cancel_requested, known.stop_reason = cancel_requested, stop_reason
                    self._push(time.monotonic(), run_id)  # to be stopped: tell the provider now
        self.counts["ticks"] += 1
        self._log_counts()
        now = time.monotonic()
        fresh = {watch.run_id: watch for watch in current}
        if whole:
            for run_id in list(self.watched):
                if run_id not in fresh:
                    del self.watched[run_id]  # closed (by a callback) or taken over by another poller
        for run_id, watch in fresh.items():
            known = self.watched.get(run_id)
            if known is None or known.fence != watch.fence:
                # New to this poller: a poll provider's job is first asked about within one interval, at
                # a random point of it (a thousand taken at once are not all asked at the same instant,
                # and then every interval again together); a callback provider's only when its safety
                # net is due (its callback normally comes first); a cancel asked for, at once.
                interval = (await self._provider(watch)).poll_interval_seconds
                later = random.uniform(0, interval)
                if watch.stopping:
                    later = 0.0
                elif watch.style == "callback":
                    later = interval * SAFETY_NET_FACTOR
                self._push(now + later, run_id)
            elif watch.stopping and not known.stopping:
                self._push(now, run_id)  # to be stopped (a cancel, a stop, an orphan): tell the provider now
            if known is not None and known.fence == watch.fence:
                self._carry_over(known, watch)
            self.watched[run_id] = watch

    def _carry_over(self, old: store.Watched, new: store.Watched) -> None:
        """What this poller learnt of a run and the row read again does not say yet (or ever)."""
        if old.cancel_sent_at and not new.cancel_sent_at:
            new.cancel_sent_at = old.cancel_sent_at
        if old.stop_reason and not new.stop_reason:  # its own deadline's, written a moment ago
            new.stop_reason = old.stop_reason
        new.provider_status = old.provider_status  # may be newer than the row read a moment ago
        new.progress, new.queue_position, new.progress_stored_at = old.progress, old.queue_position, old.progress_stored_at
        new.unanswered = old.unanswered
        if old.asked_as == self._providers.get(new.model):  # else built again, as the catalog says now
            new.request, new.asked_as = old.request, old.asked_as

    def _ask_due(self, client) -> None:
        # What falls due within POLL_TOGETHER goes out now, together: the loop wakes once for many
        # answers (a poll alone, with a wake-up of its own, cost twice the CPU). Early, never late.
        now = time.monotonic() + POLL_TOGETHER
        while self._due and self._due[0][0] <= now:
            at, run_id = heapq.heappop(self._due)
            if self._next.get(run_id) != at:
                continue  # planned again since (a cancel, a new fence): that entry counts
            del self._next[run_id]
            if run_id in self.watched and run_id not in self._asking:
                self._asking.add(run_id)
                asyncio.ensure_future(self._ask(client, self.watched[run_id]))

    async def _ask(self, client, watch: store.Watched) -> None:
        """One poll of a run, and its next planned, whatever happened (a job that is not planned again
        would be watched, its lease renewed, and never asked about again)."""
        ending, again_in = None, None
        cancel_known = watch.stopping  # a tick may set it on this very object while the poll is out
        try:
            async with self._gate:
                ending, again_in = await self._ask_once(client, watch)
        except Exception:
            logger.exception("Provider poller %s: asking about job %s failed", self.name, watch.job_id)
        finally:
            self._asking.discard(watch.run_id)
        if ending is not None:
            self._endings.append(ending)
            self._wakeup.set()
            return
        current = self.watched.get(watch.run_id)
        if current is None:
            return  # ended elsewhere or taken over meanwhile
        if current is not watch and current.fence == watch.fence:
            self._carry_over(watch, current)  # the row was read again while the poll was out
        if current.stopping and not cancel_known:
            again_in = 0.0  # to be stopped since the poll went out: tell the provider now
        elif again_in is None:
            provider = self._providers.get(current.model) or self._last_known.get(current.model)
            again_in = provider.poll_interval_seconds if provider is not None else DEFAULT_INTERVAL
            if current.style == "callback" and not current.stopping:
                again_in *= SAFETY_NET_FACTOR
        self._push(time.monotonic() + again_in, current.run_id)

    async def _ask_once(self, client, watch: store.Watched) -> tuple[store.Ending | None, float | None]:
        """Ask the provider about one job: its ending if it ended, else when to ask next (None: at the
        model's interval)."""
        provider = await self._provider(watch)
        now = timezone.now()
        if watch.orphan:
            return await self._orphan_close(client, watch, provider), None
        if not watch.stopping and now >= watch.deadline_at:
            # Its deadline: stopped at the provider first, failed then (as the reaper's would be).
            reason = f"timed out after {provider.timeout_seconds:g} s"
            watch.stop_reason = await self._in_db(store.run_stop, watch.run_id, reason) or reason
        if watch.stopping:
            return await self._stop_at_provider(client, watch, provider), None
        left = (watch.deadline_at - now).total_seconds()
        self.counts["polls"] += 1
        try:
            adapter = adapter_of(provider.kind)
            if watch.request is None:
                watch.request = adapter.status_request(client, provider, watch)
                watch.asked_as = provider
            status = await adapter.ask(client, provider, watch, request=watch.request, timeout=min(left, QUESTION_TIMEOUT))
        except AskAgain as again:
            # A limit (429, 503) or an outage: waited out, holding no request open, until the job's
            # deadline (then the job times out as any other would).
            watch.unanswered += 1
            left = (watch.deadline_at - timezone.now()).total_seconds()  # the question itself took time
            return None, max(0.0, min(provider_client.pause_before(watch.unanswered, again), left))
        except RunnerError as error:  # the provider refused the question (a 4xx): the job fails
            return self._ending(watch, Status("failed", error=str(error)), error=str(error)), None
        watch.unanswered = 0
        if status.ended:
            return self._ending(watch, status), None
        self._note(watch, status)
        return None, None

    def _note(self, watch: store.Watched, status: Status) -> None:
        """What the provider says of a job still at it, to be stored (with the next batch) when it
        changed: its status at once, its progress and place in line at most every PROGRESS_EVERY s."""
        progress = None if status.progress is None else round(min(1.0, max(0.0, status.progress)), 2)
        moved = (progress, status.queue_position) != (watch.progress, watch.queue_position)
        now = time.monotonic()
        if status.state == watch.provider_status and not (moved and now - watch.progress_stored_at >= PROGRESS_EVERY):
            return
        watch.provider_status, watch.progress, watch.queue_position = status.state, progress, status.queue_position
        watch.progress_stored_at = now
        self._seen[watch.run_id] = store.Seen(watch.run_id, status.state, progress, status.queue_position)
        self._wakeup.set()

    async def _stop_at_provider(self, client, watch, provider) -> store.Ending | None:
        """Send the provider its cancel (again at each poll until it confirms); the job ends once it
        confirms, or COORDINATOR_PROVIDER_CANCEL_GRACE seconds after the first cancel went out. Until
        then it keeps its slot and models: the provider may still be running it."""
        adapter = adapter_of(provider.kind)
        confirmed = await self._cancel(client, adapter, provider, watch)
        if watch.cancel_sent_at is None:
            await self._in_db(store.cancel_sent, watch.run_id)
            watch.cancel_sent_at = timezone.now()
        grace = settings.COORDINATOR_PROVIDER_CANCEL_GRACE
        if not confirmed and timezone.now() - watch.cancel_sent_at < timedelta(seconds=grace):
            return None
        last_word = await self._last_word(client, adapter, provider, watch) if confirmed else None
        if last_word is not None:
            return self._ending(watch, last_word)  # it had succeeded before the cancel reached it: that stands
        words = None if confirmed else adapter.cancel_unconfirmed_words(grace)
        if watch.cancel_requested:
            return self._ending(watch, Status("cancelled"), error=(
                "Cancelled at the provider, which confirmed it" if confirmed else
                f"Cancelled; {words or f'the provider did not confirm it within {grace} s, so its job may still run'}"))
        # A stop the coordinator decided: store._report fails the job with these words, never retried.
        return self._ending(watch, Status("cancelled"), error=(
            f"{watch.stop_reason}; cancelled at the provider, which confirmed it" if confirmed else
            f"{watch.stop_reason}; {words or f'the provider did not confirm its cancel within {grace} s, so its job may still run'}"))

    async def _cancel(self, client, adapter, provider, watch) -> bool:
        """The provider's cancel; False (not confirmed) whatever goes wrong sending it (its credential
        missing where this poller runs, say): the grace still runs out, and the job still ends."""
        try:
            return await adapter.cancel(client, provider, watch)
        except Exception as error:
            logger.warning("Provider poller %s: cancelling job %s at its provider failed: %s", self.name, watch.job_id, error)
            return False

    async def _last_word(self, client, adapter, provider, watch) -> Status | None:
        """A cancel the provider confirmed may mean the job had already ended there: its status, if it
        says the job succeeded (that answer came first, and stands); None otherwise, or when it cannot
        be asked."""
        try:
            request = watch.request or adapter.status_request(client, provider, watch)  # the poll's own, once built
            status = await adapter.ask(client, provider, watch, request=request, timeout=provider_client.CANCEL_TIMEOUT)
        except Exception:
            return None
        return status if status.state == "succeeded" else None

    async def _orphan_close(self, client, watch, provider) -> store.Ending:
        """A run in flight whose job no longer runs at its attempt (ended without it: hand-written SQL,
        an older release): cancelled at the provider, closed, and said so. Its job's end stands."""
        confirmed = await self._cancel(client, adapter_of(provider.kind), provider, watch)
        logger.warning(
            "Provider poller %s: job %s ended while its attempt %s was still at the provider as %s; cancelled it there "
            "(%s) and closed its run", self.name, watch.job_id, watch.attempt, watch.provider_job_id,
            "confirmed" if confirmed else "not confirmed: the provider's job may still run")
        return self._ending(watch, Status("cancelled"), orphan=True,
                            error="its job had ended; cancelled at the provider" + ("" if confirmed else " (not confirmed)"))

    def _ending(self, watch, status: Status, *, error: str | None = None, orphan: bool = False) -> store.Ending:
        return store.Ending(watch.run_id, status, watcher=self.name, fence=watch.fence, error=error, orphan=orphan)

    async def _flush_endings(self, *, last: bool = False) -> None:
        """Report the outcomes that came in, and store what providers said of the jobs still at them.
        `last`: the stopping poller's final reports, which start nothing (store.runs_end's `starts`)."""
        if self._seen:
            seen, self._seen = list(self._seen.values()), {}
            try:
                await self._in_db(store.runs_seen, seen)
            except (DatabaseError, InterfaceError) as error:  # stored with the next batch (unless newer news came)
                logger.warning("Provider poller %s: could not store what providers said (%s)", self.name, error)
                for one in seen:
                    self._seen.setdefault(one.run_id, one)
        if not self._endings:
            return
        endings, self._endings = self._endings, []
        try:
            ended = await self._in_db(store.runs_end, endings, starts=not last)
        except Exception as error:  # the database away (or worse): nothing is lost, they are reported again
            (logger.warning if isinstance(error, (DatabaseError, InterfaceError)) else logger.exception)(
                "Provider poller %s: could not report %s outcome(s) (%s); trying again in 1 s", self.name, len(endings), error)
            self._endings = endings + self._endings
            await self._in_db(connections.close_all)
            await asyncio.sleep(1.0)
            return
        self._wakeup.set()  # what came in meanwhile goes next
        self.counts["ended"] += len(ended)
        for run_id in ended:
            self.watched.pop(run_id, None)
        for ending in endings:
            if ending.run_id not in ended:
                self.watched.pop(ending.run_id, None)  # ended elsewhere or taken over: not ours

    async def _provider(self, watch: store.Watched) -> Provider:
        """The catalog's word on a run's provider (read again every 30 s). A model deleted from the
        catalog, or no longer on the http runner, while its job was at the provider: its job is asked
        about as before (as last known, else at its status URL with no credential, whose refusal ends it)."""
        provider = self._providers.get(watch.model)
        if provider is None:
            model = await self._in_db(CatalogModel.objects.filter(name=watch.model).first)
            provider = runner_call(model, job_id=watch.job_id, prompt="").provider if model is not None else None
            if provider is None or not provider.url:
                provider = self._last_known.get(watch.model) or Provider(url=watch.status_url, style=watch.style)
                logger.warning("Provider poller %s: the catalog has no http model %s any more; its job %s is asked "
                               "about as before", self.name, watch.model, watch.job_id)
            self._providers[watch.model] = self._last_known[watch.model] = provider
        return provider

