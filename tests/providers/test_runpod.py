"""The RunPod adapter against bench/fakes/runpod.py, RunPod's serverless API on 127.0.0.1: real sockets,
nothing of HTTP mocked. One job goes the whole way through a real qcluster; the rest run in this
process (the http runner's own wait, the adapter's questions, the callback route on a live server)."""

import asyncio
import json
import time
import urllib.error
import urllib.request
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import pytest

from bench.fakes.runpod import FakeRunPod
from coordination.models import CatalogModel, Job, ProviderRun
from coordination.runners import RunnerError, RunnerStopped, get_runner, runner_call
from coordination.runners import client as http
from coordination.runners.adapters import adapter_of
from coordination.runners.adapters.runpod import callback_token, progress_of, urls_in
from coordination.runners.base import Provider
from coordination.services import job_submit
from coordination.tasks import run_job
from tests.e2e.harness import start_worker, wait_until
from tests.providers.conftest import files_kept, kept_bytes
from tests.helpers import fresh

MODEL = "flux-dev"
ENDPOINT = "ep-test1"
KEY_ENV = "RUNPOD_TEST_KEY"
GIVE_UP = 60  # a bound for polling, not a claim
RUNPOD = adapter_of("runpod")


@pytest.fixture
def fake(monkeypatch):
    runpod = FakeRunPod(seconds=0.5, webhook_gap=0.2).start()
    monkeypatch.setenv(KEY_ENV, runpod.api_key)
    yield runpod
    runpod.stop()


def use_runpod(fake, **fields) -> CatalogModel:
    fields = {"poll_interval_seconds": 0.1, "timeout_seconds": 60, **fields}
    CatalogModel.objects.filter(name=MODEL).update(runner="http", provider="runpod", provider_model=ENDPOINT,
                                                   provider_base_url=fake.url, credential_env=KEY_ENV, **fields)
    return CatalogModel.objects.get(name=MODEL)


def a_call(fake, *, timeout_seconds: float = 60, should_stop=lambda: False, **params):
    return runner_call(use_runpod(fake, timeout_seconds=timeout_seconds), job_id=uuid4(), prompt="A castle at dawn",
                       params=params, attempt=1, should_stop=should_stop)


def run(call) -> dict:
    """A workflow step's call: submitted, then polled here until it ends."""
    return get_runner("http").run(call)


def provider_of(fake) -> Provider:
    return Provider(kind="runpod", url=fake.url, model=ENDPOINT, credential_env=KEY_ENV, style="poll")


