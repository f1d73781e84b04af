"""What a transition writes under the coordinator lock, kept in order and sent as one statement.

The coordinator decides in memory (queue/locked.py, from what queue/snapshot.py read) and asks for its
rows to be inserted, updated or deleted here instead of saving each at once. `flush()` sends them all
in one call of `jq_apply` (installed by migration 0032, SQL below), which runs them in the order they
were asked for, each a set-based statement over its rows: the database's triggers (a job's events and
webhook deliveries, coordination/events/triggers.py) fire for each change exactly as if each had been
saved on its own. Consecutive changes of one table with the same columns travel as one set.

Nothing can read around what is kept here: while a LockedQueue is open, every other statement on its
connection (a read the snapshot could not answer, a workflow's row, an idempotency key) first flushes
what is kept, so it sees the transition's changes so far, in order. The queue flushes the rest when
it closes, before COMMIT (LockedQueue.__exit__)."""

import json
import uuid
from datetime import date, datetime
from decimal import Decimal

import orjson
from django.db import connection, models

# A transaction-local setting: the ids of the jobs the transaction made webhook deliveries for so far
# (the jobs trigger, coordination/events/triggers.py, notes them; jq_apply answers with them).
DELIVERIES_SETTING = "jobqueue.deliveries"

# The coordinator's own tables, each with the column its updates and deletes find rows by: jq_apply has
# their statements written out, so PL/pgSQL plans each once per connection by itself. A write to any
# other table (a workflow's execution row), by another column, or of a column these statements do not
# know (a column added by a migration that did not install jq_apply again) is built as it comes.
def _written_out():
    from coordination.models import Job, JobLine, JobQueueCounter, JobQueueLog, JobQueueState

    return ((Job, "job_id"), (JobLine, "job_id"), (JobQueueState, "id"), (JobQueueCounter, "id"), (JobQueueLog, "id"))


def _listed(columns) -> str:
    return ", ".join(f'"{column}"' for column in columns)


def _overlaid(columns) -> str:
    """Each column's new value: the change's where it has one, else the row's own (`t`'s, kept as it is
    stored: a large value is not written again)."""
    return ", ".join(f"""CASE WHEN r.value ? '{column}' THEN x."{column}" ELSE t."{column}" END""" for column in columns)


def _written_out_sql(target) -> str:
    """The CASE branches of jq_apply for the tables of _written_out(), as `target` (a connection) types them.

    - insert: taken when the change's columns are every column but an automatic key, in the models'
      order (Writes.insert's own);
    - update: every column but the key is set, to the change's value where it has one and to its own
      otherwise, so one statement serves any set of columns it knows; a column set to its own value
      changes nothing a trigger sees (each trigger's WHEN compares old and new);
    - delete: by the key.
    """
    branches = []
    for model, key in _written_out():
        table, fields = model._meta.db_table, model._meta.concrete_fields
        inserted = [field.column for field in fields if not isinstance(field, models.AutoField)]
        kept = [field.column for field in fields if field.column != key and not field.primary_key]
        key_field = model._meta.get_field(key)
        # An automatic key's own type (its db_type also says how it is numbered).
        key_type = key_field.rel_db_type(target) if key_field.primary_key else key_field.db_type(target)
        found = f"t.{key} = (r.value->>'{key}')::{key_type}"
        branches.append(f"""
        ELSIF change->>'op' = 'insert' AND tbl = '{table}' AND change->'columns' = '{json.dumps(inserted)}'::jsonb THEN
            INSERT INTO {table} ({_listed(inserted)})
            SELECT {_listed(inserted)} FROM jsonb_populate_recordset(NULL::{table}, change->'rows');
        ELSIF change->>'op' = 'update' AND tbl = '{table}' AND change->>'key' = '{key}'
              AND change->'columns' <@ '{json.dumps(kept)}'::jsonb THEN
            UPDATE {table} t SET ({_listed(kept)}) = (SELECT {_overlaid(kept)} FROM jsonb_populate_record(NULL::{table}, r.value) x)
            FROM jsonb_array_elements(change->'rows') r WHERE {found};
        ELSIF change->>'op' = 'delete' AND tbl = '{table}' AND change->>'key' = '{key}' THEN
            DELETE FROM {table} t USING jsonb_array_elements(change->'rows') r WHERE {found};""")
    return "".join(branches)


