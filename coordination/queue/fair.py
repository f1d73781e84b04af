"""Fair lines (catalog `line_policy = fair`): among a model's waiting jobs of the same priority, owners
take turns. The next job is the oldest job of the owner who started a job on this line least recently
(an owner who never did goes first; ties by acceptance), so one user with 10,000 jobs waiting does
not make another user's single job wait behind all of them.

What keeps that one index probe, however many jobs and owners wait: `job_line_shares`, one row per
(model, owner, priority) with how many of the owner's jobs wait there, the owner's oldest one (its
head) and the owner's last turn on the line. Its partial index orders the rows with waiting jobs as
the line takes them: priority (higher first), last turn (never first), then the head's acceptance.
LockedQueue keeps the rows in step, under the coordinator lock, in the transitions that change them
(a job joins or leaves a line, or starts on it).

Serialized mode (one slot) is the usage guide's global FIFO: there `line_policy` has no effect.
"""

from datetime import timedelta

from django.db.models import Count, F, Func, IntegerField, OuterRef, Q, Subquery, Window
from django.db.models.functions import Coalesce, RowNumber

from coordination.models import NEVER_STARTED, Job, JobLine, LineShare

# The line's order of owners (job_line_shares_order_idx): an owner who never started has the epoch.
TURN_ORDER = ("-priority", "last_turn", "head_created_at", "head_job_id")


def owner_key(job: Job) -> int:
    return job.owner_id or 0  # jobs without an owner share one turn


def shares_enter(job: Job, models: list[str]) -> None:
    """`job` joined the lines of `models` (fair ones): its owner's row counts it, and names it as the
    owner's head if it is the owner's oldest there."""
    key = owner_key(job)
    for model in models:
        share = LineShare.objects.filter(model=model, owner_key=key, priority=job.priority).first()
        if share is None:
            turn = _turn(model, key) or NEVER_STARTED
            LineShare.objects.create(
                model=model, owner_key=key, priority=job.priority, waiting=1, last_turn=turn,
                head_created_at=job.created_at, head_job_id=job.job_id,
            )
            continue
        share.waiting += 1
        if share.head_job_id is None or (job.created_at, job.job_id) < (share.head_created_at, share.head_job_id):
            share.head_created_at, share.head_job_id = job.created_at, job.job_id
        share.save(update_fields=["waiting", "head_created_at", "head_job_id"])


def shares_leave(job: Job, models: list[str], *, priority: int | None = None) -> None:
    """`job` left the lines of `models` (its line rows are gone already): its owner's row counts one
    fewer, and names the owner's next job as head if it was the head. `priority`: the one it stood at."""
    key = owner_key(job)
    priority = job.priority if priority is None else priority
    for model in models:
        share = LineShare.objects.filter(model=model, owner_key=key, priority=priority).first()
        if share is None:
            continue
        share.waiting = max(0, share.waiting - 1)
        if share.head_job_id == job.job_id or share.waiting == 0:
            following = (
                JobLine.objects.filter(model=model, owner_key=key, priority=priority)
                .order_by("created_at", "job_id").values_list("created_at", "job_id").first()
            )
            share.head_created_at, share.head_job_id = following or (None, None)
        share.save(update_fields=["waiting", "head_created_at", "head_job_id"])


def shares_started(job: Job, models: list[str], *, turn) -> None:
    """`job` started on the fair lines of `models`: its owner's turn there is `turn` (strictly after
    every earlier start), which sends the owner's other jobs behind the owners who have waited longer."""
    key = owner_key(job)
    for model in models:
        if not LineShare.objects.filter(model=model, owner_key=key).update(last_turn=turn):
            LineShare.objects.create(model=model, owner_key=key, priority=job.priority, waiting=0, last_turn=turn)


def fair_head(model: str, *, unheld: bool = False) -> Job | None:
    """The job a fair line takes next: one probe of job_line_shares_order_idx. `unheld`: passing
    over the jobs a pause holds; while the line holds some (rare), the owners are read in turn order
    until one has a job that is not held."""
    shares = LineShare.objects.filter(model=model, waiting__gt=0).order_by(*TURN_ORDER)
    if not unheld or not JobLine.objects.filter(model=model, held=True).exists():
        share = shares.values_list("head_job_id", flat=True).first()
        return Job.objects.filter(pk=share).first() if share else None
    for share in shares.only("owner_key", "priority"):
        row = (
            JobLine.objects.filter(model=model, owner_key=share.owner_key, priority=share.priority, held=False)
            .order_by("created_at", "job_id").select_related("job").first()
        )
        if row is not None:
            return row.job
    return None


def fair_predecessor(job: Job, model: str) -> Job | None:
    """A job that goes before `job` in a fair line, or None if `job` is next: its owner's previous
    job there (an owner's jobs keep their order), else the job the line takes next."""
    # Two probes of job_model_lines_owner_idx, each a range in its order (one ORDER BY over both would
    # let the planner walk the whole line's index instead, filtering on the owner).
    mine = JobLine.objects.filter(model=model, owner_key=owner_key(job)).select_related("job")
    if not job.held:
        mine = mine.filter(held=False)  # a pause's hold on its own earlier job does not hold it back
    own = (
        mine.filter(Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, job_id__lt=job.job_id),
                    priority=job.priority)
        .order_by("-created_at", "-job_id").first()
        or mine.filter(priority__gt=job.priority).order_by("priority", "-created_at", "-job_id").first()
    )
    if own is not None:
        return own.job
    head = fair_head(model, unheld=not job.held)
    if head is None or head.job_id == job.job_id:
        return None
    # `job` is its owner's first here (a new job may not be in the line yet): it goes first if its
    # owner's turn comes before the head's owner's.
    return head if _order_key(model, head) < _order_key(model, job) else None


