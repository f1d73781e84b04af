"""One per-model deadline, timeout_seconds: how long one attempt of a job on a model may run, from its
start, whatever the runner (the reaper, the http runner and the poller count it alike); empty means
COORDINATOR_JOB_TIMEOUT, which is also its cap. max_runtime_seconds, merged into it, is still accepted."""

import importlib
from datetime import timedelta

import pytest
from django.utils import timezone

from coordination.models import CatalogModel, Job, ProviderRun, attempt_timeout
from coordination.recovery import reaper_pass
from coordination.services import job_claim
from tests.helpers import fresh, submit

pytestmark = pytest.mark.django_db

merge = importlib.import_module("coordination.migrations.0021_one_name_per_idea").merged_timeout


def test_an_empty_timeout_is_the_job_timeout_which_also_caps_it(settings):
    settings.COORDINATOR_JOB_TIMEOUT = 100
    assert [attempt_timeout(seconds) for seconds in (None, 50, 100, 500)] == [100, 50, 100, 100]
    assert CatalogModel(name="sdxl", media_type="image").attempt_timeout == 100


def test_max_runtime_seconds_is_still_accepted_and_means_timeout_seconds():
    model = CatalogModel.objects.create(name="sdxl", media_type="image", max_runtime_seconds=90)
    assert CatalogModel.objects.get(pk=model.pk).timeout_seconds == 90
    assert model.max_runtime_seconds == 90
    # Both given: the smaller is the deadline, as the migration merged them; None narrows nothing.
    assert CatalogModel(name="a", timeout_seconds=600, max_runtime_seconds=1200).timeout_seconds == 600
    assert CatalogModel(name="b", timeout_seconds=600, max_runtime_seconds=300).timeout_seconds == 300
    assert CatalogModel(name="c", timeout_seconds=30, max_runtime_seconds=None).timeout_seconds == 30


@pytest.mark.parametrize(("runner", "timeout_seconds", "max_runtime_seconds", "merged"), [
    ("http", 600, None, 600),         # the runner stopped it at 600 s; the reaper's limit was the job timeout
    ("http", 600, 300, 300),          # both set: the smaller
    ("http", 600, 1200, 600),
    ("simulated", 600, None, None),   # timeout_seconds bounded nothing on a simulated model
    ("simulated", 600, 1200, 1200),
])
def test_the_migration_keeps_each_models_deadline(runner, timeout_seconds, max_runtime_seconds, merged):
    assert merge(runner=runner, timeout_seconds=timeout_seconds, max_runtime_seconds=max_runtime_seconds) == merged


def test_the_seeded_models_time_out_at_the_job_timeout(settings):
    assert set(CatalogModel.objects.values_list("timeout_seconds", flat=True)) == {None}
    assert {model.attempt_timeout for model in CatalogModel.objects.all()} == {settings.COORDINATOR_JOB_TIMEOUT}


def provider_job_past_its_deadline(user, *, timeout: int = 5):
    CatalogModel.objects.filter(name="flux-dev").update(
        runner="http", provider="generic", provider_url="https://provider.example/jobs", provider_style="poll", timeout_seconds=timeout,
    )
    job = submit(user, model="flux-dev")
    job_claim(job_id=job.job_id, attempt=1)
    started = timezone.now() - timedelta(seconds=timeout + 1)
    Job.objects.filter(pk=job.pk).update(started_at=started)
    ProviderRun.objects.create(
        job=job, attempt=1, model="flux-dev", style="poll", provider_job_id="prov-1",
        status_url="https://provider.example/jobs/prov-1", submitted_at=started,
        deadline_at=started + timedelta(seconds=timeout),
    )
    return job


def test_a_job_at_a_provider_past_its_deadline_is_stopped_there_before_it_fails(user):
    """The reaper does not end it (that would leave the provider's job running and its model given to the
    next job while the provider still works on it): it marks its run to stop; the poller cancels it at the
    provider and fails it once the provider confirms (tests/e2e/test_providers.py). A second pass changes nothing."""
    job = provider_job_past_its_deadline(user)

    report = reaper_pass()

    assert report["timed_out"] == [str(job.job_id)] and fresh(job).status == Job.Status.RUNNING
    run = ProviderRun.objects.get(job=job)
    assert (run.state, run.stop_reason) == ("in_flight", "timed out after 5 s")
    assert reaper_pass()["timed_out"] == []
