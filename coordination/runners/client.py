"""Talking to a generation provider over HTTP, whichever it is (the adapters in
coordination/runners/adapters speak each one's API through this): httpx for the requests and tenacity
for waiting out what a provider asks us to wait out.

- **Limits**: a `429` or `503` is waited out, for `Retry-After` seconds (or until its date) when it
  says, else with exponential back-off and jitter, without failing the job, until the attempt's
  deadline (`timeout_seconds` from its start). A submit (`request`) is sent again after a refused
  connection, and, to a provider that takes an idempotency key, after a reset connection, a timeout
  or another 5xx, `max_connect_retries` times (adapters/base.py `submitted`). A question about a job
  already at the provider (`send`) that goes unanswered is asked again later, like a limit (the job
  is there; an outage does not end it). Any other 4xx fails the job with the provider's own words.
  Redirects are not followed.
- **Files**: a result's `files` are the provider's list, else the URLs in its `output`
  (coordination/runners/results.py).
"""

import asyncio
import email.utils
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from uuid import UUID

# httpx's command-line client pulls in rich, click and pygments (4 MB in every process) when they are
# installed, as the test tools install them; no process here runs it.
sys.modules.setdefault("httpx._main", None)

import httpx  # noqa: E402
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from coordination.runners.base import Provider, RunnerError, RunnerStopped
from coordination.runners.results import runner_result

MESSAGE_LIMIT = 500
CANCEL_TIMEOUT = 5.0
BACKOFF = wait_exponential_jitter(multiplier=0.5, max=30, jitter=0.5)
ENDED = ("succeeded", "failed", "cancelled")


class ProviderTimeout(RunnerError):
    """The attempt reached its deadline: the model's timeout_seconds, counted from its start."""


class Refused(RunnerError):
    """The provider refused a request (a 4xx other than a limit): `status_code`, and `words`, its own."""

    def __init__(self, status_code: int, words: str):
        super().__init__(f"Provider refused the request (HTTP {status_code}): {words}")
        self.status_code, self.words = status_code, words


class AskAgain(Exception):
    """Worth asking again. `counted`: it uses up one of max_connect_retries (else it is a limit the
    provider set, waited out until the deadline); `after`: seconds the provider asked us to wait."""

    def __init__(self, reason: str, *, counted: bool, after: float | None = None):
        super().__init__(reason)
        self.counted, self.after = counted, after


@dataclass(frozen=True)
class Status:
    """A provider's word on its job, in our terms: `state` is queued, running, succeeded, failed or
    cancelled (or, unmapped, what it said); `progress` 0-1 and `queue_position` when it says them."""

    state: str
    output: object = None
    error: str | None = None
    progress: float | None = None
    files: object = None  # the provider's `files`, as it said them (results.files_listed reads them)
    queue_position: int | None = None

    @property
    def ended(self) -> bool:
        return self.state in ENDED


@dataclass(frozen=True)
class Accepted:
    """The provider took the job: its id, where to ask about it, what it said first, and what else the
    adapter needs later (its other URLs, say; stored on the run as provider_data)."""

    provider_job_id: str
    status_url: str
    status: Status
    data: dict = field(default_factory=dict)
    job_id: UUID | None = None


def result_of(provider_job_id: str, status: Status) -> dict:
    """A job's result from its provider's last word (succeeded)."""
    return runner_result(status.output, files=status.files, runner="http", provider_job_id=provider_job_id)


_tls: list = []  # [(pid, context)]: one TLS context per process


def _tls_context():
    """The process's TLS context, shared by its threads' clients (it is safe to share): building one
    reads the CA certificates, 20 ms of CPU, and a worker runs each job on a thread of its own."""
    if not _tls or _tls[0][0] != os.getpid():
        _tls[:] = [(os.getpid(), httpx.create_ssl_context())]
    return _tls[0][1]


def new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=False, verify=_tls_context())


def new_pooled_client(*, max_connections: int) -> httpx.AsyncClient:
    """The poller's client (coordination/runners/pooled.py; imported here, so that a worker does not
    carry aiohttp)."""
    from coordination.runners.pooled import new_client as new_pooled

    return new_pooled(max_connections=max_connections)


async def send(client, request: httpx.Request, *, timeout: float):
    """One question, answered or not within `timeout` (the poller's, through new_pooled_client, sends
    the same request again at each poll). A limit or an outage raises AskAgain (with the wait the
    provider asked for, if it did): ask again later, holding nothing meanwhile; a refusal (another
    4xx) raises RunnerError. Returns the answer's JSON (or its text)."""
    return decoded(await response_to(client, request, timeout=timeout))


async def response_to(client, request: httpx.Request, *, timeout: float) -> httpx.Response:
    """The answer to one question as it came, whatever its status (`send` reads it; an adapter that
    reads an error answer its provider's way, fal's result, calls this); none within `timeout`, or a
    connection that failed, raises AskAgain."""
    request.extensions["timeout"] = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    try:
        return await (client.send_again(request) if hasattr(client, "send_again") else client.send(request))
    except httpx.TimeoutException:
        raise AskAgain("the provider did not answer in time", counted=True) from None
    except httpx.HTTPError as error:  # refused, reset, cut short, garbled: worth asking again
        raise AskAgain(f"{type(error).__name__}: {error}", counted=True) from None


def pause_before(tries: int, again: AskAgain) -> float:
    """Seconds to wait before asking again, after `tries` questions in a row went unanswered: what the
    provider asked for, else (or when it asked for no wait at all) BACKOFF's exponential back-off with
    jitter."""
    return again.after if again.after else BACKOFF(SimpleNamespace(attempt_number=tries))


