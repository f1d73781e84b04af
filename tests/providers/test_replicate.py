"""Replicate: the adapter (coordination/runners/adapters/replicate.py) against bench/fakes/replicate.py
over real sockets, and replicate-python, Replicate's own client, against the same fake, so the fake
is known to speak Replicate's API."""

import asyncio
import base64
import json
import os
import signal
from datetime import datetime, timedelta, timezone
from uuid import uuid4

import httpx
import pytest
import replicate

from bench.fakes.replicate import PNG, FakeReplicate
from coordination.models import CatalogModel, Job, JobEvent, JobFile, ProviderRun
from coordination.runners import get_runner, runner_call
from coordination.runners.adapters import adapter_of
from coordination.runners.base import RunnerError
from coordination.services import job_cancel, job_submit
from tests.e2e.harness import start_worker, wait_until
from tests.factories import UserFactory
from tests.providers.conftest import poller

TOKEN = "r8_fake_token"
SECRET = "whsec_" + base64.b64encode(b"a secret only tests know").decode()
GIVE_UP = 60  # a bound for polling, not a claim


@pytest.fixture
def fake():
    provider = FakeReplicate(token=TOKEN, seconds=0.5, webhook_secret=SECRET).start()
    yield provider
    provider.stop()


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    monkeypatch.setenv("REPLICATE_WEBHOOK_SECRET", SECRET)


def on_replicate(fake, name: str = "flux-dev", **fields) -> CatalogModel:
    CatalogModel.objects.filter(name=name).update(**{
        "runner": "http", "provider": "replicate", "provider_base_url": fake.url, "credential_env": "REPLICATE_API_TOKEN",
        "poll_interval_seconds": 0.1, **fields})
    return CatalogModel.objects.get(name=name)


def call(model: CatalogModel, **params):
    return runner_call(model, job_id=uuid4(), prompt="A lighthouse", params=params, inputs={}, attempt=1)


# --- Replicate's own client against the fake ---------------------------------------------------------


class TestTheFakeSpeaksReplicate:
    def test_replicate_python_creates_waits_for_and_reads_a_prediction(self, fake):
        client = replicate.Client(api_token=TOKEN, base_url=fake.url)
        prediction = client.predictions.create(model="black-forest-labs/flux-dev", input={"prompt": "a cat", "seconds": 0.3})
        assert prediction.status == "starting"
        prediction.wait()
        assert prediction.status == "succeeded"
        assert prediction.output == [f"{fake.url}/files/{prediction.id}.png"]
        assert prediction.progress.percentage == 1.0

    def test_replicate_python_reads_progress_from_the_logs_and_cancels(self, fake):
        client = replicate.Client(api_token=TOKEN, base_url=fake.url)
        prediction = client.predictions.create(deployment="acme/flux", input={"prompt": "a cat", "seconds": 30})
        wait_until(lambda: (prediction.reload(), prediction.status)[1] == "processing" and prediction.progress is not None,
                   timeout=GIVE_UP, message="the prediction to report progress")
        prediction.cancel()
        prediction.reload()
        assert prediction.status == "canceled"

    def test_replicate_python_sees_a_wrong_token_as_replicate_refuses_it(self, fake):
        with pytest.raises(replicate.exceptions.ReplicateError) as refused:
            replicate.Client(api_token="wrong", base_url=fake.url).predictions.create(
                model="black-forest-labs/flux-dev", input={"prompt": "a cat"})
        assert refused.value.status == 401 and "valid authentication token" in refused.value.detail


# --- the adapter ------------------------------------------------------------------------------------


