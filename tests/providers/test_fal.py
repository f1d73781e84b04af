"""The fal adapter (coordination/runners/adapters/fal.py) against bench/fakes/fal.py, fal's queue API on
127.0.0.1: one job through a real qcluster, the rest in-process through the http runner, the adapter's
questions (as the poller asks them) and the webhook route."""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace
from uuid import uuid4

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.test import Client

from bench.fakes.base import Answer
from bench.fakes.fal import PNG, FakeFal
from coordination.models import CatalogModel, Job, JobQueueLog, ProviderRun
from coordination.runners import RunnerCall, RunnerError, get_runner, runner_call
from coordination.runners import client as http
from coordination.runners.adapters import adapter_of
from coordination.runners.adapters import fal as fal_adapter
from coordination.runners.base import Provider
from coordination.runners.client import Accepted, Status
from coordination.services import job_cancel, job_submit
from coordination.tasks import run_job
from tests.e2e.harness import start_worker, wait_until
from tests.factories import UserFactory
from tests.providers.conftest import files_kept, kept_bytes

KEY = "fal-key-for-tests"
APP = "fal-ai/flux/dev"
MODEL = "flux-dev"
GIVE_UP = 60  # a bound for polling, not a claim
FAL = adapter_of("fal")


@pytest.fixture
def fal(monkeypatch):
    fake = FakeFal(key=KEY, seconds=0.3, concurrency=1, cancel_delay=1.0).start()
    monkeypatch.setenv("TEST_FAL_KEY", KEY)
    fal_adapter._keys.clear()  # a fresh process's: another test's fake may have had this port
    yield fake
    fake.stop()


def use_fal(fake, **fields) -> CatalogModel:
    fields = {"poll_interval_seconds": 0.2, "timeout_seconds": 60, "capacity": 2, **fields}
    CatalogModel.objects.filter(name=MODEL).update(runner="http", provider="fal", provider_model=APP,
                                                   provider_base_url=fake.url, credential_env="TEST_FAL_KEY", **fields)
    return CatalogModel.objects.get(name=MODEL)


def provider(fake, **fields) -> Provider:
    return Provider(kind="fal", url=fake.url, model=APP, credential_env="TEST_FAL_KEY", style="poll",
                    poll_interval_seconds=0.05, **{"timeout_seconds": 30, **fields})


def a_call(fake, params=None, **fields) -> RunnerCall:
    return RunnerCall(job_id=uuid4(), model=MODEL, prompt="A lighthouse at dusk", params=params or {},
                      provider=provider(fake, **fields))


def on_fal(work):
    """`work(submitting, polling)` with the worker's client and the poller's."""
    async def main():
        async with http.new_client() as submitting, http.new_pooled_client(max_connections=4) as polling:
            return await work(submitting, polling)

    return asyncio.run(main())


def submitted(fake, *params: dict) -> list[Accepted]:
    return [get_runner("http").submit(a_call(fake, one)) for one in params]


def ask(fake, accepted: Accepted) -> Status:
    prov = provider(fake)
    return on_fal(lambda _, polling: FAL.ask(polling, prov, accepted, timeout=10,
                                             request=FAL.status_request(polling, prov, accepted)))


def cancel(fake, accepted) -> bool:
    return on_fal(lambda _, polling: FAL.cancel(polling, provider(fake), accepted))


# --- One job, and one cancel, through a real qcluster ------------------------------------------

