"""Jobs at a real (local) provider, as a deployment meets them: a real qcluster (its workers and its
poller) against bench/fake_provider.py over real sockets. A poll or callback provider's job waits
there as a row, holding no worker process; it ends once, through the coordinator."""

import hashlib
import hmac
import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest

from bench.fake_provider import FakeProvider
from coordination.models import CatalogModel, Job, JobQueueLog, ProviderRun
from coordination.services import job_cancel, job_submit
from tests.e2e.harness import start_worker, wait_until
from tests.factories import UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SLOTS = 3
LEASE = 3
GIVE_UP = 60  # a bound for polling, not a claim
CLUSTER = {"COORDINATOR_MAX_ACTIVE_JOBS": str(SLOTS), "COORDINATOR_WORKERS": "1", "COORDINATOR_POLLER_TICK": "0.2",
           "COORDINATOR_LEASE_SECONDS": str(LEASE), "COORDINATOR_REAPER_SECONDS": "1"}
CALLBACK_SECRET = "cb-secret-for-tests"


@pytest.fixture
def fake():
    provider = FakeProvider(seconds=1.0, callback_secret=CALLBACK_SECRET).start()
    yield provider
    provider.stop()


@pytest.fixture
def owner(settings):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = SLOTS
    settings.COORDINATOR_LEASE_SECONDS = LEASE
    return UserFactory()


def use_provider(fake, style: str = "poll", model: str = "flux-dev", **fields) -> None:
    CatalogModel.objects.filter(name=model).update(
        runner="http", provider="generic", provider_url=f"{fake.url}/{style}", provider_style=style, capacity=SLOTS,
        poll_interval_seconds=fields.pop("poll_interval_seconds", 0.2), timeout_seconds=fields.pop("timeout_seconds", 60),
        callback_secret_env="TEST_CALLBACK_SECRET" if style == "callback" else "", **fields,
    )


def submit(owner, seconds: float, **params) -> Job:
    return job_submit(owner=owner, model="flux-dev", prompt="A castle", params={"seconds": seconds, **params})


def ended(*jobs) -> bool:
    return Job.objects.filter(job_id__in=[job.job_id for job in jobs], status__in=Job.FINISHED).count() == len(jobs)


def at_provider(*jobs) -> bool:
    return ProviderRun.objects.filter(job_id__in=[job.job_id for job in jobs], state="in_flight").count() == len(jobs)


def audit(job) -> list[str]:
    return list(JobQueueLog.objects.filter(job_id=job.job_id).order_by("id").values_list("event_type", flat=True))


def test_jobs_wait_at_a_poll_provider_holding_no_worker_and_each_ends_once(fake, owner, tmp_path):
    use_provider(fake)
    fake.files = "listed"  # its answers list the files each job made
    worker = start_worker(tmp_path / "qcluster.log", **CLUSTER)  # one worker process for three slots
    try:
        jobs = [submit(owner, seconds=2.0) for _ in range(SLOTS)]
        # All three at the provider at once: only if the one worker let go of each after submitting it.
        wait_until(lambda: at_provider(*jobs), timeout=GIVE_UP, message="the three jobs to be at the provider at once")
        wait_until(lambda: ended(*jobs), timeout=GIVE_UP, message="the jobs to end")
    finally:
        worker.stop()

    for job in Job.objects.filter(job_id__in=[job.job_id for job in jobs]):
        assert (job.status, job.attempt, job.error) == ("completed", 1, None)
        assert job.result["output"] == f"video://{job.result['provider_job_id']}.mp4"
        assert job.result["files"] == [{"source_url": f"{fake.url}/files/{job.result['provider_job_id']}.mp4",
                                        "content_type": "video/mp4"}]
        assert audit(job) == ["submitted", "started", "claimed", "at_provider", "completed"]
    # The provider saw each attempt once, under its Idempotency-Key.
    assert fake.submits_per_key() == {f"{job.job_id}:1": 1 for job in jobs}


