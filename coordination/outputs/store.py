"""The database side of kept files: copiers claim the files due (SKIP LOCKED, held for a while, so
that a copier that died leaves them to another), record how each copy went, and the daily prune
expires the old ones (jobs' files) or deletes them (users' own input files)."""

import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone

from coordination.events.triggers import webhook_wanted_sql
from coordination.models import CatalogModel, InputFile, JobFile
from coordination.outputs.copy import Copied, CopyFailed
from coordination.webhook_targets import webhooks_wake
from coordination.writes import PLANNED_ONCE

logger = logging.getLogger(__name__)

HOLD = timedelta(minutes=10)  # a claimed file is another copier's after this (its copier died)
BACKOFF = (5, 30, 120, 600)  # seconds before the next try of a copy that may succeed later


@dataclass(frozen=True)
class Due:
    id: object
    job_id: object
    n: int
    source_url: str
    content_type: str
    model: str
    provider_urls: tuple = ("", "")  # the model's provider_base_url and provider_url, read with the claim
    # Its claims so far, this one included: which claim it is. How its copy went is recorded only while
    # it is still the file's last claim (a copier that outlasted its hold, the file claimed again since
    # by another, records nothing).
    tries: int = 1
    files_webhook: bool = False  # its job wants a webhook once its files are kept (job.files)

    @property
    def trusted_host(self) -> str | None:
        return _provider_host(*self.provider_urls)


def files_claim(*, limit: int) -> list[Due]:
    """Up to `limit` files due for a copy, held for this copier, with what their copy needs to know
    of their model (one statement: jq_files_claim)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM jq_files_claim(%s, %s)", [HOLD, limit])
        return [Due(*row[:6], provider_urls=tuple(row[6] or ("", "")), tries=row[7], files_webhook=row[8])
                for row in cursor.fetchall()]


def trusted_host(model_name: str) -> str | None:
    """The host of the model's own provider: its files may be fetched over http and from a private
    address (a ComfyUI box on the LAN)."""
    model = CatalogModel.objects.filter(name=model_name).values_list("provider_base_url", "provider_url").first()
    return _provider_host(*model) if model else None


def _provider_host(base_url: str, url: str) -> str | None:
    """The host of a model's provider: its provider_base_url's, else its provider_url's."""
    from urllib.parse import urlsplit

    chosen = base_url or url
    return urlsplit(chosen).hostname if chosen else None


_CONTENT_TYPE_LENGTH = JobFile._meta.get_field("content_type").max_length


def settlement(due: Due, outcome: Copied | Exception, *, now) -> dict:
    """What the copy of `due` came to, as the columns to write: stored; or, while it may succeed and
    tries are left, due again later (back-off); else failed, with the reason."""
    if isinstance(outcome, Copied):
        return {"state": JobFile.State.STORED, "storage_name": outcome.storage_name, "size": outcome.size,
                "sha256": outcome.sha256, "content_type": outcome.content_type[:_CONTENT_TYPE_LENGTH], "error": "",
                "stored_at": now}
    again = outcome.again if isinstance(outcome, CopyFailed) else True  # storage refused, disk full, ...
    error = str(outcome) if isinstance(outcome, CopyFailed) else f"{type(outcome).__name__}: {outcome}"
    if again and due.tries < settings.COORDINATOR_COPY_TRIES:
        delay = BACKOFF[min(due.tries - 1, len(BACKOFF) - 1)]
        return {"next_try_at": now + timedelta(seconds=delay), "error": error[:500]}
    return {"state": JobFile.State.FAILED, "error": f"Not kept: {error}"[:500]}


# The copier's two statements are functions, so that PostgreSQL plans each once per connection (planning
# them cost as much as running them, at every claim and every record), with generic plans that never
# read through a table or revisit dead index entries (no bitmap scans, see queue/snapshot.py).
_PLANNED_ONCE = f"LANGUAGE plpgsql VOLATILE\n{PLANNED_ONCE}"


