"""Reads for the queue console's capacity (admin → Queue console): how much of each model is in use, a
card per capacity group, and one sentence for each model or slot that is free while jobs wait for it,
saying why it is not used.

The why is the scheduler's own: QueueNow is the scheduling rules (coordination/queue/rules.py) read
over the queue as it is now, without the coordinator lock, and its paused_among, conflicts,
group_conflicts and free_slot answer for the job at the head of a free model's line, which is the
one the scheduler would take next (heads_of, fair_head: _heads). The one rule
that needs the lines themselves (rule 3: a job before it in another model's line) is what the
coordinator recorded when it last decided for that job: the waiting job it names (blocked_by_job_id,
which I4 keeps naming a live job). Queries: the running jobs, the capacity groups, the heads of the
free models' lines (two, and one or two more per fair line) and, when a head names a waiting job,
those named jobs; never more, however many jobs wait.
"""

from dataclasses import dataclass

from django.conf import settings

from coordination.models import CatalogModel, Job, JobQueueState
from coordination.queue.fair import fair_head
from coordination.queue.groups import groups_by_model
from coordination.queue.lines import heads_of
from coordination.queue.rules import CATALOG_FIELDS, QueueRules


class QueueNow(QueueRules):
    """The scheduling rules over the queue as it is at this instant (the next decision may see more):
    the running jobs, the console's catalog rows and the slot rows console_slots read. Reads only,
    holds no lock."""

    def __init__(self, catalog: list[CatalogModel], slots: list[dict]) -> None:
        self.slot_count = settings.COORDINATOR_MAX_ACTIVE_JOBS
        self.slots = [JobQueueState(id=slot["id"], active_job_id=slot["job_id"]) for slot in slots]
        # In the order they started, as LockedQueue reads them: the first holder is the one named.
        running = Job.objects.filter(status=Job.Status.RUNNING).order_by("started_at", "job_id")
        self.running = {job.job_id: job for job in running.only("job_id", "kind", "required_models", "started_at")}
        self.take_catalog([tuple(getattr(model, field) for field in CATALOG_FIELDS) for model in catalog],
                          groups_by_model())


@dataclass(frozen=True)
class Capacity:
    groups: list[dict]  # a card per capacity group with members
    idle: list[str]  # the sentences; job ids whole (the template shortens and links them)


def named(kind: str, job_id) -> str:
    """A job as the sentences name it: "workflow f5f79a1a-…", "job 3d25f178-…"."""
    return f"{'workflow' if kind == Job.Kind.WORKFLOW else 'job'} {job_id}"


def console_capacity(queue: QueueNow, lines: list[dict], slots: list[dict]) -> Capacity:
    """The group cards and the idle sentences, from `queue` and the console's lines (console_lines:
    each line's first jobs, in the order the line takes them) and slots (console_slots)."""
    return Capacity(groups=_group_cards(queue), idle=_idle_sentences(queue, lines, slots))


def _group_cards(queue: QueueNow) -> list[dict]:
    groups = {group.name: group for member_of in queue.groups.values() for group in member_of}
    full = {group.name for group, _, _ in queue.group_conflicts(queue.capacities)}
    running = list(queue.running.values())
    return [
        {**group.use(running), "members": sorted(group.models), "holders": group.using(running), "full": name in full}
        for name, group in sorted(groups.items())
    ]


def _heads(queue: QueueNow, models: list[str]) -> dict[str, dict]:
    """The job each of these lines takes next, asked as the scheduler asks it (rules.QueueRules.
    _next_startable): heads_of, or fair_head on a fair line, passing over the jobs a pause holds while
    a model is paused. A line whose every job a pause holds (a paused model's own, or one whose jobs
    all need a paused model) gives none to the scheduler: its first job is named, to say what holds
    it. As the console's line rows (console_lines) hold a job, so the sentences read either alike."""
    fair = queue.fair_lines

    def asked(among: list[str], unheld: bool) -> dict[str, Job | None]:
        found = heads_of([model for model in among if model not in fair], unheld=unheld)
        return {**found, **{model: fair_head(model, unheld=unheld) for model in among if model in fair}}

    heads = asked(models, unheld=bool(queue.paused))
    if queue.paused:
        heads.update(asked([model for model in models if heads.get(model) is None], unheld=False))
    return {
        model: {"job_id": job.job_id, "kind": job.kind, "held": job.held, "models": job.required_models,
                "blocked_by": job.blocked_by_job_id, "reason": job.conflict_reason or ""}
        for model, job in heads.items() if job is not None
    }


