"""GET /metrics: the queue in Prometheus' text format, computed from the database, and who may read it."""

import shutil
import subprocess
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from coordination.models import CatalogModel, Job, JobLine
from coordination.services import job_cancel, job_claim, job_complete, job_fail
from tests.helpers import execute_workflow, fresh, submit

pytestmark = pytest.mark.django_db


def scrape(client) -> dict:
    """{(sample name, ((label, value), ...)): value} and {family name: type} of one scrape."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples, types = {}, {}
    for family in text_string_to_metric_families(response.content.decode()):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return {"samples": samples, "types": types}


def value(scraped: dict, name: str, **labels) -> float:
    return scraped["samples"][(name, tuple(sorted(labels.items())))]


@pytest.fixture
def staff_client(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


def run_to_completion(job: Job) -> Job:
    job = fresh(job)
    assert job.status == Job.Status.RUNNING
    assert job_claim(job_id=job.job_id, attempt=job.attempt) is not None
    return job_complete(job_id=job.job_id, attempt=job.attempt, result={"url": "https://example.com/out.mp4"})


# --- What it reports ------------------------------------------------------------------------------


def test_per_model_waiting_running_capacity_and_enabled(staff_client, user):
    CatalogModel.objects.filter(name="flux-dev").update(capacity=3)
    CatalogModel.objects.filter(name="minimax/video-01").update(enabled=False)
    running = submit(user)  # motion-2.0-fast, starts at once
    dragon = submit(user, prompt="A dragon flying")  # waits for motion-2.0-fast
    execute_workflow(user)  # waits for nano-banana-pro-leonardo and motion-2.0-fast
    # The dragon job has waited two minutes (a line row keeps its job's acceptance time).
    JobLine.objects.filter(job=dragon).update(created_at=timezone.now() - timedelta(seconds=120))

    scraped = scrape(staff_client)

    assert fresh(running).status == Job.Status.RUNNING
    assert value(scraped, "jobqueue_model_jobs_waiting", model="motion-2.0-fast") == 2
    assert value(scraped, "jobqueue_model_jobs_waiting", model="nano-banana-pro-leonardo") == 1
    assert value(scraped, "jobqueue_model_jobs_waiting", model="flux-dev") == 0
    assert 120 <= value(scraped, "jobqueue_model_oldest_wait_seconds", model="motion-2.0-fast") < 180
    assert 0 < value(scraped, "jobqueue_model_oldest_wait_seconds", model="nano-banana-pro-leonardo") < 60
    assert value(scraped, "jobqueue_model_oldest_wait_seconds", model="flux-dev") == 0
    assert value(scraped, "jobqueue_model_jobs_running", model="motion-2.0-fast") == 1
    assert value(scraped, "jobqueue_model_jobs_running", model="nano-banana-pro-leonardo") == 0
    assert value(scraped, "jobqueue_model_capacity", model="flux-dev") == 3
    assert value(scraped, "jobqueue_model_capacity", model="motion-2.0-fast") == 1
    assert value(scraped, "jobqueue_model_enabled", model="flux-dev") == 1
    assert value(scraped, "jobqueue_model_enabled", model="minimax/video-01") == 0
    assert scraped["types"]["jobqueue_model_jobs_waiting"] == "gauge"


def test_a_running_workflow_holds_each_of_its_models(staff_client, user):
    execute_workflow(user)

    scraped = scrape(staff_client)

    assert value(scraped, "jobqueue_model_jobs_running", model="nano-banana-pro-leonardo") == 1
    assert value(scraped, "jobqueue_model_jobs_running", model="motion-2.0-fast") == 1
    assert value(scraped, "jobqueue_model_jobs_waiting", model="motion-2.0-fast") == 0


def test_jobs_by_status_and_audit_events(staff_client, user):
    first = submit(user)
    second = submit(user, prompt="A dragon flying")
    third = submit(user, model="flux-dev")
    run_to_completion(first)  # the dragon job starts
    job_cancel(job_id=third.job_id, user=user)

    scraped = scrape(staff_client)

    assert fresh(second).status == Job.Status.RUNNING
    for status, count in {"pending": 0, "running": 1, "completed": 1, "failed": 0, "cancelled": 1}.items():
        assert value(scraped, "jobqueue_jobs", status=status) == count, status
    assert value(scraped, "jobqueue_events_retained", event_type="submitted") == 3
    assert value(scraped, "jobqueue_events_retained", event_type="started") == 2
    assert value(scraped, "jobqueue_events_retained", event_type="claimed") == 1
    assert value(scraped, "jobqueue_events_retained", event_type="completed") == 1
    assert value(scraped, "jobqueue_events_retained", event_type="cancelled") == 1
    # Events in the retained log: prune_queue_log lowers it, so it is a gauge, not a counter.
    assert scraped["types"]["jobqueue_events_retained"] == "gauge"


def test_run_and_queue_time_histograms_of_the_last_24_hours(staff_client, user):
    quick = submit(user)
    waited = submit(user, prompt="A dragon flying")
    run_to_completion(quick)
    run_to_completion(waited)
    old = submit(user)
    run_to_completion(old)
    instant = submit(user, model="flux-dev")
    run_to_completion(instant)
    still_running = submit(user, model="flux-dev")
    cancelled_while_waiting = submit(user, model="flux-dev", prompt="Another")
    job_cancel(job_id=cancelled_while_waiting.job_id, user=user)
    now = timezone.now()
    # Times shaped by hand: 3 s run without waiting, 40 s run after 60 s in line, a 50 ms run, and
    # one finished 2 days ago (outside the window); the cancelled one never ran, the last one runs.
    Job.objects.filter(pk=quick.pk).update(queued_at=None, started_at=now - timedelta(seconds=3), completed_at=now)
    Job.objects.filter(pk=waited.pk).update(
        queued_at=now - timedelta(seconds=100), started_at=now - timedelta(seconds=40), completed_at=now
    )
    Job.objects.filter(pk=old.pk).update(completed_at=now - timedelta(days=2))
    Job.objects.filter(pk=instant.pk).update(
        queued_at=None, started_at=now - timedelta(milliseconds=50), completed_at=now
    )

    scraped = scrape(staff_client)

    assert fresh(still_running).status == Job.Status.RUNNING
    assert scraped["types"]["jobqueue_job_run_seconds"] == "histogram"
    run = {le: value(scraped, "jobqueue_job_run_seconds_bucket", le=le) for le in ("0.1", "2.5", "5.0", "30.0", "60.0", "+Inf")}
    assert run == {"0.1": 1, "2.5": 1, "5.0": 2, "30.0": 2, "60.0": 3, "+Inf": 3}
    assert value(scraped, "jobqueue_job_run_seconds_count") == 3
    assert value(scraped, "jobqueue_job_run_seconds_sum") == pytest.approx(43.05)
    queue = {le: value(scraped, "jobqueue_job_queue_seconds_bucket", le=le) for le in ("0.1", "30.0", "60.0", "3600.0", "+Inf")}
    assert queue == {"0.1": 2, "30.0": 2, "60.0": 3, "3600.0": 3, "+Inf": 3}
    assert value(scraped, "jobqueue_job_queue_seconds_count") == 3
    assert value(scraped, "jobqueue_job_queue_seconds_sum") == pytest.approx(60)


def test_an_empty_database_scrapes_as_zeros(staff_client):
    scraped = scrape(staff_client)

    assert value(scraped, "jobqueue_jobs", status="pending") == 0
    assert value(scraped, "jobqueue_model_jobs_waiting", model="flux-dev") == 0
    assert value(scraped, "jobqueue_job_run_seconds_count") == 0
    assert value(scraped, "jobqueue_job_run_seconds_sum") == 0


# --- Who may read it ------------------------------------------------------------------------------


def test_no_credentials_is_401_in_the_api_error_shape(client):
    response = client.get("/metrics")

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert "METRICS_TOKEN" in response.json()["error"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_the_metrics_token_opens_it(client, settings):
    settings.METRICS_TOKEN = "s3cret-token"

    response = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})

    assert response.status_code == 200
    assert b"jobqueue_model_capacity" in response.content


def test_a_wrong_token_is_403(client, settings):
    settings.METRICS_TOKEN = "s3cret-token"

    response = client.get("/metrics", headers={"Authorization": "Bearer guessed"})

    assert response.status_code == 403
    assert response.json() == {"error": "Wrong metrics token.", "code": "permission_denied"}


def test_any_bearer_token_is_403_while_token_access_is_off(client, settings):
    settings.METRICS_TOKEN = ""

    response = client.get("/metrics", headers={"Authorization": "Bearer "})

    assert response.status_code == 403
    assert "METRICS_TOKEN is not set" in response.json()["error"]


def test_a_signed_in_user_who_is_not_staff_is_403(client, user):
    client.force_login(user)

    response = client.get("/metrics")

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


def test_only_get(staff_client):
    assert staff_client.post("/metrics").status_code == 405
    assert staff_client.get("/metrics/").status_code == 404


def test_an_api_token_is_told_what_metrics_takes_instead(client, settings):
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics", HTTP_AUTHORIZATION="Token 0123456789abcdef")
    assert response.status_code == 401
    assert "does not take API tokens" in response.json()["error"]
    assert "no METRICS_TOKEN set" in response.json()["error"]


def test_browsers_asking_for_a_favicon_get_an_empty_answer(client):
    assert client.get("/favicon.ico").status_code == 204


# --- Prometheus' own linter -----------------------------------------------------------------------


def test_a_scrape_passes_promtool_check_metrics(staff_client, user, tmp_path):
    """`promtool check metrics` (Prometheus' linter, Debian's `prometheus` package; .ci/run installs
    it) on a scrape with jobs in every state a scrape shows and events of several types. Without
    promtool this fails: a metric name Prometheus warns about would otherwise go unseen."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: apt-get install --no-install-recommends prometheus (.ci/run does)")
    first = submit(user)
    second = submit(user, prompt="A dragon flying")  # waits for the first
    submit(user, prompt="A third knight")  # waits
    cancelled = submit(user, model="flux-dev")  # waits (one slot)
    execute_workflow(user)  # waits for its models
    run_to_completion(first)  # the second starts
    job_cancel(job_id=cancelled.job_id, user=user)
    second = fresh(second)
    assert job_claim(job_id=second.job_id, attempt=second.attempt) is not None
    job_fail(job_id=second.job_id, attempt=second.attempt, error="The provider refused it", retry=False)
    response = staff_client.get("/metrics")
    assert response.status_code == 200
    scraped = response.content.decode()
    assert 'jobqueue_jobs{status="failed"} 1.0' in scraped and "jobqueue_job_run_seconds_bucket" in scraped

    checked = subprocess.run([promtool, "check", "metrics"], input=scraped, capture_output=True, text=True, timeout=60)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # no warning either
