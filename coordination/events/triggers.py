"""The triggers that write `job_events` (coordination.models.JobEvent).

A row is added whenever a job is inserted, whenever one of the fields a client sees changes (status,
priority, what it waits for, a cancel asked for), whenever a workflow's current step changes, and
whenever what a provider says of a job it runs changes (`provider_runs`: its status, progress or
place in its line; the event `progress`, its state carrying the job's whole `at_provider` as it was),
in the transaction that makes the change. Triggers rather than calls in our code: the coordinator,
the repairs and an operator's own SQL all change jobs, and none of them can forget an event. Each such transaction also NOTIFYs `job_events` (one notification
per transaction: PostgreSQL folds repeats), which wakes the web processes' listeners (hub.py).

The same trigger writes a job's webhook deliveries (`webhook_deliveries`, the outbox that
coordination/webhooks.py sends from after commit): for a job with a webhook_url, a change of status
to an event the job wants (webhook_targets.EVENTS, its webhook_events_filter or DEFAULT_EVENTS) adds
a pending delivery with the event's state, and notes the job in the transaction's
DELIVERIES_SETTING, which the coordinator's write reads back to wake the sender for those jobs only.
So a delivery exists exactly when its change does, whoever made it, and nothing under the
coordinator lock builds a payload.

Installed by migration 0019 from the text here; a change to it comes with a migration that calls
install() again (the statements replace what was there).
"""

from coordination.webhook_targets import DEFAULT_EVENTS, EVENTS
from coordination.writes import DELIVERIES_SETTING

# The job's fields an event keeps as they were right after it (feed.py lays them over the job when
# it is shown); the rest of a job does not change once it is accepted, or is read live.
STATE_COLUMNS = (
    "status", "priority", "blocked_by_job_id", "conflict_reason", "queued_at", "started_at", "completed_at",
    "error", "attempt", "cancel_requested_at",
)
STEP_COLUMNS = ("current_step", "current_step_model")
PROGRESS_COLUMNS = ("provider_status", "progress", "queue_position")
WATCHED = ("status", "priority", "blocked_by_job_id", "conflict_reason", "cancel_requested_at")
CHANNEL = "job_events"


def _pairs(row: str, step: str, step_model: str) -> str:
    columns = ", ".join(f"'{column}', {row}.{column}" for column in STATE_COLUMNS)
    return f"{columns}, 'current_step', {step}, 'current_step_model', {step_model}"


def _what(distinct: str) -> str:
    """The event's name for an UPDATE of jobs (`distinct`: the database's null-safe "differs")."""
    return f"""CASE
        WHEN OLD.status {distinct} NEW.status THEN
            CASE NEW.status WHEN 'running' THEN 'started' WHEN 'pending' THEN 'requeued' ELSE NEW.status END
        WHEN OLD.cancel_requested_at IS NULL AND NEW.cancel_requested_at IS NOT NULL THEN 'cancel_requested'
        WHEN OLD.priority {distinct} NEW.priority THEN 'priority'
        WHEN OLD.blocked_by_job_id {distinct} NEW.blocked_by_job_id
             OR OLD.conflict_reason {distinct} NEW.conflict_reason THEN 'blocked'
        ELSE 'changed' END"""


def _changed(columns, distinct: str) -> str:
    return " OR ".join(f"OLD.{column} {distinct} NEW.{column}" for column in columns)


def _listed(values) -> str:
    return ", ".join(f"'{value}'" for value in values)


def webhook_wanted_sql(job: str, event: str) -> str:
    """Whether `job` (a row) wants a webhook for `event`: a webhook event its filter names, or, with no
    filter, one of the defaults."""
    return f"""({job}.webhook_url IS NOT NULL AND {event} IN ({_listed(EVENTS)}) AND CASE
        WHEN {job}.webhook_events_filter IS NULL THEN {event} IN ({_listed(DEFAULT_EVENTS)})
        ELSE {job}.webhook_events_filter ? {event} END)"""


# With job_files (coordination/outputs): a completed job's result.files become rows to copy, its
# completed event says how many are still being copied, and the last one to settle is a job.files event.
_FILES_KEPT = """    IF what = 'completed' AND jsonb_typeof(j.result->'files') = 'array' THEN
        -- The files it produced, to be kept (coordination/outputs): one row each, copied by a copier.
        INSERT INTO job_files (id, job_id, n, source_url, state, size, sha256, content_type, storage_name, error,
                               tries, next_try_at, created_at)
        SELECT gen_random_uuid(), j.job_id, f.n - 1, f.value->>'source_url', 'copying', NULL, '',
               COALESCE(f.value->>'content_type', ''), '', '', 0, now(), now()
        FROM jsonb_array_elements(j.result->'files') WITH ORDINALITY AS f(value, n)
        WHERE jsonb_typeof(f.value->'source_url') = 'string'
        ON CONFLICT (job_id, n) DO NOTHING;
    END IF;
"""
# A job's files are found by its job_id alone, the state tested on those few rows: with `state =
# 'copying'` in the WHERE the planner may take the partial index of every file waiting for its copy
# and filter it by job_id, a cost that grew with the copier's backlog at every completion.
_FILES_COUNTED = """    IF what = 'completed' THEN  -- its stream ends with job.files instead while files are being kept
        fields := fields || jsonb_build_object('files_copying',
            (SELECT count(*) FILTER (WHERE state = 'copying') FROM job_files WHERE job_id = j.job_id));
    END IF;
"""
_FILES_TRIGGER = """
DROP TRIGGER IF EXISTS job_events_files ON job_files;
CREATE TRIGGER job_events_files AFTER UPDATE OF state ON job_files FOR EACH ROW
    WHEN (OLD.state = 'copying' AND NEW.state <> 'copying') EXECUTE FUNCTION jq_job_event();
"""