def _sql() -> str:
    return f"""
-- The files due for a copy, oldest first, held for the calling copier (SKIP LOCKED: two copiers
-- never take one file), with what their copy needs to know of their model.
CREATE OR REPLACE FUNCTION jq_files_claim(p_hold interval, p_limit int) RETURNS TABLE (
    id uuid, job_id uuid, n int, source_url text, content_type text, model text, provider_urls text[],
    tries int, files_webhook boolean
) {_PLANNED_ONCE} AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    -- MATERIALIZED: taken once (see jq_webhooks_claim: as a sub-select, a nested loop with it inside
    -- would run it again for each outer row, each time taking up to p_limit more files).
    WITH due AS MATERIALIZED (
        SELECT id FROM job_files WHERE state = 'copying' AND next_try_at <= now()
        AND (held_until IS NULL OR held_until < now()) ORDER BY next_try_at LIMIT p_limit
        FOR UPDATE SKIP LOCKED)
    UPDATE job_files AS f SET held_until = now() + p_hold, tries = f.tries + 1
    FROM due, jobs AS j
    WHERE f.id = due.id AND j.job_id = f.job_id
    RETURNING f.id, f.job_id, f.n, f.source_url::text, f.content_type::text, j.model::text,
              (SELECT ARRAY[c.provider_base_url, c.provider_url]::text[] FROM model_catalog AS c WHERE c.name = j.model),
              f.tries::int, {webhook_wanted_sql('j', "'files'")};
END $$;

-- The copier lets go of the files it held, each with what its copy came to (settlement's columns; the
-- others keep their value: a settlement never writes a null), if still being copied (an operator may
-- have deleted one meanwhile) and still held by the claim that copied it (its tries: another copier
-- may have claimed it again once that claim's hold lapsed); answers with the files it settled. Their
-- jobs' files (`p_jobs`) are locked together first, every one of them (the aggregate reads them all)
-- in id order: the last of a job's files to settle sees the others' (its job.files event). Found by
-- their keys (`p_ids`) and their jobs' (never by their state: the planner could walk the partial
-- index of every file being copied, the copier's whole backlog).
DROP FUNCTION IF EXISTS jq_files_settle(uuid[], jsonb, uuid[]);
CREATE FUNCTION jq_files_settle(p_jobs uuid[], p_given jsonb, p_ids uuid[]) RETURNS SETOF uuid
{_PLANNED_ONCE} AS $$
BEGIN
    RETURN QUERY
    WITH locked AS (
        SELECT coalesce(array_agg(id) FILTER (WHERE state = 'copying'), '{{}}') AS copying
        FROM (SELECT id, state FROM job_files WHERE job_id = ANY(p_jobs) ORDER BY id FOR UPDATE) AS files),
    given AS (SELECT * FROM jsonb_to_recordset(p_given) AS g(
        id uuid, state text, storage_name text, size bigint, sha256 text, content_type text, error text,
        stored_at timestamptz, next_try_at timestamptz, tries int))
    UPDATE job_files AS f
    SET held_until = NULL, state = coalesce(g.state, f.state), storage_name = coalesce(g.storage_name, f.storage_name),
        size = coalesce(g.size, f.size), sha256 = coalesce(g.sha256, f.sha256),
        content_type = coalesce(g.content_type, f.content_type), error = coalesce(g.error, f.error),
        stored_at = coalesce(g.stored_at, f.stored_at), next_try_at = coalesce(g.next_try_at, f.next_try_at)
    FROM given AS g, locked AS l
    WHERE f.id = ANY(p_ids) AND g.id = f.id AND f.id = ANY(l.copying) AND f.tries = g.tries
    RETURNING f.id;
END $$;
"""


def install(schema_editor=None) -> None:
    """Create (or replace) the copier's functions; migrations 0039, 0042 and 0044 call it, and so must a migration
    that changes a column they read or write."""
    target = schema_editor.connection if schema_editor is not None else connection
    with target.cursor() as cursor:
        cursor.execute(_sql())


def files_settle(copies: list[tuple[Due, Copied | Exception]]) -> None:
    """Record how each copy went: one statement for files of different jobs (two files of one job
    settle one after the other, so that only the last is its job's job.files event). A file that
    settled for good, of a job that wants its job.files webhook, wakes the sender once recorded.

    A copy that may not be recorded (its hold lapsed and another copier claimed the file since, or an
    operator deleted the file meanwhile) is deleted from storage again: nothing names it."""
    now = timezone.now()
    waiting, settled_for_good, unrecorded = list(copies), False, []
    with connection.cursor() as cursor:
        while waiting:
            jobs, now_settled, later = set(), [], []
            for due, outcome in waiting:
                (later if due.job_id in jobs else now_settled).append((due, outcome))
                jobs.add(due.job_id)
            rows = [{"id": str(due.id), "tries": due.tries, **settlement(due, outcome, now=now)}
                    for due, outcome in now_settled]
            cursor.execute("SELECT jq_files_settle(%s::uuid[], %s::jsonb, %s::uuid[])",
                           [sorted(str(job_id) for job_id in jobs), json.dumps(rows, default=str), [row["id"] for row in rows]])
            settled = {str(file_id) for (file_id,) in cursor.fetchall()}
            for (due, outcome), row in zip(now_settled, rows):
                if row["id"] not in settled:
                    unrecorded.append((due, outcome))
                elif due.files_webhook and row.get("state") in (JobFile.State.STORED, JobFile.State.FAILED):
                    settled_for_good = True
            waiting = later
    for due, outcome in unrecorded:
        logger.warning("Copier: file %s of job %s was copied, but not recorded: another copier took it once its "
                       "hold lapsed, or it was deleted meanwhile", due.n, due.job_id)
        if isinstance(outcome, Copied):
            default_storage.delete(outcome.storage_name)
    if settled_for_good:
        transaction.on_commit(webhooks_wake)


def files_prune(*, days: int | None = None) -> int:
    """Files kept longer than COORDINATOR_OUTPUT_RETENTION_DAYS: deleted from storage and marked
    `expired` on their jobs (the jobs stay). Returns how many."""
    days = settings.COORDINATOR_OUTPUT_RETENTION_DAYS if days is None else days
    old = JobFile.objects.filter(state=JobFile.State.STORED, stored_at__lt=timezone.now() - timedelta(days=days))
    pruned = 0
    for row in old.iterator():
        file_expire(row, reason=f"Deleted after {days} days (COORDINATOR_OUTPUT_RETENTION_DAYS).")
        pruned += 1
    return pruned


def input_files_prune(*, days: int | None = None) -> int:
    """Users' own input files (POST /files) older than COORDINATOR_OUTPUT_RETENTION_DAYS: deleted from
    storage, and their rows with them (a job naming one later fails saying it is gone). Returns how many."""
    days = settings.COORDINATOR_OUTPUT_RETENTION_DAYS if days is None else days
    old = list(InputFile.objects.filter(created_at__lt=timezone.now() - timedelta(days=days)))
    for row in old:
        input_file_delete(row)
    return len(old)


def input_file_delete(row: InputFile) -> None:
    default_storage.delete(row.storage_name)
    row.delete()


def file_expire(row: JobFile, *, reason: str) -> None:
    """Delete a kept file from storage (an operator's, or the prune's); the job says it is gone."""
    if row.storage_name:
        default_storage.delete(row.storage_name)
    JobFile.objects.filter(pk=row.pk).update(state=JobFile.State.EXPIRED, error=reason, storage_name="")
