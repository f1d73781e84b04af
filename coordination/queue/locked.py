"""The coordinator's decisions, made while it holds the coordinator lock.

`LockedQueue` is built inside `transaction.atomic()`: it locks every slot row (`select_for_update`,
id order, so two coordinators never deadlock) and then reads the running jobs. Everything it decides
(start, block, dispatch, by the rules in rules.py) is written in that same transaction, with its
audit row, and the worker task is enqueued only after commit. The services (services/) are the only
callers.

What a running job holds is read from `jobs` (status running), not from the slot rows: slot rows are
the display and the lock. So a hand-edited `job_queue_state` (the usage guide's reset SQL) can make a
slot look free, but it can never make the coordinator start a second job on a model in use.

Cost: a decision reads the running jobs (at most one per slot), one or two index probes per model
involved, and the waiting-jobs counter; never the whole line. So a completion costs the same whether
ten or a hundred thousand jobs wait (docs/design.md, "Cost").
"""

import logging
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from coordination.kinds import job_blocked_changed
from coordination.models import Job, JobLine, JobQueueCounter, JobQueueLog, JobQueueState
from coordination.queue.fair import next_turn, owner_key, shares_enter, shares_leave, shares_started
from coordination.queue.lines import line, line_position
from coordination.queue.rules import QueueRules, Verdict
from coordination.queue.words import NO_BLOCKER, NO_WORKER, say
from coordination.exceptions import LineFull
from coordination.transitions import job_cancelled_waiting, job_expired, job_handed_back, job_requeued, job_started

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

    def locked():
        return list(JobQueueState.objects.select_for_update().order_by("id"))

    slots = locked()
    if sum(1 for slot in slots if slot.id <= slot_count) < slot_count:
        # First use, or the slot count grew: create the missing rows, then lock them all.
        JobQueueState.objects.bulk_create([JobQueueState(id=i) for i in range(1, slot_count + 1)], ignore_conflicts=True)
        slots = locked()
    return slots


_LOCK_SQL: list[tuple[str, tuple]] = []


def slot_ids_lock(slot_count: int) -> list[int]:
    """The same lock for the PostgreSQL fast path, which needs only that it is held: the slot ids,
    `select_for_update` in id order. Django builds the statement once and it is sent as it is
    afterwards (building the queryset cost more than the round trip)."""
    if not _LOCK_SQL:
        query = JobQueueState.objects.select_for_update().order_by("id").values_list("id", flat=True).query
        _LOCK_SQL.append(query.get_compiler(using=connection.alias).as_sql())
    sql, params = _LOCK_SQL[0]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = [row[0] for row in cursor.fetchall()]
    if sum(1 for slot_id in ids if slot_id <= slot_count) < slot_count:
        return [slot.id for slot in slots_lock(slot_count)]  # first use, or the slot count grew
    return ids


