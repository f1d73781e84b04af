"""The database side of jobs at their providers (coordination/providers/store.py): recording an
attempt when the worker calls again (a database outage may lose the answer of a commit that
happened: the worker's _when_database_answers tries again, and the second call must not fail on the
run it made), and a stopping poller's last reports, which start nothing."""

import pytest

from coordination.models import CatalogModel, JobQueueLog, ProviderRun
from coordination.providers import store
from coordination.runners.client import Accepted, Status
from coordination.services import job_claim
from tests.helpers import fresh, submit

pytestmark = pytest.mark.django_db


def at_replicate(job, prediction: str) -> Accepted:
    return Accepted(prediction, f"https://api.replicate.com/v1/predictions/{prediction}", Status("starting"), data={},
                    job_id=job.job_id)


def on_replicate() -> CatalogModel:
    CatalogModel.objects.filter(name="flux-dev").update(runner="http", provider="replicate",
                                                        provider_model="black-forest-labs/flux-dev",
                                                        credential_env="REPLICATE_API_TOKEN")
    return CatalogModel.objects.get(name="flux-dev")


def test_recording_the_same_provider_job_again_is_the_run_already_recorded(user):
    model = on_replicate()
    job = submit(user, model="flux-dev")
    job_claim(job_id=job.job_id, attempt=1)

    first = store.run_record(job_id=job.job_id, attempt=1, model=model, accepted=at_replicate(job, "p-1"))
    again = store.run_record(job_id=job.job_id, attempt=1, model=model, accepted=at_replicate(job, "p-1"))
    other = store.run_record(job_id=job.job_id, attempt=1, model=model, accepted=at_replicate(job, "p-2"))

    assert first is not None and again.pk == first.pk
    assert other is None  # not this attempt's run: the worker drops that provider job
    assert list(ProviderRun.objects.values_list("provider_job_id", flat=True)) == ["p-1"]
    assert JobQueueLog.objects.filter(job_id=job.job_id, event_type="at_provider").count() == 1


@pytest.mark.parametrize("starts", [True, False])
def test_a_stopping_pollers_last_report_frees_the_model_and_starts_nothing(user, starts):
    model = on_replicate()
    at_provider, waiting = submit(user, model="flux-dev"), submit(user, model="flux-dev")
    job_claim(job_id=at_provider.job_id, attempt=1)
    run = store.run_record(job_id=at_provider.job_id, attempt=1, model=model, accepted=at_replicate(at_provider, "p-1"))

    ended = store.runs_end([store.Ending(run.pk, Status("succeeded", ["out"], files=[]))], starts=starts)

    assert ended == [run.pk] and fresh(at_provider).status == "completed"
    # A running poller's report hands the model to the next job; a stopping one's leaves it waiting
    # for the next worker (which the coordinator says on the job), as a stopping worker's does.
    assert fresh(waiting).status == ("running" if starts else "pending")