# How the coordinator's writing functions are planned (jq_apply here, the copier's in outputs/store.py):
# generic plans, made once per connection, that find each row by an index, never by reading a table
# through or joining it by hash or merge, and are never worth compiling.
PLANNED_ONCE = """SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off
SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off"""

_APPLY_SQL = """
CREATE OR REPLACE FUNCTION jq_apply(changes jsonb) RETURNS text LANGUAGE plpgsql
-- Each change: {"op": insert | update | delete, "table", "key" (the column rows are found by),
-- "columns" (those written), "rows" (objects of column values)}, run in the order given. Answers with
-- the ids of the jobs the changes made webhook deliveries for (the jobs trigger notes them).
-- The coordinator's own tables have their statements written out below (planned once per connection,
-- as every statement of a PL/pgSQL function is). Any other change's statement is built from its
-- table and columns, and prepared once per connection, named after its text (so a new version of this
-- function never runs a connection's older one). Every plan is generic and finds each row by its
-- key's index, never by a scan of the table: PostgreSQL takes a set of JSON rows for a hundred, and
-- would otherwise join them against a full scan of a table of a few thousand rows (jobs, its lines).
{planned_once} AS $$
DECLARE
    change jsonb;
    tbl text;
    cols text;
    prepared text;
    statement text;
    made text;
BEGIN
    PERFORM set_config('{setting}', '', true);
    FOR change IN SELECT value FROM jsonb_array_elements(changes) LOOP
        tbl := change->>'table';
        IF false THEN NULL;{written_out}
        ELSE
            IF change->>'op' = 'insert' THEN
                SELECT string_agg(quote_ident(c), ', ') INTO cols FROM jsonb_array_elements_text(change->'columns') c;
                statement := format('INSERT INTO %I (%s) SELECT %s FROM jsonb_populate_recordset(NULL::%I, $1)',
                                    tbl, cols, cols, tbl);
            ELSIF change->>'op' = 'update' THEN
                SELECT string_agg(format('%I = r.%I', c, c), ', ') INTO cols FROM jsonb_array_elements_text(change->'columns') c;
                statement := format('UPDATE %I t SET %s FROM jsonb_populate_recordset(NULL::%I, $1) r WHERE t.%I = r.%I',
                                    tbl, cols, tbl, change->>'key', change->>'key');
            ELSE
                statement := format('DELETE FROM %I t USING jsonb_populate_recordset(NULL::%I, $1) r WHERE t.%I = r.%I',
                                    tbl, tbl, change->>'key', change->>'key');
            END IF;
            prepared := 'jq_apply_' || md5(statement);
            -- A prepared statement outlives a rolled-back transaction, so the session's own list says.
            IF NOT EXISTS (SELECT FROM pg_prepared_statements WHERE name = prepared) THEN
                EXECUTE format('PREPARE %I(jsonb) AS %s', prepared, statement);
            END IF;
            -- A prepared statement takes its arguments as values only: the rows travel as a literal.
            EXECUTE format('EXECUTE %I(%L)', prepared, change->'rows');
        END IF;
    END LOOP;
    made := current_setting('{setting}', true);
    PERFORM set_config('{setting}', '', true);
    RETURN made;
END $$;
"""


def _apply_sql(target) -> str:
    """jq_apply as `target` (a connection) would be given it now."""
    return (_APPLY_SQL.replace("{setting}", DELIVERIES_SETTING).replace("{planned_once}", PLANNED_ONCE)
            .replace("{written_out}", _written_out_sql(target)))


def install(schema_editor=None) -> None:
    """Create (or replace) jq_apply. Migrations call it; so must one that changes a column of the tables
    in _written_out() (until then, writes of such a column take the slower way, never a wrong one)."""
    target = schema_editor.connection if schema_editor is not None else connection
    with target.cursor() as cursor:
        cursor.execute(_apply_sql(target))