@pytest.mark.django_db
class TestTheAdapter:
    def test_each_form_of_model_name_is_created_where_replicate_says(self, fake, token):
        for name, path in (("black-forest-labs/flux-dev", "/v1/models/black-forest-labs/flux-dev/predictions"),
                           ("acme/flux:5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa", "/v1/predictions"),
                           ("deployments/acme/flux", "/v1/deployments/acme/flux/predictions")):
            model = on_replicate(fake, provider_model=name, timeout_seconds=120,
                                 provider_input={"rename": {"prompt": "text"}, "defaults": {"steps": 4}})
            result = get_runner("http").run(call(model, seconds=0.1, guidance=3))
            sent = fake.asked("POST")[-1]
            assert sent.path == path
            assert sent.json["input"] == {"text": "A lighthouse", "seconds": 0.1, "guidance": 3, "steps": 4}
            assert sent.headers["authorization"] == f"Bearer {TOKEN}"
            assert 100 <= int(sent.headers["cancel-after"].removesuffix("s")) <= 120  # our deadline, for Replicate to keep
            if ":" in name:
                assert sent.json["version"] == name.split(":")[1]
            assert result["output"] == [f"{fake.url}/files/{result['provider_job_id']}.png"]
            assert result["files"] == [{"source_url": result["output"][0], "content_type": "image/png"}]

    def test_a_proxy_in_provider_base_url_is_asked_about_the_prediction_too(self, fake, token):
        """Replicate's answers name api.replicate.com in `urls`; a model whose provider_base_url is a proxy
        (here the fake) polls and cancels through it as well, not only submits."""
        model = on_replicate(fake, provider_model="black-forest-labs/flux-dev", timeout_seconds=10)
        state = fake.state
        fake.state = lambda p, now=None: {**state(p, now), "urls": {"get": f"https://api.replicate.com/v1/predictions/{p.id}",
                                                                    "cancel": f"https://api.replicate.com/v1/predictions/{p.id}/cancel"}}
        result = get_runner("http").run(call(model, seconds=0.2))
        assert result["output"] and fake.asked("GET", f"/v1/predictions/{result['provider_job_id']}")
        accepted = get_runner("http").submit(call(model, seconds=30))
        assert accepted.status_url.startswith(fake.url) and get_runner("http").drop(call(model), accepted) is True

    def test_a_failed_prediction_fails_the_job_in_replicates_words(self, fake, token):
        model = on_replicate(fake, provider_model="black-forest-labs/flux-dev")
        with pytest.raises(RunnerError, match="failed: CUDA out of memory"):
            get_runner("http").run(call(model, seconds=0.1, fail="CUDA out of memory"))

    def test_a_wrong_token_fails_the_job_with_replicates_message(self, fake, monkeypatch):
        monkeypatch.setenv("REPLICATE_API_TOKEN", "wrong")
        model = on_replicate(fake, provider_model="black-forest-labs/flux-dev")
        with pytest.raises(RunnerError, match="HTTP 401.*valid authentication token"):
            get_runner("http").run(call(model))

    @pytest.mark.parametrize("retry_after", ["1", None])
    def test_a_limit_is_waited_out_and_the_submit_sent_once_it_passes(self, fake, token, retry_after):
        model = on_replicate(fake, provider_model="black-forest-labs/flux-dev")
        fake.limit(2, retry_after=retry_after)
        result = get_runner("http").run(call(model, seconds=0.1))
        assert result["output"]
        creates = [r for r in fake.asked("POST") if r.path.endswith("/predictions")]
        assert len(creates) == 3 and len(fake.predictions) == 1  # two refused whole, one taken

    def test_a_submit_whose_answer_was_lost_is_not_sent_again(self, fake, token):
        model = on_replicate(fake, provider_model="black-forest-labs/flux-dev", max_connect_retries=3)
        original = fake.answer

        def cut_after_taking(request):
            answer = original(request)
            if request.method == "POST":  # taken, then the answer never arrives
                raise ConnectionResetError("cut")
            return answer

        fake.answer = cut_after_taking
        with pytest.raises(RunnerError, match="at most once"):
            get_runner("http").run(call(model))
        assert len(fake.predictions) == 1  # not sent again: Replicate would have made a second

    def test_status_progress_and_aborted_read_as_replicate_says_them(self, fake, token):
        model = on_replicate(fake, provider_model="black-forest-labs/flux-dev")
        adapter, provider = adapter_of("replicate"), call(model).provider

        async def states():
            async with httpx.AsyncClient() as client:
                accepted = await adapter.submit(client, call(model, seconds=30), deadline=asyncio.get_running_loop().time() + 60,
                                                callback_url=None)
                request = adapter.status_request(client, provider, accepted)
                seen = [await adapter.ask(client, provider, accepted, request=request, timeout=5)]
                while seen[-1].progress is None:
                    seen.append(await adapter.ask(client, provider, accepted, request=request, timeout=5))
                return accepted, seen

        fake.queue_seconds = 0.3
        accepted, seen = asyncio.run(states())
        assert accepted.status.state == "queued" and seen[-1].state == "running" and 0 <= seen[-1].progress < 1
        prediction = fake.state(fake.predictions[accepted.provider_job_id])
        prediction.update(status="aborted", completed_at="2026-12-06T00:00:00Z")
        aborted = adapter.status_from(prediction, accepted)
        assert (aborted.state, aborted.error) == ("cancelled", "aborted by Replicate: its deadline passed before it started")

    def test_cancel_posts_to_urls_cancel_and_is_confirmed_by_the_prediction(self, fake, token):
        model = on_replicate(fake, provider_model="black-forest-labs/flux-dev")
        runner = get_runner("http")
        accepted = runner.submit(call(model, seconds=30))
        assert runner.drop(call(model), accepted) is True
        assert fake.asked("POST", f"/v1/predictions/{accepted.provider_job_id}/cancel")
        assert fake.state(fake.predictions[accepted.provider_job_id])["status"] == "canceled"


