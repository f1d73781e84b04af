"""GET /metrics: the queue in Prometheus' text format, read from the database on every scrape.

The web runs several gunicorn processes, so in-process counters would each see a fraction of the
traffic (and none of the worker's). Instead one collector on a registry of its own asks the
database at scrape time: every process answers the same numbers. Each query is one aggregate
(GROUP BY or conditional counts), so a scrape costs a fixed number of statements.
"""

import hmac
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from rest_framework.authtoken.models import Token

from coordination.models import CatalogModel, Job, JobLine, JobQueueLog, WebhookDelivery
from coordination.queue.groups import groups_by_model
from coordination.selectors import time_in_line

# Upper bounds in seconds, from a no-op job to the default job timeout (an hour).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
HISTOGRAM_WINDOW = timedelta(hours=24)


def _seconds(value: timedelta | None) -> float:
    return value.total_seconds() if value is not None else 0.0


def _duration_histogram(name: str, documentation: str, jobs, duration) -> HistogramMetricFamily:
    """Bucket counts, count and sum of `duration` over `jobs`, all in one aggregate query."""
    duration = ExpressionWrapper(duration, output_field=DurationField())
    jobs = jobs.alias(duration=duration)
    aggregates = {
        f"le_{index}": Count("pk", filter=Q(duration__lte=timedelta(seconds=bound)))
        for index, bound in enumerate(DURATION_BUCKETS)
    }
    row = jobs.aggregate(count=Count("pk"), total=Sum(duration), **aggregates)
    buckets = [(str(float(bound)), row[f"le_{index}"]) for index, bound in enumerate(DURATION_BUCKETS)]
    buckets.append(("+Inf", row["count"]))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=_seconds(row["total"]))


class QueueCollector(Collector):
    """Collects everything anew on each scrape; holds no state between scrapes."""

    def collect(self):
        now = timezone.now()
        yield from self._per_model(now)
        yield from self._per_group()
        yield self._webhooks()
        yield from self._jobs_by_status()
        yield self._events()
        yield from self._durations(now)

    def _per_model(self, now):
        catalog = {row["name"]: row for row in CatalogModel.objects.values("name", "capacity", "enabled", "paused")}
        # job_model_lines holds one row per waiting job and model it needs: a GROUP BY on its index.
        lines = {
            row["model"]: row
            for row in JobLine.objects.order_by().values("model").annotate(waiting=Count("id"), oldest=Min("created_at"))
        }
        # Running jobs occupy slots, so there are at most COORDINATOR_MAX_ACTIVE_JOBS of them.
        running: dict[str, int] = {}
        for required in Job.objects.order_by().filter(status=Job.Status.RUNNING).values_list("required_models", flat=True):
            for model in required or []:
                running[model] = running.get(model, 0) + 1

        waiting = GaugeMetricFamily("jobqueue_model_jobs_waiting", "Jobs waiting in line for this model.", labels=["model"])
        oldest = GaugeMetricFamily(
            "jobqueue_model_oldest_wait_seconds",
            "Seconds since the longest-waiting job in this model's line was accepted (0 if none waits).",
            labels=["model"],
        )
        active = GaugeMetricFamily("jobqueue_model_jobs_running", "Running jobs that hold this model.", labels=["model"])
        capacity = GaugeMetricFamily("jobqueue_model_capacity", "Jobs that may use this model at once.", labels=["model"])
        enabled = GaugeMetricFamily("jobqueue_model_enabled", "1 if the catalog accepts jobs for this model, else 0.", labels=["model"])
        paused = GaugeMetricFamily("jobqueue_model_paused", "1 if an operator paused this model (no new job starts on it), else 0.", labels=["model"])
        for model in sorted(catalog.keys() | lines.keys() | running.keys()):
            line = lines.get(model)
            waiting.add_metric([model], line["waiting"] if line else 0)
            oldest.add_metric([model], max(_seconds(now - line["oldest"]), 0.0) if line else 0.0)
            active.add_metric([model], running.get(model, 0))
            if model in catalog:
                capacity.add_metric([model], catalog[model]["capacity"])
                enabled.add_metric([model], 1 if catalog[model]["enabled"] else 0)
                paused.add_metric([model], 1 if catalog[model]["paused"] else 0)
        return [waiting, oldest, active, capacity, enabled, paused]

    def _per_group(self):
        """Each capacity group's running jobs (a job counts once, however many of its models it
        uses) and capacity: two queries, the membership rows and the running jobs."""
        groups = groups_by_model()
        running = list(Job.objects.order_by().filter(status=Job.Status.RUNNING).only("required_models"))
        active = GaugeMetricFamily("jobqueue_group_jobs_running", "Running jobs that use a model of this capacity group.", labels=["group"])
        capacity = GaugeMetricFamily("jobqueue_group_capacity", "Jobs that may run at once on this group's models together.", labels=["group"])
        for group in sorted({group for members in groups.values() for group in members}, key=lambda group: group.name):
            active.add_metric([group.name], len(group.using(running)))
            capacity.add_metric([group.name], group.capacity)
        return [active, capacity]

    def _webhooks(self):
        counts = dict(WebhookDelivery.objects.order_by().values_list("state").annotate(n=Count("id")))
        family = GaugeMetricFamily(
            "jobqueue_webhook_deliveries", "Webhook deliveries by outcome (pending: still being tried).", labels=["state"]
        )
        for state in WebhookDelivery.State.values:
            family.add_metric([state], counts.get(state, 0))
        return family

    def _jobs_by_status(self):
        counts = dict(Job.objects.order_by().values_list("status").annotate(n=Count("pk")))
        family = GaugeMetricFamily("jobqueue_jobs", "Jobs in the jobs table by status.", labels=["status"])
        for status in Job.Status.values:
            family.add_metric([status], counts.get(status, 0))
        return [family]

    def _events(self):
        # A gauge, not a counter: prune_queue_log deletes old rows, so the number falls once a day,
        # and Prometheus would read that fall of a counter as a reset (rate() would spike). Hence no
        # `_total` in its name either: that suffix is for counters (`promtool check metrics` says so).
        counts = JobQueueLog.objects.order_by().values_list("event_type").annotate(n=Count("id"))
        family = GaugeMetricFamily(
            "jobqueue_events_retained",
            "Audit events in the retained job_queue_log by type (prune_queue_log deletes old rows, so this can fall).",
            labels=["event_type"],
        )
        for event_type, count in sorted(counts):
            family.add_metric([event_type], count)
        return family

    def _durations(self, now):
        finished = Job.objects.order_by().filter(
            status__in=Job.FINISHED, started_at__isnull=False, completed_at__gte=now - HISTOGRAM_WINDOW
        )
        yield _duration_histogram(
            "jobqueue_job_run_seconds",
            "Run time (completed_at - started_at) of jobs that ran and finished in the last 24 hours.",
            finished,
            F("completed_at") - F("started_at"),
        )
        yield _duration_histogram(
            "jobqueue_job_queue_seconds",
            "Time in line (started_at - queued_at; 0 for a job that never waited) of jobs that ran and finished in the last 24 hours.",
            finished,
            time_in_line(),
        )