def postgresql_sql(*, progress: bool = True, files: bool = True) -> str:
    """The statements; `progress`: with the trigger on provider_runs (migrations before 0025 have no such
    columns); `files`: with job_files (before 0028 there is no such table)."""
    d = "IS DISTINCT FROM"
    return f"""
CREATE OR REPLACE FUNCTION jq_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    j jobs;
    what text;
    step integer;
    step_model text;
    fields jsonb;
BEGIN
    IF TG_TABLE_NAME = 'jobs' THEN
        j := NEW;
        IF TG_OP = 'INSERT' THEN
            what := 'submitted';
        ELSE
            what := {_what(d)};
            IF NEW.kind = 'workflow' THEN
                SELECT current_step, current_step_model INTO step, step_model
                FROM workflow_executions WHERE job_id = NEW.job_id;
            END IF;
        END IF;
    ELSIF TG_TABLE_NAME = 'job_files' THEN
        -- A file's copy settled: the event comes with the last of its job's files (the copier locks
        -- them all first, so two settling at once see each other's). Its job's files are found by
        -- job_id alone (see _FILES_COUNTED).
        IF (SELECT bool_or(state = 'copying') FROM job_files WHERE job_id = NEW.job_id) THEN
            RETURN NULL;
        END IF;
        what := 'files';
        SELECT * INTO j FROM jobs WHERE job_id = NEW.job_id;
    ELSIF TG_TABLE_NAME = 'provider_runs' THEN
        what := 'progress';
        SELECT * INTO j FROM jobs WHERE job_id = NEW.job_id;
        IF j.status IS DISTINCT FROM 'running' OR j.attempt IS DISTINCT FROM NEW.attempt THEN
            RETURN NULL;  -- the job moved on: its run's last words are no news
        END IF;
    ELSE
        what := 'step';
        SELECT * INTO j FROM jobs WHERE job_id = NEW.job_id;
        step := NEW.current_step;
        step_model := NEW.current_step_model;
    END IF;
{_FILES_KEPT if files else ''}    fields := jsonb_build_object({_pairs('j', 'step', 'step_model')});
{_FILES_COUNTED if files else ''}    IF what = 'progress' THEN
        fields := fields || jsonb_build_object('at_provider', jsonb_build_object(
            'provider_job_id', NEW.provider_job_id, 'style', NEW.style, 'status', NEW.provider_status,
            'since', NEW.submitted_at, 'watched', NEW.watcher IS NOT NULL, 'progress', NEW.progress,
            'queue_position', NEW.queue_position));
    END IF;
    INSERT INTO job_events (job_id, event, state, created_at) VALUES (j.job_id, what, fields, now());
    IF {webhook_wanted_sql('j', 'what')} THEN
        INSERT INTO webhook_deliveries (webhook_id, job_id, event_type, url, payload, event_state, state, attempts,
                                        next_attempt_at, last_error, created_at)
        VALUES ('msg_' || replace(gen_random_uuid()::text, '-', ''), j.job_id, 'job.' || what, j.webhook_url,
                NULL, fields, 'pending', 0, now(), '', now());
        -- Which jobs this transaction made deliveries for: the coordinator's write (jq_apply) answers
        -- with them, and only those have their sender woken after commit (LockedQueue.flush).
        PERFORM set_config('{DELIVERIES_SETTING}', coalesce(current_setting('{DELIVERIES_SETTING}', true), '') || j.job_id::text || ' ', true);
    END IF;
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS job_events_insert ON jobs;
CREATE TRIGGER job_events_insert AFTER INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION jq_job_event();
DROP TRIGGER IF EXISTS job_events_update ON jobs;
CREATE TRIGGER job_events_update AFTER UPDATE OF {", ".join(WATCHED)} ON jobs FOR EACH ROW
    WHEN ({_changed(WATCHED, d)}) EXECUTE FUNCTION jq_job_event();
DROP TRIGGER IF EXISTS job_events_step ON workflow_executions;
CREATE TRIGGER job_events_step AFTER UPDATE OF {", ".join(STEP_COLUMNS)} ON workflow_executions FOR EACH ROW
    WHEN ({_changed(STEP_COLUMNS, d)}) EXECUTE FUNCTION jq_job_event();
""" + (_FILES_TRIGGER if files else "") + (f"""
DROP TRIGGER IF EXISTS job_events_progress ON provider_runs;
CREATE TRIGGER job_events_progress AFTER UPDATE OF {", ".join(PROGRESS_COLUMNS)} ON provider_runs FOR EACH ROW
    WHEN (NEW.state = 'in_flight' AND ({_changed(PROGRESS_COLUMNS, d)})) EXECUTE FUNCTION jq_job_event();
""" if progress else "")


def install(schema_editor) -> None:
    """Put the triggers in place (again), if job_events exists: not after migrating back before it."""
    connection = schema_editor.connection
    if "job_events" not in connection.introspection.table_names():
        return
    with connection.cursor() as cursor:
        runs = ("provider_runs" in connection.introspection.table_names()
                and any(column.name == "progress" for column in connection.introspection.get_table_description(cursor, "provider_runs")))
        cursor.execute(postgresql_sql(progress=runs, files="job_files" in connection.introspection.table_names()))


def uninstall(schema_editor) -> None:
    """What migrating back before job_events does first: no trigger may write to a table that goes."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        for trigger, table in (("job_events_insert", "jobs"), ("job_events_update", "jobs"),
                               ("job_events_step", "workflow_executions"), ("job_events_progress", "provider_runs"),
                               ("job_events_files", "job_files")):
            if table in connection.introspection.table_names():
                cursor.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
        cursor.execute("DROP FUNCTION IF EXISTS jq_job_event()")
