"""GET /jobs/{job_id} of a waiting job says when it is expected to start, from recent run times.

The estimate is read at the moment of the request (`django.utils.timezone.now`): each test holds
that clock at NOW while it asks, so the answer is an exact instant rather than "about 20 s from
whenever the test got round to asking".
"""

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from unittest import mock

import pytest

from coordination.models import CatalogModel, Job
from coordination.services import job_claim, job_complete
from tests.helpers import submit

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=dt_timezone.utc)


def eta(api, job, *, at: datetime = NOW) -> datetime | None:
    """The job's estimated_start_at as the API answers it when the clock reads `at`."""
    # Held only for the request: the jobs themselves were submitted in real time, in order.
    with mock.patch("django.utils.timezone.now", return_value=at):
        value = api.get(f"/jobs/{job.job_id}").json()["estimated_start_at"]
    return datetime.fromisoformat(value) if value else None


def finished_run(user, seconds: float) -> None:
    """A completed job on motion-2.0-fast that ran `seconds` (ending an hour before NOW)."""
    job = submit(user)
    job_claim(job_id=job.job_id, attempt=1)
    job_complete(job_id=job.job_id, attempt=1)
    completed = NOW - timedelta(hours=1)
    Job.objects.filter(pk=job.pk).update(started_at=completed - timedelta(seconds=seconds), completed_at=completed)


def test_a_waiting_job_is_expected_after_the_jobs_before_it(api, user):
    finished_run(user, 20)
    finished_run(user, 40)  # typical run: 30 s
    running = submit(user)
    second = submit(user)
    third = submit(user)
    Job.objects.filter(pk=running.pk).update(started_at=NOW - timedelta(seconds=10))

    # 30 s typical - 10 s already run = 20 s; the third waits one typical run more.
    assert eta(api, second) == NOW + timedelta(seconds=20)
    assert eta(api, third) == NOW + timedelta(seconds=50)
    # Asked 5 s later, the running job has 5 s less to go: the expected starts stand still.
    later = NOW + timedelta(seconds=5)
    assert (eta(api, second, at=later), eta(api, third, at=later)) == (
        NOW + timedelta(seconds=20), NOW + timedelta(seconds=50),
    )


def test_a_running_job_has_no_estimate(api, user):
    running = submit(user)
    assert eta(api, running) is None


def test_with_no_history_the_models_default_run_time_is_used(api, user, settings):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 4
    CatalogModel.objects.filter(name="flux-dev").update(default_simulate_seconds=8)
    running = submit(user, model="flux-dev")
    waiting = submit(user, model="flux-dev")
    Job.objects.filter(pk=running.pk).update(started_at=NOW - timedelta(seconds=2))

    # No completed flux-dev job: its default of 8 s, less the 2 s the running one has had.
    assert eta(api, waiting) == NOW + timedelta(seconds=6)