# What a request that may have reached the provider, but whose answer was lost, is said to have met.
LOST = ("the provider may have taken it, and it takes no idempotency key, so it was not sent again "
        "(at most once)")


async def request(client, method: str, url: str, *, provider: Provider, deadline: float, resend: bool = True,
                  words=None, **kwargs):
    """`method url`, its limits and outages waited out (the module's docstring says how) until
    `deadline`; its JSON answer. `words`: how the provider's refusal (a 4xx) reads (else message_of).
    `resend=False`: a submit to a provider that cannot tell a request sent again from a new one (no
    idempotency key): sent again only when it cannot have arrived (a refused connection) or was
    refused whole (429, 503); a cut connection, a timeout or another 5xx fails the attempt instead (LOST)."""
    counted = 0

    def stop(state: RetryCallState) -> bool:
        error = state.outcome.exception()
        if error.counted and counted > provider.max_connect_retries:
            return True
        return time.monotonic() + _pause(state) >= deadline

    def count(state: RetryCallState) -> None:
        nonlocal counted
        counted += state.outcome.exception().counted

    retrying = AsyncRetrying(retry=retry_if_exception_type(AskAgain), wait=_pause, stop=stop, after=count,
                             retry_error_callback=lambda state: _give_up(state, provider, deadline))
    async for attempt in retrying:
        with attempt:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProviderTimeout(f"timed out after {provider.timeout_seconds:g} s")
            try:
                response = await client.request(method, url, timeout=left, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:  # never reached the provider
                raise AskAgain(f"{type(error).__name__}: {error}", counted=True) from None
            except httpx.TimeoutException:
                if time.monotonic() >= deadline:
                    raise ProviderTimeout(f"timed out after {provider.timeout_seconds:g} s") from None
                if not resend:
                    raise RunnerError(f"The provider did not answer in time; {LOST}") from None
                raise AskAgain("the provider did not answer in time", counted=True) from None
            except httpx.TransportError as error:
                if not resend:
                    raise RunnerError(f"{type(error).__name__}: {error}; {LOST}") from None
                raise AskAgain(f"{type(error).__name__}: {error}", counted=True) from None
            try:
                return decoded(response, words=words)
            except AskAgain as again:
                if again.counted and not resend:  # a 5xx other than 503: it may have been taken
                    raise RunnerError(f"{again}; {LOST}") from None
                raise
    return retrying.retry_error_callback  # not reached: the callback raises


def _pause(state: RetryCallState) -> float:
    error = state.outcome.exception()
    return error.after if getattr(error, "after", None) is not None else BACKOFF(state)


def _give_up(state: RetryCallState, provider: Provider, deadline: float):
    error = state.outcome.exception()
    if time.monotonic() + _pause(state) >= deadline:
        raise ProviderTimeout(f"timed out after {provider.timeout_seconds:g} s ({error})")
    raise RunnerError(f"Provider unavailable after {provider.max_connect_retries + 1} tries: {error}")


def decoded(response: httpx.Response, *, words=None):
    """The answer's JSON (or text); AskAgain for a limit or a 5xx; RunnerError for another 4xx, in the
    provider's words (`words(body)`, else message_of)."""
    try:
        body = response.json() if response.content.strip() else None
    except ValueError:
        body = response.text
    code = response.status_code
    if code in (429, 503):
        raise AskAgain(f"HTTP {code}: {message_of(body)}", counted=False, after=_retry_after(response))
    if code >= 500:
        raise AskAgain(f"HTTP {code}: {message_of(body)}", counted=True)
    if code >= 400:
        raise Refused(code, (words or message_of)(body))
    if code >= 300:
        raise RunnerError(f"Provider answered HTTP {code}, which the http runner does not follow")
    return body


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def message_of(body) -> str:
    """The provider's own words: `error` (a string or {"message"}), `message` or `detail`, else the body."""
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value
            if value:
                return str(value)[:MESSAGE_LIMIT]
    return str(body)[:MESSAGE_LIMIT] if body not in (None, "") else "(no message)"


# --- from a worker's thread ----------------------------------------------------------------------

_per_thread = threading.local()


def _thread_client() -> tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]:
    """This thread's event loop and client, made on its first provider call and kept for the jobs
    handed over to the same thread (its connections to the provider stay alive between them); the
    TLS context is the process's. A forked process makes its own."""
    held = getattr(_per_thread, "held", None)
    if held is None or held[0] != os.getpid():
        loop = asyncio.new_event_loop()
        held = _per_thread.held = (os.getpid(), loop, new_client())
    return held[1], held[2]


def thread_client_close() -> None:
    """A worker's job thread ends: close its client and event loop, if it made them."""
    held = getattr(_per_thread, "held", None)
    _per_thread.held = None
    if held is not None and held[0] == os.getpid():
        loop, client = held[1], held[2]
        try:
            loop.run_until_complete(client.aclose())
        finally:
            loop.close()


def run(coroutine_of, *, should_stop, tick: float = 0.1):
    """Run `coroutine_of(client)` to its end in this (worker) thread, stopping it the moment
    `should_stop()` says so (RunnerStopped): a provider that answers slowly cannot make a cancel wait."""
    loop, client = _thread_client()

    async def main():
        work = asyncio.ensure_future(coroutine_of(client))
        while not work.done():
            await asyncio.wait({work}, timeout=tick)
            if not work.done() and should_stop():
                work.cancel()
                # Let it tell the provider (a cancel, bounded by CANCEL_TIMEOUT) before we return.
                await asyncio.wait({work}, timeout=CANCEL_TIMEOUT + 1)
                raise RunnerStopped("Stopped while the provider was being asked")
        return work.result()

    return loop.run_until_complete(main())