# --- webhooks ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
class TestWebhooks:
    def a_job_at_replicate(self, fake, settings, live_server):
        settings.COORDINATOR_PUBLIC_URL = live_server.url
        on_replicate(fake, provider_model="black-forest-labs/flux-dev", callback_secret_env="REPLICATE_WEBHOOK_SECRET",
                     poll_interval_seconds=30)
        job = job_submit(owner=UserFactory(), model="flux-dev", prompt="A lighthouse", params={"seconds": 0.2})
        return job, f"{live_server.url}/providers/flux-dev/callback"

    def run_of(self, fake, job, url):
        from coordination.providers import store
        from coordination.tasks import normal_run

        job.refresh_from_db()
        Job.objects.filter(pk=job.pk).update(status="running", attempt=1, claimed_attempt=1)
        at = normal_run(job=Job.objects.get(pk=job.pk), attempt=1, should_stop=lambda: False)
        return store.run_record(job_id=job.job_id, attempt=1, model=at.model, accepted=at.accepted)

    def test_a_signed_webhook_ends_the_job_once_and_a_wrong_one_changes_nothing(self, fake, token, settings, live_server):
        job, url = self.a_job_at_replicate(fake, settings, live_server)
        run = self.run_of(fake, job, url)
        prediction = fake.predictions[run.provider_job_id]
        assert prediction.webhook == url and prediction.events == ["start", "completed"]
        prediction.seconds = 3600  # it runs on; the webhooks below say it ended
        wait_until(lambda: (run.provider_job_id, "start", 202) in fake.webhooks_sent, timeout=GIVE_UP,
                   message="Replicate's start webhook to be noted")
        ended = {**fake.state(prediction), "status": "succeeded", "output": [f"{fake.url}/files/{run.provider_job_id}.png"]}
        # Signed with another secret, or six minutes ago, or not at all: refused, nothing changes.
        assert fake.send_webhook(url, ended, secret="whsec_" + base64.b64encode(b"not the secret").decode()) == 401
        assert fake.send_webhook(url, ended, timestamp=datetime.now(timezone.utc) - timedelta(minutes=6)) == 401
        assert httpx.post(url, content=json.dumps(ended), headers={"Content-Type": "application/json"}).status_code == 401
        assert Job.objects.get(pk=job.pk).status == "running"
        # Signed as Replicate signs: the job ends; the same webhook again changes nothing.
        assert fake.send_webhook(url, ended) == 200
        finished = Job.objects.get(pk=job.pk)
        assert finished.status == "completed" and finished.result["output"] == ended["output"]
        assert fake.send_webhook(url, ended) == 200
        assert Job.objects.get(pk=job.pk).completed_at == finished.completed_at
        assert ProviderRun.objects.get(pk=run.pk).state == "done"


