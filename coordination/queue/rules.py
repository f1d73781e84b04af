"""The scheduling rules (docs/design.md, rules 1-3), read against the state LockedQueue has locked: may a job start
now, and if not, which job it waits for and why (assess); which waiting job starts next
(_next_startable). Reads only: LockedQueue (locked.py) makes the changes, under the same lock.

A mixin of LockedQueue: it reads `self.slots`, `self.running` and `self.slot_count`, which
LockedQueue's constructor locks and reads. The queue console reads the same rules over the queue as
it is, without the lock (coordination/console_capacity.py, QueueNow): why a free model or slot is not
used is then the rules' own answer.
"""

import logging
import uuid
from collections import Counter
from dataclasses import dataclass

from coordination.models import CatalogModel, Job, JobLine, JobQueueState
from coordination.queue.fair import fair_head, fair_predecessor
from coordination.queue.groups import Group, groups_by_model
from coordination.queue.lines import NEAREST_FIRST, PAUSED_PREFIX, heads_of, line, line_key, nearest_ahead
from coordination.queue.words import models_repr, say

logger = logging.getLogger("job_coordinator")

# What the rules read of each catalog model (QueueRules.take_catalog).
CATALOG_FIELDS = ("name", "capacity", "paused", "max_waiting", "line_policy")


def paused_reason(models: list[str]) -> str:
    return f"{PAUSED_PREFIX}: {', '.join(models)} (an operator paused it; the job starts once it is resumed)"


def started_order(job: Job) -> tuple:
    """Running jobs in the order they started (then by id, for jobs started in one transaction):
    the first that holds a model is the one a waiting job names."""
    return (job.started_at, job.job_id)


@dataclass(frozen=True)
class Verdict:
    can_start: bool
    blocker: Job | None = None
    reason: str | None = None