CLUSTER = {"COORDINATOR_MAX_ACTIVE_JOBS": "3", "COORDINATOR_WORKERS": "1", "COORDINATOR_POLLER_TICK": "0.2",
           "COORDINATOR_LEASE_SECONDS": "3", "COORDINATOR_REAPER_SECONDS": "1"}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_job_at_fal_completes_with_its_output_and_files_and_a_cancel_ends_once_fal_confirms_it(fal, settings, tmp_path):
    settings.COORDINATOR_MAX_ACTIVE_JOBS, settings.COORDINATOR_LEASE_SECONDS = 3, 3
    fal.concurrency = 2
    use_fal(fal)
    owner = UserFactory()
    worker = start_worker(tmp_path / "qcluster.log", TEST_FAL_KEY=KEY, **CLUSTER)
    try:
        done = job_submit(owner=owner, model=MODEL, prompt="A lighthouse at dusk", params={"seconds": 1.0})
        stopped = job_submit(owner=owner, model=MODEL, prompt="A lighthouse at dawn", params={"seconds": 600})
        wait_until(lambda: Job.objects.get(pk=done.job_id).status == "completed", timeout=GIVE_UP, message="the job to complete")
        request_id = wait_until(lambda: ProviderRun.objects.filter(job=stopped).values_list("provider_job_id", flat=True).first(),
                                timeout=GIVE_UP, message="the second job to be at fal")
        wait_until(lambda: fal.state(request_id) == "IN_PROGRESS", timeout=GIVE_UP, message="fal to run it")
        job_cancel(job_id=stopped.job_id, reason="Cancelled by its owner")
        wait_until(lambda: fal.asked("PUT"), timeout=GIVE_UP, message="the cancel to reach fal")
        # fal takes cancel_delay (1 s) to stop it: until its status says COMPLETED, the job runs on.
        assert Job.objects.get(pk=stopped.job_id).status == "running"
        wait_until(lambda: Job.objects.get(pk=stopped.job_id).status == "cancelled", timeout=GIVE_UP,
                   message="the cancel to end the job")
        wait_until(lambda: files_kept(done.job_id), timeout=GIVE_UP, message="the job's file to be kept")
    finally:
        worker.stop()

    done = Job.objects.get(pk=done.job_id)
    request = fal.job(done.result["provider_job_id"])
    assert done.result["output"]["images"][0]["url"] == f"{fal.url}/files/{request.id}.png"
    assert done.result["files"] == [{"source_url": f"{fal.url}/files/{request.id}.png", "content_type": "image/png"}]
    with urllib.request.urlopen(done.result["files"][0]["source_url"], timeout=10) as image:
        assert image.read() == PNG == kept_bytes(done.job_id, 0)  # and the coordinator keeps its copy
    assert list(JobQueueLog.objects.filter(job_id=done.job_id).order_by("id").values_list("event_type", flat=True)) == [
        "submitted", "started", "claimed", "at_provider", "completed"]
    [sent] = [r for r in fal.asked("POST") if json.loads(r.raw)["prompt"] == "A lighthouse at dusk"]
    assert sent.headers["authorization"] == f"Key {KEY}" and sent.path == f"/{APP}"
    polls = fal.asked("GET", f"/fal-ai/flux/requests/{request.id}/status")
    assert polls and all(poll.query == {"logs": "1"} for poll in polls)

    stopped = Job.objects.get(pk=stopped.job_id)
    assert "Cancelled at the provider, which confirmed it" in stopped.error
    cancelled = fal.job(request_id)
    assert cancelled.error_type == "client_cancelled"
    assert cancelled.ended >= cancelled.cancel_asked + fal.cancel_delay  # it ended when fal said so, not before


# --- Submitting ----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_submit_is_the_models_input_with_fals_key_our_deadline_and_webhook(fal, settings):
    settings.COORDINATOR_PUBLIC_URL = "http://127.0.0.1:9"  # a callback model (nothing listens: fal's call goes nowhere)
    model = use_fal(fal, timeout_seconds=120, provider_input={"rename": {"prompt": "prompt_text"}, "defaults": {"num_images": 1}})
    call = runner_call(model, job_id=uuid4(), prompt="A lighthouse", params={"seed": 7, "seconds": 600})

    accepted = get_runner("http").submit(call)

    [sent] = fal.asked("POST")
    assert sent.path == f"/{APP}" and sent.json == {"prompt_text": "A lighthouse", "seed": 7, "seconds": 600, "num_images": 1}
    assert sent.headers["authorization"] == f"Key {KEY}"
    assert 118 <= int(sent.headers["x-fal-request-timeout"]) <= 120
    assert sent.query == {"fal_webhook": f"http://127.0.0.1:9/providers/{MODEL}/callback"}
    # fal's URLs name owner/app only (no /dev): kept as given.
    base = f"{fal.url}/fal-ai/flux/requests/{accepted.provider_job_id}"
    assert (accepted.status_url, accepted.data) == (f"{base}/status", {
        "response_url": base, "cancel_url": f"{base}/cancel", "gateway_request_id": accepted.provider_job_id})
    assert accepted.status == Status("queued", queue_position=0)