def _value(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a column value jq_apply knows")


def _dumps(changes: list) -> str:
    """The changes as JSON text, by orjson (the standard library's encoder took several times as long):
    the values json.dumps would write, keys that are not strings too; changes with a value orjson
    refuses (an integer beyond 64 bits in a job's result) are written by json.dumps."""
    try:
        return orjson.dumps(changes, default=_value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(changes, default=_value)


class Writes:
    """The changes kept for one transition (see the module docstring)."""

    def __init__(self) -> None:
        # Each: [op, table, key column, columns, rows, the key values in rows]
        self._changes: list[list] = []
        # Written after the changes, once each (`last=True`): rows no trigger watches and nothing in
        # the transaction reads back (the slot rows, the counter, the audit rows), so that a
        # transition's writes travel as few sets as they can.
        self._last_updates: dict[tuple, tuple] = {}
        self._last_inserts: list[tuple] = []

    def __bool__(self) -> bool:
        return bool(self._changes or self._last_updates or self._last_inserts)

    def _add(self, op: str, model, key: str, columns: tuple, row: dict) -> None:
        table = model._meta.db_table
        key_value = row.get(key)
        if self._changes:
            last = self._changes[-1]
            # One set per run of like changes; a row changed twice in a run goes in a set of its own
            # (one statement may not change a row twice).
            if last[:4] == [op, table, key, columns] and (key_value is None or key_value not in last[5]):
                last[4].append(row)
                if key_value is not None:
                    last[5].add(key_value)
                return
        self._changes.append([op, table, key, columns, [row], set() if key_value is None else {key_value}])

    @staticmethod
    def _row(instance, fields) -> dict:
        return {field.column: getattr(instance, field.attname) for field in fields}

    def insert(self, instance: models.Model, *, last: bool = False) -> None:
        """Insert `instance` (an auto-numbered primary key is left to the database); `last`: after
        the other changes (see __init__), in the order asked."""
        meta = instance._meta
        fields = tuple(
            field for field in meta.concrete_fields
            if not (field.primary_key and isinstance(field, models.AutoField) and getattr(instance, field.attname) is None)
        )
        for field in fields:
            if getattr(field, "auto_now_add", False) or getattr(field, "auto_now", False):
                field.pre_save(instance, add=True)
        columns = tuple(field.column for field in fields)
        if last:
            self._last_inserts.append((type(instance), meta.pk.column, columns, self._row(instance, fields)))
        else:
            self._add("insert", type(instance), meta.pk.column, columns, self._row(instance, fields))
        instance._state.adding = False
        instance._state.db = connection.alias

    def update(self, instance: models.Model, fields=None, *, last: bool = False) -> None:
        """Update `fields` (names; all but the primary key if None) of `instance`, found by its primary
        key; `last`: once, with the values it has when written, after the other changes (see __init__)."""
        meta = instance._meta
        chosen = [meta.get_field(name) for name in fields] if fields is not None else [
            field for field in meta.concrete_fields if not field.primary_key
        ]
        if last:
            self._last_updates[(meta.db_table, instance.pk)] = (instance, tuple(chosen))
            return
        row = self._row(instance, [meta.pk, *chosen])
        self._add("update", type(instance), meta.pk.column, tuple(field.column for field in chosen), row)

    def update_where(self, model, key: str, key_value, **values) -> None:
        """Update the rows of `model` whose column `key` is `key_value` (not its primary key: a
        workflow's execution row by its job, say)."""
        columns = tuple(model._meta.get_field(name).column for name in values)
        row = {key: key_value, **{model._meta.get_field(name).column: value for name, value in values.items()}}
        self._add("update", model, key, columns, row)

    def delete(self, model, key: str, key_value) -> None:
        """Delete the rows of `model` whose column `key` is `key_value`."""
        self._add("delete", model, key, (), {key: key_value})

    def flush(self, cursor, *, commit: bool = False) -> set[uuid.UUID]:
        """Write what is kept; answers with the jobs whose changes made webhook deliveries. With
        `commit`, the transaction's COMMIT goes with the write, in one round trip (the two statements in
        one query: its first result is the write's)."""
        if not self:
            return set()
        for instance, chosen in self._last_updates.values():
            meta = instance._meta
            self._add("update", type(instance), meta.pk.column, tuple(field.column for field in chosen),
                      self._row(instance, [meta.pk, *chosen]))
        for model, key, columns, row in self._last_inserts:
            self._add("insert", model, key, columns, row)
        self._last_updates, self._last_inserts = {}, []
        payload = _dumps(
            [{"op": op, "table": table, "key": key, "columns": list(columns), "rows": rows}
             for op, table, key, columns, rows, _ in self._changes]
        )
        self._changes = []
        cursor.execute("SELECT jq_apply(%s::jsonb)" + ("; COMMIT" if commit else ""), [payload])
        (made,) = cursor.fetchone()
        return {uuid.UUID(job_id) for job_id in (made or "").split()}
