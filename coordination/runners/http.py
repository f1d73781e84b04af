"""The `http` runner: calls a real model provider over HTTP (standard library only).

The catalog model says where and how (`provider_url`, `provider_style`, `credential_env`,
`timeout_seconds`, `max_connect_retries`). The protocol a provider speaks:

- **Submit**: `POST provider_url` with JSON `{"model", "prompt", "params", "inputs", "job_id"}` and,
  when `credential_env` names an environment variable, `Authorization: Bearer <its value>`. Only the
  variable's name is in the database; a missing variable fails the job naming it (never a value).
- **sync** style: a 2xx JSON answer *is* the result (an answer that is not an object is wrapped as
  `{"output": answer}`, so a workflow's next step still finds `output`).
- **poll** style: the 2xx answer names a provider job, `{"id": ..., "status_url"?: ...}`; without a
  `status_url` it is `provider_url/<id>` (a relative one is resolved against `provider_url`). The
  runner `GET`s it every `params.poll_interval` seconds (default 1) until `{"status": "succeeded",
  "output": ...}` (the result is `{"output", "provider_job_id", "runner"}`) or `"failed"`/`"cancelled"`
  (the job fails with the provider's `error`/`message`). A `{"progress": 0..1}` seen while polling is
  logged at INFO on `coordination.runners.http`.
- **Cancel**: when the worker says stop (`call.should_stop()`, looked at every 0.1 s while waiting for
  an answer or for the next poll), the runner sends a best-effort `DELETE status_url` — the one
  convention we use — then raises RunnerStopped. A sync request in flight is simply abandoned.
- **Failures**: a refused/reset connection or a 5xx answer is retried up to `max_connect_retries`
  times per request, with a short backoff (0.2 s, doubling, at most 2 s); a 4xx fails at once with the
  provider's message; the whole call is bounded by `timeout_seconds` ("timed out after N s").

Each request runs in a helper thread while the caller's thread watches `should_stop` and the deadline:
a provider that answers slowly cannot make a cancel wait, and a stop shuts the socket down.
"""

import http.client
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from coordination.runners.base import Provider, RunnerCall, RunnerError, RunnerStopped

logger = logging.getLogger("coordination.runners.http")

TICK = 0.1  # how often should_stop is looked at while waiting
CANCEL_TIMEOUT = 2.0  # the best-effort cancel does not hold a stopping worker longer than this
MESSAGE_LIMIT = 500


class _TimedOut(RunnerError):
    """The call used up the model's timeout_seconds."""


class _Retryable(Exception):
    """A connection error or a 5xx: worth trying again."""


@dataclass(frozen=True)
class _Answer:
    status: int
    body: object  # decoded JSON, or the raw text when the body is not JSON


class _Exchange:
    """One HTTP request in a helper thread, so the caller can stop waiting for it at any tick."""

    def __init__(self, method: str, url: str, *, body: dict | None, headers: dict, timeout: float):
        self.method, self.url, self.body, self.headers, self.timeout = method, url, body, headers, timeout
        self.answer: _Answer | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._connection: http.client.HTTPConnection | None = None
        self._aborted = False
        threading.Thread(target=self._send, name="http-runner-request", daemon=True).start()

    def _send(self) -> None:
        try:
            parts = urlsplit(self.url)
            connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            self._connection = connection_class(parts.hostname, parts.port, timeout=max(self.timeout, 0.01))
            if self._aborted:  # the caller gave up before there was a socket to shut down
                return
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            payload = json.dumps(self.body).encode() if self.body is not None else None
            headers = {"Accept": "application/json", **self.headers}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            self._connection.request(self.method, path, body=payload, headers=headers)
            response = self._connection.getresponse()
            raw = response.read()
            text = raw.decode("utf-8", errors="replace")
            try:
                body = json.loads(text) if text.strip() else None
            except ValueError:
                body = text
            self.answer = _Answer(response.status, body)
        except BaseException as exc:  # handed to the waiting caller, which decides
            self.error = exc
        finally:
            self.abort()
            self.done.set()

    def abort(self) -> None:
        self._aborted = True
        connection = self._connection
        if connection is not None and connection.sock is not None:
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read in the helper thread
            except OSError:
                pass
            connection.close()


class HttpRunner:
    backoff_first, backoff_max = 0.2, 2.0

    def run(self, call: RunnerCall) -> dict:
        provider = call.provider
        if provider is None or not provider.url:
            raise RunnerError(f"Model {call.model} uses the http runner but has no provider URL")
        headers = {}
        if provider.credential_env:
            token = os.environ.get(provider.credential_env)
            if not token:
                raise RunnerError(f"Credential environment variable {provider.credential_env} is not set")
            headers["Authorization"] = f"Bearer {token}"
        session = _Session(call=call, provider=provider, headers=headers, backoff=(self.backoff_first, self.backoff_max))
        payload = {
            "model": call.model,
            "prompt": call.prompt,
            "params": call.params,
            "inputs": call.inputs,
            "job_id": str(call.job_id),
        }
        answer = session.request("POST", provider.url, body=payload)
        if provider.style == "poll":
            return session.poll(answer)
        return answer if isinstance(answer, dict) else {"output": answer}


