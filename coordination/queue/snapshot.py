"""What a decision reads, in one statement that first takes the coordinator lock.

`Snapshot.read` calls `jq_snapshot` (installed by migrations 0032 and 0034 from `_sql()` here: a
function, so that PostgreSQL plans it once per connection), which locks the slot rows (unless the
transaction holds them already) and then reads: the running jobs; the catalog and the capacity
groups; the waiting-jobs counter; the first rows of the global line and of every model's line (a
window of at most `WINDOW` rows: enough for the starts one transition makes); the waiting jobs with
the earliest start-by deadlines (`DEADLINES`); the job a transition is
about and the waiting jobs that name it, or one of those with a deadline, with the nearest
job ahead of each in each of its lines; and, for jobs about to join, the probes their admission needs
(the nearest job ahead of them in each line, whether jobs of lower priority wait, a full line's count,
a live job with their dedupe_key, their owner's waiting jobs). Each part is an index probe or a bounded read:
the cost does not grow with the number of jobs waiting. It reads; it decides nothing.

The rules (rules.py) then decide in memory over `LineView`s: what of a line this transaction read,
and what it changed since. Where a question goes beyond what was read (a line's window used up, a job
far down a line, a fair line's owners), the view answers UNKNOWN and the coordinator asks the
database as the rules' own reads do (rules.QueueRules), having first sent what it wrote so far
(coordination/writes.py): slower, never wrong."""

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone
from functools import lru_cache

import orjson
from django.db import connection, models
from django.db.models import signals
from django.db.models.base import ModelState
from django.utils.dateparse import parse_datetime

from coordination.models import CapacityGroup, CatalogModel, Job, JobLine, JobQueueCounter, JobQueueState

# Rows read of each line's head: a transition starts at most one job per slot it frees (or per
# slot free), and each start takes one row off a line.
WINDOW = 4
# Waiting jobs read by their start-by deadline, earliest first: those whose deadline passed expire
# (LockedQueue.expire_due); more than this many passing at once are read again from the database.
DEADLINES = 16

UNKNOWN = object()  # a view's answer when what it read does not tell


def from_row(row: dict, model_class=Job):
    """An instance of `model_class` from a row as JSON (`json_agg` of rows): its fields as Django would
    read them, the instance as Django makes the rows it reads (Model.from_db). Where no receiver listens
    to the model's pre_init or post_init signals, it is made without Model.__init__ (a transition
    makes several under the lock, and __init__ took most of their cost): each value goes where
    __init__ would put it, the instance's own __dict__ (a new instance caches no related object
    that a foreign key's setter would clear)."""
    attnames, readers = _readers(model_class)
    values = [value if (value := row.get(column)) is None or convert is None else convert(value) for column, convert in readers]
    if signals.pre_init.has_listeners(model_class) or signals.post_init.has_listeners(model_class):
        return model_class.from_db(connection.alias, None, values)
    instance = model_class.__new__(model_class)
    state = instance._state = ModelState()
    state.adding, state.db = False, connection.alias
    instance.__dict__.update(zip(attnames, values))
    return instance


@lru_cache(maxsize=8192)
def uuid_of_text(text: str) -> uuid.UUID:
    """A UUID read as text (a job id, mostly), as a UUID: the same job ids come back transition after
    transition (the running jobs, the heads of the lines), and parsing one cost more than finding it here."""
    return uuid.UUID(text)


_READERS: dict = {}


def _readers(model_class) -> tuple[list, list]:
    """Each concrete field's attribute name; and its column, with what makes its JSON value its Python
    value (None: nothing), in the fields' order; made again should the model's fields change (a test
    may change them)."""
    fields = model_class._meta.concrete_fields
    made = _READERS.get(model_class)
    if made is None or made[0] is not fields:
        made = _READERS[model_class] = (fields, [field.attname for field in fields], [
            (field.column, parse_datetime if isinstance(field, models.DateTimeField)
             else uuid_of_text if isinstance(field, models.UUIDField) else None)
            for field in fields
        ])
    return made[1], made[2]


