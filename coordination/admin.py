"""The operators' console: every table, read-only where it is history, and the guide's two fixes."""

from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html

from coordination.models import (
    CapacityGroup, CatalogModel, InputFile, Job, JobFile, JobQueueLog, JobQueueState, ProviderRun, WebhookDelivery,
    timeout_with_old_name,
)
from coordination.console import console_context
from coordination.console_actions import console_action_urls
from coordination.durations import span
from coordination.exceptions import JobNotFound
from coordination.job_page import job_page_context
from coordination.selectors import OPERATE, job_queue_positions
from coordination.templatetags.job_ids import linked_ids, short_id
from coordination.services import capacity_group_delete, capacity_group_save, catalog_model_save
from coordination.webhooks import delivery_resend


# The admin index links to the queue console.
admin.site.index_template = "admin/coordination/index.html"


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _to_console(action: str, params: list[tuple] = ()) -> HttpResponseRedirect:
    """The jobs and slots lists' actions open the queue console's page for them: one preview and one
    way to run each action, whichever list it was started from."""
    url = reverse(f"admin:queue-console-{action}")
    return HttpResponseRedirect(f"{url}?{urlencode(params)}" if params else url)


class JobChangeList(ChangeList):
    """The jobs list, with each waiting job's live place in line read for the whole page at once
    (one query, not one per row)."""

    def get_results(self, request):
        super().get_results(request)
        self.result_list = list(self.result_list)
        places = job_queue_positions(job.job_id for job in self.result_list if job.status == Job.Status.PENDING)
        for job in self.result_list:
            job.queue_place = places.get(job.job_id)