class _Session:
    """One runner call: its deadline, its credential header and its retry budget per request."""

    def __init__(self, *, call: RunnerCall, provider: Provider, headers: dict, backoff: tuple[float, float]):
        self.call, self.provider, self.headers = call, provider, headers
        self.backoff_first, self.backoff_max = backoff
        self.started = time.monotonic()
        self.deadline = self.started + provider.timeout_seconds

    def timed_out(self) -> RunnerError:
        return _TimedOut(f"timed out after {self.provider.timeout_seconds} s")

    def wait_until(self, moment: float, *, cancel_url: str | None = None) -> None:
        """Sleep until `moment` in ticks, stopping (and cancelling upstream) if told to."""
        while (left := moment - time.monotonic()) > 0:
            self.check_stop(cancel_url)
            time.sleep(min(TICK, left))
        self.check_stop(cancel_url)

    def check_stop(self, cancel_url: str | None) -> None:
        if self.call.should_stop():
            if cancel_url:
                self.cancel_upstream(cancel_url)
            raise RunnerStopped(f"Stopped after {time.monotonic() - self.started:.1f} s")

    def request(self, method: str, url: str, *, body: dict | None = None, cancel_url: str | None = None):
        """One request, retried after connection errors and 5xx; returns the decoded 2xx body."""
        retries = self.provider.max_connect_retries
        for attempt in range(retries + 1):
            try:
                return self._once(method, url, body=body, cancel_url=cancel_url)
            except _Retryable as exc:
                if attempt == retries:
                    raise RunnerError(f"Provider unavailable after {retries + 1} tries: {exc}") from None
                pause = min(self.backoff_first * 2**attempt, self.backoff_max)
                logger.info("Job %s: %s %s failed (%s); retrying in %.1f s", self.call.job_id, method, url, exc, pause)
                if time.monotonic() + pause >= self.deadline:
                    raise self.timed_out() from None
                self.wait_until(time.monotonic() + pause, cancel_url=cancel_url)
        raise AssertionError("unreachable")

    def _once(self, method: str, url: str, *, body: dict | None, cancel_url: str | None):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out()
        exchange = _Exchange(method, url, body=body, headers=self.headers, timeout=left)
        try:
            while not exchange.done.wait(TICK):
                if time.monotonic() >= self.deadline:
                    raise self.timed_out()
                self.check_stop(cancel_url)
        finally:
            if not exchange.done.is_set():
                exchange.abort()
        if exchange.error is not None:
            error = exchange.error
            if isinstance(error, TimeoutError) or time.monotonic() >= self.deadline:
                raise self.timed_out()
            if isinstance(error, (OSError, http.client.HTTPException)):
                raise _Retryable(f"{type(error).__name__}: {error}") from None
            raise RunnerError(f"Provider request failed: {error}") from None
        answer = exchange.answer
        if answer.status >= 500:
            raise _Retryable(f"HTTP {answer.status}: {_message(answer.body)}")
        if answer.status >= 400:
            raise RunnerError(f"Provider refused the request (HTTP {answer.status}): {_message(answer.body)}")
        if answer.status >= 300:
            raise RunnerError(f"Provider answered HTTP {answer.status}, which the http runner does not follow")
        return answer.body

    def poll(self, first) -> dict:
        if not isinstance(first, dict) or first.get("id") is None:
            raise RunnerError(f"Provider answered no job id to poll: {_message(first)}")
        provider_job_id = first["id"]
        base = self.provider.url
        status_url = urljoin(base, first["status_url"]) if first.get("status_url") else f"{base.rstrip('/')}/{provider_job_id}"
        interval = max(float(self.call.params.get("poll_interval", 1.0)), TICK / 10)
        state = first
        while True:
            status = state.get("status") if isinstance(state, dict) else None
            if status == "succeeded":
                return {"runner": "http", "provider_job_id": provider_job_id, "output": state.get("output")}
            if status in ("failed", "cancelled"):
                raise RunnerError(f"Provider job {provider_job_id} {status}: {_message(state)}")
            if isinstance(state, dict) and isinstance(state.get("progress"), (int, float)):
                logger.info("Job %s: provider job %s at %.0f%%", self.call.job_id, provider_job_id, 100 * state["progress"])
            next_poll = time.monotonic() + interval
            if next_poll >= self.deadline:
                self.wait_until(self.deadline, cancel_url=status_url)
                self.cancel_upstream(status_url)
                raise self.timed_out()
            self.wait_until(next_poll, cancel_url=status_url)
            try:
                state = self.request("GET", status_url, cancel_url=status_url)
            except _TimedOut:
                self.cancel_upstream(status_url)
                raise

    def cancel_upstream(self, status_url: str) -> None:
        """Best effort: a provider that does not answer in time keeps its job; we stop regardless."""
        exchange = _Exchange("DELETE", status_url, body=None, headers=self.headers, timeout=CANCEL_TIMEOUT)
        if not exchange.done.wait(CANCEL_TIMEOUT):
            exchange.abort()
            logger.warning("Job %s: cancel of %s got no answer", self.call.job_id, status_url)
        elif exchange.error is not None or exchange.answer.status >= 400:
            logger.warning("Job %s: cancel of %s failed: %s", self.call.job_id, status_url, exchange.error or exchange.answer.status)
        else:
            logger.info("Job %s: cancelled provider job at %s", self.call.job_id, status_url)


def _message(body) -> str:
    """The provider's own words: `error` (a string or {"message"}), `message` or `detail`, else the body."""
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value
            if value:
                return str(value)[:MESSAGE_LIMIT]
    return str(body)[:MESSAGE_LIMIT] if body not in (None, "") else "(no message)"
