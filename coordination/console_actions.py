"""The queue console's actions (admin → Queue console), each in two steps: a GET shows what it will
change (a preview read from selectors.py), and a POST of that page's "Yes" runs the service, which
writes the audit row with the operator's name. Through the admin's own login and CSRF, for users
with the `coordination.operate_queue` permission (superusers have it).

A preview binds: what the operator saw travels back with the "Yes" (the job a slot showed, the
differences the reconciler listed), so the action never touches something the page did not show."""

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from coordination import selectors, services
from coordination.exceptions import CoordinationError
from coordination.models import CatalogModel, JobQueueState
from coordination.selectors import OPERATE
from coordination.services.operations import PRIORITY_MAX, PRIORITY_MIN


@dataclass(frozen=True)
class Action:
    title: str
    explain: str
    preview: Callable[..., dict]
    run: Callable[..., str]  # returns the message shown on the console afterwards
    fields: tuple[str, ...] = ()  # request parameters the action takes (kept through the confirmation)
    # (name, value) pairs taken from the preview, posted back with the "Yes" so the run can check them.
    seen: Callable[[dict], list[tuple[str, str]]] = lambda preview: []


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.username}"


def _priority(request: HttpRequest) -> int:
    raw = request.GET.get("priority", request.POST.get("priority", ""))
    if not re.fullmatch(r"-?[0-9]{1,4}", raw.strip()) or not PRIORITY_MIN <= int(raw) <= PRIORITY_MAX:
        raise CoordinationError(f"Priority must be a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}, not {raw!r}.")
    return int(raw)


def _ids(request: HttpRequest, name: str) -> list[str]:
    return request.POST.getlist(name) if request.method == "POST" else request.GET.getlist(name)


def _job_ids(request: HttpRequest) -> list[str]:
    values = _ids(request, "job")
    if not values:
        raise CoordinationError("No job chosen: pick jobs from the console or the jobs list.")
    for value in values:
        try:
            uuid.UUID(value)
        except ValueError:
            raise CoordinationError(f"{value!r} is not a job id; nothing was changed.") from None
    return values


def _slot_ids(request: HttpRequest) -> list[int]:
    """The slots named (`slot=1&slot=2`), or every slot when none is named; a bad one is an error."""
    existing = list(JobQueueState.objects.order_by("id").values_list("id", flat=True))
    values = _ids(request, "slot")
    if not values:
        return existing
    for value in values:
        if not re.fullmatch(r"[0-9]{1,6}", value) or int(value) not in existing:
            raise CoordinationError(f"There is no slot {value!r} (slots: {', '.join(map(str, existing))}); nothing was changed.")
    return [int(value) for value in values]


def _seen(request: HttpRequest, name: str) -> list[str]:
    return request.POST.getlist(name)


def require_operator(request: HttpRequest) -> None:
    if not request.user.has_perm(OPERATE):
        raise PermissionDenied("Operating the queue needs the permission 'Can operate the queue'.")


def _pause(paused: bool) -> Action:
    verb = "Pause" if paused else "Resume"

    def run(request, name):
        report = services.model_pause(name=name, paused=paused, actor=_actor(request))
        started = f"; started {len(report['started'])} job(s)" if report["started"] else ""
        return f"{verb}d {name}{started}."

    explain = (
        "No new job starts on this model until it is resumed; jobs running on it carry on. The first job in its "
        "line waits with the reason \"Model paused\", the rest wait in line behind it, all keeping their places. "
        "Jobs that do not need this model pass them meanwhile."
        if paused else
        "Jobs may start on this model again: whatever may start by the rules starts now."
    )
    return Action(f"{verb} model?", explain, lambda request, name: selectors.model_pause_preview(name=name, paused=paused), run)


def _cancel_run(request):
    cancelled = stopping = 0
    refused = []
    for job_id in _job_ids(request):
        try:
            job = services.job_cancel(job_id=job_id, user=request.user, reason=f"Cancelled by {_actor(request)}")
        except CoordinationError as error:  # finished meanwhile: the others still go
            refused.append(str(error))
            continue
        cancelled += job.status == "cancelled"
        stopping += job.status == "running"
    message = f"Cancelled {cancelled} job(s); asked {stopping} running job(s) to stop."
    return message + (" Not cancelled: " + " ".join(refused) if refused else "")


