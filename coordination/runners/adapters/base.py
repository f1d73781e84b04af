"""What every provider adapter does, and the parts they share.

An adapter turns one step of work into the provider's own requests (docs/providers.md):
- `submit`: the job sent; the provider's acceptance (Accepted: its id, where to ask, what else it
  named, stored on the run as `provider_data`), or the result when it answered at once;
- `status_request` and `status_from`: the one question a poll asks about a job (built once, sent again
  at each poll) and its answer read as a Status; `ask` sends it (an adapter whose answer needs a second
  question, fal's result or ComfyUI's queue, says so there);
- `cancel`: the provider's own way to drop a job; True once the provider confirms it is gone;
- `upload`: a file of ours (KeptFile) sent to a provider that takes files by upload, before the submit
  that names it (`uploaded`);
- webhooks (provider_catalog's `webhooks` says whether and how a provider calls back): `callback_read`
  checks a callback's signature and reads it, `callback_check` checks it against its run.

A run (`run` below) is anything with `job_id`, `provider_job_id`, `status_url` and `data` (what the
adapter stored at submit): an Accepted, or the poller's Watched.
"""

import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from coordination import provider_catalog
from coordination.runners import client as http
from coordination.runners.base import KeptFile, Provider, RunnerCall, RunnerError
from coordination.runners.client import Accepted, Status


class CallbackRefused(Exception):
    """Not the model's provider (no, or a wrong, secret or signature): 401, and nothing changes."""


@dataclass(frozen=True)
class Callback:
    """What a provider's callback says, once its signature is checked: which of its jobs, and how it
    stands (None: the callback is not signed, so the status is asked of the provider to confirm it)."""

    provider_job_id: str
    status: Status | None
    # RunPod's: the token of the callback URL we gave, checked against the run (callback_token).
    token: str | None = None


class Adapter:
    kind = ""

    async def submit(self, client: httpx.AsyncClient, call: RunnerCall, *, deadline: float,
                     callback_url: str | None) -> "dict | Accepted":
        raise NotImplementedError

    def status_request(self, client: httpx.AsyncClient, provider: Provider, run) -> httpx.Request:
        raise NotImplementedError

    def status_from(self, body, run) -> Status:
        raise NotImplementedError

    async def ask(self, client: httpx.AsyncClient, provider: Provider, run, *, request: httpx.Request,
                  timeout: float) -> Status:
        """What the provider says of its job now: one question (AskAgain: ask later; RunnerError: refused)."""
        return self.status_from(await http.send(client, request, timeout=timeout), run)

    async def cancel(self, client: httpx.AsyncClient, provider: Provider, run) -> bool:
        raise NotImplementedError

    def cancel_unconfirmed_words(self, grace: float) -> str | None:
        """How a job is said to end when its cancel was not confirmed within `grace` seconds (after
        "Cancelled; " or the coordinator's stop reason); None: the poller's own words. A provider with no
        cancel at all (Leonardo) says so plainly rather than "did not confirm"."""
        return None

    def callback_read(self, provider: Provider, *, body: bytes, headers, query) -> Callback:
        """A callback's signature checked (CallbackRefused: 401) and its body read (ValueError: 400)."""
        raise CallbackRefused(f"{self.kind} does not call back.")

    def callback_check(self, callback: Callback, run) -> None:
        """What can only be checked against the run the callback names (RunPod's token)."""

    def callback_job_id(self, body: bytes) -> str | None:
        """The job a webhook set once per API key names (Leonardo's), before the key is known."""
        return None

    async def upload(self, client: httpx.AsyncClient, provider: Provider, kept: KeptFile, *, deadline: float):
        """A file of ours sent to a provider that takes files by upload (provider_catalog's
        `uploads_files`); what the provider then calls it, for the field that named the file."""
        raise RunnerError(f"{provider_catalog.PROVIDERS[self.kind].label} fetches files by URL; it takes no upload")

    async def uploaded(self, client: httpx.AsyncClient, provider: Provider, fields: dict, *, deadline: float) -> dict:
        """`fields` with each KeptFile (alone, or in a list) uploaded and replaced by its name there."""

        async def named(value):
            if isinstance(value, KeptFile):
                return await self.upload(client, provider, value, deadline=deadline)
            if isinstance(value, list):
                return [await named(item) for item in value]
            return value

        return {key: await named(value) for key, value in fields.items()}


def mapped_input(call: RunnerCall, provider: Provider) -> dict:
    """The job's prompt, params and inputs as one object the provider reads, after the model's
    provider_input: `rename` gives a field the provider's name for it, `defaults` fill what the job
    leaves out (provider_catalog.input_problems has the shape)."""
    rename = provider.input_map.get("rename", {})
    fields = {"prompt": call.prompt, **call.params, **call.inputs}
    out = {rename.get(name, name): value for name, value in fields.items()}
    for name, value in provider.input_map.get("defaults", {}).items():
        out.setdefault(name, value)
    return out


def secret(env: str, *, what: str = "Credential") -> str:
    """The value of the variable `env` names (only its name is in the database)."""
    import os

    value = os.environ.get(env, "") if env else ""
    if not value:
        raise RunnerError(f"{what} environment variable {env or '(none named)'} is not set")
    return value


def json_headers(**more: str) -> dict:
    return {"Accept": "application/json", "User-Agent": "job-queue-coordinator", **more}


class SecondsLeft(httpx.Auth):
    """A header with the whole seconds left until the attempt's deadline (at least 1), set each time a
    request goes out (httpx calls an Auth's flow at each send): a submit sent again after a 429 waited
    out says the seconds left then. `unit`: what follows the number (Replicate's Cancel-After: "s")."""

    def __init__(self, deadline: float, header: str, unit: str = ""):
        self.deadline, self.header, self.unit = deadline, header, unit

    def auth_flow(self, request):
        request.headers[self.header] = f"{max(1, int(self.deadline - time.monotonic()))}{self.unit}"
        yield request


def rebased(url: str, base: str) -> str:
    """A URL a provider answered, with its scheme and host replaced by `base`'s (the model's
    provider_base_url: a proxy or a region is asked about the job too, not only sent it)."""
    parts, to = urlsplit(url), urlsplit(base)
    return urlunsplit((to.scheme, to.netloc, parts.path, parts.query, parts.fragment))


async def submitted(client, url: str, *, provider: Provider, deadline: float, headers: dict, **kwargs):
    """A submit: a limit (429, 503) waited out until the deadline; a refused connection or a 5xx sent
    again at most max_connect_retries times, but only to a provider that takes an idempotency key
    (provider_catalog's `idempotent_submit`: generic). To any other, a submit that may have arrived but
    whose answer was lost (a cut connection, a timeout, a 5xx other than 503) is not sent again: the
    attempt fails saying so (at most once: a second job there would run unseen, and be billed), and
    the model's max_attempts decides whether the job runs again, as a new attempt."""
    resend = provider_catalog.PROVIDERS[provider.kind].idempotent_submit
    return await http.request(client, "POST", url, provider=provider, deadline=deadline, resend=resend, headers=headers,
                              **kwargs)


async def confirmed(client, method: str, url: str, *, headers: dict, **kwargs) -> httpx.Response | None:
    """A cancel's request (bounded by CANCEL_TIMEOUT): its answer, or None when none came."""
    try:
        return await client.request(method, url, headers=headers, timeout=http.CANCEL_TIMEOUT, **kwargs)
    except httpx.HTTPError:
        return None