class LockedQueue(QueueRules):
    def __init__(self, *, take_next: bool = False, starts: bool = True) -> None:
        if not transaction.get_connection().in_atomic_block:
            raise RuntimeError("LockedQueue must be used inside transaction.atomic()")
        self.slot_count = settings.COORDINATOR_MAX_ACTIVE_JOBS
        self.slots = self._lock_slots()
        # Bounded by the slot count: only running jobs are read.
        self.running: dict = {
            job.job_id: job for job in Job.objects.filter(status=Job.Status.RUNNING).order_by("started_at", "job_id")
        }
        # One instant for the whole transition: every job it starts, queues or ends shows the same time.
        self.now = timezone.now()
        self._capacities: dict[str, int] | None = None
        self._paused: set[str] | None = None
        self._groups = None
        # A worker finishing a job may take the first job that finish starts, and run it at once
        # instead of waiting for the broker to deliver it (see tasks.run_job).
        self.take_next = take_next
        self.taken: Job | None = None
        # False for a stopping worker's report: it frees what its job held and starts nothing; a job
        # that may start waits, saying so, for the next worker (docs/design.md, I2).
        self.starts = starts
        self._pending: int | None = None
        self._turns = 0  # starts on fair lines made in this transaction

    def _lock_slots(self) -> list[JobQueueState]:
        return slots_lock(self.slot_count)

    # --- the waiting-jobs counter ---------------------------------------------------------------

    def _count_pending(self, delta: int) -> int:
        """Move the counter and return its new value, in one statement."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {JobQueueCounter._meta.db_table} SET pending = pending + %s WHERE id = 1 RETURNING pending",
                [delta],
            )
            row = cursor.fetchone()
        self._pending = row[0] if row else self.recount_pending()
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

    # --- changing it ----------------------------------------------------------------------------

    def admit(self, job: Job, *, newest: bool = True) -> None:
        """Start a newly accepted job, or queue it with its blocking info. `newest`: it is the last
        accepted (False for a job that took a replaced job's place in line).

        A job that would wait in a line already holding its model's `max_waiting` jobs is refused
        (LineFull, without its Retry-After: no estimate is read under the lock): the caller's
        transaction rolls back, so nothing of it remains."""
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
                job.save(update_fields=["queue_position"])

    def _line_limits_check(self, job: Job) -> None:
        for model in job.required_models:
            limit = self.max_waiting.get(model)
            if limit is None:
                continue
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
        job_cancelled_waiting(job, now=self.now, reason=reason)
        self.leave_line(job)
        self._mirror_blocker(job)
        say("ended", job.job_id, Job.Status.CANCELLED)
        JobQueueLog.objects.record(event_type=JobQueueLog.Event.CANCELLED, job=job, details={**details, "reason": reason})

    def expire_due(self) -> list:
        """End every waiting job whose start-by deadline has passed (`expired`), and re-point the jobs
        that named one of them. Called before any dispatch, so a job never starts after its deadline."""
        due = list(line().filter(start_by__lte=self.now).order_by("start_by")[:1000])
        for job in due:
            job_expired(job, now=self.now)
            self.leave_line(job)
            self._mirror_blocker(job)
            say("ended", job.job_id, Job.Status.EXPIRED)
            JobQueueLog.objects.record(
                event_type=JobQueueLog.Event.EXPIRED, job=job, details={"start_by": job.start_by.isoformat()}
            )
        ids = [job.job_id for job in due]
        if ids:
            for waiter in line().filter(blocked_by_job_id__in=ids):
                self.reassess(waiter)
        return ids

    def enter_line(self, job: Job) -> None:
        held = bool(self.paused) and bool(self.paused_among(job.required_models))
        if held != job.held:
            job.held = held
            job.save(update_fields=["held"])
        JobLine.objects.bulk_create(
            [
                JobLine(job_id=job.job_id, model=model, priority=job.priority, created_at=job.created_at, held=held,
                        owner_key=owner_key(job))
                for model in job.required_models
            ]
        )
        shares_enter(job, self._fair_of(job))
        self._count_pending(+1)

    def leave_line(self, job: Job) -> None:
        """A waiting job started or was cancelled (its new status already saved): it leaves every
        line it stood in."""
        JobLine.objects.filter(job_id=job.job_id).delete()
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
        job_started(job, now=now, claimed=taken)
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
        slot.save()
        self.running[job.job_id] = job
        self._mirror_blocker(job)
        say("set_active", job.job_id, job.kind, job.required_models)
        events = [(JobQueueLog.Event.STARTED, {"slot": slot.id, "attempt": job.attempt, "models": job.required_models})]
        if taken:
            # The finishing worker runs it next; nothing to deliver. Should that worker die, the job
            # is claimed and running, exactly as if its own task had been delivered and then died.
            self.taken = job
            events.append((JobQueueLog.Event.CLAIMED, {"attempt": job.attempt, "handoff": True}))
        JobQueueLog.objects.record_many(job=job, events=events)
        if not taken:
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
        job.save(update_fields=fields)
        self._mirror_blocker(job)
        blocked_by = job.blocked_by_job_id or (NO_WORKER if verdict.reason == WAITS_FOR_WORKER else NO_BLOCKER)
        if first:
            say("blocked", job.job_id, verdict.reason)
            say("marked_queued", job.job_id, blocked_by)
            event = JobQueueLog.Event.BLOCKED
        else:
            say("still_queued", job.job_id, blocked_by, verdict.reason)
            event = JobQueueLog.Event.REBLOCKED
        JobQueueLog.objects.record(
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
        job_requeued(job)
        self.enter_line(job)

    def hand_back(self, job: Job) -> None:
        """A stopping worker gives its running job back: in line again at its old place, as requeue
        does, and its attempt not counted (transitions.job_handed_back)."""
        self.release(job)
        job_handed_back(job)
        self.enter_line(job)

    def release(self, job: Job) -> None:
        """Free the slot a finishing job held (if any still names it)."""
        self.running.pop(job.job_id, None)
        for slot in self.slots:
            if slot.active_job_id == job.job_id:
                self.empty_slot(slot)

    @staticmethod
    def empty_slot(slot: JobQueueState) -> None:
        """Show the slot free (it is one of the locked rows: callers hold the lock)."""
        slot.active_job_id = None
        slot.active_job_type = None
        slot.active_models = []
        slot.started_at = None
        slot.save()

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
        for waiter in line().filter(blocked_by_job_id__in=finished_job_ids):
            if self.reassess(waiter):
                started.append(waiter)
        return started

    def reassess(self, job: Job) -> bool:
        """Decide again for a job already in line: start it, or record what it waits for now."""
        verdict = self.assess(job)
        if verdict.can_start and not self.starts:
            verdict = Verdict(can_start=False, reason=WAITS_FOR_WORKER)
        if verdict.can_start:
            say("starting_next", job.job_id)
            self.start(job)
            return True
        self.block(job, verdict, first=False)
        return False

    @staticmethod
    def _mirror_blocker(job: Job) -> None:
        job_blocked_changed(job)  # a workflow's execution row mirrors it (registered by workflows)