def test_a_poll_model_asks_for_no_webhook(fal):
    submitted(fal, {"seconds": 600})
    assert fal.asked("POST")[0].query == {}


def test_a_wrong_key_fails_the_job_in_fals_words(fal, monkeypatch):
    monkeypatch.setenv("TEST_FAL_KEY", "not-the-key")
    with pytest.raises(RunnerError, match=r"HTTP 401\): No user found for Key ID and Secret"):
        get_runner("http").run(a_call(fal))
    assert fal.jobs == {}


@pytest.mark.parametrize("retry_after", ["1", None])
def test_a_429_on_submit_is_waited_out_and_the_deadline_sent_is_the_time_left_then(fal, retry_after):
    fal.limit(2, retry_after=retry_after)
    began = time.monotonic()

    [accepted] = submitted(fal, {"seconds": 600})

    assert isinstance(accepted, Accepted) and list(fal.jobs) == [accepted.provider_job_id]
    posts = fal.asked("POST")
    assert len(posts) == 3
    if retry_after:
        assert time.monotonic() - began >= 2.0  # Retry-After: 1, twice
        assert int(posts[2].headers["x-fal-request-timeout"]) <= int(posts[0].headers["x-fal-request-timeout"]) - 2


def test_a_submit_whose_answer_was_lost_is_not_sent_again(fal):
    fal.limit_answer = Answer(502, {"detail": "Bad gateway"})  # fal may have taken it: no idempotency key to say
    fal.limit(1)
    with pytest.raises(RunnerError, match="it takes no idempotency key, so it was not sent again"):
        submitted(fal, {"seconds": 600})
    assert len(fal.asked("POST")) == 1


def test_a_submit_the_model_refuses_fails_in_its_words(fal):
    fal.limit_answer = Answer(422, {"detail": [{"loc": ["body", "image_size"], "msg": "Input should be square_hd or "
                                                "landscape_16_9", "type": "enum"}]})
    fal.limit(1)
    with pytest.raises(RunnerError, match=r"\(HTTP 422\): body.image_size: Input should be square_hd or landscape_16_9$"):
        submitted(fal, {"image_size": "huge"})


# --- Statuses --------------------------------------------------------------------------------------

def test_queue_position_and_progress_are_read_from_fals_status(fal):
    first, second = submitted(fal, {"seconds": 2.0}, {"seconds": 0.3})  # one at a time: the second waits

    assert ask(fal, second) == Status("queued", queue_position=0)
    running = wait_until(lambda: (status := ask(fal, first)).progress and status, timeout=GIVE_UP,
                         message="a log line with a percentage")
    assert running.state == "running" and 0 < running.progress < 1
    assert fal.asked("GET", "/fal-ai/flux/requests/")[-1].query == {"logs": "1"}
    finished = wait_until(lambda: (status := ask(fal, second)).ended and status, timeout=GIVE_UP, message="the second to end")
    assert finished.state == "succeeded"
    assert finished.files == [{"url": f"{fal.url}/files/{second.provider_job_id}.png", "content_type": "image/png"}]


@pytest.mark.parametrize("params, words", [
    ({"fail": "CUDA out of memory"}, "CUDA out of memory (runner_server_error)"),  # COMPLETED with an error
    ({"reject": "The prompt was flagged"}, "body.prompt: The prompt was flagged"),  # a model's 422 at response_url
])
def test_a_failure_is_told_in_fals_words(fal, params, words):
    with pytest.raises(RunnerError) as failed:
        get_runner("http").run(a_call(fal, params))
    assert str(failed.value).endswith(f"failed: {words}")


def test_a_request_still_queued_at_our_deadline_is_ended_by_fal_as_timed_out(fal):
    submitted(fal, {"seconds": 600})  # holds fal's one slot
    call = a_call(fal, {"seconds": 0.3}, timeout_seconds=2)

    with pytest.raises(RunnerError, match=r"failed: Request timed out \(request_timeout\)"):
        get_runner("http").run(call)

    [_, waited] = fal.jobs.values()
    assert waited.timeout == 1 and waited.started is None and waited.error_type == "request_timeout"