def test_a_callback_provider_ends_the_job_at_once_and_a_repeated_callback_changes_nothing(fake, owner, tmp_path, live_server, monkeypatch):
    monkeypatch.setenv("TEST_CALLBACK_SECRET", CALLBACK_SECRET)  # the web side checks callbacks with it
    use_provider(fake, "callback", poll_interval_seconds=30)  # its safety net would poll only after 300 s
    fake.files = "in_output"  # its output is the URL of the file it made
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_PUBLIC_URL=live_server.url, **CLUSTER)
    try:
        job = submit(owner, seconds=0.5)
        wait_until(lambda: ended(job), timeout=GIVE_UP, message="the callback to end the job")
    finally:
        worker.stop()
    job = Job.objects.get(pk=job.job_id)
    assert job.status == "completed" and job.result["provider_job_id"] == ProviderRun.objects.get(job=job).provider_job_id
    assert job.result["files"] == [{"source_url": job.result["output"], "content_type": "video/mp4"}]
    assert job.result["output"] == f"{fake.url}/files/{job.result['provider_job_id']}.mp4"
    assert [code for _, code in fake.callbacks] == [200]
    assert len(fake.polls) == 0  # ended by the callback, not by a poll

    run = ProviderRun.objects.get(job=job)
    again = post_callback(live_server.url, run.provider_job_id, {"status": "failed", "error": "late and wrong"})
    assert again == (200, "Already recorded: nothing changed.")
    assert Job.objects.get(pk=job.job_id).status == "completed"


def post_callback(base: str, provider_job_id: str, body: dict, *, secret: str | None = CALLBACK_SECRET,
                  how: str = "hmac") -> tuple[int, str]:
    data = json.dumps({"id": provider_job_id, **body}).encode()
    request = urllib.request.Request(f"{base}/providers/flux-dev/callback", data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if secret and how == "hmac":
        request.add_header("X-Signature", "sha256=" + hmac.new(secret.encode(), data, hashlib.sha256).hexdigest())
    elif secret:
        request.add_header("Authorization", f"Bearer {secret}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())["message"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]


def test_a_callback_without_the_models_secret_is_refused_and_changes_nothing(fake, owner, tmp_path, live_server, monkeypatch):
    monkeypatch.setenv("TEST_CALLBACK_SECRET", CALLBACK_SECRET)
    use_provider(fake, "callback", poll_interval_seconds=30)
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_PUBLIC_URL=live_server.url, **CLUSTER)
    try:
        job = submit(owner, seconds=60)
        wait_until(lambda: at_provider(job), timeout=GIVE_UP, message="the job to be at the provider")
        provider_job = ProviderRun.objects.get(job=job).provider_job_id
        for secret, how in ((None, "hmac"), ("not-the-secret", "hmac"), ("not-the-secret", "bearer")):
            code, message = post_callback(live_server.url, provider_job, {"status": "succeeded", "output": "forged"},
                                          secret=secret, how=how)
            assert code == 401, message
        assert Job.objects.get(pk=job.job_id).status == "running"
        # The provider's own bearer token is taken too.
        assert post_callback(live_server.url, provider_job, {"status": "succeeded", "output": "real"}, how="bearer")[0] == 200
    finally:
        worker.stop()
    assert Job.objects.get(pk=job.job_id).result["output"] == "real"


@pytest.mark.parametrize("retry_after", ["1", None])
def test_a_providers_429_is_waited_out_without_failing_the_job_or_using_an_attempt(fake, owner, tmp_path, retry_after):
    use_provider(fake)
    fake.limit(3, retry_after=retry_after)  # the submit is refused three times, then all is well
    worker = start_worker(tmp_path / "qcluster.log", **CLUSTER)
    try:
        job = submit(owner, seconds=0.5)
        wait_until(lambda: ended(job), timeout=GIVE_UP, message="the job to end")
        fake.limit(2, retry_after=retry_after)  # and a poll's, later
        second = submit(owner, seconds=1.0)
        wait_until(lambda: ended(second), timeout=GIVE_UP, message="the second job to end")
    finally:
        worker.stop()
    for done in (job, second):
        done = Job.objects.get(pk=done.job_id)
        assert (done.status, done.attempt) == ("completed", 1), done.error
    assert fake.limited[:3] == ["/poll"] * 3 and len(fake.limited) == 5
    assert fake.submits_per_key() == {f"{job.job_id}:1": 1, f"{second.job_id}:1": 1}


def test_a_provider_that_limits_its_polls_does_not_hold_up_another_providers(fake, owner, tmp_path):
    """The poller waits a 429 out by asking that job again later, not by holding one of its open
    requests: with room for one request at a time, another provider's job still ends at once."""
    other = FakeProvider(seconds=0.5).start()
    try:
        use_provider(fake)
        use_provider(other, model="minimax/video-01")
        worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_POLLER_CONCURRENCY="1", **CLUSTER)
        try:
            limited = submit(owner, seconds=600)
            wait_until(lambda: at_provider(limited), timeout=GIVE_UP, message="the first job to be at its provider")
            fake.limit(10_000, retry_after="30")  # every poll of it, from now on: "ask again in 30 s"
            wait_until(lambda: fake.limited, timeout=GIVE_UP, message="a poll of the first job to be refused")
            free = job_submit(owner=owner, model="minimax/video-01", prompt="A castle", params={"seconds": 0.5})
            # Well before the 30 s the first provider asked for: it does not stand in the way.
            wait_until(lambda: ended(free), timeout=20, message="the other provider's job to end")
            assert Job.objects.get(pk=limited.job_id).status == "running"
        finally:
            worker.stop()
    finally:
        other.stop()
    free = Job.objects.get(pk=free.job_id)
    assert (free.status, free.attempt) == ("completed", 1), free.error
    assert fake.limited == [path for path in fake.limited if path.startswith("/jobs/")]  # polls, not submits