# --- the guide's Test 3, on Replicate ----------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_guides_test_3_runs_on_replicate_after_a_patch_of_its_two_models(fake, staff_api, api, tmp_path):
    """As the README shows it: REPLICATE_API_TOKEN where the qcluster runs, a PATCH of flux-dev and
    minimax/video-01, then the guide's Test 3 (serialized: one job at a time, FIFO)."""
    for name in ("flux-dev", "minimax/video-01"):
        answer = staff_api.patch(f"/models/{name}", {"runner": "http", "provider": "replicate",
                                                     "credential_env": "REPLICATE_API_TOKEN", "provider_base_url": fake.url,
                                                     "poll_interval_seconds": 0.2}, format="json")
        assert answer.status_code == 200, answer.json()
    worker = start_worker(tmp_path / "qcluster.log", REPLICATE_API_TOKEN=TOKEN, COORDINATOR_MAX_ACTIVE_JOBS="1",
                          COORDINATOR_POLLER_TICK="0.2")
    try:
        first = api.post("/jobs", {"prompt": "Generate image", "model": "flux-dev", "job_type": "image"}, format="json").json()
        second = api.post("/jobs", {"prompt": "Generate video", "model": "minimax/video-01", "job_type": "video"},
                          format="json").json()
        assert second["status"] == "pending"  # queued, even with a different model
        wait_until(lambda: Job.objects.get(pk=second["job_id"]).status == "completed", timeout=GIVE_UP,
                   message="both jobs to run at Replicate, one after the other")
        # The qcluster's copier keeps both jobs' files.
        wait_until(lambda: JobFile.objects.filter(job_id__in=[first["job_id"], second["job_id"]], state="stored").count() == 2,
                   timeout=GIVE_UP, message="both jobs' files to be kept")
    finally:
        worker.stop()
    jobs = [Job.objects.get(pk=first["job_id"]), Job.objects.get(pk=second["job_id"])]
    assert [job.status for job in jobs] == ["completed", "completed"]
    assert jobs[1].started_at >= jobs[0].completed_at  # Job 2 started when Job 1 completed
    creates = [r.path for r in fake.asked("POST") if r.path.endswith("/predictions")]
    assert creates == ["/v1/models/black-forest-labs/flux-dev/predictions", "/v1/models/minimax/video-01/predictions"]
    assert jobs[0].result["files"] == [{"source_url": f"{fake.url}/files/{jobs[0].result['provider_job_id']}.png",
                                        "content_type": "image/png"}]
    # Served by the coordinator after Replicate's copies are gone.
    fake.stop()
    listed = api.get(f"/jobs/{first['job_id']}").json()["result"]["files"][0]
    served = api.get(listed["url"])
    assert served.status_code == 200 and b"".join(served.streaming_content) == PNG


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_killed_qcluster_leaves_its_replicate_job_to_another_which_ends_it(fake, tmp_path):
    """kill -9 of the qcluster whose poller watches a prediction: another qcluster adopts it once the
    lease lapses and ends the job with Replicate's outcome; the prediction was created once."""
    on_replicate(fake, provider_model="black-forest-labs/flux-dev", poll_interval_seconds=0.2)
    cluster = {"REPLICATE_API_TOKEN": TOKEN, "COORDINATOR_LEASE_SECONDS": "2", "COORDINATOR_POLLER_TICK": "0.2",
               "COORDINATOR_REAPER_SECONDS": "1"}
    job = job_submit(owner=UserFactory(), model="flux-dev", prompt="A lighthouse", params={"seconds": 4})
    first = start_worker(tmp_path / "first.log", **cluster)
    try:
        # What Replicate's logs say of its progress shows on the job, and as job.progress events.
        wait_until(lambda: ProviderRun.objects.filter(job_id=job.job_id, progress__gt=0).exists(),
                   timeout=GIVE_UP, message="the prediction's progress to show")
        progress = JobEvent.objects.filter(job_id=job.job_id, event="progress").order_by("id").last()
        assert progress.state["at_provider"]["status"] == "running" and 0 < progress.state["at_provider"]["progress"] < 1
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait()
    finally:
        first.stop()
    second = start_worker(tmp_path / "second.log", **cluster)
    try:
        wait_until(lambda: Job.objects.get(pk=job.pk).status == "completed", timeout=GIVE_UP,
                   message="the second qcluster to adopt and end the job")
    finally:
        second.stop()
    assert len(fake.predictions) == 1
    assert Job.objects.get(pk=job.pk).attempt == 1