REASON_SHOWN = 60  # characters of a reason in the jobs list; the whole of it is in its title and on the job's page


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    # Few, narrow columns, so the list fits a laptop's width beside the sidebar: ids shortened, a
    # workflow marked under its models (kind and media type are filters), priority shown with the
    # place in line it decides, times compact, the reason cut short.
    list_display = ("job", "status", "models", "place", "reason", "submitted", "ran", "owner")
    list_display_links = ("job",)
    list_select_related = ("owner",)
    list_filter = ("status", "kind", "job_type", "model")
    search_fields = ("job_id", "prompt", "model", "conflict_reason", "owner__username")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    actions = ["clear_stale_queue", "cancel_jobs", "retry_jobs", "delete_finished"]

    def get_changelist(self, request, **kwargs):
        return JobChangeList

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The job's own page (coordination/job_page.py) instead of Django's form of its columns: what
        it waits for or where it runs, its attempts, history, deliveries and files, and the console's
        Cancel and Priority. A POST still goes to Django's view, which refuses it (has_change_permission)."""
        if request.method not in ("GET", "HEAD"):
            return super().change_view(request, object_id, form_url, extra_context)
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        try:
            page = job_page_context(job_id=unquote(object_id), user=request.user)
        except JobNotFound:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        job = page["job"]
        context = {
            **self.admin_site.each_context(request), **page, "opts": self.opts, "title": f"{job.kind} job {job.job_id}",
            "can_operate": request.user.has_perm(OPERATE), "has_delete_permission": self.has_delete_permission(request, job),
        }
        return TemplateResponse(request, "admin/coordination/job/job_page.html", context)

    @admin.display(description="job", ordering="job_id")
    def job(self, job: Job) -> str:
        return format_html('<span class="job-id" title="{}">{}</span>', job.job_id, short_id(job.job_id))

    @admin.display(description="place")
    def place(self, job: Job) -> str | None:
        """A waiting job's live place in the whole line (the API's queue_position), and its priority
        when that is not the default."""
        place = getattr(job, "queue_place", None)
        if place is None:
            return None
        return f"{place} (priority {job.priority})" if job.priority else str(place)

    @admin.display(description="reason / error")
    def reason(self, job: Job) -> str:
        """Why it waits (what it waits for links to that job), or what went wrong; cut short."""
        text = job.conflict_reason or job.error or ""
        if not text:
            return ""
        return format_html('<span title="{}">{}</span>', text, linked_ids(text, REASON_SHOWN))

    @admin.display(description="submitted", ordering="created_at")
    def submitted(self, job: Job) -> str:
        """Today's as the console shows times (10:30:05); older ones with their day."""
        moment = timezone.localtime(job.created_at)
        return date_format(moment, "H:i:s" if moment.date() == timezone.localdate() else "M j, H:i")

    @admin.display(description="ran", ordering="started_at")
    def ran(self, job: Job) -> str:
        if not job.started_at:
            return ""
        if job.completed_at:
            return span((job.completed_at - job.started_at).total_seconds())
        return f"{span((timezone.now() - job.started_at).total_seconds())} so far"

    def has_add_permission(self, request):
        return False  # jobs enter through the API, so the coordinator decides about them

    def has_change_permission(self, request, obj=None):
        # Saving the page would write back every column as read moments before, outside the
        # coordinator lock: a job the worker just finished could be made `running` again.
        return False

    def has_delete_permission(self, request, obj=None):
        # A waiting or running job leaves through the coordinator (cancel, or the actions), so
        # that its slot is freed and its waiters re-pointed; finished jobs are history and may go.
        return super().has_delete_permission(request, obj) and (obj is None or obj.is_finished)

    @admin.display(description="models")
    def models(self, job: Job) -> str:
        models = ", ".join(job.required_models)
        return format_html('{}<div class="help">workflow</div>', models) if job.kind == Job.Kind.WORKFLOW else models

    def get_actions(self, request):
        # Django's "Delete selected" would offer waiting and running jobs too, then refuse them.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description="Delete selected finished jobs (history; waiting and running jobs are left)",
                  permissions=["delete"])
    def delete_finished(self, request, queryset):
        """Django's delete confirmation, for the finished jobs among those ticked: a waiting or running
        job leaves through a cancel, so that the coordinator frees its models and re-points its waiters."""
        finished = queryset.filter(status__in=Job.FINISHED)
        left = queryset.count() - finished.count()
        if left and request.POST.get("post") != "yes":
            self.message_user(request, f"{left} waiting or running job(s) among those selected will be left alone; "
                              "cancel them to end them.", messages.WARNING)
        if not finished.exists():
            self.message_user(request, "None of the selected jobs is finished; nothing to delete.", messages.WARNING)
            return None
        return delete_selected(self, request, finished)

    @admin.action(description="Cancel selected jobs (shows what each cancel does first)", permissions=["operate"])
    def cancel_jobs(self, request, queryset):
        """Hands the ticked jobs to the queue console's cancel page: its preview, then the cancels."""
        return _to_console("cancel", [("job", str(job_id)) for job_id in queryset.values_list("job_id", flat=True)])

    @admin.action(description="Retry selected jobs (shows what each retry does first)", permissions=["operate"])
    def retry_jobs(self, request, queryset):
        """Hands the ticked jobs to the queue console's retry page: its preview, then for each ended job a
        new job with its request, linked to it (retry_of) and audited `resubmitted` on its trail."""
        return _to_console("retry", [("job", str(job_id)) for job_id in queryset.values_list("job_id", flat=True)])

    @admin.action(description="Clear stale queue (repair waiting jobs whose blocker is finished or missing)",
                  permissions=["operate"])
    def clear_stale_queue(self, request, queryset):
        """The queue console's "Clear stale queue" page: it re-decides every pending job whose blocker
        is finished, missing or unset (the whole queue, whichever rows are ticked), after a preview."""
        return _to_console("clear-stale")

    def has_operate_permission(self, request):
        return request.user.has_perm(OPERATE)


@admin.register(JobQueueState)
class JobQueueStateAdmin(ReadOnlyAdmin):
    list_display = ("id", "active_job_id", "active_job_type", "active_models", "started_at")
    actions = ["reset_state"]

    def get_urls(self):
        # The console hangs off the admin (staff only, admin login) at .../jobqueuestate/queue-console/;
        # the sidebar gives it its own entry (templates/admin/app_list.html, `queue_console_nav`).
        console = path("queue-console/", self.admin_site.admin_view(self.queue_console), name="queue-console")
        return [console, *console_action_urls(self.admin_site), *super().get_urls()]

    def queue_console(self, request):
        """Slots, lines, metrics, the last hour as a timeline, each model's last 24 hours, recent
        events; its actions are in console_actions.py, each behind a preview."""
        context = {
            **self.admin_site.each_context(request), "title": "Queue console",
            **console_context(range_key=request.GET.get("range"), events_before=request.GET.get("events_before")),
            "can_operate": request.user.has_perm(OPERATE), "queue_console_nav": True,
        }
        return TemplateResponse(request, "admin/coordination/queue_console.html", context)

    @admin.action(description="Reset state (free the selected slots; a job still running in one is failed)",
                  permissions=["operate"])
    def reset_state(self, request, queryset):
        """The queue console's "Reset state" page for the ticked slots: it frees them (a job still
        running in one is ended as failed first, logged) after a preview that names each job."""
        return _to_console("reset", [("slot", slot_id) for slot_id in queryset.values_list("id", flat=True)])

    def has_operate_permission(self, request):
        return request.user.has_perm(OPERATE)