registry = CollectorRegistry(auto_describe=False)
registry.register(QueueCollector())


def _denied(status: int, message: str, code: str) -> JsonResponse:
    response = JsonResponse({"error": message, "code": code}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def _refusal(request) -> JsonResponse | None:
    """None if the caller may scrape: the METRICS_TOKEN as a bearer token, or a staff session."""
    if request.user.is_authenticated and request.user.is_staff:
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        token = settings.METRICS_TOKEN
        if token and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        # The API takes `Bearer <API token>` too (coordination/api/authentication.py); here it opens nothing.
        if given.strip() and Token.objects.filter(key=given.strip()).exists():
            return _denied(403, "That is a user's API token; /metrics takes the scraper's token instead: "
                                "Authorization: Bearer <METRICS_TOKEN> (or a staff session).", "permission_denied")
        if not token:
            return _denied(403, "Token access to /metrics is off (METRICS_TOKEN is not set); sign in as staff.", "permission_denied")
        return _denied(403, "Wrong metrics token.", "permission_denied")
    if request.user.is_authenticated:
        return _denied(403, "Only staff may read /metrics.", "permission_denied")
    hint = "" if settings.METRICS_TOKEN else " (this server has no METRICS_TOKEN set, so only a staff session works)"
    if scheme.lower() == "token":
        return _denied(401, f"/metrics does not take API tokens: send Authorization: Bearer <METRICS_TOKEN>, or sign in "
                            f"to /admin/ as staff{hint}.", "not_authenticated")
    return _denied(
        401, f"Send Authorization: Bearer <METRICS_TOKEN>, or sign in to /admin/ as staff{hint}.", "not_authenticated"
    )


def metrics_view(request):
    if request.method != "GET":
        response = _denied(405, f"/metrics answers GET only, not {request.method}.", "method_not_allowed")
        response["Allow"] = "GET"
        return response
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    # The classic 0.0.4 text format (what prometheus_client's own server answers by default): every
    # Prometheus version reads it, and our names need none of 1.0.0's escaping.
    response = HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response["Cache-Control"] = "no-store"
    return response
