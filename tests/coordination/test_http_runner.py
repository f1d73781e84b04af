"""The http runner against a small provider served on 127.0.0.1 (real sockets, nothing of HTTP faked)."""

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
from django.core.exceptions import ValidationError

from coordination.models import CatalogModel, Job, JobQueueLog, ProviderRun
from coordination.runners import RunnerCall, RunnerError, RunnerStopped, get_runner, runner_call
from coordination.tasks import run_job
from tests.helpers import events, fresh, submit

pytestmark = pytest.mark.django_db

SECRET = "sk-test-4f1c9e2b-never-stored"
MODEL = "motion-2.0-fast"
# How long /hold keeps an answer nobody released: only a bound for a runner that (wrongly) waits.
HOLD_LIMIT = 30


class Provider:
    """What the provider was asked, and how it should answer (set by each test)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.failures_left = 0  # /flaky answers 500 this many times first
        self.limited_left = 0  # /limited answers 429 this many times first
        self.polls_needed = 3  # a /poll job succeeds on this poll
        self.poll_outcome = "succeeded"
        self.polls: dict[str, int] = {}
        self.lock = threading.Lock()
        # /hold keeps its answer until `release` is set: `holding` requests are waiting there now,
        # `answered` were let go (all of them counted under the lock).
        self.release = threading.Event()
        self.holding = 0
        self.answered = 0

    def received(self, method: str, path: str | None = None) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and (path is None or r["path"] == path)]


def _handler(provider: Provider):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _answer(self, status: int, body) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            request = {"method": self.command, "path": urlsplit(self.path).path, "headers": dict(self.headers), "body": body}
            with provider.lock:
                provider.requests.append(request)
            return request

        def do_POST(self):
            request = self._record()
            path, body = request["path"], request["body"]
            if path == "/sync":
                return self._answer(200, {"output": f"video://{body['model']}/{body['job_id']}", "prompt": body["prompt"]})
            if path == "/hold":
                with provider.lock:
                    provider.holding += 1
                provider.release.wait(HOLD_LIMIT)
                with provider.lock:
                    provider.holding -= 1
                    provider.answered += 1
                try:
                    return self._answer(200, {"output": "slow but done"})
                except OSError:  # the runner stopped listening, as it should have
                    return None
            if path == "/flaky":
                with provider.lock:
                    failing = provider.failures_left > 0
                    provider.failures_left -= 1
                if failing:
                    return self._answer(500, {"error": "upstream overloaded"})
                return self._answer(200, {"output": "after retries"})
            if path == "/limited":
                with provider.lock:
                    limited = provider.limited_left > 0
                    provider.limited_left -= 1
                if limited:
                    data = b'{"error": "rate limited"}'
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return None
                return self._answer(200, {"output": "after the limit"})
            if path == "/bad":
                return self._answer(400, {"error": {"message": "prompt violates the content policy"}})
            if path == "/poll":
                provider_job = f"p-{uuid4().hex[:8]}"
                provider.polls[provider_job] = 0
                return self._answer(202, {"id": provider_job, "status_url": f"/poll/jobs/{provider_job}"})
            self._answer(404, {"error": "no such route"})

        def do_GET(self):
            request = self._record()
            provider_job = request["path"].rsplit("/", 1)[-1]
            with provider.lock:
                provider.polls[provider_job] += 1
                polls = provider.polls[provider_job]
            if polls < provider.polls_needed:
                return self._answer(200, {"id": provider_job, "status": "running", "progress": polls / provider.polls_needed})
            if provider.poll_outcome == "failed":
                return self._answer(200, {"id": provider_job, "status": "failed", "error": "GPU out of memory"})
            self._answer(200, {"id": provider_job, "status": "succeeded", "output": f"video://{provider_job}.mp4"})

        def do_DELETE(self):
            self._record()
            self._answer(200, {"status": "cancelled"})

    return Handler


@pytest.fixture
def provider():
    state = Provider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    state.release.set()  # let a held answer go, so its handler thread ends
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def http_log(caplog):
    caplog.set_level(logging.INFO, logger="coordination.runners.http")
    return caplog


def use_http(url: str, **fields) -> CatalogModel:
    CatalogModel.objects.filter(name=MODEL).update(runner="http", provider="generic", provider_url=url, **fields)
    return CatalogModel.objects.get(name=MODEL)


def call(*, params=None, should_stop=lambda: False, started_at: float | None = None) -> RunnerCall:
    """The call a worker makes: the model's provider settings as the catalog has them now."""
    return runner_call(CatalogModel.objects.get(name=MODEL), job_id=uuid4(), prompt="A knight riding a horse", params=params or {},
                      inputs={"input_image": "https://example.com/user.jpg"}, should_stop=should_stop,
                      started_at=started_at)