@admin.register(JobQueueLog)
class JobQueueLogAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "event_type", "job_id", "job_type", "conflict_reason", "details")
    list_filter = ("event_type", "job_type")
    search_fields = ("job_id", "conflict_reason")
    date_hierarchy = "created_at"


@admin.register(ProviderRun)
class ProviderRunAdmin(ReadOnlyAdmin):
    """Jobs at a provider (coordination/providers): written by workers, pollers and callbacks only."""

    list_display = ("provider_job_id", "job_id", "attempt", "model", "style", "state", "provider_status", "watcher",
                    "submitted_at", "deadline_at", "stop_reason", "cancel_sent_at", "finished_at")
    list_filter = ("state", "style", "model")
    search_fields = ("provider_job_id", "job__job_id")
    date_hierarchy = "submitted_at"


@admin.register(JobFile)
class JobFileAdmin(ReadOnlyAdmin):
    """The files jobs produced, as the coordinator keeps them (coordination/outputs): written by the
    database and the copiers only; an operator may delete one (it is then `expired` on its job)."""

    list_display = ("job_id", "n", "state", "size", "content_type", "stored_at", "error")
    list_filter = ("state", "content_type")
    search_fields = ("job__job_id", "source_url", "sha256")
    date_hierarchy = "created_at"
    actions = ["delete_kept"]

    @admin.action(description="Delete the kept file (the job keeps its record, marked expired)")
    def delete_kept(self, request, queryset):
        from coordination.outputs.store import file_expire

        rows = list(queryset.exclude(state=JobFile.State.EXPIRED))
        for row in rows:
            file_expire(row, reason=f"Deleted by {request.user.get_username()}.")
        self.message_user(request, f"Deleted {len(rows)} kept file(s).")


@admin.register(InputFile)
class InputFileAdmin(ReadOnlyAdmin):
    """Users' own input files (POST /files), kept COORDINATOR_OUTPUT_RETENTION_DAYS; an operator may
    delete one (a job naming it later fails saying it is gone)."""

    list_display = ("id", "owner", "content_type", "size", "created_at")
    list_select_related = ("owner",)
    list_filter = ("content_type",)
    search_fields = ("id", "owner__username", "sha256")
    date_hierarchy = "created_at"
    actions = ["delete_input"]

    @admin.action(description="Delete the file")
    def delete_input(self, request, queryset):
        from coordination.outputs.store import input_file_delete

        rows = list(queryset)
        for row in rows:
            input_file_delete(row)
        self.message_user(request, f"Deleted {len(rows)} input file(s).")


class CatalogModelForm(forms.ModelForm):
    """The catalog model's form; a post may still name the deadline max_runtime_seconds, as before it
    was merged into timeout_seconds (migration 0021): the smaller of the two when both are given."""

    def __init__(self, data=None, *args, **kwargs):
        old = data.get("max_runtime_seconds") if data is not None else None
        if old:
            data = data.copy()
            new = data.get("timeout_seconds")
            if str(old).isdigit():
                data["timeout_seconds"] = str(timeout_with_old_name(int(new) if str(new).isdigit() else None, int(old)))
            else:  # not a number: the form says so under timeout_seconds
                data["timeout_seconds"] = new or old
        super().__init__(data, *args, **kwargs)