def test_a_job_whose_provider_keeps_refusing_its_polls_times_out_at_its_deadline(fake, owner, tmp_path):
    use_provider(fake, timeout_seconds=4, max_attempts=1)
    worker = start_worker(tmp_path / "qcluster.log", **CLUSTER)
    try:
        job = submit(owner, seconds=600)
        wait_until(lambda: at_provider(job), timeout=GIVE_UP, message="the job to be at the provider")
        fake.limit(10_000, retry_after="1")  # every poll from now on: 429, "ask again in 1 s"
        wait_until(lambda: ended(job), timeout=GIVE_UP, message="the job to time out")
    finally:
        worker.stop()
    job = Job.objects.get(pk=job.job_id)
    assert (job.status, job.attempt) == ("failed", 1) and "timed out after 4 s" in job.error, job.error
    assert len(fake.limited) >= 2  # it was asked again while it waited, not given up at the first 429
    assert fake.cancels == [ProviderRun.objects.get(job=job).provider_job_id]  # and dropped at the provider


def test_a_provider_that_goes_down_and_comes_back_loses_no_job(fake, owner, tmp_path):
    use_provider(fake)
    worker = start_worker(tmp_path / "qcluster.log", **CLUSTER)
    try:
        job = submit(owner, seconds=3.0)
        wait_until(lambda: len(fake.polls_of(ProviderRun.objects.get(job=job).provider_job_id) if at_provider(job) else []) >= 2,
                   timeout=GIVE_UP, message="the job to be polled at the provider")
        fake.down()  # connections refused
        refused_from = len(fake.polls)
        time.sleep(2)  # the outage's length (ten poll intervals), not a stand-in for a condition
        assert len(fake.polls) == refused_from and Job.objects.get(pk=job.job_id).status == "running"
        fake.up()
        wait_until(lambda: ended(job), timeout=GIVE_UP, message="the job to end once the provider is back")
    finally:
        worker.stop()
    job = Job.objects.get(pk=job.job_id)
    assert (job.status, job.attempt) == ("completed", 1), job.error