# --- endings the poller decides ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
class TestEndings:
    @pytest.fixture(autouse=True)
    def quick(self, settings, token):
        settings.COORDINATOR_POLLER_TICK = 0.1
        settings.COORDINATOR_PROVIDER_CANCEL_GRACE = 1

    def at_replicate(self, fake, **params) -> Job:
        from coordination.tasks import run_job

        job = job_submit(owner=UserFactory(), model="flux-dev", prompt="A lighthouse", params=params)
        run_job(str(job.job_id), 1)
        return job

    def test_a_prediction_replicate_ended_at_our_deadline_is_timed_out_and_not_tried_again(self, fake):
        # Cancel-After is the whole seconds left (2 of 3): Replicate ends it a moment before our deadline.
        on_replicate(fake, provider_model="black-forest-labs/flux-dev", timeout_seconds=3, max_attempts=2)
        job = self.at_replicate(fake, seconds=60)
        assert fake.asked("POST")[-1].headers["cancel-after"] == "2s"
        with poller():
            wait_until(lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED, timeout=GIVE_UP,
                       message="Replicate's own end at our deadline to end the job")
        job.refresh_from_db()
        assert (job.status, job.attempt) == ("failed", 1)
        assert job.error.startswith("timed out after 3 s; the provider's job ") and "canceled at Replicate" in job.error

    def test_a_cancel_that_finds_the_prediction_succeeded_completes_the_job(self, fake):
        on_replicate(fake, provider_model="black-forest-labs/flux-dev", poll_interval_seconds=60)  # not polled meanwhile
        job = self.at_replicate(fake, seconds=0.1)
        run = ProviderRun.objects.get(job_id=job.job_id)
        wait_until(lambda: fake.state(fake.predictions[run.provider_job_id])["status"] == "succeeded", timeout=GIVE_UP,
                   message="the prediction to succeed")
        job_cancel(job_id=job.job_id)
        with poller():
            wait_until(lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED, timeout=GIVE_UP,
                       message="the cancel to reach Replicate")
        job.refresh_from_db()
        assert job.status == "completed" and job.result["output"] == [f"{fake.url}/files/{run.provider_job_id}.png"]

    def test_a_cancel_that_cannot_be_sent_still_ends_the_job_after_the_grace(self, fake, monkeypatch):
        on_replicate(fake, provider_model="black-forest-labs/flux-dev")
        job = self.at_replicate(fake, seconds=60)
        monkeypatch.delenv("REPLICATE_API_TOKEN")  # this poller's environment lacks the token
        job_cancel(job_id=job.job_id)
        with poller():
            wait_until(lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED, timeout=GIVE_UP,
                       message="the job to end once the grace passed")
        job.refresh_from_db()
        assert job.status == "cancelled" and "did not confirm it within 1 s" in job.error