def submit_raw(fake, body: dict) -> str:
    """A job sent to the fake as any RunPod client would send it; its id."""
    request = urllib.request.Request(f"{fake.url}/v2/{ENDPOINT}/run", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {fake.api_key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["id"]


def ask(fake, job: str):
    """The poller's question about one RunPod job, through its pooled client."""
    async def question():
        async with http.new_pooled_client(max_connections=1) as pooled:
            provider = provider_of(fake)
            watched = SimpleNamespace(job_id=uuid4(), attempt=1, provider_job_id=job, data={},
                                      status_url=f"{fake.url}/v2/{ENDPOINT}/status/{job}")
            return await RUNPOD.ask(pooled, provider, watched, request=RUNPOD.status_request(pooled, provider, watched),
                                    timeout=10)

    return asyncio.run(question())


def cancel(fake, job: str) -> bool:
    async def cancelling():
        async with http.new_client() as client:
            watched = SimpleNamespace(job_id=uuid4(), provider_job_id=job, data={},
                                      status_url=f"{fake.url}/v2/{ENDPOINT}/status/{job}")
            return await RUNPOD.cancel(client, provider_of(fake), watched)

    return asyncio.run(cancelling())


# --- What is sent, and what comes back --------------------------------------------------------------

@pytest.mark.django_db
def test_a_job_is_sent_as_runpod_documents_it_and_its_output_and_files_come_back(fake):
    call = a_call(fake, seconds=0.3, steps=20)

    result = run(call)

    [sent] = fake.asked("POST", f"/v2/{ENDPOINT}/run")
    assert sent.headers["authorization"] == f"Bearer {fake.api_key}"
    assert sent.json["input"] == {"prompt": "A castle at dawn", "seconds": 0.3, "steps": 20}
    assert 58_000 < sent.json["policy"]["executionTimeout"] <= 60_000  # what is left of the attempt's 60 s
    assert "webhook" not in sent.json  # a workflow step waits here: nobody to call back
    job = result["provider_job_id"]
    assert result["output"] == fake.job(job).output
    assert result["files"] == [{"source_url": f"{fake.url}/files/{job}-0.png", "content_type": "image/png"},
                               {"source_url": f"{fake.url}/files/{job}.mp4", "content_type": "video/mp4"}]
    assert fake.asked("GET", f"/v2/{ENDPOINT}/status/{job}")  # polled at its status URL


@pytest.mark.django_db
@pytest.mark.parametrize("fail_as", ["raise", "return"])
def test_a_failed_job_fails_in_runpods_words(fake, fail_as):
    with pytest.raises(RunnerError) as failed:
        run(a_call(fake, seconds=0.1, fail="CUDA out of memory at step 12", fail_as=fail_as))
    assert str(failed.value).endswith("failed: CUDA out of memory at step 12"), failed.value


def test_a_job_runpod_timed_out_fails_saying_so(fake):
    # RunPod's own timeout: executionTimeout (the least it takes is 5001 ms) passed while the worker ran.
    job = submit_raw(fake, {"input": {"seconds": 60}, "policy": {"executionTimeout": 5001}})
    wait_until(lambda: fake.job(job).status == "TIMED_OUT", timeout=GIVE_UP, message="RunPod to time the job out")
    status = ask(fake, job)
    assert (status.state, status.error) == ("failed", "timed out at RunPod")


@pytest.mark.django_db
def test_the_execution_timeout_is_never_below_what_runpod_takes(fake):
    run(a_call(fake, timeout_seconds=2, seconds=0.1))  # 2000 ms left: less than RunPod takes
    [sent] = fake.submitted()
    assert sent["policy"]["executionTimeout"] == 5001


def test_a_job_runpod_no_longer_has_fails_saying_why(fake):
    job = submit_raw(fake, {"input": {"seconds": 0.1}})
    wait_until(lambda: fake.job(job).status == "COMPLETED", timeout=GIVE_UP, message="the job to complete")
    fake.forget(job)  # its result expired at RunPod
    status = ask(fake, job)
    assert status.state == "failed"
    assert status.error.startswith(f"RunPod no longer has job {job} (HTTP 404: request does not exist)"), status.error


def test_a_refused_question_other_than_a_404_is_the_providers_refusal(fake, monkeypatch):
    job = submit_raw(fake, {"input": {"seconds": 60}})
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    with pytest.raises(RunnerError, match=r"HTTP 401\): Unauthorized"):
        ask(fake, job)


@pytest.mark.parametrize("progress_as", ["fraction", "percent", "object", "text"])
def test_a_running_jobs_progress_is_read_from_what_its_worker_sent(fake, progress_as):
    job = submit_raw(fake, {"input": {"seconds": 4, "progress_as": progress_as}})
    seen = []

    def advanced():
        status = ask(fake, job)
        assert status.state in ("queued", "running"), status
        seen.append(status.progress)
        return status.state == "running" and (progress_as == "text" or (status.progress or 0) >= 0.1)

    wait_until(advanced, timeout=GIVE_UP, message="the job to run for a while")
    if progress_as == "text":  # "step 1 of 8" says no number: no progress rather than a guess
        assert seen[-1] is None
    else:
        assert 0.1 <= seen[-1] <= 1.0


@pytest.mark.parametrize("output, progress", [
    (0.25, 0.25), (1, 1.0), (40, 0.4), (100, 1.0), (250, None), (-1, None), (True, None),
    ({"progress": 0.5}, 0.5), ({"progress": 75}, 0.75), ({"percent": 1}, 0.01), ({"percent": 60, "progress": 0.2}, 0.6),
    ("step 3 of 8", None), ({"message": "warming up"}, None), (None, None),
])
def test_progress_reads_a_fraction_a_percentage_or_an_objects_progress(output, progress):
    assert progress_of(output) == pytest.approx(progress) if progress is not None else progress_of(output) is None


def test_files_are_the_http_urls_anywhere_in_the_output_once_each_in_order():
    output = {"images": [{"url": "https://cdn.example/a.png", "seed": 1}, "https://cdn.example/b.png"],
              "meta": {"video": "http://cdn.example/c.mp4", "note": "not a url", "again": "https://cdn.example/a.png"},
              "data": "s3://bucket/key"}
    assert urls_in(output) == ["https://cdn.example/a.png", "https://cdn.example/b.png", "http://cdn.example/c.mp4"]
    assert urls_in("https://cdn.example/only.png") == ["https://cdn.example/only.png"]
    assert urls_in(["text", 3, None]) == []


# --- Cancel -----------------------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("where", ["IN_QUEUE", "IN_PROGRESS"])
def test_a_stopped_job_is_cancelled_at_runpod_queued_or_running(fake, where):
    blocker = submit_raw(fake, {"input": {"seconds": 60}}) if where == "IN_QUEUE" else None  # its one worker busy
    ours = []

    def stop() -> bool:
        with fake.lock:
            jobs = [job for job in fake.jobs.values() if job.id != blocker]
        ours[:] = jobs
        # Queued; or running for a while (its progress asked at least once).
        return bool(jobs) and jobs[0].status == where and (where == "IN_QUEUE" or fake.now() - jobs[0].started_at > 0.3)

    with pytest.raises(RunnerStopped):
        run(a_call(fake, seconds=60, should_stop=stop))

    [job] = ours
    assert fake.job(job.id).status == "CANCELLED"
    assert (fake.job(job.id).started_at is None) == (where == "IN_QUEUE")  # a queued one never ran
    assert [r.path for r in fake.asked("POST", f"/v2/{ENDPOINT}/cancel/")] == [f"/v2/{ENDPOINT}/cancel/{job.id}"]


def test_a_cancel_is_confirmed_by_cancelled_by_an_end_already_reached_or_by_a_404(fake):
    running = submit_raw(fake, {"input": {"seconds": 60}})
    assert cancel(fake, running) and fake.job(running).status == "CANCELLED"
    fake.workers = 2
    done = submit_raw(fake, {"input": {"seconds": 0.1}})
    wait_until(lambda: fake.job(done).status == "COMPLETED", timeout=GIVE_UP, message="the job to complete")
    assert cancel(fake, done) and fake.job(done).status == "COMPLETED"  # nothing left to stop
    assert cancel(fake, "no-such-job-u1")  # gone
    fake.limit(1)
    assert not cancel(fake, running)  # limited: not confirmed, sent again at the next poll


# --- Limits -----------------------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("retry_after", ["1", None])
def test_a_429_is_waited_out_with_or_without_retry_after(fake, retry_after):
    fake.limit(3, retry_after=retry_after)  # the submit is refused three times, then taken
    began = time.monotonic()

    result = run(a_call(fake, seconds=0.2))

    assert result["files"]
    assert len(fake.asked("POST", f"/v2/{ENDPOINT}/run")) == 4 and len(fake.jobs) == 1
    if retry_after:
        assert time.monotonic() - began >= 3  # as long as RunPod said, each time


# --- Webhooks ---------------------------------------------------------------------------------------

def post_callback(base: str, body: dict, *, token: str | None) -> tuple[int, str]:
    url = f"{base}/providers/{MODEL}/callback" + (f"?token={token}" if token is not None else "")
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)["message"]
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)["error"]


