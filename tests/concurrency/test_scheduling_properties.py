"""The scheduling rules and invariants (docs/design.md) as properties: hypothesis drives the real services on
PostgreSQL through random runs — submissions of jobs and workflows at random priorities, completions,
failures, hand-offs, cancellations, slot resets and the operators' actions (pausing and resuming
models, changing a waiting job's priority, dispatch, reconcile) — with 1 to 4 slots and models of capacity 1 or 2, and after
every step checks the invariants against the database.

The test keeps its own model of the line (priority, then the order in which it submitted): every
start the coordinator makes is replayed against that model in the order of the `started` audit rows,
and must have been allowed by rules 1-3 at that moment (I1, I3). After each step, no waiting job may
be startable by the rules (I2, computed here from the rows, not by the coordinator's code), every
waiting job must name a live blocker (I4), and the per-model lines, the waiting-jobs counter and
the slot rows must agree with the jobs.
"""

import itertools
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from unittest import mock
from uuid import UUID

import pytest
from django.db.models import F
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings as hypothesis_settings, strategies as st, target
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from coordination.exceptions import DuplicateJob, LineFull, StaleAttempt
from coordination.models import (
    CapacityGroup, CatalogModel, Job, JobLine, JobQueueCounter, JobQueueLog, JobQueueState, LineShare,
)
from coordination.queue.lines import line_key
from coordination.recovery import reaper_pass
from coordination.services import (
    capacity_group_delete,
    capacity_group_save,
    catalog_model_save,
    job_cancel,
    job_complete,
    job_fail,
    job_report_and_take_next,
    job_priority_set,
    job_submit,
    jobs_submit_batch,
    model_pause,
    queue_clear_stale,
    queue_dispatch,
    queue_reconcile,
    queue_reset,
)
from tests.factories import UserFactory
from tests.helpers import assert_exclusion, assert_honest_waiting
from workflows.models import WorkflowDefinition, WorkflowStep
from workflows.services import workflow_execute

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = ["nano-banana-pro-leonardo", "motion-2.0-fast", "flux-dev", "minimax/video-01"]
KNIGHT = "knight-style-img-to-video"
RANDOM_WORKFLOW = "random-models"
NO_WAIT = {"simulate_seconds": 0}
INPUTS = {"input_image": "https://example.com/user.jpg"}

EXAMPLES_PER_SLOT_COUNT = 10
STEPS = 30
# A failure is reported at once, as generated: shrinking runs this slow takes many minutes. For the
# shortest failing run, set HYPOTHESIS_SHRINK=1.
PHASES = [phase for phase in Phase if os.environ.get("HYPOTHESIS_SHRINK") or phase != Phase.shrink]


@dataclass
class Rec:
    """The test's own record of a job: enough to place it in line and know what it holds."""

    job_id: object
    seq: int  # the order in which the test submitted it (= acceptance order: one client, in turn)
    priority: int
    models: tuple[str, ...]
    status: str = Job.Status.PENDING
    owner: int = 0  # which of the test's owners submitted it
    deadline: bool = False  # submitted with a start-by deadline
    overdue: bool = False  # its deadline has passed: it must never start

    @property
    def line_key(self) -> tuple:
        return (-self.priority, self.seq)


def clean_job_tables() -> None:
    """Every example starts empty; the seeded catalog and the guide's workflow stay."""
    from django_q.models import OrmQ

    JobLine.objects.all().delete()
    Job.objects.all().delete()  # and, by cascade, workflow executions
    JobQueueLog.objects.all().delete()
    JobQueueCounter.objects.all().delete()
    JobQueueState.objects.all().delete()
    OrmQ.objects.all().delete()  # the tasks the starts enqueued; no worker runs here
    WorkflowDefinition.objects.filter(workflow_id=RANDOM_WORKFLOW).delete()
    CapacityGroup.objects.all().delete()
    CatalogModel.objects.update(capacity=1, paused=False, max_waiting=None, line_policy="fifo")
    LineShare.objects.all().delete()