def run(runner_call: RunnerCall) -> dict:
    return get_runner("http").run(runner_call)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sync_provider_answers_the_result_and_gets_the_whole_call(provider, monkeypatch):
    monkeypatch.setenv("TEST_PROVIDER_TOKEN", SECRET)
    use_http(f"{provider.url}/sync", credential_env="TEST_PROVIDER_TOKEN")
    runner_call = call(params={"seed": 7})

    result = run(runner_call)

    assert result == {"output": f"video://{MODEL}/{runner_call.job_id}", "prompt": "A knight riding a horse", "files": []}
    [request] = provider.received("POST", "/sync")
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"] == {
        "model": MODEL,
        "prompt": "A knight riding a horse",
        "params": {"seed": 7},
        "inputs": {"input_image": "https://example.com/user.jpg"},
        "job_id": str(runner_call.job_id),
    }


def test_no_credential_env_sends_no_authorization(provider):
    use_http(f"{provider.url}/sync")

    run(call())

    [request] = provider.received("POST")
    assert "Authorization" not in request["headers"]


def test_a_missing_credential_variable_fails_naming_it_before_any_request(provider, monkeypatch):
    monkeypatch.delenv("TEST_PROVIDER_TOKEN", raising=False)
    use_http(f"{provider.url}/sync", credential_env="TEST_PROVIDER_TOKEN")

    with pytest.raises(RunnerError, match="TEST_PROVIDER_TOKEN is not set"):
        run(call())
    assert provider.requests == []


def test_poll_provider_is_polled_until_it_succeeds_and_progress_is_logged(provider, http_log):
    provider.polls_needed = 3
    use_http(f"{provider.url}/poll", provider_style="poll")

    runner_call = call(params={"poll_interval": 0.05})

    result = run(runner_call)

    assert len(provider.received("POST", "/poll")) == 1
    provider_job = result["provider_job_id"]
    assert result == {"runner": "http", "provider_job_id": provider_job, "output": f"video://{provider_job}.mp4", "files": []}
    assert len(provider.received("GET", f"/poll/jobs/{provider_job}")) == 3
    progress = [
        (record.levelno, record.getMessage())
        for record in http_log.records
        if record.name == "coordination.runners.http" and "%" in record.getMessage()
    ]
    assert progress == [
        (logging.INFO, f"Job {runner_call.job_id}: provider job {provider_job} at 33%"),
        (logging.INFO, f"Job {runner_call.job_id}: provider job {provider_job} at 67%"),
    ]


def test_a_failed_provider_job_fails_with_the_providers_message(provider):
    provider.poll_outcome = "failed"
    provider.polls_needed = 2
    use_http(f"{provider.url}/poll", provider_style="poll")

    with pytest.raises(RunnerError, match="failed: GPU out of memory"):
        run(call(params={"poll_interval": 0.05}))


def test_stopping_while_polling_is_seen_before_the_next_poll_and_cancels_the_provider_job(provider):
    provider.polls_needed = 1000
    use_http(f"{provider.url}/poll", provider_style="poll")

    # Told to stop once the provider has been polled twice; the next poll would be 0.5 s later.
    with pytest.raises(RunnerStopped):
        run(call(params={"poll_interval": 0.5}, should_stop=lambda: len(provider.received("GET")) >= 2))

    polls = provider.received("GET")
    assert len(polls) == 2  # seen while waiting between polls, not at the next poll
    assert [r["path"] for r in provider.received("DELETE")] == [polls[0]["path"]]


def test_stopping_while_a_slow_answer_is_awaited_does_not_wait_for_it(provider):
    use_http(f"{provider.url}/hold")

    # Told to stop once the provider holds the request; it answers only when released (never, here).
    with pytest.raises(RunnerStopped):
        run(call(should_stop=lambda: provider.holding > 0))
    assert provider.answered == 0  # the runner gave up on the answer; it did not wait for it


def test_a_slow_answer_within_the_timeout_is_the_result(provider):
    use_http(f"{provider.url}/hold", timeout_seconds=HOLD_LIMIT * 2)
    ticks_held = []

    def should_stop() -> bool:  # asked every tick while the runner waits for the answer
        if provider.holding:
            ticks_held.append(True)
        if len(ticks_held) == 3:  # it has waited three ticks on a held answer: now the answer comes
            provider.release.set()
        return False

    assert run(call(should_stop=should_stop)) == {"output": "slow but done", "files": []}
    assert provider.answered == 1 and len(ticks_held) >= 3


def test_a_provider_slower_than_timeout_seconds_times_out(provider):
    use_http(f"{provider.url}/hold", timeout_seconds=1)  # the provider holds its answer for HOLD_LIMIT

    with pytest.raises(RunnerError, match=r"^timed out after 1 s$"):
        run(call())
    assert provider.answered == 0  # it gave up at its own deadline, not when the answer came