@pytest.mark.django_db(transaction=True)
def test_runpods_webhook_with_its_token_ends_the_job_once_as_runpods_status_says(fake, user, live_server, settings):
    settings.COORDINATOR_PUBLIC_URL = live_server.url
    use_runpod(fake, poll_interval_seconds=30)
    job = job_submit(owner=user, model=MODEL, prompt="A castle", params={"seconds": 0.5})
    run_job(str(job.job_id), 1)  # submitted with its webhook, and left at RunPod: no poller runs here

    [sent] = fake.submitted()
    webhook = urlsplit(sent["webhook"])
    assert f"{webhook.scheme}://{webhook.netloc}{webhook.path}" == f"{live_server.url}/providers/{MODEL}/callback"
    assert parse_qs(webhook.query) == {"token": [callback_token(job.job_id, 1)]}
    wait_until(lambda: fresh(job).status in Job.FINISHED, timeout=GIVE_UP, message="RunPod's webhook to end the job")

    run = ProviderRun.objects.get(job=job)
    job = fresh(job)
    assert (job.status, job.result["output"]) == ("completed", fake.job(run.provider_job_id).output), job.error
    assert [code for _, code in fake.webhooks] == [200]
    status_asked = fake.asked("GET", f"/v2/{ENDPOINT}/status/{run.provider_job_id}")
    assert len(status_asked) == 1  # the unsigned webhook was confirmed by asking RunPod

    again = post_callback(live_server.url, {"id": run.provider_job_id, "status": "FAILED", "error": "late and wrong"},
                          token=callback_token(job.job_id, 1))
    assert again == (200, "Already recorded: nothing changed.")
    assert fresh(job).status == "completed" and len(fake.asked("GET", f"/v2/{ENDPOINT}/status/")) == 1


