"""The coordinator's decisions, made while it holds the coordinator lock.

`LockedQueue` is built inside `transaction.atomic()`: it locks every slot row (`select_for_update`,
id order, so two coordinators never deadlock) and then reads the running jobs. Everything it decides
(start, block, dispatch) is written in that same transaction, with its audit row, and the worker
task is enqueued only after commit. Services in services.py are the only callers.

What a running job holds is read from `jobs` (status running), not from the slot rows: slot rows are
the display and the lock. So a hand-edited `job_queue_state` (the usage guide's reset SQL) can make a
slot look free, but it can never make the coordinator start a second job on a model in use.
"""

import logging
from collections import Counter
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from coordination.models import CatalogModel, Job, JobQueueLog, JobQueueState

logger = logging.getLogger("job_coordinator")

LINE_ORDER = ("-priority", "created_at", "job_id")


def line() -> QuerySet[Job]:
    """Pending jobs in line order: priority (higher first), then acceptance order."""
    return Job.objects.filter(status=Job.Status.PENDING).order_by(*LINE_ORDER)


def ahead_of(job: Job) -> Q:
    """Pending jobs that stand before `job` in line."""
    same_priority_earlier = Q(priority=job.priority) & (
        Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, job_id__lt=job.job_id)
    )
    return Q(status=Job.Status.PENDING) & (Q(priority__gt=job.priority) | same_priority_earlier)


def line_position(job: Job) -> int:
    return Job.objects.filter(ahead_of(job)).count() + 1


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


def models_repr(models) -> str:
    """A set of model names as the guide prints it: {'motion-2.0-fast'} (sorted, so stable)."""
    return "{" + ", ".join(repr(m) for m in sorted(models)) + "}"


@dataclass(frozen=True)
class Verdict:
    can_start: bool
    blocker: Job | None = None
    reason: str | None = None