def after_all_of(priority: int) -> tuple:
    """A place behind every job of `priority` and above, before any of lower priority: a new job's,
    for which all of those are ahead (whatever their clocks said)."""
    return (-priority, datetime.max.replace(tzinfo=dt_timezone.utc), uuid.UUID(int=2**128 - 1))


@dataclass(frozen=True)
class Entry:
    """A row of a line as read: the job and its place (lines.line_key)."""
    key: tuple
    job_id: uuid.UUID

    @property
    def priority(self) -> int:
        return -self.key[0]


@dataclass
class LineView:
    """One line (a model's, or the global one) as this transaction knows it: its first rows as read
    (`prefix`; `complete` if that was all of it), the probes read for particular jobs, and the rows
    that joined (`added`) or left (`gone`) since. `held(job_id)` says whether a job is held by a pause now."""

    prefix: list[Entry]
    complete: bool
    probes: dict = field(default_factory=dict)  # probe key -> Entry | None
    added: dict = field(default_factory=dict)  # job_id -> Entry
    gone: dict = field(default_factory=dict)  # job_id -> Entry, rows of the read that left

    def add(self, entry: Entry) -> None:
        self.added[entry.job_id] = entry

    def remove(self, job_id, key: tuple) -> None:
        # A row that joined in this transaction simply leaves again; one that was read is gone.
        if self.added.pop(job_id, None) is None:
            self.gone.setdefault(job_id, Entry(key, job_id))

    def _visible(self) -> list[Entry]:
        rows = [entry for entry in self.prefix if entry.job_id not in self.gone and entry.job_id not in self.added]
        return sorted(rows + list(self.added.values()), key=lambda entry: entry.key)

    def _known_until(self):
        return None if self.complete else (self.prefix[-1].key if self.prefix else None)

    def head(self, held) -> "Entry | None | object":
        """The first row not held (by `held`, a job id -> bool), or UNKNOWN."""
        until = self._known_until()
        for entry in self._visible():
            if not self.complete and (until is None or entry.key > until):
                return UNKNOWN
            if not held(entry.job_id):
                return entry
        return None if self.complete else UNKNOWN

    def nearest_ahead(self, key: tuple, ahead, probe, held) -> "Entry | None | object":
        """The nearest row before `key` among those `ahead` accepts (not held, by `held`), or UNKNOWN.
        Known when every row before `key` was read, else from the probe read for it (`probe`)."""
        until = self._known_until()
        if self.complete or (until is not None and key <= until):
            rows = [entry for entry in self._visible() if ahead(entry) and not held(entry.job_id)]
            return rows[-1] if rows else None
        found = self.probes.get(probe, UNKNOWN)
        if found is UNKNOWN or (found is not None and (found.job_id in self.gone or held(found.job_id))):
            return UNKNOWN
        rows = [entry for entry in self.added.values() if ahead(entry) and not held(entry.job_id)]
        if found is not None:
            rows.append(found)
        return max(rows, key=lambda entry: entry.key) if rows else None

    def count_where(self, counted: int | None, wanted) -> "int | object":
        """`counted` rows (read for the probe) as they are now: less those that left, plus those that joined."""
        if counted is None:
            return UNKNOWN
        return (counted - sum(1 for entry in self.gone.values() if wanted(entry))
                + sum(1 for entry in self.added.values() if wanted(entry)))


@dataclass
class Arrival:
    """A job about to be admitted, as the snapshot needs it."""
    models: list[str]
    priority: int
    dedupe_key: str | None = None