def _idle_sentences(queue: QueueNow, lines: list[dict], slots: list[dict]) -> list[str]:
    waiting = [line for line in lines if line["jobs"]]
    busy = dict(queue.conflicts([line["model"] for line in waiting]))
    heads = _heads(queue, [line["model"] for line in waiting if line["model"] not in busy])
    free = [line for line in waiting if line["model"] in heads]
    ahead = _named_waiting(queue, heads.values())
    sentences, startable = [], False
    for line in free:
        model, head = line["model"], heads[line["model"]]
        at_head = f"{named(head['kind'], head['job_id'])} at the head of its line"
        if model in queue.paused:
            sentences.append(f"{model} is paused: {at_head} waits for an operator to resume it")
            continue
        parts = _waits_for(queue, model, head, ahead.get(head["blocked_by"]))
        if parts:
            sentences.append(f"{model} is free but held: {at_head} waits for {_and(parts)}")
        else:  # the rules would start it now: the coordinator's next decision does
            said = f"; it last said: {head['reason']}" if head["reason"] else ""
            sentences.append(f"{model} is free: {at_head} may start by the rules{said}")
            startable = True
    if waiting and queue.free_slot() is not None:
        sentences.insert(0, _free_slots(queue, slots, busy, [line["model"] for line in free], startable))
    return sentences


def _named_waiting(queue: QueueNow, heads) -> dict:
    """The waiting jobs the heads name as going first (rule 3, as the coordinator recorded it), by id:
    one query, none when no head names one."""
    ids = {head["blocked_by"] for head in heads if head["blocked_by"] and head["blocked_by"] not in queue.running}
    if not ids:
        return {}
    return Job.objects.filter(pk__in=ids, status=Job.Status.PENDING).only("job_id", "kind", "required_models").in_bulk()


def _waits_for(queue: QueueNow, model: str, head: dict, ahead: Job | None) -> list[str]:
    """What keeps `head` (at the head of the free `model`'s line) from starting, by the rules: its
    other models (paused, in use, a job before it in their line), its full capacity groups, a slot."""
    others = [other for other in head["models"] if other != model]
    paused = set(queue.paused_among(others))
    in_use = dict(queue.conflicts(others))
    parts = []
    for other in others:
        facts = ["paused by an operator"] if other in paused else []
        if other in in_use:
            facts.append(f"in use by {named(in_use[other].kind, in_use[other].job_id)}")
        if ahead is not None and other in ahead.required_models:
            facts.append(f"{named(ahead.kind, ahead.job_id)} goes first in its line")
        if facts:
            parts.append(f"{other} ({'; '.join(facts)})")
    parts += [
        f"room in capacity group {group.name} ({running} of {group.capacity} running)"
        for group, running, _ in queue.group_conflicts(head["models"])
    ]
    if queue.free_slot() is None:
        if queue.slot_count == 1:
            parts.append("the one slot (serialized mode: one job at a time)")
        else:
            parts.append(f"a slot (all {queue.slot_count} are busy)")
    return parts


def _free_slots(queue: QueueNow, slots: list[dict], busy: dict, others: list[str], startable: bool) -> str:
    """Slots free while jobs wait: every line's next job waits for a model in use (`busy`: model ->
    the running job holding it) or, on the `others`, for what their own sentences say (`startable`:
    one of those may start by the rules, so the slots are not said to be of no use)."""
    # The slots the table shows free; a row still showing a job that ended is free to the rules.
    ids = [str(slot["id"]) for slot in slots if not slot["job_id"]] or [str(queue.free_slot().id)]
    which = f"Slot {ids[0]} is" if len(ids) == 1 else f"Slots {_and(ids)} are"
    reasons = [f"{model} is in use by {named(holder.kind, holder.job_id)}" for model, holder in busy.items()]
    if others:
        reasons.append(f"{_and(others)} as said below")
    if startable:
        return f"{which} free while jobs wait: the coordinator's next decision starts what may — {'; '.join(reasons)}"
    return f"{which} free while jobs wait: none of them may start — {'; '.join(reasons)}"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
