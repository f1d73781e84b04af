"""A job at a provider that the coordinator ends by any path other than the provider's own word (an
operator's Reset state, its deadline as the reaper or the poller finds it, a reconcile, hand-written
SQL) is ended at the provider too: the provider sees the cancel (`DELETE status_url`), the run is
closed, and the job keeps its slot and models until the provider confirms or the cancel grace passes
(a provider's own in-flight limit is never overrun). Against the local fake provider over real
sockets, with real qclusters."""

from datetime import timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from coordination.models import CatalogModel, Job, JobQueueState, ProviderRun
from coordination.services import queue_reconcile
from tests.e2e.harness import start_worker, wait_until
from tests.e2e import test_providers as providers
from tests.e2e.test_providers import CLUSTER, GIVE_UP, at_provider, ended, submit, use_provider
from tests.helpers import submit_confirmation

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# The fixtures of the providers' tests: the fake provider on a port of its own, and a job owner.
fake, owner = providers.fake, providers.owner

GRACE = 2  # seconds: COORDINATOR_PROVIDER_CANCEL_GRACE for the clusters here


def one_at_a_time(fake) -> None:
    """flux-dev at the fake provider with room for one job: the next one waits for the model."""
    use_provider(fake)
    CatalogModel.objects.filter(name="flux-dev").update(capacity=1)


def run_of(job) -> ProviderRun:
    return ProviderRun.objects.get(job_id=job.job_id)


def cancelled_at_provider(fake, job) -> bool:
    return ProviderRun.objects.filter(job_id=job.job_id).exists() and run_of(job).provider_job_id in fake.cancels


def test_a_reset_from_the_console_cancels_the_job_at_its_provider_and_holds_its_model_until_the_grace_passes(
        fake, owner, tmp_path, client, staff_user):
    one_at_a_time(fake)
    fake.confirm_cancel = False  # the provider answers the cancel with a 500: never confirmed
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_PROVIDER_CANCEL_GRACE=str(GRACE), **CLUSTER)
    try:
        job = submit(owner, seconds=600)
        wait_until(lambda: at_provider(job), timeout=GIVE_UP, message="the job to be at the provider")
        following = submit(owner, seconds=0.5)
        slot = JobQueueState.objects.get(active_job_id=job.job_id).id
        client.force_login(staff_user)
        reset = reverse("admin:queue-console-reset")
        preview = client.get(reset, {"slot": slot})
        page = submit_confirmation(client, preview, follow=True).content.decode()

        wait_until(lambda: cancelled_at_provider(fake, job), timeout=GIVE_UP, message="the provider to see the cancel")
        wait_until(lambda: ended(job), timeout=GIVE_UP, message="the grace to end the job")
        wait_until(lambda: ended(following), timeout=GIVE_UP, message="the next job to run once the model is free")
    finally:
        worker.stop()
    job, following, run = Job.objects.get(pk=job.job_id), Job.objects.get(pk=following.job_id), run_of(job)
    assert job.status == "failed" and job.attempt == 1, job.error
    assert job.error.startswith(f"Evicted by admin:{staff_user.username}: slot {slot} was reset while the job ran; "
                                f"the provider did not confirm its cancel within {GRACE} s"), job.error
    assert run.state == "done" and run.stop_reason.startswith("Evicted by")
    # The model stayed held while the provider might still run the job: the grace, counted from the cancel.
    assert job.completed_at - run.cancel_sent_at >= timedelta(seconds=GRACE)
    assert following.status == "completed" and following.started_at >= job.completed_at
    # The operator is told, before and after.
    assert "job is running at its provider: it will be cancelled there" in preview.content.decode()
    assert "1 job(s) at a provider are cancelled there first" in page


def test_the_reaper_stops_a_job_at_the_provider_past_its_models_timeout(fake, owner, tmp_path):
    use_provider(fake, timeout_seconds=600)
    worker = start_worker(tmp_path / "qcluster.log", **CLUSTER)  # a reaper pass every second
    try:
        job = submit(owner, seconds=600)
        wait_until(lambda: at_provider(job), timeout=GIVE_UP, message="the job to be at the provider")
        # The operator shortens the model's timeout: the run's own deadline (600 s) no longer counts.
        CatalogModel.objects.filter(name="flux-dev").update(timeout_seconds=1)
        wait_until(lambda: ended(job), timeout=GIVE_UP, message="the reaper's deadline to end the job")
    finally:
        worker.stop()
    job, run = Job.objects.get(pk=job.job_id), run_of(job)
    assert (job.status, job.attempt) == ("failed", 1), job.error
    assert job.error == "timed out after 1 s; cancelled at the provider, which confirmed it"
    assert fake.cancels == [run.provider_job_id] and run.state == "done"