class QueueRules:
    """The rules of docs/design.md as reads of the locked state (see the module docstring)."""

    _capacities: dict[str, int] | None = None
    _paused: set[str] | None = None
    _groups: dict[str, list[Group]] | None = None

    def running_job(self, job_id) -> Job | None:
        try:
            return self.running.get(uuid.UUID(str(job_id)))
        except ValueError:
            return None

    def _read_catalog(self) -> None:
        # Read when first needed: a decision with every model idle (serialized mode's hand-off)
        # never needs it. Pauses change under this lock, so what is read here holds until commit.
        self.take_catalog(list(CatalogModel.objects.values_list(*CATALOG_FIELDS)), groups_by_model())

    def take_catalog(self, rows: list[tuple], groups: dict[str, list[Group]]) -> None:
        """The catalog as the rules read it: `rows` of CATALOG_FIELDS, and the capacity groups by model
        (groups_by_model). A reader that has the catalog rows already (the console) gives them here."""
        self._capacities = {name: capacity for name, capacity, *_ in rows}
        self._paused = {name for name, _, paused, *_ in rows if paused}
        self._max_waiting = {name: limit for name, _, _, limit, _ in rows if limit is not None}
        self._fair = {name for name, *_, policy in rows if policy == CatalogModel.LinePolicy.FAIR}
        self._groups = groups

    @property
    def capacities(self) -> dict[str, int]:
        if self._capacities is None:
            self._read_catalog()
        return self._capacities

    def capacity(self, model: str) -> int:
        return self.capacities.get(model, 1)

    @property
    def paused(self) -> set[str]:
        if self._paused is None:
            self._read_catalog()
        return self._paused

    def paused_among(self, models) -> list[str]:
        """Which of `models` an operator has paused: no job starts on them until they are resumed."""
        return [model for model in models if model in self.paused]

    @property
    def fair_models(self) -> set[str]:
        """Models whose line is fair (queue/fair.py): their line shares are kept in step always."""
        if self._capacities is None:
            self._read_catalog()
        return self._fair

    @property
    def fair_lines(self) -> set[str]:
        """The fair lines the rules follow: none in serialized mode (the guide's global FIFO)."""
        return self.fair_models if self.slot_count > 1 else set()

    @property
    def max_waiting(self) -> dict[str, int]:
        """model -> the most jobs its line may hold (line limits), for the models that have one."""
        if self._capacities is None:
            self._read_catalog()
        return self._max_waiting

    @property
    def groups(self) -> dict[str, list[Group]]:
        """model -> the capacity groups it belongs to (none for most models)."""
        if self._groups is None:
            self._read_catalog()
        return self._groups

    def group_conflicts(self, models) -> list[tuple[Group, int, Job]]:
        """(group, jobs running in it, a running job of it) for each full group of `models`; a job
        counts once in a group, however many of the group's models it uses."""
        found, seen = [], set()
        for model in models:
            for group in self.groups.get(model, ()):
                if group.name in seen:
                    continue
                seen.add(group.name)
                members = group.using(self.running.values())
                if len(members) >= group.capacity:
                    found.append((group, len(members), min(members, key=started_order)))
        return found

    def models_in_use(self) -> Counter:
        return Counter(model for job in self.running.values() for model in job.required_models)

    def free_slot(self) -> JobQueueState | None:
        if len(self.running) >= self.slot_count:
            return None
        return self.free_slot_row()

    def free_slot_row(self) -> JobQueueState | None:
        """The first slot row that may take a job and shows none that runs (the reconciler also
        uses it to place a running job that no slot row shows)."""
        for slot in self.slots:
            if slot.id <= self.slot_count and (slot.active_job_id is None or slot.active_job_id not in self.running):
                return slot
        return None

    def catalog_changed(self) -> None:
        """A model's capacity or pause, or a capacity group, changed in this transaction: read them again."""
        self._capacities = self._paused = self._groups = None

    def conflicts(self, models) -> list[tuple[str, Job]]:
        """(model, a running job holding it) for each of `models` that has no free capacity."""
        in_use = self.models_in_use()
        found = []
        for model in models:
            if in_use[model] and in_use[model] >= self.capacity(model):
                holder = min((job for job in self.running.values() if model in job.required_models), key=started_order)
                found.append((model, holder))
        return found

    def predecessor(self, job: Job, *, new: bool = False, any_model: bool = False) -> Job | None:
        """The nearest pending job ahead of `job` that it must wait behind (docs/design.md, rule 3).

        In serialized mode that is simply the job before it (global FIFO); with more slots, the
        nearest earlier job in the line of one of its models. A `new` job is the last accepted, so
        everything at its priority or above is ahead of it.
        """
        unheld = bool(self.paused) and not self.paused_among(job.required_models)
        if self.slot_count == 1 or any_model:
            return self.line_nearest(None, job, new=new, unheld=unheld)
        for model in job.required_models:
            if model in self.fair_lines:
                ahead = self.fair_predecessor(job, model)
                if ahead is not None:
                    return ahead
                continue
            ahead = self.line_nearest(model, job, new=new, unheld=unheld)
            if ahead is not None:
                return ahead
        return None

    # --- the lines, as the rules read them: from the database here; LockedQueue answers from its
    # snapshot first (queue/snapshot.py) and asks these only what the snapshot does not tell.

    def line_nearest(self, model: str | None, job: Job, *, new: bool, unheld: bool) -> Job | None:
        """The nearest job ahead of `job` in `model`'s line (None: the global line), passing over the
        jobs a pause holds if `unheld`. A `new` job is not in line yet: every job at its priority or
        above is ahead of it. Two index probes at most."""
        if model is None:
            rows = line().exclude(job_id=job.job_id) if new else line()
        else:
            rows = JobLine.objects.filter(model=model).select_related("job")
        if unheld:
            rows = rows.filter(held=False)
        if new:
            found = rows.filter(priority__gte=job.priority).order_by(*NEAREST_FIRST).first()
        else:
            found = nearest_ahead(rows, job)
        return found if found is None or model is None else found.job

    def line_heads(self, models: list[str], *, unheld: bool) -> dict[str, Job | None]:
        """The first job in each of `models`' lines (first come, first served ones): one query."""
        return heads_of(models, unheld=unheld)

    def global_head(self, *, unheld: bool) -> Job | None:
        return (line().filter(held=False) if unheld else line()).first()

    def fair_head(self, model: str, *, unheld: bool) -> Job | None:
        return fair_head(model, unheld=unheld)

    def fair_predecessor(self, job: Job, model: str) -> Job | None:
        return fair_predecessor(job, model)

    def assess(self, job: Job, *, new: bool = False) -> Verdict:
        """May `job` start now? If not, which job it waits for and why, in words."""
        conflicts = self.conflicts(job.required_models)
        if conflicts:
            say("conflict", models_repr(m for m, _ in conflicts))

        ahead = self.predecessor(job, new=new)
        if ahead is not None:
            shared = [m for m in job.required_models if m in ahead.required_models]
            if shared:
                reason = f"Waiting in line for {', '.join(shared)}: {ahead.kind} job {ahead.job_id} goes first"
            else:
                reason = f"Serialized mode: one job at a time; {ahead.kind} job {ahead.job_id} goes first"
            return Verdict(False, ahead, reason)

        paused = self.paused_among(job.required_models)
        if paused:
            # The one wait with no job to name: it waits for an operator. Only the first job in a
            # paused model's line waits so; those behind it name the job before them, as always.
            # Jobs that do not need a paused model pass its jobs by (predecessor(), dispatch()).
            return Verdict(False, None, paused_reason(paused))

        if conflicts:
            reason = "Model conflict: " + "; ".join(
                f"{model} in use by {holder.kind} job {holder.job_id}" for model, holder in conflicts
            )
            return Verdict(False, conflicts[0][1], reason)

        full = self.group_conflicts(job.required_models)
        if full:
            reason = "; ".join(
                f"Capacity group {group.name} full: {running} of {group.capacity} running" for group, running, _ in full
            )
            return Verdict(False, full[0][2], reason)

        if self.free_slot() is None:
            if self.slot_count > 1:
                # Wait behind the job before it in the global line, so that when a slot frees only
                # the first of the slot-waiters needs re-pointing, not all of them.
                ahead = self.predecessor(job, new=new, any_model=True)
                if ahead is not None:
                    reason = f"All {self.slot_count} slots are busy; {ahead.kind} job {ahead.job_id} goes first"
                    return Verdict(False, ahead, reason)
            holder = min(self.running.values(), key=started_order)
            if self.slot_count == 1:
                models = ", ".join(holder.required_models)
                reason = f"Serialized mode: one job at a time; {holder.kind} job {holder.job_id} is running ({models})"
            else:
                reason = f"All {self.slot_count} slots are busy; waiting for a slot (longest running: {holder.kind} job {holder.job_id})"
            return Verdict(False, holder, reason)
        return Verdict(True)

    def _next_startable(self) -> Job | None:
        """The first job in line that heads the line of every model it needs, all of them free."""
        unheld = bool(self.paused)
        if self.slot_count == 1:
            # Serialized mode is global FIFO: only the head of the whole line may start.
            # Global FIFO among the jobs that may run at all: a paused model's jobs step aside.
            head = self.global_head(unheld=unheld)
            return head if head is not None and self._has_room(head) else None
        in_use = self.models_in_use()
        full_groups = {group.name for group, _, _ in self.group_conflicts(self.capacities)}
        free_models = [
            model for model in self.capacities
            if in_use[model] < self.capacity(model) and model not in self.paused
            and not any(group.name in full_groups for group in self.groups.get(model, ()))
        ]
        fair = self.fair_lines
        heads: dict[str, Job | None] = self.line_heads([m for m in free_models if m not in fair], unheld=unheld)
        heads.update({model: self.fair_head(model, unheld=unheld) for model in free_models if model in fair})

        def head_of(model: str) -> Job | None:
            if model not in heads:
                if model in fair:
                    heads[model] = self.fair_head(model, unheld=unheld)
                else:
                    heads.update(self.line_heads([model], unheld=unheld))
            return heads[model]

        candidates = {head.job_id: head for head in heads.values() if head is not None}
        for job in sorted(candidates.values(), key=line_key):
            # Room first: it needs no read, and a model without room needs no head.
            if self._has_room(job) and all(
                (head := head_of(model)) is not None and head.job_id == job.job_id for model in job.required_models
            ):
                return job
        return None

    def _has_room(self, job: Job) -> bool:
        """Every model `job` needs, and every capacity group of those, has room now."""
        return not self.conflicts(job.required_models) and not self.group_conflicts(job.required_models)