def _turn(model: str, key: int):
    """The owner's last start on the line, or None if it never started there."""
    return (
        LineShare.objects.filter(model=model, owner_key=key).exclude(last_turn=NEVER_STARTED)
        .order_by("-last_turn").values_list("last_turn", flat=True).first()
    )


def _order_key(model: str, job: Job) -> tuple:
    """Where an owner's first job stands among the owners at the top: priority, turn (never first), acceptance."""
    return (-job.priority, _turn(model, owner_key(job)) or NEVER_STARTED, job.created_at, job.job_id)


def fair_ahead(job: Job, model: str) -> int:
    """How many jobs go before `job` in a fair line: fair_ahead_many() of one job."""
    return fair_ahead_many(model, [job.job_id]).get(job.job_id, 0)


def fair_ahead_many(model: str, job_ids) -> dict:
    """How many jobs go before each of `job_ids` (waiting jobs in the fair line of `model`), if the
    owners take their turns from now on and no job arrives: the jobs of higher priority, then round
    by round one job of each owner at its priority in turn order (a job is in its owner's round k).
    The one count of a place in a fair line (queue_position, the console's order, the estimate).
    Three queries however many jobs: the jobs with their rank among their owner's, the line's jobs
    by priority, its owners in turn order."""
    same_owner_before = (
        JobLine.objects.filter(model=model, owner_key=OuterRef("owner_key"), priority=OuterRef("priority"))
        .filter(Q(created_at__lt=OuterRef("created_at")) | Q(created_at=OuterRef("created_at"), job_id__lt=OuterRef("job_id")))
        .order_by().annotate(n=Func(F("pk"), function="COUNT")).values("n")
    )
    rows = list(
        JobLine.objects.filter(model=model, job_id__in=list(job_ids))
        .annotate(before=Coalesce(Subquery(same_owner_before, output_field=IntegerField()), 0))
        .values_list("job_id", "owner_key", "priority", "before")
    )
    if not rows:
        return {}
    by_priority = dict(
        JobLine.objects.filter(model=model).values("priority").annotate(n=Count("pk")).order_by().values_list("priority", "n")
    )
    owners: dict[int, list[tuple[int, int]]] = {}
    for key, priority, waiting in (
        LineShare.objects.filter(model=model, priority__in={priority for _, _, priority, _ in rows}, waiting__gt=0)
        .order_by(*TURN_ORDER).values_list("owner_key", "priority", "waiting")
    ):
        owners.setdefault(priority, []).append((key, waiting))
    places = {}
    for job_id, key, priority, before in rows:
        rank = before + 1  # its round
        ahead = sum(n for other, n in by_priority.items() if other > priority) + before
        before_owner = True
        for other, waiting in owners.get(priority, []):
            if other == key:
                before_owner = False
                continue
            ahead += min(waiting, rank if before_owner else rank - 1)
        places[job_id] = ahead
    return places


def fair_order(model: str, limit: int) -> list[JobLine]:
    """The first `limit` jobs of a fair line in the order fair_ahead() numbers them (the k-th has
    k - 1 before it): higher priority first, then round by round one job of each owner in turn
    order. Those come from at most `limit` owners, the first in turn order: two queries, each bounded
    by `limit`, however many jobs and owners wait. A read, for the console."""
    shares = list(
        LineShare.objects.filter(model=model, waiting__gt=0).order_by(*TURN_ORDER)
        .values_list("owner_key", "priority")[:limit]
    )
    if not shares:
        return []
    rank = Window(RowNumber(), partition_by=[F("owner_key"), F("priority")], order_by=[F("created_at"), F("job_id")])
    among = Q()
    for key, priority in shares:
        among |= Q(owner_key=key, priority=priority)
    rows = (
        JobLine.objects.filter(among, model=model).annotate(rank=rank).filter(rank__lte=limit)
        .select_related("job", "job__owner").order_by("owner_key", "priority", "rank")
    )
    queues: dict[tuple[int, int], list[JobLine]] = {}
    for row in rows:
        queues.setdefault((row.owner_key, row.priority), []).append(row)
    ordered: list[JobLine] = []
    for priority in sorted({priority for _, priority in shares}, reverse=True):
        owners = [queues.get((key, p), []) for key, p in shares if p == priority]
        for turn in range(limit):
            ordered.extend(queue[turn] for queue in owners if turn < len(queue))
            if len(ordered) >= limit or not any(turn + 1 < len(queue) for queue in owners):
                break
        if len(ordered) >= limit:
            break
    return ordered[:limit]


def shares_rebuild(model: str, *, fair: bool) -> None:
    """A model's line became fair (its shares are built from its line, every owner's turn yet to come)
    or first-come-first-served again (its shares are dropped)."""
    LineShare.objects.filter(model=model).delete()
    if not fair:
        return
    heads: dict[tuple[int, int], list] = {}
    for key, priority, created_at, job_id in (
        JobLine.objects.filter(model=model).order_by("created_at", "job_id")
        .values_list("owner_key", "priority", "created_at", "job_id")
    ):
        entry = heads.setdefault((key, priority), [0, created_at, job_id])
        entry[0] += 1
    LineShare.objects.bulk_create([
        LineShare(model=model, owner_key=key, priority=priority, waiting=count, head_created_at=created_at, head_job_id=job_id)
        for (key, priority), (count, created_at, job_id) in heads.items()
    ])


def next_turn(now, starts_so_far: int):
    """A start's turn: its transaction's instant, a microsecond apart for each start it makes, so that
    starts made together take their turns in the order they were made."""
    return now + timedelta(microseconds=starts_so_far)