def _retry_run(request):
    """A new job for each ended job the preview showed, unless it was retried since: the preview's
    count of its retries travels with the "Yes" and job_resubmit checks it under the coordinator lock,
    so a second click, even at the same moment, makes no second job."""
    seen = dict(value.partition(":")[::2] for value in _seen(request, "retries"))
    made, refused = [], []
    for job_id in _job_ids(request):
        if not seen.get(job_id, "").isdigit():
            refused.append(f"Job {job_id}: retry runs from its preview page only (it counts the job's retries).")
            continue
        try:
            made.append(services.job_resubmit(job_id=job_id, actor=_actor(request), retries_seen=int(seen[job_id])))
        except CoordinationError as error:  # not ended, or refused as a submission would be: the others still go
            refused.append(str(error))
    message = f"Retried {len(made)} job(s)" + (": new job(s) " + ", ".join(str(job.job_id) for job in made) if made else "")
    return message + "." + (" Not retried: " + " ".join(refused) if refused else "")


def _reconcile_run(request):
    report = services.queue_reconcile(actor=_actor(request), only=set(_seen(request, "difference")))
    message = f"Repaired {len(report['repaired'])} difference(s); started {len(report['started'])} job(s)."
    if report["not_repaired"]:
        message += " Not repaired: " + "; ".join(f"{row.get('job_id') or row.get('key')}: {row['why']}"
                                                  for row in report["not_repaired"]) + "."
    return message


def _clear_stale_run(request):
    report = services.queue_clear_stale(actor=_actor(request))
    return f"Repaired {len(report['repaired'])} waiting job(s); started {len(report['started'])}."


def _reset_run(request):
    slot_ids = _slot_ids(request)
    expected = {}
    for value in _seen(request, "expect"):  # "slot:job_id" as the preview showed it ("slot:" for free)
        slot, _, job_id = value.partition(":")
        if re.fullmatch(r"[0-9]{1,6}", slot):
            expected[int(slot)] = job_id or None
    if set(slot_ids) - set(expected):
        raise CoordinationError("Reset state runs from its preview page only (it names the job in each slot); nothing was changed.")
    report = services.queue_reset(actor=_actor(request), slot_ids=slot_ids, expected=expected)
    message = f"Reset {len(slot_ids)} slot(s); failed {len(report['evicted'])} running job(s); started {len(report['started'])}."
    if report["stopping"]:
        message += (f" {len(report['stopping'])} job(s) at a provider are cancelled there first: each fails and frees "
                    "its slot once the provider confirms (or the cancel grace passes).")
    return message


def _priority_run(request, job_id):
    report = services.job_priority_set(job_id=job_id, priority=_priority(request), actor=_actor(request))
    return f"Job {job_id}: priority {report['from']} → {report['to']}; started {len(report['started'])} job(s)."