# --- Cancelling --------------------------------------------------------------------------------------

def test_a_queued_request_is_cancelled_at_once(fal):
    _, queued = submitted(fal, {"seconds": 600}, {"seconds": 600})

    assert cancel(fal, queued) is True
    assert ask(fal, queued) == Status("cancelled", error="Request was cancelled by the client (client_cancelled)")


def test_a_running_request_is_cancelled_only_once_fals_status_says_it_completed(fal):
    [running] = submitted(fal, {"seconds": 600})
    wait_until(lambda: fal.state(running.provider_job_id) == "IN_PROGRESS", timeout=GIVE_UP, message="fal to run it")

    assert cancel(fal, running) is False  # CANCELLATION_REQUESTED: it still runs
    assert ask(fal, running).state == "running"
    wait_until(lambda: cancel(fal, running), timeout=GIVE_UP, message="fal to confirm the cancel")
    assert ask(fal, running).state == "cancelled"
    assert len(fal.asked("PUT")) >= 2


def test_a_cancel_of_a_request_fal_no_longer_has_is_confirmed(fal):
    [accepted] = submitted(fal, {"seconds": 0.1})
    wait_until(lambda: fal.state(accepted.provider_job_id) == "COMPLETED", timeout=GIVE_UP, message="it to end")
    assert cancel(fal, accepted) is True  # ALREADY_COMPLETED
    gone = Accepted("nope", f"{fal.url}/fal-ai/flux/requests/nope/status", Status("queued"),
                    data={"cancel_url": f"{fal.url}/fal-ai/flux/requests/nope/cancel"})
    assert cancel(fal, gone) is True  # NOT_FOUND


# --- Webhooks --------------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_signed_webhook_ends_the_job_once_and_again_changes_nothing(fal, settings, live_server):
    settings.COORDINATOR_PUBLIC_URL = live_server.url
    settings.COORDINATOR_FAL_JWKS_URL = f"{fal.url}/.well-known/jwks.json"
    use_fal(fal, poll_interval_seconds=60)  # no poller here: only the webhook can end it
    job = job_submit(owner=UserFactory(), model=MODEL, prompt="A lighthouse", params={"seconds": 0.3})
    run_job(str(job.job_id), 1)
    run = ProviderRun.objects.get(job=job)
    assert run.style == "callback"

    wait_until(lambda: fal.webhooks, timeout=GIVE_UP, message="fal's webhook")
    assert fal.webhooks == [(run.provider_job_id, 200)]
    job = Job.objects.get(pk=job.job_id)
    assert job.status == "completed"
    assert job.result["files"] == [{"source_url": f"{fal.url}/files/{run.provider_job_id}.png", "content_type": "image/png"}]
    assert fal.asked("GET", "/.well-known/jwks.json")

    assert fal.deliver(run.provider_job_id) == 200  # fal retries a webhook: the same end, recorded once
    assert Job.objects.get(pk=job.job_id).completed_at == job.completed_at
    assert JobQueueLog.objects.filter(job_id=job.job_id, event_type="completed").count() == 1
    assert len(fal.asked("GET", "/fal-ai/flux/requests/")) == 0  # nobody asked fal: the signed body was the end


def post_webhook(body: bytes, headers: dict):
    return Client().post(f"/providers/{MODEL}/callback", data=body, content_type="application/json", headers=headers)