@admin.register(CatalogModel)
class CatalogModelAdmin(admin.ModelAdmin):
    form = CatalogModelForm
    # Short headers and values, so that every column (enabled, paused and the line's policy and limit
    # last) fits a laptop's 1,280 px beside the sidebar; the model's page has every field in full.
    list_display = (
        "name", "media_kind", "runs_on", "capacity", "attempts", "timeout", "enabled", "paused", "line_policy_short",
        "line_limit",
    )
    # No filter sidebar: it would take the width the columns need, and a catalog of a few dozen
    # models at most is read whole (each column sorts it; search finds a name).
    # Pausing goes through the queue console (under the coordinator lock, audited, waiters re-decided).
    readonly_fields = ("paused",)
    list_editable = ("enabled",)
    # provider_url without a scheme means https (Django 6's default, asked for explicitly now).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    search_fields = ("name", "description")
    fieldsets = (
        (None, {"fields": (
            "name", "media_type", "description", "enabled", "paused", "capacity", "max_attempts",
            "line_policy", "max_waiting", "timeout_seconds",
        )}),
        ("Runner", {"fields": ("runner", "default_simulate_seconds")}),
        ("Provider", {
            "description": "Where its jobs run (docs/providers.md). On the simulated runner the provider only records "
                           "where the model would run.",
            "fields": ("provider", "provider_model", "provider_base_url", "credential_env", "callback_secret_env",
                       "provider_input", "provider_workflow", "poll_interval_seconds", "max_connect_retries"),
        }),
        ("Generic provider (our own protocol)", {
            "fields": ("provider_url", "provider_style"),
        }),
    )

    @admin.display(description="media", ordering="media_type")
    def media_kind(self, model: CatalogModel) -> str:  # not `media`: ModelAdmin.media is its assets
        return model.media_type

    @admin.display(description="runner", ordering="runner")
    def runs_on(self, model: CatalogModel) -> str:
        """The runner, and on the simulated one how long a job takes when it does not say."""
        if model.runner == CatalogModel.Runner.SIMULATED:
            return f"{model.runner}, {span(model.default_simulate_seconds)}"
        return model.runner

    @admin.display(description="attempts", ordering="max_attempts")
    def attempts(self, model: CatalogModel) -> int:
        return model.max_attempts

    @admin.display(description="timeout", ordering="timeout_seconds")
    def timeout(self, model: CatalogModel) -> str:
        """How long an attempt may run, as it applies (empty: COORDINATOR_JOB_TIMEOUT's, said so)."""
        applies = span(model.attempt_timeout)
        return applies if model.timeout_seconds else f"{applies} (default)"

    @admin.display(description="line policy", ordering="line_policy")
    def line_policy_short(self, model: CatalogModel) -> str:
        return model.line_policy  # "fifo" or "fair"; the choice's long label is on the model's page

    @admin.display(description="line limit", ordering="max_waiting")
    def line_limit(self, model: CatalogModel) -> str:
        return "none" if model.max_waiting is None else str(model.max_waiting)

    def save_model(self, request, obj, form, change):
        """The edit (this page or the list's "enabled" column) goes through the coordinator: saved
        under its lock and audited, a pause made meanwhile kept, and the waiting jobs a new capacity
        lets start started at once."""
        report = catalog_model_save(model=obj, actor=f"admin:{request.user.username}")
        if report["started"]:
            self.message_user(request, f"{obj.name}: started {len(report['started'])} waiting job(s) it now has room for.")


@admin.register(CapacityGroup)
class CapacityGroupAdmin(admin.ModelAdmin):
    """Groups of models that share a limit (a provider key's concurrency, say). Every edit goes through
    the coordinator (capacity_group_save): saved under its lock, audited, and the waiting jobs of its
    models decided again at once."""

    list_display = ("name", "capacity", "members", "description")
    filter_horizontal = ("catalog_models",)
    search_fields = ("name", "description")

    @admin.display(description="models")
    def members(self, group: CapacityGroup) -> str:
        return ", ".join(model.name for model in group.catalog_models.all()) or "-"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("catalog_models")

    def save_model(self, request, obj, form, change):
        pass  # saved with its members in save_related, in one coordinator transaction

    def save_related(self, request, form, formsets, change):
        report = capacity_group_save(
            group=form.instance, models=list(form.cleaned_data["catalog_models"]), actor=f"admin:{request.user.username}"
        )
        if report["started"]:
            self.message_user(request, f"{form.instance.name}: started {len(report['started'])} waiting job(s) it now has room for.")

    def delete_model(self, request, obj):
        capacity_group_delete(group=obj, actor=f"admin:{request.user.username}")

    def delete_queryset(self, request, queryset):
        for group in queryset:
            capacity_group_delete(group=group, actor=f"admin:{request.user.username}")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Every webhook delivery with its attempts; "Send again" puts failed (or any) ones back in line."""

    list_display = ("webhook_id", "event_type", "job_link", "state", "attempts", "last_status_code", "next_attempt_at", "created_at")
    list_filter = ("state", "event_type")
    search_fields = ("webhook_id", "job__job_id", "url")
    readonly_fields = [field.name for field in WebhookDelivery._meta.fields]
    actions = ["send_again"]

    @admin.display(description="job")
    def job_link(self, delivery: WebhookDelivery):
        url = reverse("admin:coordination_job_change", args=[delivery.job_id])
        return format_html('<a href="{}" title="{}">{}</a>', url, delivery.job_id, short_id(delivery.job_id))

    def has_add_permission(self, request):
        return False

    @admin.action(description="Send again (same webhook-id, 24 more hours of tries)", permissions=["change"])
    def send_again(self, request, queryset):
        for delivery in queryset:
            delivery_resend(delivery)
        self.message_user(request, f"{queryset.count()} delivery(ies) will be sent again.")