ACTIONS: dict[str, Action] = {
    "pause": _pause(True),
    "resume": _pause(False),
    "priority": Action(
        "Change priority?",
        "Higher priority stands earlier in every line the job waits in; the job and its neighbours in line are "
        "decided again.",
        lambda request, job_id: selectors.job_priority_preview(job_id=job_id, priority=_priority(request)),
        _priority_run,
        fields=("priority",),
    ),
    "cancel": Action(
        "Cancel jobs?",
        "A waiting job is cancelled at once. A running job's worker is asked to stop; the job ends as cancelled, "
        "and its models are freed, once the worker has stopped.",
        lambda request: selectors.job_cancel_preview(job_ids=_job_ids(request)),
        _cancel_run,
        fields=("job",),
    ),
    "retry": Action(
        "Retry jobs?",
        "Each job that has ended (failed, expired, cancelled, or completed: run again) is made again as a new job "
        "with the request it was accepted with, for its owner, linked to it (retry_of) and audited. The new job "
        "starts or waits by the same rules as any new job. A job that has not ended is left alone.",
        lambda request: selectors.job_retry_preview(job_ids=_job_ids(request)),
        _retry_run,
        fields=("job",),
        seen=lambda preview: [("retries", f"{row['job_id']}:{row['retries']}") for row in preview["rows"]],
    ),
    "dispatch": Action(
        "Dispatch now?",
        "Starts every waiting job that may start by the rules. The coordinator does this on every change already, so "
        "normally nothing starts; use it after rows were changed by hand.",
        lambda request: selectors.queue_dispatch_preview(),
        lambda request: f"Dispatched: started {len(services.queue_dispatch(actor=_actor(request))['started'])} job(s).",
    ),
    "reconcile": Action(
        "Reconcile slots, running jobs and leases?",
        "Each difference listed is repaired under the coordinator lock and audited; then whatever may start starts.",
        lambda request: selectors.queue_reconcile_preview(),
        _reconcile_run,
        seen=lambda preview: [("difference", key) for key in preview["keys"]],
    ),
    "clear_stale": Action(
        "Clear stale queue?",
        "Each listed job is decided again: it starts if it may, or it is pointed at the job it really waits for. "
        "Jobs that wait for a live job are left alone.",
        lambda request: selectors.queue_clear_stale_preview(),
        _clear_stale_run,
    ),
    "reset": Action(
        "Reset state?",
        "The listed slots are freed. A job still running in one is ended as failed, with the reason recorded; the "
        "next waiting jobs then start.",
        lambda request: selectors.queue_reset_preview(slot_ids=_slot_ids(request)),
        _reset_run,
        fields=("slot",),
        seen=lambda preview: [("expect", f"{row['slot']}:{row['active_job_id'] or ''}") for row in preview["rows"]],
    ),
}


def console_action(request: HttpRequest, admin_site, action: str, **kwargs) -> HttpResponse:
    require_operator(request)
    spec = ACTIONS[action]
    console = reverse("admin:queue-console")
    if request.method == "POST" and request.POST.get("confirmed") == "yes":
        try:
            messages.success(request, spec.run(request, **kwargs))
        except CoordinationError as error:
            messages.error(request, str(error))
        return HttpResponseRedirect(console)
    context = {**admin_site.each_context(request), "title": spec.title, "explain": spec.explain, "subject": kwargs,
               "queue_console_nav": True}  # the sidebar highlights the console, not "Slots"
    if spec.fields == ("priority",) and "priority" not in request.GET:
        # The first step: which priority (with where the job stands now).
        context["ask_priority"] = True
        try:
            context["preview"] = selectors.job_priority_preview(job_id=kwargs["job_id"], priority=None)
        except CoordinationError as error:
            context["error"] = str(error)
        return TemplateResponse(request, "admin/coordination/console_action.html", context)
    try:
        context["preview"] = spec.preview(request, **kwargs)
        context["carried"] = [(field, value) for field in spec.fields for value in _ids(request, field)]
        context["carried"] += spec.seen(context["preview"])
    except CoordinationError as error:
        context["error"] = str(error)
    if action in ("pause", "resume") and not CatalogModel.objects.filter(name=kwargs["name"]).exists():
        context["error"] = f"Unknown model {kwargs['name']!r}."
    return TemplateResponse(request, "admin/coordination/console_action.html", context)


def console_action_urls(admin_site) -> list:
    def view(action: str):
        return admin_site.admin_view(lambda request, **kwargs: console_action(request, admin_site, action, **kwargs))

    return [
        path("queue-console/models/<path:name>/pause/", view("pause"), name="queue-console-pause"),
        path("queue-console/models/<path:name>/resume/", view("resume"), name="queue-console-resume"),
        path("queue-console/jobs/<uuid:job_id>/priority/", view("priority"), name="queue-console-priority"),
        path("queue-console/jobs/cancel/", view("cancel"), name="queue-console-cancel"),
        path("queue-console/jobs/retry/", view("retry"), name="queue-console-retry"),
        path("queue-console/dispatch/", view("dispatch"), name="queue-console-dispatch"),
        path("queue-console/reconcile/", view("reconcile"), name="queue-console-reconcile"),
        path("queue-console/clear-stale/", view("clear_stale"), name="queue-console-clear-stale"),
        path("queue-console/reset/", view("reset"), name="queue-console-reset"),
    ]