class LockedQueue:
    def __init__(self) -> None:
        if not transaction.get_connection().in_atomic_block:
            raise RuntimeError("LockedQueue must be used inside transaction.atomic()")
        self.slot_count = settings.COORDINATOR_MAX_ACTIVE_JOBS
        self.slots = self._lock_slots()
        # Bounded by the slot count: only running jobs are read.
        self.running: dict = {
            job.job_id: job for job in Job.objects.filter(status=Job.Status.RUNNING).order_by("started_at")
        }
        self.capacities = dict(CatalogModel.objects.values_list("name", "capacity"))

    def _lock_slots(self) -> list[JobQueueState]:
        def locked():
            return list(
                JobQueueState.objects.select_for_update().filter(id__lte=self.slot_count).order_by("id")
            )

        slots = locked()
        if len(slots) < self.slot_count:
            # First use, or the slot count grew: create the missing rows, then lock them all.
            JobQueueState.objects.bulk_create(
                [JobQueueState(id=i) for i in range(1, self.slot_count + 1)], ignore_conflicts=True
            )
            slots = locked()
        return slots

    # --- reading the locked state ---------------------------------------------------------------

    def capacity(self, model: str) -> int:
        return self.capacities.get(model, 1)

    def models_in_use(self) -> Counter:
        return Counter(model for job in self.running.values() for model in job.required_models)

    def free_slot(self) -> JobQueueState | None:
        if len(self.running) >= self.slot_count:
            return None
        for slot in self.slots:
            if slot.active_job_id is None or slot.active_job_id not in self.running:
                return slot
        return None

    def conflicts(self, models) -> list[tuple[str, Job]]:
        """(model, a running job holding it) for each of `models` that has no free capacity."""
        in_use = self.models_in_use()
        found = []
        for model in models:
            if in_use[model] >= self.capacity(model):
                holder = next(job for job in self.running.values() if model in job.required_models)
                found.append((model, holder))
        return found

    def predecessor(self, job: Job) -> Job | None:
        """The nearest pending job ahead of `job` that it must wait behind (rule 3).

        In serialized mode that is simply the job before it (global FIFO); with more slots, the
        nearest earlier job that needs one of its models.
        """
        nearest_first = Job.objects.filter(ahead_of(job)).order_by("priority", "-created_at", "-job_id")
        if self.slot_count == 1:
            return nearest_first.first()
        wanted = set(job.required_models)
        for candidate in nearest_first.only("job_id", "kind", "required_models").iterator(chunk_size=500):
            if wanted.intersection(candidate.required_models):
                return candidate
        return None

    def assess(self, job: Job) -> Verdict:
        """May `job` start now? If not, which job it waits for and why, in words."""
        conflicts = self.conflicts(job.required_models)
        if conflicts:
            logger.info("[COORDINATOR] Model conflict detected: %s", models_repr(m for m, _ in conflicts))

        ahead = self.predecessor(job)
        if ahead is not None:
            shared = [m for m in job.required_models if m in ahead.required_models]
            if shared:
                reason = f"Waiting in line for {', '.join(shared)} behind {ahead.kind} job {ahead.job_id}"
            else:
                reason = f"Serialized mode: one job at a time; waiting in line behind {ahead.kind} job {ahead.job_id}"
            return Verdict(False, ahead, reason)

        if conflicts:
            reason = "Model conflict: " + "; ".join(
                f"{model} in use by {holder.kind} job {holder.job_id}" for model, holder in conflicts
            )
            return Verdict(False, conflicts[0][1], reason)

        if self.free_slot() is None:
            holder = next(iter(self.running.values()))
            if self.slot_count == 1:
                models = ", ".join(holder.required_models)
                reason = f"Serialized mode: one job at a time; {holder.kind} job {holder.job_id} is running ({models})"
            else:
                reason = f"All {self.slot_count} slots are busy; waiting for a slot (longest running: {holder.kind} job {holder.job_id})"
            return Verdict(False, holder, reason)
        return Verdict(True)

    # --- changing it ----------------------------------------------------------------------------

    def admit(self, job: Job) -> None:
        """Start a newly accepted job, or queue it with its blocking info."""
        logger.info("[COORDINATOR] Checking if job %s can start - Models: %s", job.job_id, job.required_models)
        verdict = self.assess(job)
        if verdict.can_start:
            if self.running:
                logger.info("[COORDINATOR] No model conflict - %s can start immediately", job.job_id)
            else:
                logger.info("[COORDINATOR] No active job - %s can start immediately", job.job_id)
            self.start(job)
        else:
            self.block(job, verdict, first=True)

    def start(self, job: Job) -> None:
        slot = self.free_slot()
        assert slot is not None, "start() needs a free slot; assess() first"
        now = timezone.now()
        job.status = Job.Status.RUNNING
        job.started_at = now
        job.attempt += 1
        job.blocked_by_job_id = None
        job.conflict_reason = None
        job.save(update_fields=["status", "started_at", "attempt", "blocked_by_job_id", "conflict_reason"])
        slot.active_job_id = job.job_id
        slot.active_job_type = job.kind
        slot.active_models = list(job.required_models)
        slot.started_at = now
        slot.save()
        self.running[job.job_id] = job
        self._mirror_blocker(job)
        logger.info(
            "[COORDINATOR] Set active job: %s (%s) - Models: %s", job.job_id, job.kind, job.required_models
        )
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.STARTED,
            job=job,
            details={"slot": slot.id, "attempt": job.attempt, "models": job.required_models},
        )
        transaction.on_commit(partial(enqueue_job_run, job.job_id, job.attempt))

    def block(self, job: Job, verdict: Verdict, *, first: bool) -> None:
        previous = job.blocked_by_job_id
        job.blocked_by_job_id = verdict.blocker.job_id
        job.conflict_reason = verdict.reason
        fields = ["blocked_by_job_id", "conflict_reason"]
        if first or job.queued_at is None:
            job.queued_at = timezone.now()
            job.queue_position = line_position(job)
            fields += ["queued_at", "queue_position"]
        job.save(update_fields=fields)
        self._mirror_blocker(job)
        if first:
            logger.info("[COORDINATOR] Job %s blocked: %s", job.job_id, verdict.reason)
            logger.info("[COORDINATOR] Marked job %s as queued (blocked by %s)", job.job_id, job.blocked_by_job_id)
            event = JobQueueLog.Event.BLOCKED
        else:
            logger.info(
                "[COORDINATOR] Job %s still queued (blocked by %s): %s", job.job_id, job.blocked_by_job_id, verdict.reason
            )
            event = JobQueueLog.Event.REBLOCKED
        JobQueueLog.objects.record(
            event_type=event,
            job=job,
            conflict_reason=verdict.reason,
            details={"blocked_by_job_id": str(job.blocked_by_job_id), "previous": str(previous) if previous else None},
        )

    def release(self, job: Job) -> None:
        """Free the slot a finishing job held (if any still names it)."""
        self.running.pop(job.job_id, None)
        for slot in self.slots:
            if slot.active_job_id == job.job_id:
                slot.active_job_id = None
                slot.active_job_type = None
                slot.active_models = []
                slot.started_at = None
                slot.save()

    def dispatch(self) -> list[Job]:
        """Start, in line order, every pending job that may start now (rules 1-3)."""
        if self.free_slot() is None:
            return []
        waiting = line()
        count = waiting.count()
        if count == 0:
            logger.info("[COORDINATOR] No queued jobs")
            return []
        logger.info("[COORDINATOR] Found %d queued job(s), checking for next eligible job...", count)
        started: list[Job] = []
        # Models an earlier, still-waiting job needs: nobody behind it may take them (rule 3).
        claimed: set[str] = set()
        all_models = set(self.capacities)
        for job in waiting.iterator(chunk_size=200):
            if self.free_slot() is None:
                break
            models = set(job.required_models)
            if models & claimed or self.conflicts(models):
                claimed |= models
                if all_models <= claimed:
                    break
                continue
            logger.info("[COORDINATOR] Starting next queued job: %s", job.job_id)
            self.start(job)
            started.append(job)
        return started

    def settle_after(self, *finished_job_ids) -> list[Job]:
        """After jobs left the line or their slots: start what may start, re-point their waiters (I2, I4).

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
        if verdict.can_start:
            logger.info("[COORDINATOR] Starting next queued job: %s", job.job_id)
            self.start(job)
            return True
        self.block(job, verdict, first=False)
        return False

    @staticmethod
    def _mirror_blocker(job: Job) -> None:
        if job.kind == Job.Kind.WORKFLOW:
            from workflows.models import WorkflowExecution

            WorkflowExecution.objects.filter(job_id=job.job_id).update(blocked_by_job_id=job.blocked_by_job_id)
