"""The poller's question about one job (an adapter's `ask`, the generic one here, through the client of
coordination/runners/pooled.py), against bench/fake_provider.py and a socket that never answers: real
sockets, nothing of HTTP faked. Each question is answered, or raises AskAgain (ask later) or
RunnerError (the provider refused it); nothing else escapes to the poller."""

import asyncio
import json
import socket
import threading
import time
from types import SimpleNamespace
import urllib.request
from urllib.parse import urljoin
from uuid import uuid4

import pytest

from bench.fake_provider import FakeProvider
from coordination.runners import client
from coordination.runners.adapters import adapter_of
from coordination.runners.base import Provider, RunnerError


GENERIC = adapter_of("generic")


@pytest.fixture
def fake():
    provider = FakeProvider(seconds=60).start()
    yield provider
    provider.stop()


def a_job_at(fake) -> str:
    """A job started at the fake provider; its status URL."""
    request = urllib.request.Request(f"{fake.url}/poll", data=json.dumps({"job_id": str(uuid4()), "params": {}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return urljoin(f"{fake.url}/poll", json.load(answer)["status_url"])


def ask(url: str, *, timeout: float = 10, times: int = 1, token_env: str = ""):
    """`times` polls of one job with one request built once, as the poller sends them."""

    async def polls():
        async with client.new_pooled_client(max_connections=2) as pooled:
            provider = Provider(url=url, style="poll", credential_env=token_env)
            run = SimpleNamespace(job_id=uuid4(), provider_job_id="p-1", status_url=url, data={})
            request = GENERIC.status_request(pooled, provider, run)
            return [await GENERIC.ask(pooled, provider, run, request=request, timeout=timeout) for _ in range(times)]

    return asyncio.run(polls())


def test_the_same_request_asks_again_and_again(fake):
    url = a_job_at(fake)
    answers = ask(url, times=3)
    assert [answer.state for answer in answers] == ["running"] * 3
    assert len(fake.polls) == 3


def test_a_limit_says_how_long_the_provider_asked_to_wait(fake):
    url = a_job_at(fake)
    fake.limit(1, retry_after="7")
    with pytest.raises(client.AskAgain) as limited:
        ask(url)
    assert limited.value.after == 7 and client.pause_before(1, limited.value) == 7
    fake.limit(1, retry_after="0")  # "no wait at all" is not a tight loop: back-off as when it says nothing
    with pytest.raises(client.AskAgain) as limited:
        ask(url)
    assert limited.value.after == 0 and client.pause_before(1, limited.value) > 0
    fake.limit(1)  # no Retry-After: exponential back-off with jitter
    with pytest.raises(client.AskAgain) as limited:
        ask(url)
    assert limited.value.after is None
    assert client.pause_before(1, limited.value) <= 1.0 < 4.0 <= client.pause_before(5, limited.value) <= 30


def test_a_provider_that_never_answers_is_asked_again_later():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are taken, nothing is ever answered
    try:
        began = time.monotonic()
        with pytest.raises(client.AskAgain, match="did not answer in time"):
            ask(f"http://127.0.0.1:{silent.getsockname()[1]}/jobs/p-1", timeout=0.5)
        assert time.monotonic() - began < 5
    finally:
        silent.close()


def serve(answer: bytes) -> int:
    """A port whose server, on each connection, reads a request, writes `answer` (maybe nothing) and
    closes (aiohttp tries a GET again once on a new connection when the first was closed on it)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def each():
        with server:
            while True:
                connection, _ = server.accept()
                with connection:
                    connection.recv(65536)
                    connection.sendall(answer)

    threading.Thread(target=each, daemon=True).start()
    return server.getsockname()[1]


@pytest.mark.parametrize("answer, words", [(b"", "closed the connection"), (b"NOT HTTP AT ALL\r\n\r\n", "RemoteProtocolError")])
def test_a_provider_that_hangs_up_or_answers_garbage_is_asked_again_later(answer, words):
    port = serve(answer)
    with pytest.raises(client.AskAgain, match=words):
        ask(f"http://127.0.0.1:{port}/jobs/p-1", timeout=5)


def test_a_provider_that_is_down_is_asked_again_later():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the connection is refused
    with pytest.raises(client.AskAgain):
        ask(f"http://127.0.0.1:{port}/jobs/p-1")


def test_an_unknown_job_is_a_refusal_in_the_providers_words(fake):
    with pytest.raises(RunnerError, match="HTTP 404.*no job p-unknown"):
        ask(f"{fake.url}/jobs/p-unknown")


def test_a_missing_credential_is_a_refusal_that_names_the_variable(fake, monkeypatch):
    monkeypatch.delenv("NO_SUCH_PROVIDER_TOKEN", raising=False)
    with pytest.raises(RunnerError, match="NO_SUCH_PROVIDER_TOKEN is not set"):
        ask(a_job_at(fake), token_env="NO_SUCH_PROVIDER_TOKEN")
