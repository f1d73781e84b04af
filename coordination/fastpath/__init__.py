"""The hot transitions on PostgreSQL: a submit and a worker's report, each one statement under the
coordinator lock (the PL/pgSQL functions of schema.sql, installed by migration 0013 and again by
each migration whose columns or tables they read: 0014, 0016, 0017, 0018, 0020, 0030).

The service still opens the transaction and takes the coordinator lock (`slots_lock`, a
`select_for_update` of the slot rows); then one function call decides and writes everything the
Python path (coordination/queue) would, audit rows included, and answers with what happened. Here
that answer is played back: the [COORDINATOR] lines (coordination/queue/words.py), the workflow
mirror (the hook workflows registered), and the worker tasks, enqueued on commit.

`COORDINATOR_FASTPATH=0` takes the Python path instead. Both paths are held equal by tests/concurrency/test_scheduling_properties.py, which
runs every step both ways and compares the whole state after each.
"""

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction

from coordination.kinds import job_blocked_changed
from coordination.models import CatalogModel, Job
from coordination.queue.locked import enqueue_job_run
from coordination.queue.snapshot import from_row
from coordination.queue.words import NO_BLOCKER, models_repr, say
from coordination.writes import Writes

SCHEMA_SQL = Path(__file__).with_name("schema.sql")


def enabled() -> bool:
    return settings.COORDINATOR_FASTPATH


def install(schema_editor=None) -> None:
    """Create (or replace) the functions; migrations call it, and so may an operator after an upgrade."""
    target = schema_editor.connection if schema_editor is not None else connection
    with target.cursor() as cursor:
        cursor.execute(SCHEMA_SQL.read_text())


def play(answer: dict) -> Job | None:
    """Say what the function did, mirror workflow waits, and enqueue the started jobs on commit.
    Returns the job a finishing worker takes (the hand-off), if any."""
    writes = Writes()
    for kind, *args in answer.get("events", ()):
        if kind == "checking":
            say("checking", args[0], json.loads(args[1]))
        elif kind == "conflict":
            say("conflict", models_repr(args[0]))
        elif kind == "start_now":
            say("start_beside" if args[1] == "true" else "start_idle", args[0])
        elif kind == "set_active":
            say("set_active", args[0], args[1], json.loads(args[2]))
        elif kind == "blocked":
            say("blocked", args[0], args[1])
            say("marked_queued", args[0], args[2] or NO_BLOCKER)
        elif kind == "still_queued":
            say("still_queued", args[0], args[1] or NO_BLOCKER, args[2])
        elif kind == "found":
            say("found", int(args[0]))
        elif kind in ("no_queued", "starting_next", "ended"):
            say(kind, *args)
        elif kind == "blocked_changed":
            job_id, job_kind, blocked_by = args
            job_blocked_changed(Job(job_id=uuid.UUID(job_id), kind=job_kind,
                                    blocked_by_job_id=uuid.UUID(blocked_by) if blocked_by else None), writes)
        else:
            raise ValueError(f"Unknown event from the coordinator's SQL: {kind}")
    with connection.cursor() as cursor:
        writes.flush(cursor)
    for job_id, attempt in answer.get("enqueue", ()):
        transaction.on_commit(partial(enqueue_job_run, uuid.UUID(job_id), attempt))
    taken = answer.get("taken")
    if not taken:
        return None
    job = from_row(taken)
    if answer.get("taken_model"):
        # Its worker runs it at once: the catalog row comes along, so the runner's call needs no read.
        job.catalog_row = from_row(answer["taken_model"], CatalogModel)
    return job


SIGNATURES = {
    "jq_submit_many": ("jsonb", "timestamptz", "int", "int"),
    "jq_finish": ("uuid", "int", "text", "jsonb", "text", "boolean", "boolean", "timestamptz", "int", "int"),
}


def _call(function: str, params: list):
    placeholders = ", ".join(f"%s::{kind}" for kind in SIGNATURES[function])
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}({placeholders})", params)
        (answer,) = cursor.fetchone()
    return json.loads(answer) if isinstance(answer, str) else answer


def _submission(job: Job) -> dict:
    return {
        "job_id": str(job.job_id), "kind": job.kind, "job_type": job.job_type, "model": job.model,
        "prompt": job.prompt, "params": job.params, "owner_id": job.owner_id, "priority": job.priority,
        "client_ref": job.client_ref, "required_models": job.required_models, "retry_of_id": job.retry_of_id and str(job.retry_of_id),
    }


def submit_many(jobs: list[Job], *, now: datetime) -> dict:
    """Insert and admit `jobs` in order (one job, or a batch), in one call (jq_submit_many) under the
    caller's lock. Fills each job in with what was decided; returns the answer to `play` once the
    caller's own rows for the jobs exist."""
    answer = _call(
        "jq_submit_many",
        [
            json.dumps([_submission(job) for job in jobs]),
            now, settings.COORDINATOR_MAX_ACTIVE_JOBS, settings.COORDINATOR_LEASE_SECONDS,
        ],
    )
    if answer.get("outcome") == "python":
        return answer  # a scheduling policy is in use: nothing was done, the Python path decides
    for job, row in zip(jobs, answer["jobs"], strict=True):
        from_row(row, into=job)
    return answer


@dataclass(frozen=True)
class Finished:
    outcome: str  # "ended", "refused", or "python": not for the fast path, nothing changed
    job: Job | None = None
    taken: Job | None = None


def finish(
    *, job_id, attempt: int, status: str, result: dict | None, error: str | None, retry: bool, take_next: bool,
    now: datetime,
) -> Finished:
    """A worker's report (jq_finish): ended and settled, refused as stale, or left to the Python path."""
    try:
        job_id = uuid.UUID(str(job_id))
    except ValueError:
        return Finished("python")  # not a job id: the Python path says it is not found
    answer = _call(
        "jq_finish",
        [
            job_id, attempt, status, json.dumps(result) if result is not None else None, error, retry, take_next,
            now, settings.COORDINATOR_MAX_ACTIVE_JOBS, settings.COORDINATOR_LEASE_SECONDS,
        ],
    )
    if answer["outcome"] == "python":
        return Finished("python")
    job = from_row(answer["job"])
    if answer["outcome"] == "refused":
        return Finished("refused", job)
    return Finished("ended", job, play(answer))