class SchedulingMachine(RuleBasedStateMachine):
    staff = None  # a staff user (priority > 0 is staff-only), set by the test
    others = ()  # two more staff users: fair lines take their owners in turns
    slot_count = 1  # set by the test

    def __init__(self):
        super().__init__()
        clean_job_tables()
        # No worker runs here, so no lease is renewed: a lease longer than any run keeps the
        # reconciler's step about slots and jobs, not about leases (tested apart).
        self.override = override_settings(COORDINATOR_MAX_ACTIVE_JOBS=self.slot_count, COORDINATOR_LEASE_SECONDS=3600)
        self.override.enable()
        self.jobs: dict = {}
        self.arriving: dict = {}  # a batch's jobs, until the replay reaches their `submitted` rows
        self.seq = itertools.count()
        self.capacities = dict.fromkeys(MODELS, 1)
        self.paused: set[str] = set()
        self.workflow_models = {KNIGHT: ("nano-banana-pro-leonardo", "motion-2.0-fast")}
        self.last_log_id = 0
        self.last_created_at = None
        self.starts_from_line = 0
        self.groups: dict[str, tuple[int, frozenset]] = {}  # capacity group -> (capacity, its models)
        self.limits: dict[str, int] = {}  # model -> max_waiting
        self.keys: dict[tuple, object] = {}  # (owner, dedupe_key) -> the job last accepted with it
        self.fair: set[str] = set()  # models whose line is fair
        self.turns: dict[tuple, int] = {}  # (fair model, owner) -> the number of its last start there
        self.passed: Counter = Counter()  # (fair model, owner) -> starts of others since its own
        self.start_count = itertools.count(1)
        self.clock = itertools.count(1)
        self.epoch = datetime.now(dt_timezone.utc)

    def decide(self, call):
        """Run one hot step (a submit, a batch, a report) as the services do, at the next instant of
        the test's clock (1 ms after the last), so that no two decisions share a time. Returns its result."""
        now = self.epoch + timedelta(milliseconds=next(self.clock))
        with mock.patch.object(timezone, "now", lambda: now):
            return call()

    def teardown(self):
        # Steer the search towards runs where many waiting jobs were started: there rules 1-3 have
        # the most to decide (long lines alone would favour runs that only submit).
        target(float(self.starts_from_line), label="waiting jobs started")
        if hasattr(self, "window"):
            self.window.stop()
        self.override.disable()
        clean_job_tables()

    # --- setup ----------------------------------------------------------------------------------

    @initialize(
        capacities=st.lists(st.integers(1, 2), min_size=len(MODELS), max_size=len(MODELS)),
        steps=st.lists(st.sampled_from(MODELS), min_size=2, max_size=3),
        fair=st.sets(st.sampled_from(MODELS), max_size=2),
        window=st.integers(1, 4),
    )
    def configure(self, capacities, steps, fair, window):
        # How many rows of each line a decision reads at once (queue/snapshot.py): a small window
        # makes the coordinator ask the database for the rest, which must decide the same.
        self.window = mock.patch("coordination.queue.locked.WINDOW", window)
        self.window.start()
        for name, capacity in zip(MODELS, capacities):
            CatalogModel.objects.filter(name=name).update(capacity=capacity)
            self.capacities[name] = capacity
        # Fair lines from the start in many runs: owners then take turns on them throughout.
        CatalogModel.objects.filter(name__in=fair).update(line_policy="fair")
        self.fair = set(fair)
        # A second workflow over a random set of models (a repeated model is held once).
        workflow = WorkflowDefinition.objects.create(workflow_id=RANDOM_WORKFLOW, name="Random", inputs=["input_image"])
        for position, name in enumerate(steps, start=1):
            WorkflowStep.objects.create(
                workflow=workflow, position=position, name=f"step {position}",
                default_model=CatalogModel.objects.get(name=name),
            )
        self.workflow_models[RANDOM_WORKFLOW] = tuple(dict.fromkeys(steps))

    # --- the test's model -----------------------------------------------------------------------

    def with_status(self, status) -> list[Rec]:
        return sorted((rec for rec in self.jobs.values() if rec.status == status), key=lambda rec: rec.seq)

    def running(self) -> list[Rec]:
        return self.with_status(Job.Status.RUNNING)

    def pending(self) -> list[Rec]:
        return self.with_status(Job.Status.PENDING)

    def owner(self, index: int):
        return ([self.staff, *self.others])[index]

    def accepted(self, job: Job, models: tuple[str, ...], priority: int, *, replay: bool = True, owner: int = 0) -> None:
        """`replay=False`: one job of a batch. The batch's rule replays once it has recorded them all;
        each joins the test's queue at its `submitted` audit row, as it joined the real one."""
        assert tuple(job.required_models) == models
        if self.arriving:
            # A later job of the same batch: accepted at the same instant, with an id after the job
            # before it, so the line order (priority, created_at, job_id) is still the test's.
            assert job.created_at == self.last_created_at
            assert job.job_id > list(self.arriving)[-1]
        else:
            # One client submitting in turn: acceptance times strictly increase, so the line order the
            # coordinator uses (priority, created_at, job_id) is the test's (priority, seq).
            assert self.last_created_at is None or job.created_at > self.last_created_at
        self.last_created_at = job.created_at
        rec = Rec(job.job_id, next(self.seq), priority, models, owner=owner)
        if replay:
            self.jobs[job.job_id] = rec
            self.replay_starts(accepted={job.job_id})
        else:
            self.arriving[job.job_id] = rec

    def held_apart(self, other, models) -> bool:
        """A job waiting on a paused model that `models` do not include holds no such job back."""
        other_models = other.models if isinstance(other, Rec) else other.required_models
        return bool((set(other_models) & self.paused) - set(models))

    def group_use(self, running) -> dict[str, int]:
        """Capacity group -> how many of `running` (recs or jobs) use it (a job counts once)."""
        models_of = lambda job: set(job.models if isinstance(job, Rec) else job.required_models)  # noqa: E731
        return {name: sum(1 for job in running if members & models_of(job)) for name, (_, members) in self.groups.items()}

    def lines_full(self, models) -> bool:
        """Whether a line of `models` holds its max_waiting jobs already (a job that must wait there is refused)."""
        return any(
            model in self.limits and JobLine.objects.filter(model=model).count() >= self.limits[model] for model in models
        )

    def fair_lines(self) -> set[str]:
        return self.fair if self.slot_count > 1 else set()  # serialized mode is global FIFO

    def fair_head(self, model: str, job) -> "Rec | None":
        """The job a fair line takes next, by the test's own turns: the highest priority, then the owner
        whose last start there is oldest (never first; ties by the owner's oldest job), that owner's
        oldest job. Jobs a pause holds and `job` does not need to pass are left out."""
        models = job.models if isinstance(job, Rec) else job.required_models
        waiting = [rec for rec in self.pending() if model in rec.models and not self.held_apart(rec, models)]
        if not waiting:
            return None
        top = max(rec.priority for rec in waiting)
        firsts = {}
        for rec in sorted((rec for rec in waiting if rec.priority == top), key=lambda rec: rec.seq):
            firsts.setdefault(rec.owner, rec)
        return min(
            firsts.values(),
            key=lambda rec: (self.turns.get((model, rec.owner)) is not None, self.turns.get((model, rec.owner), 0), rec.seq),
        )

    def replay_starts(self, *, accepted=()) -> list:
        """Replay this step's starts, in audit order, against rules 1-3 (I1, I3), then compare
        every job's status with the database. Returns the ids of the jobs started, in order.
        `accepted`: the jobs this step submitted (their own starts do not come from the line)."""
        rows = list(
            JobQueueLog.objects.filter(id__gt=self.last_log_id).order_by("id").values_list("id", "event_type", "job_id")
        )
        if rows:
            self.last_log_id = rows[-1][0]
        started = []
        for _, event, job_id in rows:
            if event == JobQueueLog.Event.SUBMITTED and job_id in self.arriving:
                self.jobs[job_id] = self.arriving.pop(job_id)  # a batch's job joins the queue here
                continue
            if event != JobQueueLog.Event.STARTED:
                continue
            job = self.jobs[job_id]
            assert job.status == Job.Status.PENDING, f"started a job that was {job.status}"
            running = self.running()
            assert len(running) < self.slot_count, f"rule 1: started {job_id} with all {self.slot_count} slots busy"
            in_use = Counter(model for rec in running for model in rec.models)
            for model in job.models:
                assert in_use[model] < self.capacities[model], f"rule 2 (I1): started {job_id} on {model}, already full"
                assert model not in self.paused, f"started {job_id} on paused model {model}"
            for name, in_group in self.group_use(running).items():
                if self.groups[name][1] & set(job.models):
                    assert in_group < self.groups[name][0], f"capacity group {name}: started {job_id} with the group full"
            assert not job.overdue, f"started {job_id} after its start-by deadline"
            fair = self.fair_lines() & set(job.models)
            for model in fair:
                head = self.fair_head(model, job)
                assert head is job, f"fair line {model}: started {job_id} (owner {job.owner}) where {head.job_id} (owner {head.owner}) was next"
                # Fairness bound: an owner waiting at this priority is passed at most (owners - 1) times.
                for other in {rec.owner for rec in self.pending() if model in rec.models and rec.priority == job.priority
                              and not self.held_apart(rec, job.models)} - {job.owner}:
                    self.passed[(model, other)] += 1
                    assert self.passed[(model, other)] <= len(self.others), f"owner {other} passed too often on {model}"
                self.passed[(model, job.owner)] = 0
                self.turns[(model, job.owner)] = next(self.start_count)
            for other in self.pending():
                if other is job or other.line_key > job.line_key or self.held_apart(other, job.models):
                    continue
                shares = self.slot_count == 1 or (set(other.models) & set(job.models)) - fair
                assert not shares, (
                    f"rule 3 (I3): started {job_id} {job.models} at priority {job.priority} while "
                    f"{other.job_id} {other.models} at priority {other.priority} stood before it in line"
                )
            job.status = Job.Status.RUNNING
            started.append(job_id)
            if job_id not in accepted:
                self.starts_from_line += 1
        assert not self.arriving, "a batch's job was accepted without its `submitted` audit row"
        actual = dict(Job.objects.values_list("job_id", "status"))
        expected = {job_id: rec.status for job_id, rec in self.jobs.items()}
        assert actual == expected
        return started

    # --- rules ----------------------------------------------------------------------------------

    # Priority 0 half the time: owners then often wait at one priority, where a fair line takes turns.
    priority = st.one_of(st.just(0), st.integers(-2, 2))
    submission = st.one_of(
        st.tuples(st.just("job"), st.sampled_from(MODELS), priority, st.integers(0, 2)),
        st.tuples(st.just("workflow"), st.sampled_from([KNIGHT, RANDOM_WORKFLOW]), priority, st.integers(0, 2)),
    )

    @rule(submissions=st.lists(submission, min_size=1, max_size=3))
    def submit(self, submissions):
        """Submit a few jobs or workflows in turn (a few per step, so that lines grow long)."""
        for kind, name, priority, owner in submissions:
            models = (name,) if kind == "job" else self.workflow_models[name]
            full = self.lines_full(models)
            try:
                if kind == "job":
                    job = self.decide(lambda: job_submit(
                        owner=self.owner(owner), model=name, prompt="a knight", params=NO_WAIT, priority=priority
                    ))
                else:
                    job = self.decide(lambda: workflow_execute(
                        owner=self.owner(owner), workflow_id=name, inputs=INPUTS, params=NO_WAIT, priority=priority
                    ))
            except LineFull:
                assert full, f"refused {models} as a full line, but no line of them was full"
                self.replay_starts()
                continue
            self.accepted(job, models, priority, owner=owner)
            if Job.objects.get(pk=job.job_id).status == Job.Status.PENDING:
                assert not full, f"{job.job_id} joined a full line of {models}"

    @rule(bodies=st.lists(st.tuples(st.sampled_from(MODELS), st.integers(-2, 2)), min_size=1, max_size=4),
          owner=st.integers(0, 2))
    def submit_batch(self, bodies, owner):
        """Submit 1-4 jobs in one batch (POST /jobs/batch): accepted in their order, at one instant,
        under one hold of the lock, each as if submitted alone in turn."""
        try:
            jobs = self.decide(lambda: jobs_submit_batch(owner=self.owner(owner), bodies=[
                {"model": name, "prompt": "a knight", "params": NO_WAIT, "priority": priority, "client_ref": f"ref {n}"}
                for n, (name, priority) in enumerate(bodies)
            ]))
        except LineFull:
            assert any(name in self.limits for name, _ in bodies), "a batch refused as a full line without a limit"
            self.replay_starts()  # nothing of the batch remains
            return
        assert [job.client_ref for job in jobs] == [f"ref {n}" for n in range(len(bodies))]
        for job, (name, priority) in zip(jobs, bodies, strict=True):
            self.accepted(job, (name,), priority, replay=False, owner=owner)
        self.replay_starts(accepted={job.job_id for job in jobs})

    @precondition(lambda self: self.running())
    @rule(
        data=st.data(),
        outcome=st.sampled_from([Job.Status.COMPLETED, Job.Status.FAILED]),
        take_next=st.booleans(),
    )
    def finish_one(self, data, outcome, take_next):
        """A running job completes or fails, reported as a worker does: with its current attempt,
        with or without taking the next job it starts (the worker hand-off)."""
        rec = data.draw(st.sampled_from(self.running()))
        current = Job.objects.get(pk=rec.job_id)
        attempt = current.attempt
        taken = None
        if take_next:
            taken = self.decide(lambda: job_report_and_take_next(
                job_id=rec.job_id, attempt=attempt, status=outcome, result={"output": "x"}
            ))
        elif outcome == Job.Status.COMPLETED:
            self.decide(lambda: job_complete(job_id=rec.job_id, attempt=attempt, result={"output": "x"}))
        else:
            self.decide(lambda: job_fail(job_id=rec.job_id, attempt=attempt, error="boom"))
        # A job asked to stop that then fails is not failed (nor retried): it ends cancelled.
        asked_to_stop = current.cancel_requested_at is not None
        rec.status = Job.Status.CANCELLED if outcome == Job.Status.FAILED and asked_to_stop else outcome
        started = self.replay_starts()
        if take_next:
            # The worker takes the first job its report started, already claimed for its attempt.
            assert (taken.job_id if taken else None) == (started[0] if started else None)
            if taken:
                taken = Job.objects.get(pk=taken.job_id)
                assert taken.claimed_attempt == taken.attempt == 1

    @precondition(lambda self: self.pending())
    @rule(data=st.data())
    def cancel_one(self, data):
        rec = data.draw(st.sampled_from(self.pending()))
        job_cancel(job_id=rec.job_id, user=self.staff)
        rec.status = Job.Status.CANCELLED
        self.replay_starts()

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def refusals_and_repairs_change_nothing(self, data):
        """A late worker's report is refused, a cancel of a running job changes nothing yet; the operators' repair
        finds nothing to repair and nothing to start while the invariants hold."""
        rec = data.draw(st.sampled_from(self.running()))
        attempt = Job.objects.get(pk=rec.job_id).attempt
        with pytest.raises(StaleAttempt):
            self.decide(lambda: job_complete(job_id=rec.job_id, attempt=attempt + 1, result={}))
        # Cancelling a running job only asks its worker to stop: it keeps its models meanwhile.
        job_cancel(job_id=rec.job_id, user=self.staff)
        cancelled = Job.objects.get(pk=rec.job_id)
        assert cancelled.status == Job.Status.RUNNING and cancelled.cancel_requested_at is not None
        assert queue_clear_stale(actor="property test") == {"repaired": [], "started": []}
        self.replay_starts()

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def operator_resets_a_busy_slot(self, data):
        """The admin's "reset state" on one busy slot: its job is ended as failed (cancelled, if its
        cancel was asked for: the one outcome rule), and whatever may start then starts."""
        busy = list(JobQueueState.objects.exclude(active_job_id=None).order_by("id").values_list("id", "active_job_id"))
        slot_id, job_id = data.draw(st.sampled_from(busy))
        asked_to_stop = Job.objects.get(pk=job_id).cancel_requested_at is not None
        assert queue_reset(actor="property test", slot_ids=[slot_id])["evicted"] == [str(job_id)]
        self.jobs[job_id].status = Job.Status.CANCELLED if asked_to_stop else Job.Status.FAILED
        self.replay_starts()

    @rule(model=st.sampled_from(MODELS))
    def operator_pauses_or_resumes_a_model(self, model):
        """Pausing holds the model's jobs (running ones carry on) and lets others pass them; resuming
        starts what may start."""
        pause = model not in self.paused
        # The test's model changes first: the starts this step makes are judged by the new state.
        if pause:
            self.paused.add(model)
        else:
            self.paused.discard(model)
        report = model_pause(name=model, paused=pause, actor="property test")
        assert self.replay_starts() == [UUID(job_id) for job_id in report["started"]]

    @precondition(lambda self: self.pending())
    @rule(data=st.data(), priority=st.integers(-2, 2))
    def operator_changes_a_waiting_jobs_priority(self, data, priority):
        rec = data.draw(st.sampled_from(self.pending()))
        job_priority_set(job_id=rec.job_id, priority=priority, actor="property test")
        rec.priority = priority
        self.replay_starts()

    @rule()
    def dispatch_and_reconcile_find_nothing_to_do(self):
        """While the invariants hold, "dispatch now" starts nothing and the reconciler finds no difference."""
        assert queue_dispatch(actor="property test") == {"started": []}
        assert queue_reconcile(actor="property test") == {"repaired": [], "not_repaired": [], "started": []}
        self.replay_starts()

    # --- scheduling policies (issue 11) ---------------------------------------------------------

    @rule(models=st.sets(st.sampled_from(MODELS), max_size=3), capacity=st.integers(1, 2))
    def operator_sets_a_capacity_group(self, models, capacity):
        """An operator creates, changes or (no models) deletes the group "provider-key": the change is
        decided at once; a job starts only while every group of its models has room."""
        group = CapacityGroup.objects.filter(name="provider-key").first()
        if not models:
            self.groups.pop("provider-key", None)
            report = capacity_group_delete(group=group, actor="property test") if group else {"started": []}
        else:
            self.groups["provider-key"] = (capacity, frozenset(models))
            group = group or CapacityGroup(name="provider-key")
            group.capacity = capacity
            report = capacity_group_save(
                group=group, models=list(CatalogModel.objects.filter(name__in=models)), actor="property test"
            )
        assert self.replay_starts() == [UUID(job_id) for job_id in report["started"]]

    @rule(model=st.sampled_from(MODELS), fair=st.booleans())
    def operator_sets_a_line_policy(self, model, fair):
        """A line made fair takes its owners in turns from then on (every owner's turn yet to come);
        made first-come-first-served again, it is the plain line."""
        catalog = CatalogModel.objects.get(name=model)
        catalog.line_policy = "fair" if fair else "fifo"
        if fair and model not in self.fair:
            self.turns = {key: turn for key, turn in self.turns.items() if key[0] != model}
            self.passed = Counter({key: n for key, n in self.passed.items() if key[0] != model})
        (self.fair.add if fair else self.fair.discard)(model)
        report = catalog_model_save(model=catalog, actor="property test")
        assert self.replay_starts() == [UUID(job_id) for job_id in report["started"]]

    @rule(model=st.sampled_from(MODELS), limit=st.one_of(st.none(), st.integers(0, 3)))
    def operator_sets_a_line_limit(self, model, limit):
        catalog = CatalogModel.objects.get(name=model)
        catalog.max_waiting = limit
        catalog_model_save(model=catalog, actor="property test")
        if limit is None:
            self.limits.pop(model, None)
        else:
            self.limits[model] = limit
        assert self.replay_starts() == []

    @rule(name=st.sampled_from(MODELS), priority=st.integers(-2, 2), owner=st.integers(0, 2))
    def submit_with_a_deadline(self, name, priority, owner):
        full = self.lines_full((name,))
        try:
            job = self.decide(lambda: job_submit(
                owner=self.owner(owner), model=name, prompt="a knight", params=NO_WAIT, priority=priority,
                max_wait_seconds=3600,
            ))
        except LineFull:
            assert full
            self.replay_starts()
            return
        self.accepted(job, (name,), priority, owner=owner)
        self.jobs[job.job_id].deadline = True

    @precondition(lambda self: any(rec.deadline for rec in self.pending()))
    @rule(data=st.data())
    def a_waiting_jobs_deadline_passes(self, data):
        """Its start-by time passes (set by hand: no clock is waited for); the reaper expires it, and
        it never starts."""
        rec = data.draw(st.sampled_from([rec for rec in self.pending() if rec.deadline]))
        Job.objects.filter(pk=rec.job_id).update(start_by=timezone.now() - timedelta(days=1))
        rec.overdue = True
        rec.status = Job.Status.EXPIRED  # the test's model first: the starts are judged without it
        reaper_pass()
        self.replay_starts()
        assert Job.objects.get(pk=rec.job_id).started_at is None

    @rule(name=st.sampled_from(MODELS), key=st.sampled_from(["k1", "k2"]), replace=st.booleans(), owner=st.integers(0, 2))
    def submit_with_a_dedupe_key(self, name, key, replace, owner):
        """Two different requests for the same work: refused while the first is live, or (replace) the
        waiting first is cancelled and the new job takes its place in line."""
        live = self.jobs.get(self.keys.get((owner, key)))
        live = live if live is not None and live.status in (Job.Status.PENDING, Job.Status.RUNNING) else None
        call = lambda: job_submit(  # noqa: E731
            owner=self.owner(owner), model=name, prompt="a knight", params=NO_WAIT, dedupe_key=key,
            on_duplicate="replace" if replace else "reject",
        )
        if live is not None and (not replace or live.status == Job.Status.RUNNING):
            with pytest.raises(DuplicateJob):
                self.decide(call)
            self.replay_starts()
            return
        full = self.lines_full((name,))
        if live is not None:
            live.status = Job.Status.CANCELLED  # replaced: the test's model first
        try:
            job = self.decide(call)
        except LineFull:
            assert full
            if live is not None:
                live.status = Job.Status.PENDING  # nothing changed
            self.replay_starts()
            return
        self.keys[(owner, key)] = job.job_id
        if live is None or live.models != (name,):  # a replacement for other models is simply new
            self.accepted(job, (name,), 0, owner=owner)
            return
        assert job.created_at == Job.objects.get(pk=live.job_id).created_at, "the new job takes the replaced one's place"
        self.jobs[job.job_id] = Rec(job.job_id, live.seq, 0, (name,), owner=owner)
        self.replay_starts(accepted={job.job_id})

    # --- invariants, checked against the database after every step -----------------------------

    @invariant()
    def exclusion(self):
        assert_exclusion(max_active=self.slot_count)  # I1

    @invariant()
    def no_idle_capacity(self):
        """I2, computed from the rows: no waiting job may start by rules 1-3."""
        jobs = list(Job.objects.filter(status__in=[Job.Status.PENDING, Job.Status.RUNNING]))
        running = [job for job in jobs if job.status == Job.Status.RUNNING]
        waiting = sorted(
            (job for job in jobs if job.status == Job.Status.PENDING),
            key=lambda job: (-job.priority, job.created_at, job.job_id),
        )
        capacities = dict(CatalogModel.objects.values_list("name", "capacity"))
        in_use = Counter(model for job in running for model in job.required_models)
        slot_free = len(running) < self.slot_count
        group_use = self.group_use(running)
        for index, job in enumerate(waiting):
            models_free = all(in_use[model] < capacities[model] and model not in self.paused for model in job.required_models)
            models_free = models_free and all(
                group_use[name] < capacity for name, (capacity, members) in self.groups.items() if members & set(job.required_models)
            )
            fair = self.fair_lines() & set(job.required_models)
            heads_its_lines = not any(
                (self.slot_count == 1 or (set(ahead.required_models) & set(job.required_models)) - fair)
                and not self.held_apart(ahead, job.required_models)
                for ahead in waiting[:index]
            ) and all(self.fair_head(model, job) is self.jobs[job.job_id] for model in fair)
            assert not (slot_free and models_free and heads_its_lines), (
                f"I2: {job.job_id} {job.required_models} may start but waits ({job.conflict_reason})"
            )

    @invariant()
    def honest_waiting(self):
        assert_honest_waiting()  # I4

    @invariant()
    def reasons_say_what_is_true(self):
        """I4's words: a job another "goes first" of names one that stands before it (or has
        started since); a "Model conflict" names a running job."""
        live = {job.job_id: job for job in Job.objects.filter(status__in=[Job.Status.PENDING, Job.Status.RUNNING])}
        for job in (job for job in live.values() if job.status == Job.Status.PENDING):
            reason, blocker = job.conflict_reason or "", live.get(job.blocked_by_job_id)
            fair_shared = blocker is not None and set(job.required_models) & set(blocker.required_models) & self.fair_lines()
            if "goes first" in reason and blocker.status == Job.Status.PENDING and not fair_shared:
                # (In a fair line the order is the owners' turns, checked at every start instead.)
                assert line_key(blocker) < line_key(job), f"{job.job_id} says it waits behind {blocker.job_id}, which is behind it"
            if reason.startswith("Model conflict"):
                assert blocker.status == Job.Status.RUNNING, f"{job.job_id}: {reason}, but the job named is {blocker.status}"

    @invariant()
    def lines_counter_and_slots_agree_with_the_jobs(self):
        waiting = {job.job_id: job for job in Job.objects.filter(status=Job.Status.PENDING)}
        expected = {
            (job_id, model, job.priority, job.created_at)
            for job_id, job in waiting.items()
            for model in job.required_models
        }
        rows = list(JobLine.objects.values_list("job_id", "model", "priority", "created_at"))
        assert len(rows) == len(set(rows))
        assert set(rows) == expected, "job_model_lines: one row per (waiting job, model it needs)"

        # A pause's hold, kept on the rows (so passing it is one probe): held = needs a paused model.
        paused = set(CatalogModel.objects.filter(paused=True).values_list("name", flat=True))
        for job in waiting.values():
            assert job.held == bool(paused & set(job.required_models)), f"{job.job_id} held={job.held}"
        assert not JobLine.objects.exclude(held=F("job__held")).exists(), "line rows held as their job"

        counter = JobQueueCounter.objects.filter(id=1).first()
        assert (counter.pending if counter else 0) == len(waiting), "the waiting-jobs counter"

        running = {job.job_id: job for job in Job.objects.filter(status=Job.Status.RUNNING)}
        slots = list(JobQueueState.objects.exclude(active_job_id=None))
        assert all(slot.id <= self.slot_count for slot in slots)
        assert sorted(str(slot.active_job_id) for slot in slots) == sorted(str(job_id) for job_id in running)
        for slot in slots:
            assert slot.active_models == running[slot.active_job_id].required_models


@pytest.mark.parametrize("slot_count", [1, 2, 3, 4])
def test_random_runs_keep_the_scheduling_invariants(slot_count):
    machine = type(
        f"SchedulingWith{slot_count}Slots",
        (SchedulingMachine,),
        {"staff": UserFactory(is_staff=True), "others": (UserFactory(is_staff=True), UserFactory(is_staff=True)),
         "slot_count": slot_count},
    )
    run_state_machine_as_test(
        machine,
        settings=hypothesis_settings(
            max_examples=EXAMPLES_PER_SLOT_COUNT,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            phases=PHASES,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
