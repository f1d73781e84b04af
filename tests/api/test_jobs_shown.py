"""selectors.jobs_shown (one statement, for webhooks and the live streams) reads what with_runs reads for
the API's pages: every job renders to the same JSON through either."""

import pytest
from django.utils import timezone

from coordination.api.serializers import JobSerializer
from coordination.models import Job, ProviderRun
from coordination.selectors import jobs_shown, with_runs
from coordination.services import job_claim, job_complete, job_fail
from coordination.services.resubmit import job_resubmit
from tests.helpers import execute_workflow, submit

pytestmark = pytest.mark.django_db


def rendered(jobs: dict) -> dict:
    serializer = JobSerializer(context={"queue_positions": {}})
    return {job_id: dict(serializer.to_representation(job)) for job_id, job in jobs.items()}


@pytest.mark.parametrize("runs", [True, False])
def test_every_job_renders_as_the_api_pages_render_it(user, runs, settings, django_assert_num_queries):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 4
    kept = submit(user, model="flux-dev")
    job_claim(job_id=kept.job_id, attempt=1)
    job_complete(job_id=kept.job_id, attempt=1, result={"output": "x", "files": [
        {"source_url": "https://example.com/a.png", "content_type": "image/png"},
        {"source_url": "https://example.com/b.mp4"},
    ]})
    failed = submit(user, model="flux-dev")
    job_claim(job_id=failed.job_id, attempt=1)
    job_fail(job_id=failed.job_id, attempt=1, error="provider said no", retry=False)
    retried = job_resubmit(job_id=failed.job_id, actor="test")
    at_provider = submit(user, model="motion-2.0-fast")
    job_claim(job_id=at_provider.job_id, attempt=1)
    ProviderRun.objects.create(job_id=at_provider.job_id, attempt=1, model="motion-2.0-fast", style="poll",
                               provider_job_id="r-7", provider_status="processing", progress=0.5,
                               submitted_at=timezone.now(), deadline_at=timezone.now())
    workflow = execute_workflow(user)
    waiting = submit(user, model="motion-2.0-fast")
    ids = [kept.job_id, failed.job_id, retried.job_id, at_provider.job_id, workflow.job_id, waiting.job_id]

    by_pages = with_runs(Job.objects.select_related("workflow_execution"), runs=runs).in_bulk(ids)
    with django_assert_num_queries(1):
        shown = jobs_shown(ids, runs=runs)
        assert rendered(shown) == rendered(by_pages)  # and it read all they show: nothing more is read

    assert shown.keys() == by_pages.keys() == set(ids)
    # What differs between these jobs is in what both read.
    pages = rendered(by_pages)
    assert pages[failed.job_id]["retried_as"] == [str(retried.job_id)]
    assert [file["source_url"] for file in pages[kept.job_id]["result"]["files"]] == [
        "https://example.com/a.png", "https://example.com/b.mp4"]
    assert pages[workflow.job_id]["workflow_id"] == "knight-style-img-to-video"
    assert (pages[at_provider.job_id]["at_provider"] is not None) == runs


def test_no_jobs_asked_for_reads_nothing(db, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert jobs_shown([]) == {}