def test_timeout_seconds_count_from_the_attempts_start_as_the_reaper_counts_them(provider):
    use_http(f"{provider.url}/hold", timeout_seconds=3)
    began = time.monotonic()

    with pytest.raises(RunnerError, match=r"^timed out after 3 s$"):
        run(call(started_at=time.time() - 2))  # the attempt started 2 s before its worker called
    assert time.monotonic() - began < 2.5


def test_a_poll_job_slower_than_timeout_seconds_times_out_and_is_cancelled(provider):
    provider.polls_needed = 1000
    use_http(f"{provider.url}/poll", provider_style="poll", timeout_seconds=1)

    with pytest.raises(RunnerError, match=r"^timed out after 1 s$"):
        run(call(params={"poll_interval": 0.1}))
    assert len(provider.received("GET")) >= 1
    assert len(provider.received("DELETE")) == 1


def test_5xx_answers_are_retried_until_one_succeeds(provider):
    provider.failures_left = 2
    use_http(f"{provider.url}/flaky", max_connect_retries=3)

    assert run(call()) == {"output": "after retries", "files": []}
    assert len(provider.received("POST")) == 3


def test_5xx_answers_beyond_max_connect_retries_fail_with_the_providers_message(provider):
    provider.failures_left = 10
    use_http(f"{provider.url}/flaky", max_connect_retries=1)

    with pytest.raises(RunnerError, match=r"after 2 tries: HTTP 500: upstream overloaded"):
        run(call())
    assert len(provider.received("POST")) == 2


def test_a_4xx_answer_fails_at_once_with_the_providers_message(provider):
    use_http(f"{provider.url}/bad", max_connect_retries=3)

    with pytest.raises(RunnerError, match=r"HTTP 400\): prompt violates the content policy"):
        run(call())
    assert len(provider.received("POST")) == 1


def test_a_refused_connection_is_retried_with_backoff_then_fails():
    use_http(f"http://127.0.0.1:{free_port()}/sync", max_connect_retries=2)

    with pytest.raises(RunnerError, match=r"Provider unavailable after 3 tries: ConnectError"):
        run(call())


def test_a_limit_is_waited_out_for_as_long_as_retry_after_says_without_using_a_retry(provider):
    provider.limited_left = 3  # /limited answers 429 Retry-After: 0 three times, then the result
    use_http(f"{provider.url}/limited", max_connect_retries=0)

    assert run(call()) == {"output": "after the limit", "files": []}
    assert len(provider.received("POST")) == 4


def test_an_http_model_without_provider_url_is_refused_on_clean():
    model = CatalogModel.objects.get(name=MODEL)
    model.runner, model.provider = CatalogModel.Runner.HTTP, "generic"  # the seed names the guide model's real provider
    model.provider_url = ""

    with pytest.raises(ValidationError) as refused:
        model.full_clean()
    assert "provider_url" in refused.value.message_dict

    model.provider_url = "https://provider.example.com/v1/generate"
    model.full_clean()


def test_a_normal_job_on_a_poll_provider_is_left_at_it_and_the_secret_is_stored_nowhere(user, provider, monkeypatch):
    monkeypatch.setenv("TEST_PROVIDER_TOKEN", SECRET)
    use_http(f"{provider.url}/poll", provider_style="poll", credential_env="TEST_PROVIDER_TOKEN")
    provider.polls_needed = 2
    job = submit(user)

    run_job(str(job.job_id), 1)  # returns once the provider accepted the job: no polling in the worker

    job = fresh(job)
    assert job.status == Job.Status.RUNNING, job.error
    assert events(job) == ["submitted", "started", "claimed", "at_provider"]
    [submitted] = provider.received("POST", "/poll")
    assert provider.received("GET") == []
    [at_provider] = ProviderRun.objects.filter(job=job)
    assert (at_provider.attempt, at_provider.state, at_provider.watcher) == (1, "in_flight", None)
    assert at_provider.status_url == f"{provider.url}/poll/jobs/{at_provider.provider_job_id}"
    assert submitted["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert submitted["headers"]["Idempotency-Key"] == f"{job.job_id}:1"
    assert submitted["body"]["job_id"] == str(job.job_id)
    stored = json.dumps(
        [
            list(Job.objects.values()),
            list(JobQueueLog.objects.values()),
            list(CatalogModel.objects.values()),
            list(ProviderRun.objects.values()),
        ],
        default=str,
    )
    assert SECRET not in stored
    assert "TEST_PROVIDER_TOKEN" in stored  # the name is stored, the value is not


def test_the_runner_gets_everything_in_its_call_and_reads_no_table(provider, django_assert_num_queries):
    use_http(f"{provider.url}/sync")
    runner_call = call()

    with django_assert_num_queries(0):
        result = run(runner_call)

    assert result["output"] == f"video://{MODEL}/{runner_call.job_id}"
