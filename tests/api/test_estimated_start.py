"""GET /jobs/{job_id} of a waiting job says when it is expected to start, from recent run times."""

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from coordination.models import Job
from coordination.services import job_claim, job_complete
from tests.helpers import submit

pytestmark = pytest.mark.django_db


def eta(api, job) -> datetime | None:
    value = api.get(f"/jobs/{job.job_id}").json()["estimated_start_at"]
    return datetime.fromisoformat(value) if value else None


def finished_run(user, seconds: float) -> None:
    """A completed job on motion-2.0-fast that ran `seconds`."""
    job = submit(user)
    job_claim(job_id=job.job_id, attempt=1)
    job_complete(job_id=job.job_id, attempt=1)
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(started_at=now - timedelta(seconds=seconds), completed_at=now)


def test_a_waiting_job_is_expected_after_the_jobs_before_it(api, user):
    finished_run(user, 20)
    finished_run(user, 40)  # typical run: 30 s
    running = submit(user)
    second = submit(user)
    third = submit(user)
    Job.objects.filter(pk=running.pk).update(started_at=timezone.now() - timedelta(seconds=10))

    before = timezone.now()
    second_eta, third_eta = eta(api, second), eta(api, third)

    # 30 s typical - 10 s already run = ~20 s; the third waits one typical run more.
    assert timedelta(seconds=18) <= second_eta - before <= timedelta(seconds=22)
    assert timedelta(seconds=48) <= third_eta - before <= timedelta(seconds=52)


def test_a_running_job_has_no_estimate(api, user):
    running = submit(user)
    assert eta(api, running) is None


def test_with_no_history_the_models_default_run_time_is_used(api, user, settings):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 4
    submit(user, model="flux-dev")  # default 5 s, just started
    waiting = submit(user, model="flux-dev")

    before = timezone.now()
    assert timedelta(seconds=4) <= eta(api, waiting) - before <= timedelta(seconds=6)
