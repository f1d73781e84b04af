"""Reads for the admin's job page (admin → Jobs → a job; templates/admin/coordination/job/job_page.html):
what a job is doing and what it has done, for an operator.

Each number is the one its rule computes for everyone: the place in line, what a waiting job waits
for and its expected start are GET /jobs/{id}'s (selectors.job_detail), a running job's provider the
API's `at_provider` (selectors.run_at_provider), its files the API's `result.files`
(outputs.links.files_shown), its attempts the coordinator's limit (services.job_max_attempts). A
render makes the same queries however long the job's history: the timeline, the webhook deliveries
and their answers are each read up to a cap, and the page says when there were more.
"""

import json
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Prefetch
from django.utils import timezone

from coordination.console import event_note, one_snapshot
from coordination.durations import span
from coordination.models import CatalogModel, Job, JobEvent, JobFile, JobQueueLog, JobQueueState, ProviderRun
from coordination.models import WebhookAttempt, WebhookDelivery
from coordination.outputs.links import files_shown
from coordination.selectors import job_detail, run_at_provider
from coordination.services import job_max_attempts

TIMELINE_SHOWN = 50  # the latest rows of its history shown
DELIVERIES_SHOWN = 20  # the latest webhook deliveries shown
ANSWERS_SHOWN = 5  # each delivery's latest tries shown with what the receiver answered
RUNS_SHOWN = 20  # the latest attempts at a provider shown

# Of `job_events`, the kinds the audit log has no row for: a workflow moving to its next step, and the
# job's kept files settling. Its status, priority and what it waits for are the audit rows' (with who
# and why); its progress at a provider is shown with the run, not row by row (up to two a second).
EVENTS_ADDED = ("step", "files")

# The job's bookkeeping columns, each with what it is for: shown apart from what it is doing.
INTERNALS = (
    ("attempt", "Its starts so far. A worker acts for this attempt only (its fence): one still holding an older "
                "attempt can no longer report it."),
    ("claimed_attempt", "The attempt a worker has taken up: equal to attempt once its worker confirmed it, "
                        "behind it while the start is on its way to a worker."),
    ("lease_expires_at", "The running attempt's lease, renewed by its worker (at a provider, by its poller): once it "
                         "lapses, the reaper ends the attempt or sends it again."),
    ("heartbeat_at", "When its worker last renewed the lease; empty: no worker has confirmed the attempt yet."),
    ("cancel_requested_at", "When a cancel was asked for while it ran: its worker is asked to stop, and it ends "
                            "cancelled once it has."),
    ("held", "It waits on a paused model: it holds back only the jobs that need that model too."),
    ("blocked_by_job_id", "The job the coordinator says it waits for (its reason names it); empty when it waits for "
                          "no job, or does not wait."),
)


@dataclass(frozen=True)
class Moment:
    """One row of the job's timeline."""

    at: datetime
    what: str
    reason: str  # why it waits, for a blocked row (job ids in it are linked on the page)
    note: str  # who, on what, what went wrong (console.event_note)


def _log_moment(row: JobQueueLog) -> Moment:
    return Moment(row.created_at, row.get_event_type_display().lower(), row.conflict_reason or "",
                  event_note(row.details or {}))


def _event_moment(row: JobEvent) -> Moment:
    if row.event == "step":
        model = row.state.get("current_step_model")
        return Moment(row.created_at, "next step", "", f"step {row.state.get('current_step')}" + (f" on {model}" if model else ""))
    return Moment(row.created_at, "files settled", "", "its kept files are copied, or their copy failed")


def job_timeline(job: Job) -> dict:
    """Its latest TIMELINE_SHOWN moments, oldest first: its audit rows (job_queue_log) with the job
    events they lack (EVENTS_ADDED); `more` when older ones are left out. Two queries."""
    logged = JobQueueLog.objects.filter(job_id=job.job_id).order_by("-created_at", "-id")[:TIMELINE_SHOWN + 1]
    added = JobEvent.objects.filter(job_id=job.job_id, event__in=EVENTS_ADDED).order_by("-id")[:TIMELINE_SHOWN + 1]
    moments = [_log_moment(row) for row in logged] + [_event_moment(row) for row in added]
    moments.sort(key=lambda moment: moment.at, reverse=True)
    return {"moments": moments[:TIMELINE_SHOWN][::-1], "more": len(moments) > TIMELINE_SHOWN, "shown": TIMELINE_SHOWN}


