"""The coordinator's decisions, made while it holds the coordinator lock.

`LockedQueue` is opened inside `transaction.atomic()` (`with LockedQueue(...) as queue:`): it locks
every slot row (`FOR UPDATE`, id order, so two coordinators never deadlock). A hot transition (a
submit, a worker's report, a cancel: `snapshot=True`) takes the lock and reads everything its
decisions need in one statement (queue/snapshot.py) and decides in memory; the others lock, read the
running jobs and ask the database as the rules go. Everything it decides (start, block, dispatch, by the rules in
rules.py) is kept in memory with its audit rows (coordination/writes.py) and written in one statement
when the queue closes, before COMMIT; the worker task is enqueued only after commit. The services
(services/) are the only callers.

What a running job holds is read from `jobs` (status running), not from the slot rows: slot rows are
the display and the lock. So a hand-edited `job_queue_state` (the usage guide's reset SQL) can make a
slot look free, but it can never make the coordinator start a second job on a model in use.

Cost: a decision reads the running jobs (at most one per slot), a few rows of each line's head, one
or two index probes per job concerned, and the waiting-jobs counter; never the whole line. So a
completion costs the same whether ten or a hundred thousand jobs wait (docs/design.md, "Cost"): on
the hot transitions, two statements (the lock with the snapshot, the writes).
"""

import logging
import uuid
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from coordination.kinds import job_blocked_changed
from coordination.models import CatalogModel, Job, JobLine, JobQueueCounter, JobQueueLog, JobQueueState
from coordination.queue.fair import next_turn, owner_key, shares_enter, shares_leave, shares_started
from coordination.queue.groups import groups_from_rows
from coordination.queue.lines import line, line_key, line_position, owner_waiting
from coordination.queue.rules import CATALOG_FIELDS, QueueRules, Verdict
from coordination.queue.snapshot import DEADLINES, UNKNOWN, WINDOW, Arrival, Entry, Snapshot, after_all_of
from coordination.queue.words import NO_BLOCKER, NO_WORKER, say
from coordination.exceptions import LineFull
from coordination.transitions import (
    job_cancelled_waiting, job_expired, job_handed_back, job_requeued, job_started, max_attempts_of,
)
from coordination.webhook_targets import webhooks_wake
from coordination.writes import Writes

logger = logging.getLogger("job_coordinator")

# Why a job that may start by the rules waits: a stopping worker ended or gave back a job and starts
# nothing (docs/design.md, I2); the next worker starts it when it starts (its first reaper pass).
WAITS_FOR_WORKER = "Waiting for a worker: the worker that freed its models was stopping"


def enqueue_job_run(job_id, attempt: int) -> None:
    # Imported here: django_q's task module reads its settings at import time.
    from django_q.tasks import async_task

    async_task(
        "coordination.tasks.run_job",
        str(job_id),
        attempt,
        task_name=f"job {job_id} attempt {attempt}",
        q_options={"ack_failure": True},
    )


def slots_lock(slot_count: int) -> list[JobQueueState]:
    """The coordinator lock: every slot row, `select_for_update` in id order (so two coordinators never
    deadlock). Also any row beyond the slot count (a job may still run in one after the setting
    shrank): releasing it must clear it. Only ids <= the count take new jobs."""
    slots = _locked_slots()
    if sum(1 for slot in slots if slot.id <= slot_count) < slot_count:
        # First use, or the slot count grew: create the missing rows, then lock them all.
        JobQueueState.objects.bulk_create([JobQueueState(id=i) for i in range(1, slot_count + 1)], ignore_conflicts=True)
        slots = _locked_slots()
    return slots


_LOCK_SQL: list[tuple[str, tuple]] = []


def takes_the_lock(sql: str, params) -> bool:
    """Whether a statement as sent (`sql` with its `params`: an execute wrapper's view) takes the
    coordinator lock: the slot rows' own SELECT ... FOR UPDATE, or a read that takes it (jq_snapshot)."""
    table = JobQueueState._meta.db_table
    return (f'FROM "{table}"' in sql and "FOR UPDATE" in sql) or (sql.startswith("SELECT jq_snapshot(") and bool(params[0]))