@pytest.mark.django_db(transaction=True)
def test_a_webhook_without_the_jobs_token_is_refused_and_changes_nothing(fake, user, live_server, settings):
    settings.COORDINATOR_PUBLIC_URL = live_server.url
    use_runpod(fake, poll_interval_seconds=30)
    job = job_submit(owner=user, model=MODEL, prompt="A castle", params={"seconds": 60})
    run_job(str(job.job_id), 1)
    run = ProviderRun.objects.get(job=job)
    forged = {"id": run.provider_job_id, "status": "COMPLETED", "output": "https://evil.example/x.png"}

    for token in (None, "", "0" * 64, callback_token(job.job_id, 2), callback_token(uuid4(), 1)):
        code, message = post_callback(live_server.url, forged, token=token)
        assert code == 401, (token, message)

    assert fresh(job).status == "running" and ProviderRun.objects.get(job=job).state == "in_flight"
    assert fake.asked("GET") == []  # nothing was even asked of RunPod
    # The job's own token is taken, and what RunPod then says is what counts: the job runs on.
    assert post_callback(live_server.url, forged, token=callback_token(job.job_id, 1)) == (202, "Noted: running.")
    assert fresh(job).status == "running" and len(fake.asked("GET", f"/v2/{ENDPOINT}/status/")) == 1


def test_the_fake_tries_a_refused_webhook_twice_more_then_gives_up(fake):
    refused = f"{fake.url}/not-a-webhook"  # the fake's own 404
    job = submit_raw(fake, {"input": {"seconds": 0.1}, "webhook": refused})
    wait_until(lambda: len(fake.webhooks) == 3, timeout=GIVE_UP, message="three tries")
    time.sleep(3 * fake.webhook_gap)  # the time a fourth try would take, not a stand-in for a condition
    assert fake.webhooks == [(job, 404)] * 3


# --- RunPod's official client against the fake --------------------------------------------------------

def test_runpods_own_client_speaks_to_the_fake(fake, monkeypatch):
    runpod = pytest.importorskip("runpod", reason="runpod-python is a test dependency (requirements.txt)")
    monkeypatch.setattr(runpod, "endpoint_url_base", f"{fake.url}/v2")
    endpoint = runpod.Endpoint(ENDPOINT, api_key=fake.api_key)

    job = endpoint.run({"prompt": "A castle", "seconds": 0.3})
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS")
    output = job.output(timeout=20)
    assert job.status() == "COMPLETED" and output == fake.job(job.job_id).output
    assert urls_in(output) == [f"{fake.url}/files/{job.job_id}-0.png", f"{fake.url}/files/{job.job_id}.mp4"]

    slow = endpoint.run({"input": {"seconds": 60}})
    assert slow.cancel() == {"id": slow.job_id, "status": "CANCELLED"}
    assert slow.status() == "CANCELLED"

    assert endpoint.run_sync({"seconds": 0.2, "output": {"text": "done"}}, timeout=20) == {"text": "done"}

    with pytest.raises(RuntimeError, match="401 Unauthorized"):
        runpod.Endpoint(ENDPOINT, api_key="not-the-key").run({"prompt": "A castle"})


# --- The whole way: POST /jobs to completed through a real qcluster ---------------------------------

@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_job_goes_from_submit_to_completed_at_runpod_through_a_real_qcluster(fake, user, tmp_path, settings):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 3
    use_runpod(fake, poll_interval_seconds=0.2)
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_WORKERS="1", COORDINATOR_POLLER_TICK="0.2",
                          COORDINATOR_MAX_ACTIVE_JOBS="3")
    try:
        job = job_submit(owner=user, model=MODEL, prompt="A castle", params={"seconds": 1.0})
        wait_until(lambda: fresh(job).status in Job.FINISHED, timeout=GIVE_UP, message="the job to end")
        wait_until(lambda: files_kept(job.job_id), timeout=GIVE_UP, message="the job's files to be kept")
    finally:
        worker.stop()

    job, run = fresh(job), ProviderRun.objects.get(job=job)
    assert (job.status, job.attempt, job.error) == ("completed", 1, None)
    assert job.result["provider_job_id"] == run.provider_job_id and run.style == "poll"
    assert job.result["output"] == fake.job(run.provider_job_id).output
    png, mp4 = job.result["files"]
    assert (png["content_type"], mp4["content_type"]) == ("image/png", "video/mp4")
    with urllib.request.urlopen(png["source_url"], timeout=10) as image:  # served by the fake, as RunPod's CDN would
        assert image.read() == kept_bytes(job.job_id, 0)  # and the coordinator keeps its copy
    assert kept_bytes(job.job_id, 0).startswith(b"\x89PNG")
    assert len(fake.submitted()) == 1