@pytest.mark.django_db
def test_a_webhook_signed_wrong_stale_or_not_at_all_is_refused_and_changes_nothing(fal, settings, user):
    settings.COORDINATOR_FAL_JWKS_URL = f"{fal.url}/.well-known/jwks.json"
    use_fal(fal)
    job = job_submit(owner=user, model=MODEL, prompt="A lighthouse", params={"fail": "CUDA out of memory", "seconds": 0.1})
    run_job(str(job.job_id), 1)
    request_id = ProviderRun.objects.get(job=job).provider_job_id
    wait_until(lambda: fal.state(request_id) == "COMPLETED", timeout=GIVE_UP, message="fal to end it")
    body = fal.webhook_body(request_id)

    refused = {
        "unsigned": post_webhook(body, {}),
        "another key": post_webhook(body, fal.signed(body, request_id=request_id, key=Ed25519PrivateKey.generate())),
        "stale": post_webhook(body, fal.signed(body, request_id=request_id, timestamp=int(time.time()) - 600)),
        "another body": post_webhook(body.replace(b"CUDA", b"cuda"), fal.signed(body, request_id=request_id)),
    }

    assert {why: answer.status_code for why, answer in refused.items()} == dict.fromkeys(refused, 401)
    assert Job.objects.get(pk=job.job_id).status == "running"
    assert ProviderRun.objects.get(job=job).state == "in_flight"
    answer = post_webhook(body, fal.signed(body, request_id=request_id))
    assert answer.status_code == 200, answer.content
    job = Job.objects.get(pk=job.job_id)
    assert job.status == "failed" and job.error == f"Provider job {request_id} failed: CUDA out of memory (runner_server_error)"


@pytest.mark.django_db
def test_fals_keys_are_read_again_for_an_unknown_signature_only_once_those_kept_are_five_minutes_old(fal, settings, user):
    settings.COORDINATOR_FAL_JWKS_URL = jwks = f"{fal.url}/.well-known/jwks.json"
    use_fal(fal)
    job = job_submit(owner=user, model=MODEL, prompt="A lighthouse", params={"seconds": 0.1})
    run_job(str(job.job_id), 1)
    request_id = ProviderRun.objects.get(job=job).provider_job_id
    wait_until(lambda: fal.state(request_id) == "COMPLETED", timeout=GIVE_UP, message="fal to end it")
    body = fal.webhook_body(request_id)
    fal_adapter.signature_check(body, fal.signed(body, request_id=request_id))  # its keys, read and kept

    fal.signing_key = Ed25519PrivateKey.generate()  # fal rotates its key
    assert post_webhook(body, fal.signed(body, request_id=request_id)).status_code == 401
    assert len(fal.asked("GET", "/.well-known/jwks.json")) == 1  # kept for less than five minutes: not read again
    read_at, keys = fal_adapter._keys[jwks]
    fal_adapter._keys[jwks] = (read_at - fal_adapter.KEYS_RECHECKED, keys)  # five minutes on
    assert post_webhook(body, fal.signed(body, request_id=request_id)).status_code == 200
    assert len(fal.asked("GET", "/.well-known/jwks.json")) == 2
    assert Job.objects.get(pk=job.job_id).status == "completed"


@pytest.mark.django_db
def test_a_webhook_that_could_not_carry_the_output_has_it_read_from_fal(fal, settings, user):
    settings.COORDINATOR_FAL_JWKS_URL = f"{fal.url}/.well-known/jwks.json"
    use_fal(fal)
    job = job_submit(owner=user, model=MODEL, prompt="A lighthouse", params={"seconds": 0.1})
    run_job(str(job.job_id), 1)
    request_id = ProviderRun.objects.get(job=job).provider_job_id
    wait_until(lambda: fal.state(request_id) == "COMPLETED", timeout=GIVE_UP, message="fal to end it")
    body = json.dumps({"request_id": request_id, "gateway_request_id": request_id, "status": "OK", "payload": None,
                       "payload_error": "Response payload too large for the webhook"}).encode()

    answer = post_webhook(body, fal.signed(body, request_id=request_id))

    assert answer.status_code == 200, answer.content
    job = Job.objects.get(pk=job.job_id)
    assert job.status == "completed" and job.result["output"]["images"][0]["url"] == f"{fal.url}/files/{request_id}.png"
    assert fal.asked("GET", f"/fal-ai/flux/requests/{request_id}")  # its status, then its output


def test_a_webhook_s_body_in_our_terms():
    said = fal_adapter.webhook_status
    assert said({"status": "ERROR", "error": "Invalid status code: 422", "payload": {"detail": [
        {"loc": ["body", "image_url"], "msg": "Could not download the image", "type": "file_download_error"}]}}) == Status(
        "failed", error="Invalid status code: 422: body.image_url: Could not download the image")
    assert said({"status": "ERROR", "error": "Request was cancelled by the client", "payload": {
        "detail": "Request was cancelled by the client", "error_type": "client_cancelled"}}).state == "cancelled"
    assert said({"status": "OK", "payload": None, "payload_error": "Response payload too large"}) is None  # ask fal
    with pytest.raises(ValueError):
        said({"status": "DONE"})