def _sql() -> str:
    """jq_snapshot: the read as a function, so that PostgreSQL plans it once per connection (its
    planning cost more than running it), not at every transition."""
    jobs, lines = Job._meta.db_table, JobLine._meta.db_table
    catalog, counter, slots = CatalogModel._meta.db_table, JobQueueCounter._meta.db_table, JobQueueState._meta.db_table
    groups, members = CapacityGroup._meta.db_table, CapacityGroup.catalog_models.through._meta.db_table
    nearest = "ORDER BY priority, created_at DESC, job_id DESC LIMIT 1"
    deadlines = DEADLINES
    first = "ORDER BY priority DESC, created_at, job_id"
    return f"""
CREATE OR REPLACE FUNCTION jq_snapshot(
    p_lock boolean, p_window int, p_ending uuid[], p_arrival_models text[], p_arrival_priorities int[],
    p_priorities int[], p_owner bigint, p_keys text[], p_owner_limit int
) RETURNS json LANGUAGE plpgsql VOLATILE
-- Planned once per connection (a generic plan): every part is an index probe or a bounded read,
-- whatever the arguments, so no part may fall back to reading a table through (a generic plan cannot
-- see how few rows an argument selects), and the plan is never worth compiling.
-- VOLATILE: with p_lock, the read that follows the lock sees what committed while it waited for it.
-- No bitmap scans: a job that ended leaves a dead entry in the partial index of running jobs (and
-- one that started, in the waiting ones'); a plain index scan marks it dead once and skips it after,
-- a bitmap scan visits every one of them again at every transition until the table is vacuumed.
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off AS $$
DECLARE
    locked json;
    answer json;
BEGIN
    IF p_lock THEN
        -- The coordinator lock: every slot row, in id order (two coordinators never deadlock).
        SELECT json_agg(s) INTO locked FROM (SELECT * FROM {slots} ORDER BY id FOR UPDATE) s;
    END IF;
    WITH
    -- The waiting jobs with the earliest start-by deadlines (the caller sees which have passed).
    due AS (SELECT job_id FROM {jobs} WHERE status = 'pending' AND start_by IS NOT NULL ORDER BY start_by LIMIT {deadlines}),
    gl AS (SELECT job_id FROM {jobs} WHERE status = 'pending' {first} LIMIT p_window),
    ml AS (SELECT c.name AS model, l.job_id, l.priority, l.created_at FROM {catalog} c
           CROSS JOIN LATERAL (SELECT job_id, priority, created_at FROM {lines}
                               WHERE model = c.name {first} LIMIT p_window) l),
    -- Only a waiting job names another (a constraint says so): no test of status, which would let a
    -- generic plan walk the index of every waiting job instead of probing blocked_by_job_id's.
    waiters AS (SELECT w.job_id, w.priority, w.created_at, w.required_models
                FROM (SELECT unnest(p_ending) AS named UNION SELECT job_id FROM due) n
                CROSS JOIN LATERAL (SELECT job_id, priority, created_at, required_models FROM {jobs}
                                    WHERE blocked_by_job_id = n.named OFFSET 0) w),
    probes (probe, model, job_id, priority, created_at) AS (
        -- Each waiter's nearest job ahead: in each of its models' lines, and in the global line.
        (SELECT w.job_id::text, m.model, near.job_id, near.priority, near.created_at
         FROM waiters w CROSS JOIN LATERAL jsonb_array_elements_text(w.required_models) m(model)
         LEFT JOIN LATERAL (SELECT * FROM (
             (SELECT job_id, priority, created_at FROM {lines} WHERE model = m.model AND priority = w.priority
              AND (created_at, job_id) < (w.created_at, w.job_id) ORDER BY created_at DESC, job_id DESC LIMIT 1)
             UNION ALL
             (SELECT job_id, priority, created_at FROM {lines} WHERE model = m.model AND priority > w.priority
              {nearest})) x {nearest}) near ON true)
        UNION ALL
        (SELECT w.job_id::text, NULL, near.job_id, near.priority, near.created_at FROM waiters w
         LEFT JOIN LATERAL (SELECT * FROM (
             (SELECT job_id, priority, created_at FROM {jobs} WHERE status = 'pending' AND priority = w.priority
              AND (created_at, job_id) < (w.created_at, w.job_id) ORDER BY created_at DESC, job_id DESC LIMIT 1)
             UNION ALL
             (SELECT job_id, priority, created_at FROM {jobs} WHERE status = 'pending' AND priority > w.priority
              {nearest})) x {nearest}) near ON true)
        UNION ALL
        -- A new job's nearest ahead is the last row at its priority or above, in each line.
        (SELECT 'new ' || a.priority, a.model, near.job_id, near.priority, near.created_at
         FROM unnest(p_arrival_models, p_arrival_priorities) a(model, priority)
         LEFT JOIN LATERAL (SELECT job_id, priority, created_at FROM {lines}
                            WHERE model = a.model AND priority >= a.priority {nearest}) near ON true)
        UNION ALL
        (SELECT 'new ' || p, NULL, near.job_id, near.priority, near.created_at
         FROM unnest(p_priorities) p
         LEFT JOIN LATERAL (SELECT job_id, priority, created_at FROM {jobs}
                            WHERE status = 'pending' AND priority >= p {nearest}) near ON true)),
    twins AS (SELECT job_id FROM {jobs} WHERE (owner_id = p_owner OR (p_owner IS NULL AND owner_id IS NULL))
              AND dedupe_key = ANY(p_keys) AND status IN ('pending', 'running'))
    SELECT json_build_array(
        -- Each job once, each one probe of the primary key (LIMIT keeps the planner from joining instead).
        -- Rows go out as JSON objects straight from their columns (json_agg of the row): to_jsonb
        -- built each as jsonb first, sorting its keys, and then wrote it out again.
        (SELECT json_agg(j) FROM (
            SELECT job_id FROM {jobs} WHERE status = 'running' UNION SELECT unnest(p_ending)
            UNION SELECT job_id FROM due UNION SELECT job_id FROM gl UNION SELECT job_id FROM ml
            UNION SELECT job_id FROM waiters UNION SELECT job_id FROM probes UNION SELECT job_id FROM twins) wanted
         CROSS JOIN LATERAL (SELECT * FROM {jobs} WHERE job_id = wanted.job_id LIMIT 1) j),
        (SELECT json_agg(c) FROM {catalog} c),
        (SELECT json_agg(json_build_array(g.name, g.capacity, c.name)) FROM {members} m
         JOIN {groups} g ON g.id = m.capacitygroup_id JOIN {catalog} c ON c.id = m.catalogmodel_id),
        (SELECT pending FROM {counter} WHERE id = 1),
        (SELECT json_agg(job_id) FROM due),
        (SELECT json_agg(job_id) FROM gl),
        (SELECT json_agg(json_build_array(model, job_id, priority, created_at)) FROM ml),
        (SELECT json_agg(job_id) FROM waiters),
        (SELECT json_agg(json_build_array(probe, model, job_id, priority, created_at)) FROM probes),
        (SELECT json_agg(job_id) FROM twins),
        -- Whether any job of lower priority waits (one probe of the line's index; the count, when
        -- there are some, is asked only by a job that has to wait: LockedQueue._position_on_entry).
        (SELECT json_agg(json_build_array(p, (SELECT job_id FROM {jobs} WHERE status = 'pending' AND priority < p
                                               ORDER BY priority DESC, created_at, job_id LIMIT 1) IS NOT NULL))
         FROM unnest(p_priorities) p),
        (SELECT json_agg(json_build_array(c.name, (SELECT count(*) FROM (SELECT 1 FROM {lines} WHERE model = c.name
                                                   LIMIT c.max_waiting) x)))
         FROM {catalog} c WHERE c.max_waiting IS NOT NULL AND c.name = ANY(p_arrival_models)),
        CASE WHEN p_owner_limit IS NOT NULL THEN
            (SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE owner_id = p_owner AND status = 'pending' LIMIT p_owner_limit) x)
        END,
        locked
    ) INTO answer;
    RETURN answer;
END $$;
"""