def _locked_slots() -> list[JobQueueState]:
    """Django builds the statement once and it is sent as it is afterwards (building the queryset
    cost more than the round trip); the rows become instances as a queryset's would."""
    fields = JobQueueState._meta.concrete_fields
    if not _LOCK_SQL:
        query = JobQueueState.objects.select_for_update().order_by("id").only(*(field.attname for field in fields)).query
        _LOCK_SQL.append(query.get_compiler(using=connection.alias).as_sql())
    sql, params = _LOCK_SQL[0]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    converters = [getattr(field, "from_db_value", None) for field in fields]
    names = [field.attname for field in fields]
    return [
        JobQueueState.from_db(connection.alias, names, [
            convert(value, None, connection) if convert is not None else value for convert, value in zip(converters, row)
        ])
        for row in rows
    ]


class LockedQueue(QueueRules):
    def __init__(
        self, *, take_next: bool = False, starts: bool = True, snapshot: bool = False, ending=(),
        arriving: list[Arrival] = (), owner=None, ends_transaction: bool = False,
    ) -> None:
        """`snapshot`: read what the decisions need in one statement (queue/snapshot.py): for a
        transition that ends the jobs `ending` (their waiters are read), or admits `arriving` jobs of
        `owner` (the probes their admission needs). Without it, the rules ask the database as they go.

        `ends_transaction`: the caller's transaction ends as the queue closes (`with
        transaction.atomic(), LockedQueue(...)`, nothing after it in the block). Then, where that
        block is the outermost, the last write carries the COMMIT (Writes.flush): the lock is let go
        one round trip sooner, and the transitions waiting for it start that much sooner."""
        if not transaction.get_connection().in_atomic_block:
            raise RuntimeError("LockedQueue must be used inside transaction.atomic()")
        self.slot_count = settings.COORDINATOR_MAX_ACTIVE_JOBS
        self._capacities: dict[str, int] | None = None
        self._paused: set[str] | None = None
        self._groups = None
        self._max_attempts: dict[str, int] | None = None
        self._pending: int | None = None
        self.snapshot: Snapshot | None = None
        self.ending = {uuid_of(job_id) for job_id in ending} - {None}
        if snapshot:
            limit = settings.COORDINATOR_MAX_PENDING_PER_USER
            limited = owner is not None and not owner.is_staff and bool(limit)
            read = partial(
                Snapshot.read, window=min(self.slot_count + 1, WINDOW), ending=self.ending, arriving=list(arriving),
                owner_id=owner.pk if owner is not None else None, owner_limit=limit if limited else None,
            )
            # The lock and the read in one statement.
            self.snapshot = read(lock=True)
            self.slots = self.snapshot.slots
            if sum(1 for slot in self.slots if slot.id <= self.slot_count) < self.slot_count:
                # First use, or more slots now: the rows are made and locked, then read again under the lock.
                self.slots = self._lock_slots()
                self.snapshot = read(lock=False)
            self.jobs: dict = self.snapshot.jobs
            running = self.jobs.running()
            self.running = {job.job_id: job for job in sorted(running, key=lambda job: (job.started_at, job.job_id))}
            catalog = self.snapshot.catalog.values()
            self.take_catalog([tuple(row[field] for field in CATALOG_FIELDS) for row in catalog],
                              groups_from_rows(self.snapshot.group_rows))
            self._max_attempts = {row["name"]: row["max_attempts"] for row in catalog}
            self._pending = self.snapshot.pending
        else:
            self.slots = self._lock_slots()
            # Bounded by the slot count: only running jobs are read.
            self.running = {
                job.job_id: job for job in Job.objects.filter(status=Job.Status.RUNNING).order_by("started_at", "job_id")
            }
            self.jobs = dict(self.running)
        # One instant for the whole transition, read once the lock is held (so the times of the
        # transitions follow the lock's order): every job it starts, queues or ends shows it.
        self.now = timezone.now()
        # A worker finishing a job may take the first job that finish starts, and run it at once
        # instead of waiting for the broker to deliver it (see tasks.run_job).
        self.take_next = take_next
        self.taken: Job | None = None
        # False for a stopping worker's report: it frees what its job held and starts nothing; a job
        # that may start waits, saying so, for the next worker (docs/design.md, I2).
        self.starts = starts
        self._turns = 0  # starts on fair lines made in this transaction
        self.touched: dict = {}  # jobs whose line or wait changed in this transaction
        self.writes = Writes()
        self._flushing = False
        self._woken = False  # the webhook sender is woken after commit
        self.ends_transaction = ends_transaction
        connection.execute_wrappers.append(self._flush_first)

    def _lock_slots(self) -> list[JobQueueState]:
        return slots_lock(self.slot_count)

    # --- what is written, and when ----------------------------------------------------------------

    def __enter__(self) -> "LockedQueue":
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is None:
                # Django's own COMMIT, once this has committed, finds no transaction open and sends
                # nothing; its on_commit callbacks run as after any commit.
                self.flush(commit=self.ends_transaction and len(connection.atomic_blocks) == 1
                           and not connection.needs_rollback)
        finally:
            if self._flush_first in connection.execute_wrappers:
                connection.execute_wrappers.remove(self._flush_first)

    def flush(self, *, commit: bool = False) -> None:
        """Send what this transition wrote so far (one statement; none if nothing waits); with
        `commit`, the transaction's COMMIT in the same round trip."""
        if not self.writes:
            return
        self._flushing = True
        try:
            with connection.cursor() as cursor:
                delivered = self.writes.flush(cursor, commit=commit)
        finally:
            self._flushing = False
        if delivered and not self._woken:  # the changes made webhook deliveries: sent once this commits
            transaction.on_commit(webhooks_wake)
            self._woken = True

    def _flush_first(self, execute, sql, params, many, context):
        """Every other statement on this connection, while the queue is open, sees what it wrote."""
        if self.writes and not self._flushing:
            self.flush()
        return execute(sql, params, many, context)

    def record(self, *, event_type: str, job: Job | None = None, conflict_reason: str | None = None,
               details: dict | None = None) -> None:
        """An audit row, written with the transition's other changes (JobQueueLog.objects.record's fields)."""
        self.writes.insert(
            JobQueueLog.of(event_type=event_type, job=job, conflict_reason=conflict_reason, details=details), last=True,
        )

    def known(self, job: Job) -> Job:
        """The instance this transition decides with for `job` (one per job, so that what it changed in
        memory is what every rule reads): a job read from the database again is the one read before."""
        return self.jobs.setdefault(job.job_id, job)

    def _view(self, model: str | None):
        return self.snapshot.lines.get(model) if self.snapshot is not None else None

    def _held(self, job_id) -> bool:
        job = self.jobs.get(job_id)
        return job is None or job.held

    def _job_of(self, found) -> Job | None:
        return None if found is None else self.jobs[found.job_id]

    # --- the lines: from the snapshot first (rules.QueueRules asks the database) --------------

    def line_nearest(self, model: str | None, job: Job, *, new: bool, unheld: bool) -> Job | None:
        view = self._view(model)
        if view is not None:
            if new:
                found = view.nearest_ahead(
                    after_all_of(job.priority), lambda entry: entry.priority >= job.priority and entry.job_id != job.job_id,
                    f"new {job.priority}", self._held if unheld else _never,
                )
            else:
                key = line_key(job)
                found = view.nearest_ahead(key, lambda entry: entry.key < key, str(job.job_id), self._held if unheld else _never)
            if found is not UNKNOWN:
                return self._job_of(found)
        found = super().line_nearest(model, job, new=new, unheld=unheld)
        return None if found is None else self.known(found)

    def line_heads(self, models: list[str], *, unheld: bool) -> dict[str, Job | None]:
        heads, unknown = {}, []
        for model in models:
            view = self._view(model)
            found = view.head(self._held if unheld else _never) if view is not None else UNKNOWN
            if found is UNKNOWN:
                unknown.append(model)
            else:
                heads[model] = self._job_of(found)
        if unknown:
            heads.update({model: None if job is None else self.known(job)
                          for model, job in super().line_heads(unknown, unheld=unheld).items()})
        return heads

    def global_head(self, *, unheld: bool) -> Job | None:
        view = self._view(None)
        found = view.head(self._held if unheld else _never) if view is not None else UNKNOWN
        if found is not UNKNOWN:
            return self._job_of(found)
        head = super().global_head(unheld=unheld)
        return None if head is None else self.known(head)

    def fair_head(self, model: str, *, unheld: bool) -> Job | None:
        head = super().fair_head(model, unheld=unheld)
        return None if head is None else self.known(head)

    def fair_predecessor(self, job: Job, model: str) -> Job | None:
        ahead = super().fair_predecessor(job, model)
        return None if ahead is None else self.known(ahead)

    def _lines_changed(self, job: Job, *, joined: bool) -> None:
        """Keep the views in step: `job` joined (or left) its lines."""
        self.touched[job.job_id] = job
        if self.snapshot is None:
            return
        key = line_key(job)
        for model in [None, *job.required_models]:
            view = self._view(model)
            if view is None:
                continue
            if joined:
                view.add(Entry(key, job.job_id))
            else:
                view.remove(job.job_id, key)

    def waiting_behind(self, job_ids) -> list[Job]:
        """The waiting jobs that name one of `job_ids` as what they wait for, in line order."""
        ids = set(job_ids)
        if self.snapshot is not None and ids <= self.ending | set(self.snapshot.deadlines):
            candidates = {job_id: self.jobs[job_id] for job_id in self.snapshot.waiters}
            candidates.update(self.touched)
            return sorted(
                (job for job in candidates.values() if job.status == Job.Status.PENDING and job.blocked_by_job_id in ids),
                key=line_key,
            )
        return [self.known(job) for job in line().filter(blocked_by_job_id__in=list(ids))]

    # --- the catalog ------------------------------------------------------------------------

    def max_attempts(self, job: Job) -> int:
        """How many attempts `job` may have (transitions.max_attempts_of), as the catalog read says."""
        if self._max_attempts is None:
            self._max_attempts = dict(CatalogModel.objects.values_list("name", "max_attempts"))
        return max_attempts_of(job, self._max_attempts)

    def catalog_changed(self) -> None:
        super().catalog_changed()
        self._max_attempts = None

    # --- the waiting-jobs counter ---------------------------------------------------------------

    def _count_pending(self, delta: int) -> int:
        """Move the counter (written with the transition) and return its new value."""
        if self._pending is None:
            counter = JobQueueCounter.objects.filter(id=1).first()
            if counter is None:
                return self.recount_pending()  # the jobs as they are now: this change included
            self._pending = counter.pending
        self._pending += delta
        self.writes.update(JobQueueCounter(id=1, pending=self._pending), ["pending"], last=True)
        return self._pending

    def pending_count(self) -> int:
        if self._pending is None:
            counter = JobQueueCounter.objects.filter(id=1).first()
            self._pending = counter.pending if counter else self.recount_pending()
        return self._pending

    def recount_pending(self) -> int:
        """Set the counter from the jobs themselves (first use, or a repair); this one counts."""
        self._pending = Job.objects.filter(status=Job.Status.PENDING).count()
        JobQueueCounter.objects.update_or_create(id=1, defaults={"pending": self._pending})
        return self._pending

    def owner_waiting(self, owner, limit: int) -> int:
        """How many of `owner`'s jobs wait, counted up to `limit`."""
        if self.snapshot is not None and self.snapshot.owner_waiting is not None:
            return self.snapshot.owner_waiting
        return owner_waiting(owner, limit)

    def live_twin(self, job: Job) -> Job | None:
        """The live job of `job`'s owner with its dedupe_key, if any."""
        if self.snapshot is not None:
            twins = [self.jobs[job_id] for job_id in self.snapshot.twins]
            return next((twin for twin in twins if twin.dedupe_key == job.dedupe_key and twin.status in Job.LIVE), None)
        twin = Job.objects.filter(owner=job.owner, dedupe_key=job.dedupe_key, status__in=Job.LIVE).first()
        return None if twin is None else self.known(twin)

    # --- changing it ----------------------------------------------------------------------------

    def admit(self, job: Job, *, newest: bool = True) -> None:
        """Start a newly accepted job, or queue it with its blocking info. `newest`: it is the last
        accepted (False for a job that took a replaced job's place in line).

        A job that would wait in a line already holding its model's `max_waiting` jobs is refused
        (LineFull, without its Retry-After: no estimate is read under the lock): the caller's
        transaction rolls back, so nothing of it remains."""
        self.jobs[job.job_id] = job
        say("checking", job.job_id, job.required_models)
        verdict = self.assess(job, new=newest)
        if verdict.can_start:
            say("start_beside" if self.running else "start_idle", job.job_id)
            self.start(job, waiting=False)
        else:
            self._line_limits_check(job)
            self.enter_line(job)
            self.block(job, verdict, first=True)
            if not newest:  # it stands where an earlier job stood: its place is counted, not the last
                job.queue_position = line_position(job)
                self.writes.update(job, ["queue_position"])

    def _line_limits_check(self, job: Job) -> None:
        for model in job.required_models:
            limit = self.max_waiting.get(model)
            if limit is None:
                continue
            waiting = UNKNOWN
            if self.snapshot is not None and self._view(model) is not None:
                counted = self.snapshot.full_lines.get(model)
                view = self._view(model)
                if counted is not None and (counted < limit or not view.gone):
                    waiting = view.count_where(counted, lambda entry: True)
            if waiting is UNKNOWN:
                waiting = JobLine.objects.filter(model=model).order_by()[:limit].count()  # counts no further than the limit
            if waiting >= limit:
                logger.info(
                    "[COORDINATOR] Job %s refused: the line of %s is full (%s waiting, max_waiting %s)",
                    job.job_id, model, waiting, limit,
                )
                # Without its Retry-After: the service adds that estimate after the rollback.
                raise LineFull(
                    f"The line of {model} is full: {waiting} jobs wait and its limit (max_waiting) is {limit}.",
                    model=model, field="model",
                )

    def cancel_waiting(self, job: Job, *, reason: str, details: dict) -> None:
        """End a waiting job as cancelled (`reason` is its error): out of its lines, said, audited with
        `details`. The caller re-points the jobs that named it (settle_after) when it is done."""
        job = self.known(job)
        job_cancelled_waiting(job, now=self.now, reason=reason, writes=self.writes)
        self.leave_line(job)
        self._mirror_blocker(job)
        say("ended", job.job_id, Job.Status.CANCELLED)
        self.record(event_type=JobQueueLog.Event.CANCELLED, job=job, details={**details, "reason": reason})

    def _due(self) -> list[Job]:
        """The waiting jobs whose start-by deadline has passed, the earliest first (at most 1,000)."""
        read = [self.jobs[job_id] for job_id in self.snapshot.deadlines] if self.snapshot is not None else []
        if self.snapshot is not None and (len(read) < DEADLINES or max(job.start_by for job in read) > self.now):
            # Every waiting job whose deadline passed was read (and those that changed since are known).
            due = {job.job_id: job for job in read}
            due.update(self.touched)
            return sorted(
                (job for job in due.values()
                 if job.status == Job.Status.PENDING and job.start_by is not None and job.start_by <= self.now),
                key=lambda job: job.start_by,
            )
        return [self.known(job) for job in line().filter(start_by__lte=self.now).order_by("start_by")[:1000]]

    def expire_due(self) -> list:
        """End every waiting job whose start-by deadline has passed (`expired`), and re-point the jobs
        that named one of them. Called before any dispatch, so a job never starts after its deadline."""
        due = self._due()
        for job in due:
            job_expired(job, now=self.now, writes=self.writes)
            self.leave_line(job)
            self._mirror_blocker(job)
            say("ended", job.job_id, Job.Status.EXPIRED)
            self.record(event_type=JobQueueLog.Event.EXPIRED, job=job, details={"start_by": job.start_by.isoformat()})
        ids = [job.job_id for job in due]
        if ids:
            for waiter in self.waiting_behind(ids):
                self.reassess(waiter)
        return ids

    def enter_line(self, job: Job) -> None:
        held = bool(self.paused) and bool(self.paused_among(job.required_models))
        if held != job.held:
            job.held = held
            self.writes.update(job, ["held"])
        for model in job.required_models:
            self.writes.insert(JobLine(job_id=job.job_id, model=model, priority=job.priority, created_at=job.created_at,
                                       held=held, owner_key=owner_key(job)))
        self._lines_changed(job, joined=True)
        shares_enter(job, self._fair_of(job))
        self._count_pending(+1)

    def leave_line(self, job: Job) -> None:
        """A waiting job started or was cancelled (its new status already saved): it leaves every
        line it stood in."""
        self.writes.delete(JobLine, "job_id", job.job_id)
        self._lines_changed(job, joined=False)
        shares_leave(job, self._fair_of(job))
        self._count_pending(-1)

    def _fair_of(self, job: Job) -> list[str]:
        return [model for model in job.required_models if model in self.fair_models] if self.fair_models else []

    def start(self, job: Job, *, waiting: bool = True) -> None:
        """Occupy a slot with `job`; `waiting` is False only for a job admitted straight away."""
        slot = self.free_slot()
        assert slot is not None, "start() needs a free slot; assess() first"
        now = self.now
        taken = self.take_next and self.taken is None
        job_started(job, now=now, claimed=taken, writes=self.writes)
        if waiting:
            self.leave_line(job)
        fair = self._fair_of(job)
        if fair:
            shares_started(job, fair, turn=next_turn(now, self._turns))
            self._turns += 1
        slot.active_job_id = job.job_id
        slot.active_job_type = job.kind
        slot.active_models = list(job.required_models)
        slot.started_at = now
        self.writes.update(slot, last=True)
        self.running[job.job_id] = job
        self._mirror_blocker(job)
        say("set_active", job.job_id, job.kind, job.required_models)
        self.record(event_type=JobQueueLog.Event.STARTED, job=job,
                    details={"slot": slot.id, "attempt": job.attempt, "models": job.required_models})
        if taken:
            # The finishing worker runs it next; nothing to deliver. Should that worker die, the job
            # is claimed and running, exactly as if its own task had been delivered and then died.
            self.taken = job
            if self.snapshot is not None and job.model in self.snapshot.catalog:
                job.catalog_row = self.snapshot.catalog_model(job.model)  # its runner's call needs no read
            self.record(event_type=JobQueueLog.Event.CLAIMED, job=job, details={"attempt": job.attempt, "handoff": True})
        else:
            transaction.on_commit(partial(enqueue_job_run, job.job_id, job.attempt))

    def block(self, job: Job, verdict: Verdict, *, first: bool) -> None:
        previous = job.blocked_by_job_id
        job.blocked_by_job_id = verdict.blocker.job_id if verdict.blocker else None
        job.conflict_reason = verdict.reason
        fields = ["blocked_by_job_id", "conflict_reason"]
        if first or job.queued_at is None:
            job.queued_at = self.now
            job.queue_position = self._position_on_entry(job)
            fields += ["queued_at", "queue_position"]
        self.writes.update(job, fields)
        self.touched[job.job_id] = job
        self._mirror_blocker(job)
        blocked_by = job.blocked_by_job_id or (NO_WORKER if verdict.reason == WAITS_FOR_WORKER else NO_BLOCKER)
        if first:
            say("blocked", job.job_id, verdict.reason)
            say("marked_queued", job.job_id, blocked_by)
            event = JobQueueLog.Event.BLOCKED
        else:
            say("still_queued", job.job_id, blocked_by, verdict.reason)
            event = JobQueueLog.Event.REBLOCKED
        self.record(
            event_type=event,
            job=job,
            conflict_reason=verdict.reason,
            details={
                "blocked_by_job_id": str(job.blocked_by_job_id) if job.blocked_by_job_id else None,
                "previous": str(previous) if previous else None,
            },
        )

    def _position_on_entry(self, job: Job) -> int:
        """Its place in the global line when it joined (it is the newest at its priority): the
        counter, less the jobs of lower priority that now stand behind it."""
        view = self._view(None)
        if view is not None and self.snapshot.lower.get(job.priority) is False:
            # None waited below it when read: only those that joined since stand behind it.
            lower = view.count_where(0, lambda entry: entry.priority < job.priority)
            return self.pending_count() - lower
        behind = line().filter(priority__lt=job.priority)
        if not behind.exists():
            return self.pending_count()
        # Counting the (usually few) lower-priority jobs behind it, not everything ahead.
        return self.pending_count() - behind.count()

    def requeue(self, job: Job) -> None:
        """A running job whose attempt ended without an outcome (a failure it may retry, or a lost
        worker) goes back in line, at the place its acceptance gave it: no job that came later
        overtakes it. Its models are freed first."""
        self.release(job)
        job_requeued(job, writes=self.writes)
        self.enter_line(job)

    def hand_back(self, job: Job) -> None:
        """A stopping worker gives its running job back: in line again at its old place, as requeue
        does, and its attempt not counted (transitions.job_handed_back)."""
        self.release(job)
        job_handed_back(job, writes=self.writes)
        self.enter_line(job)

    def release(self, job: Job) -> None:
        """Free the slot a finishing job held (if any still names it)."""
        self.running.pop(job.job_id, None)
        for slot in self.slots:
            if slot.active_job_id == job.job_id:
                self.empty_slot(slot)

    def empty_slot(self, slot: JobQueueState) -> None:
        """Show the slot free (it is one of the locked rows: callers hold the lock)."""
        slot.active_job_id = None
        slot.active_job_type = None
        slot.active_models = []
        slot.started_at = None
        self.writes.update(slot, last=True)

    def dispatch(self, *, quiet_when_idle: bool = False) -> list[Job]:
        """Start every waiting job that may start now (docs/design.md, rules 1-3), in line order. `quiet_when_idle`:
        a pass that nothing prompted (the reaper's) does not say "No queued jobs"."""
        self.expire_due()
        if self.free_slot() is None or not self.starts:
            return []
        count = self.pending_count()
        if count == 0:
            if not quiet_when_idle:
                say("no_queued")
            return []
        say("found", count)
        started: list[Job] = []
        while self.free_slot() is not None:
            job = self._next_startable()
            if job is None:
                break
            say("starting_next", job.job_id)
            self.start(job)
            started.append(job)
        return started

    def settle_after(self, *finished_job_ids) -> list[Job]:
        """After jobs left the line or their slots: start what may start, re-point their waiters (docs/design.md, I2 and I4).

        Only jobs that named a finished job as their blocker are re-read: every other pending job
        still names a job that is running or pending.
        """
        started = self.dispatch()
        for waiter in self.waiting_behind(finished_job_ids):
            if waiter.status == Job.Status.PENDING and self.reassess(waiter):
                started.append(waiter)
        return started

    def reassess(self, job: Job) -> bool:
        """Decide again for a job already in line: start it, or record what it waits for now."""
        job = self.known(job)
        verdict = self.assess(job)
        if verdict.can_start and not self.starts:
            verdict = Verdict(can_start=False, reason=WAITS_FOR_WORKER)
        if verdict.can_start:
            say("starting_next", job.job_id)
            self.start(job)
            return True
        self.block(job, verdict, first=False)
        return False

    def _mirror_blocker(self, job: Job) -> None:
        job_blocked_changed(job, self.writes)  # a workflow's execution row mirrors it (registered by workflows)


def uuid_of(job_id):
    try:
        return job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        return None


def _never(job_id) -> bool:
    return False