# --- fal's output and logs, read --------------------------------------------------------------------

def test_every_url_in_the_output_is_a_file():
    output = {"images": [{"url": "https://v3.fal.media/a.png", "content_type": "image/png", "width": 1024},
                         {"url": "https://v3.fal.media/b.jpg"}],
              "video": {"url": "https://v3.fal.media/c.mp4", "content_type": "video/mp4"},
              "mask": {"url": "data:image/png;base64,AAAA"}, "seed": 42, "prompt": "https://not-a-file.example"}
    assert fal_adapter.files_in(output) == [
        {"url": "https://v3.fal.media/a.png", "content_type": "image/png"}, {"url": "https://v3.fal.media/b.jpg"},
        {"url": "https://v3.fal.media/c.mp4", "content_type": "video/mp4"}]


@pytest.mark.parametrize("logs, progress", [
    ([{"message": "Loading model"}, {"message": " 40%|████      | 4/10 [00:02<00:03,  2.1it/s]"}], 0.4),
    ([{"message": " 40%|████      | 4/10"}, {"message": "Decoding the latents"}], None),  # the last line says none
    ([], None), (None, None),
])
def test_progress_is_the_last_log_lines_percentage(logs, progress):
    assert fal_adapter.progress_of(logs) == progress


def test_a_status_fal_does_not_document_is_kept_as_said():
    assert FAL.status_from({"status": "CANCELLATION_REQUESTED"}, SimpleNamespace()).state == "CANCELLATION_REQUESTED"


# --- fal's own client against the fake ---------------------------------------------------------------

FAL_CLIENT = r"""
import json
import fal_client

client, out = fal_client.SyncClient(), {}  # FAL_KEY from the environment
handle = client.submit("fal-ai/flux/dev", {"prompt": "A lighthouse", "seconds": 0.5}, start_timeout=30)
events = list(handle.iter_events(with_logs=True, interval=0.05))
out["events"] = sorted({type(event).__name__ for event in events})
out["last_log"] = events[-1].logs[-1]["message"]
out["result"] = handle.get()
try:
    client.submit("fal-ai/flux/dev", {"prompt": "x", "fail": "CUDA out of memory"}).get()
except fal_client.FalClientHTTPError as error:
    out["failure"] = [error.status_code, str(error)]
client.submit("fal-ai/flux/dev", {"prompt": "x", "seconds": 600})
waiting = client.submit("fal-ai/flux/dev", {"prompt": "x", "seconds": 600})
out["position"] = waiting.status().position
waiting.cancel()
out["after_cancel"] = type(waiting.status()).__name__
print(json.dumps(out))
"""


def test_fals_own_client_reads_the_fake_as_it_reads_fal(tmp_path):
    """fal_client's hosts are constants read from the environment at import (FAL_QUEUE_RUN_HOST), its
    scheme is https: so the fake serves https with a certificate the client is told to trust, in a
    process of its own. Anything else it reached would go to a proxy that is not there."""
    fake = FakeFal(key=KEY, seconds=0.3, concurrency=1, tls=True).start()
    try:
        env = {**os.environ, "FAL_KEY": KEY, "FAL_QUEUE_RUN_HOST": f"127.0.0.1:{fake.port}", "SSL_CERT_FILE": fake.cert_file,
               "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1",
               "FAL_HOME_DIR": str(tmp_path)}
        ran = subprocess.run([sys.executable, "-c", FAL_CLIENT], env=env, capture_output=True, text=True, timeout=GIVE_UP)
    finally:
        fake.stop()
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert {"InProgress", "Completed"} <= set(out["events"])
    assert out["last_log"].startswith("100%")
    assert out["result"]["images"][0]["content_type"] == "image/png"
    assert out["failure"] == [500, "CUDA out of memory"]
    assert (out["position"], out["after_cancel"]) == (0, "Completed")
    first = fake.asked("POST")[0]
    assert first.headers["x-fal-request-timeout"] == "30.0"  # the client's own header, as the adapter sends it