def test_cancelling_a_job_at_the_provider_cancels_it_there_and_frees_its_model(fake, owner, tmp_path):
    use_provider(fake)
    worker = start_worker(tmp_path / "qcluster.log", **CLUSTER)
    try:
        job = submit(owner, seconds=600)
        wait_until(lambda: at_provider(job), timeout=GIVE_UP, message="the job to be at the provider")
        job_cancel(job_id=job.job_id, reason="Cancelled by its owner")
        wait_until(lambda: ended(job), timeout=GIVE_UP, message="the cancel to end the job")
    finally:
        worker.stop()
    job = Job.objects.get(pk=job.job_id)
    assert job.status == "cancelled" and "Cancelled at the provider, which confirmed it" in job.error
    assert fake.cancels == [ProviderRun.objects.get(job=job).provider_job_id]


def test_a_cancel_the_provider_does_not_confirm_ends_the_job_after_the_grace_period_saying_so(fake, owner, tmp_path):
    use_provider(fake)
    fake.confirm_cancel = False
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_PROVIDER_CANCEL_GRACE="1", **CLUSTER)
    try:
        job = submit(owner, seconds=600)
        wait_until(lambda: at_provider(job), timeout=GIVE_UP, message="the job to be at the provider")
        job_cancel(job_id=job.job_id, reason="Cancelled by its owner")
        wait_until(lambda: ended(job), timeout=GIVE_UP, message="the grace period to end the job")
    finally:
        worker.stop()
    job = Job.objects.get(pk=job.job_id)
    assert job.status == "cancelled" and "did not confirm it within 1 s" in job.error
    assert len(fake.cancels) >= 1


def test_a_killed_qcluster_s_jobs_are_adopted_by_another_without_a_second_submit(fake, owner, tmp_path):
    use_provider(fake)
    doomed = start_worker(tmp_path / "doomed.log", **CLUSTER)
    survivor = None
    try:
        jobs = [submit(owner, seconds=6.0) for _ in range(SLOTS)]
        wait_until(lambda: at_provider(*jobs) and ProviderRun.objects.filter(watcher__isnull=False).count() == SLOTS,
                   timeout=GIVE_UP, message="the jobs to be watched at the provider")
        os.killpg(doomed.process.pid, signal.SIGKILL)  # the whole cluster, its poller with it
        doomed.process.wait()
        survivor = start_worker(tmp_path / "survivor.log", **CLUSTER)
        wait_until(lambda: ended(*jobs), timeout=GIVE_UP, message="the adopted jobs to end")
    finally:
        if survivor:
            survivor.stop()
    for job in Job.objects.filter(job_id__in=[job.job_id for job in jobs]):
        assert (job.status, job.attempt, job.error) == ("completed", 1, None)
        assert audit(job).count("adopted") == 1 and audit(job).count("completed") == 1
    assert fake.submits_per_key() == {f"{job.job_id}:1": 1 for job in jobs}  # none sent again


def test_two_qclusters_share_the_jobs_at_the_provider_without_polling_one_twice(fake, owner, tmp_path):
    use_provider(fake, poll_interval_seconds=0.5)
    first = start_worker(tmp_path / "first.log", **CLUSTER)
    second = start_worker(tmp_path / "second.log", **CLUSTER)
    try:
        jobs = [submit(owner, seconds=3.0) for _ in range(SLOTS)]
        wait_until(lambda: ended(*jobs), timeout=GIVE_UP, message="the jobs to end")
    finally:
        first.stop()
        second.stop()
    for run in ProviderRun.objects.filter(job__in=[job.job_id for job in jobs]):
        polls = fake.polls_of(run.provider_job_id)
        gaps = [later - earlier for earlier, later in zip(polls, polls[1:])]
        # One poller at a time asks about a job, every half second: never two close together.
        assert gaps and min(gaps) > 0.3, (run.provider_job_id, gaps)
    assert all(job.status == "completed" for job in Job.objects.filter(job_id__in=[job.job_id for job in jobs]))