def test_a_reconcile_stops_a_job_at_the_provider_and_the_next_poller_cancels_it_there(fake, owner, tmp_path):
    use_provider(fake, timeout_seconds=600)
    first = start_worker(tmp_path / "first.log", **CLUSTER)
    try:
        job = submit(owner, seconds=600)
        wait_until(lambda: at_provider(job), timeout=GIVE_UP, message="the job to be at the provider")
    finally:
        first.stop()  # the job stays at the provider, its run waiting for the next poller
    CatalogModel.objects.filter(name="flux-dev").update(timeout_seconds=1)
    wait_until(lambda: timezone.now() - Job.objects.get(pk=job.job_id).started_at > timedelta(seconds=1),
               timeout=GIVE_UP, message="the job to pass its new timeout")

    report = queue_reconcile(actor="admin:ops")

    assert [row["repair"] for row in report["repaired"]] == [
        "cancel it at its provider, then fail it as timed out (it keeps its models until the provider confirms)"]
    assert Job.objects.get(pk=job.job_id).status == "running"  # until the provider has dropped it
    assert run_of(job).stop_reason == "timed out after 1 s" and fake.cancels == []
    second = start_worker(tmp_path / "second.log", **CLUSTER)
    try:
        wait_until(lambda: ended(job), timeout=GIVE_UP, message="the next poller to end the job")
    finally:
        second.stop()
    job, run = Job.objects.get(pk=job.job_id), run_of(job)
    assert job.status == "failed" and job.error == "timed out after 1 s; cancelled at the provider, which confirmed it"
    assert fake.cancels == [run.provider_job_id] and run.state == "done"


def test_a_job_whose_deadline_passes_keeps_its_model_until_the_provider_confirms_or_the_grace_passes(fake, owner, tmp_path):
    one_at_a_time(fake)
    CatalogModel.objects.filter(name="flux-dev").update(timeout_seconds=2)
    fake.confirm_cancel = False
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_PROVIDER_CANCEL_GRACE=str(GRACE), **CLUSTER)
    try:
        job = submit(owner, seconds=600)
        following = submit(owner, seconds=0.5)
        wait_until(lambda: ended(job, following), timeout=GIVE_UP, message="both jobs to end")
    finally:
        worker.stop()
    job, following, run = Job.objects.get(pk=job.job_id), Job.objects.get(pk=following.job_id), run_of(job)
    assert job.status == "failed" and job.error == (
        f"timed out after 2 s; the provider did not confirm its cancel within {GRACE} s, so its job may still run")
    assert run.provider_job_id in fake.cancels and run.state == "done"
    assert job.completed_at - run.cancel_sent_at >= timedelta(seconds=GRACE)
    assert following.started_at >= job.completed_at


def test_a_run_whose_job_was_ended_by_hand_is_cancelled_at_the_provider_and_closed_with_a_warning(fake, owner, tmp_path):
    use_provider(fake)
    worker = start_worker(tmp_path / "qcluster.log", **CLUSTER)
    try:
        job = submit(owner, seconds=600)
        wait_until(lambda: at_provider(job), timeout=GIVE_UP, message="the job to be at the provider")
        with connection.cursor() as cursor:  # an operator's hand-written SQL
            cursor.execute("UPDATE jobs SET status = 'failed', completed_at = now(), error = 'ended by hand' "
                           "WHERE job_id = %s", [job.job_id])
        wait_until(lambda: run_of(job).state == "done", timeout=GIVE_UP, message="the poller to close the run")
    finally:
        worker.stop()
    run = run_of(job)
    assert fake.cancels == [run.provider_job_id]
    assert f"job {job.job_id} ended while its attempt 1 was still at the provider as {run.provider_job_id}; " \
           "cancelled it there (confirmed) and closed its run" in worker.output()
    assert Job.objects.get(pk=job.job_id).error == "ended by hand"  # its end stands