def install(schema_editor=None) -> None:
    """Create (or replace) jq_snapshot; migration 0032 calls it, and so must a migration that changes
    a column it reads."""
    target = schema_editor.connection if schema_editor is not None else connection
    with target.cursor() as cursor:
        cursor.execute(_sql())


class Known(dict):
    """Job instances by id, one per job: built from the rows read when first asked for (most rows read
    are never needed), and any job the transition meets besides."""

    def __init__(self, rows: dict) -> None:
        super().__init__()
        self._rows = rows

    def __missing__(self, job_id):
        job = self[job_id] = from_row(self._rows.pop(job_id))
        return job

    def __contains__(self, job_id) -> bool:
        return dict.__contains__(self, job_id) or job_id in self._rows

    def get(self, job_id, default=None):
        return self[job_id] if job_id in self else default

    def setdefault(self, job_id, job):
        if job_id not in self:
            self[job_id] = job
        return self[job_id]

    def running(self) -> list[Job]:
        return [self[job_id] for job_id, row in list(self._rows.items()) if row["status"] == Job.Status.RUNNING] + [
            job for job in self.values() if job.status == Job.Status.RUNNING
        ]


class Snapshot:
    """The state one transition decides from (see the module docstring). `jobs` holds one instance
    per job read: every view's rows and the running jobs are those instances."""

    def __init__(self, row: list, *, window: int) -> None:
        (jobs, catalog, groups, pending, deadlines, global_line, model_lines, waiters, probes, twins, lower,
         full_lines, owner_waiting, locked) = row
        rows_read = {uuid_of_text(data["job_id"]): data for data in jobs or ()}
        self.jobs = Known(rows_read)
        # The whole rows: the rules read their scheduling fields; a job handed to a finishing worker
        # takes its model's row along (its runner's call needs no read).
        self.catalog: dict[str, dict] = {row["name"]: row for row in catalog or ()}
        self.group_rows = [tuple(entry) for entry in groups or ()]
        self.pending = pending
        self.deadlines = [uuid_of_text(job_id) for job_id in deadlines or ()]  # the earliest first
        # The slot rows, when the read took the lock.
        self.slots = [from_row(data, JobQueueState) for data in locked or ()]
        self.waiters = [uuid_of_text(job_id) for job_id in waiters or ()]
        self.twins = [uuid_of_text(job_id) for job_id in twins or ()]
        self.lower = {priority: exists for priority, exists in lower or ()}  # any job of lower priority waits
        self.full_lines = {model: count for model, count in full_lines or ()}
        self.owner_waiting = owner_waiting
        rows: dict[str | None, list[Entry]] = {name: [] for name in self.catalog}
        for model, job_id, priority, created_at in model_lines or ():
            rows.setdefault(model, []).append(self._entry(job_id, priority, created_at))
        rows[None] = [self._entry(job_id, rows_read[uuid_of_text(job_id)]["priority"], rows_read[uuid_of_text(job_id)]["created_at"])
                      for job_id in global_line or ()]
        self.lines = {name: LineView(entries, complete=len(entries) < window) for name, entries in rows.items()}
        for probe, model, job_id, priority, created_at in probes or ():
            view = self.lines.get(model)
            if view is not None:
                view.probes[probe] = None if job_id is None else self._entry(job_id, priority, created_at)

    def catalog_model(self, name: str) -> CatalogModel | None:
        row = self.catalog.get(name)
        return None if row is None else from_row(row, CatalogModel)

    @staticmethod
    def _entry(job_id, priority, created_at) -> Entry:
        job_id = job_id if isinstance(job_id, uuid.UUID) else uuid_of_text(job_id)
        created_at = parse_datetime(created_at) if isinstance(created_at, str) else created_at
        return Entry((-priority, created_at, job_id), job_id)

    @classmethod
    def read(cls, *, lock: bool, window: int, ending=(), arriving: list[Arrival] = (), owner_id=None,
             owner_limit: int | None = None) -> "Snapshot":
        """`lock`: take the coordinator lock first, in the same statement (its rows: `slots`)."""
        pairs = sorted({(model, arrival.priority) for arrival in arriving for model in arrival.models})
        params = [
            lock, window, [str(job_id) for job_id in ending], [model for model, _ in pairs],
            [priority for _, priority in pairs], sorted({arrival.priority for arrival in arriving}), owner_id,
            [arrival.dedupe_key for arrival in arriving if arrival.dedupe_key], owner_limit,
        ]
        with connection.cursor() as cursor:
            # As text, parsed by orjson (the standard library's parser took several times as long).
            cursor.execute(
                "SELECT jq_snapshot(%s, %s, %s::uuid[], %s::text[], %s::int[], %s::int[], %s, %s::text[], %s)::text", params
            )
            (answer,) = cursor.fetchone()
        return cls(orjson.loads(answer), window=window)