def job_deliveries(job: Job) -> dict:
    """Its latest DELIVERIES_SHOWN webhook deliveries, oldest first, each with its latest ANSWERS_SHOWN
    tries (`answers`, oldest first). Two queries."""
    tries = WebhookAttempt.objects.order_by("-id")[:ANSWERS_SHOWN]
    rows = list(
        WebhookDelivery.objects.filter(job_id=job.job_id).order_by("-id")
        .prefetch_related(Prefetch("attempt_rows", queryset=tries, to_attr="latest_tries"))[:DELIVERIES_SHOWN + 1]
    )
    for row in rows:
        row.answers = row.latest_tries[::-1]
    return {"rows": rows[:DELIVERIES_SHOWN][::-1], "more": len(rows) > DELIVERIES_SHOWN, "shown": DELIVERIES_SHOWN}


def job_files(job: Job) -> list[dict]:
    """A completed job's `result.files` as the API shows them (where the coordinator keeps each, how
    its copy stands); empty for a job that listed none. One query, for a job that listed some."""
    listed = job.result.get("files") if job.status == Job.Status.COMPLETED and isinstance(job.result, dict) else None
    if not isinstance(listed, list) or not listed:
        return []
    shown = files_shown(job, listed, JobFile.objects.filter(job_id=job.job_id))
    # A file the runner listed as something else than an object is shown as it was listed.
    return [{"n": n, **file} if isinstance(file, dict) else {"n": n, "source_url": str(file)} for n, file in enumerate(shown)]


def job_running(job: Job, runs: list[ProviderRun], now: datetime) -> dict | None:
    """A running job's slot, how long it has run, where it runs: at its provider (what the provider
    last said) or in a worker process of its model's runner. One query or two."""
    if job.status != Job.Status.RUNNING:
        return None
    slot = JobQueueState.objects.filter(active_job_id=job.job_id).order_by("id").first()
    at_provider = run_at_provider(job, runs)
    runners = [] if at_provider else list(
        CatalogModel.objects.filter(name__in=job.required_models).order_by("name").values_list("name", "runner", "provider")
    )
    return {
        "slot": slot,
        "ran": span((now - job.started_at).total_seconds()) if job.started_at else None,
        "at_provider": at_provider,
        "progress": round(at_provider.progress * 100) if at_provider and at_provider.progress is not None else None,
        "runners": [{"model": name, "runner": runner, "provider": provider} for name, runner, provider in runners],
    }


def job_page_context(*, job_id, user, now: datetime | None = None) -> dict:
    """Everything the job page shows (JobNotFound when there is no such job). For a waiting job, the
    reads GET /jobs/{id} makes; then its slot and runner while it runs, its attempts at a provider,
    its history, deliveries and files: a fixed number of queries however long its history."""
    with one_snapshot():  # its sections describe one instant, as the console's do
        now = now or timezone.now()
        detail = job_detail(user=user, job_id=job_id)
        job = detail.job
        runs = list(ProviderRun.objects.filter(job_id=job.job_id).order_by("-attempt")[:RUNS_SHOWN])
        ran = None
        if job.started_at and job.completed_at:
            ran = span((job.completed_at - job.started_at).total_seconds())
        return {
            "job": job,
            "owner": job.owner.get_username() if job.owner_id else "",
            "workflow": job.workflow_execution if job.kind == Job.Kind.WORKFLOW and hasattr(job, "workflow_execution") else None,
            "waiting": job.status == Job.Status.PENDING,
            "detail": detail,
            "running": job_running(job, runs, now),
            "ran": ran,
            "max_attempts": job_max_attempts(job),
            "runs": runs[::-1],
            "timeline": job_timeline(job),
            "deliveries": job_deliveries(job),
            "files": job_files(job),
            # As the API answers them (JSON), not as Python prints them.
            "params_json": json.dumps(job.params, indent=2, ensure_ascii=False),
            "result_json": None if job.result is None else json.dumps(job.result, indent=2, ensure_ascii=False),
            "internals": [{"name": name, "value": getattr(job, name), "purpose": purpose} for name, purpose in INTERNALS],
        }
