"""`runpod`: a RunPod serverless endpoint (queue-based), spoken to as RunPod's API documents it
(../shared/PROVIDERS.md, RunPod; docs/providers.md). The catalog model names the endpoint's id in
`provider_model` and the variable holding the API key in `credential_env`; `provider_base_url`
replaces https://api.runpod.ai.

- **Submit**: `POST {url}/v2/{endpoint}/run` with `Authorization: Bearer <key>` and
  `{"input": <the job's prompt, params and inputs after provider_input>, "policy": {"executionTimeout":
  <ms left until the attempt's deadline>}}`, plus `"webhook": <callback URL>?token=<callback_token>`
  for a callback model. RunPod answers `{"id", "status": "IN_QUEUE"}`.
- **Status**: `GET {url}/v2/{endpoint}/status/{id}`: IN_QUEUE queued, IN_PROGRESS running (its
  `output` then is what the worker last sent with progress_update: progress_of reads it),
  COMPLETED succeeded (`output` as given; its files are the http(s) URLs anywhere in it), FAILED failed
  (its `error`), TIMED_OUT failed ("timed out at RunPod"), CANCELLED cancelled. A 404: RunPod no
  longer has the job (its results expire 30 min after it ends, a queued job at its ttl): failed.
- **Cancel**: `POST {url}/v2/{endpoint}/cancel/{id}`; confirmed when RunPod says the job is CANCELLED
  (or already ended: nothing is left to stop), or answers 404 (it is gone).
- **Webhooks**: RunPod POSTs the status body, unsigned, to the URL we gave when the job ends. That URL
  carries a token of ours, an HMAC of the job and attempt under SECRET_KEY (callback_token): a caller
  without it is refused, and what the job came to is asked of RunPod's status endpoint, never taken
  from the body.
"""

import hmac
import json
import time
from urllib.parse import quote

from django.utils.crypto import salted_hmac

from coordination.runners import client as http
from coordination.runners.adapters.base import (Adapter, Callback, CallbackRefused, confirmed, json_headers, mapped_input,
                                                secret, submitted)
from coordination.runners.base import Provider, RunnerCall, RunnerError
from coordination.runners.client import Accepted, Status

STATES = {"IN_QUEUE": "queued", "IN_PROGRESS": "running", "COMPLETED": "succeeded", "FAILED": "failed",
          "TIMED_OUT": "failed", "CANCELLED": "cancelled"}
ENDED_AT_RUNPOD = ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED")
# RunPod takes an executionTimeout above 5000 ms only.
MIN_EXECUTION_TIMEOUT_MS = 5001
TOKEN_SALT = "coordination.runners.adapters.runpod.callback_token"


def callback_token(job_id, attempt) -> str:
    """The token in the webhook URL of a job's attempt: RunPod does not sign its webhooks, so the URL
    we gave is what tells its call from a stranger's (SECRET_KEY never leaves this service)."""
    return salted_hmac(TOKEN_SALT, f"{job_id}:{attempt}", algorithm="sha256").hexdigest()


def progress_of(output) -> float | None:
    """A worker's progress_update as 0-1, when it says one: a number (up to 1 a fraction, above 1 up to
    100 a percentage), or an object's `progress` (read the same way) or `percent` (a percentage).
    Anything else (text such as "step 3 of 8", a partial result) says no progress."""
    scale = None
    if isinstance(output, dict):
        output, scale = (output["percent"], 100.0) if "percent" in output else (output.get("progress"), None)
    if not isinstance(output, (int, float)) or isinstance(output, bool) or not 0 <= output <= 100:
        return None
    return output / (scale or (1.0 if output <= 1 else 100.0))


def urls_in(output) -> list[str]:
    """The http(s) URLs anywhere in a handler's output (RunPod gives outputs no fixed shape), in order, once each."""
    found: list[str] = []
    stack = [output]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and item.lower().startswith(("http://", "https://")) and item not in found:
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return found


def error_of(body: dict) -> str:
    """A failed job's `error` in RunPod's words. A handler that raised leaves JSON there
    (`{"error_type", "error_message", "error_traceback", ...}`): its error_message is what it said."""
    error = body.get("error")
    if isinstance(error, str) and error.lstrip().startswith("{"):
        try:
            raised = json.loads(error)
        except ValueError:
            raised = None
        if isinstance(raised, dict) and raised.get("error_message"):
            error = raised["error_message"]
    return http.message_of({"error": error}) if error else "RunPod said FAILED and gave no error"


def status_of(body) -> Status:
    if not isinstance(body, dict):
        return Status("unknown", error=http.message_of(body))
    said = str(body.get("status") or "")
    state, output = STATES.get(said, said or "unknown"), body.get("output")
    if said == "IN_PROGRESS":
        return Status(state, output, progress=progress_of(output))
    if said == "COMPLETED":
        return Status(state, output, files=urls_in(output))
    if said == "FAILED":
        return Status(state, output, error_of(body))
    if said == "TIMED_OUT":
        return Status(state, output, "timed out at RunPod" + (f": {error_of(body)}" if body.get("error") else ""))
    if said == "CANCELLED":
        return Status(state, output, "cancelled at RunPod")
    return Status(state, output)


def _headers(provider: Provider) -> dict:
    return json_headers(Authorization=f"Bearer {secret(provider.credential_env)}")


def _cancel_url(run) -> str:
    endpoint, _, job = run.status_url.rpartition("/status/")
    return f"{endpoint}/cancel/{job}"


class RunPod(Adapter):
    kind = "runpod"

    async def submit(self, client, call: RunnerCall, *, deadline: float, callback_url: str | None):
        provider = call.provider
        endpoint = f"{provider.url}/v2/{quote(provider.model, safe='')}"
        left_ms = int((deadline - time.monotonic()) * 1000)
        body = {"input": mapped_input(call, provider),
                "policy": {"executionTimeout": max(MIN_EXECUTION_TIMEOUT_MS, left_ms)}}
        if callback_url:
            body["webhook"] = f"{callback_url}?token={callback_token(call.job_id, call.attempt)}"
        answer = await submitted(client, f"{endpoint}/run", provider=provider, deadline=deadline, json=body,
                                 headers=_headers(provider))
        if not isinstance(answer, dict) or answer.get("id") in (None, ""):
            raise RunnerError(f"RunPod answered no job id: {http.message_of(answer)}")
        job = str(answer["id"])
        return Accepted(job, f"{endpoint}/status/{quote(job, safe='')}",
                        status_of({**answer, "status": answer.get("status") or "IN_QUEUE"}), job_id=call.job_id)

    def status_request(self, client, provider: Provider, run):
        return client.build_request("GET", run.status_url, headers=_headers(provider))

    def status_from(self, body, run) -> Status:
        return status_of(body)

    async def ask(self, client, provider: Provider, run, *, request, timeout: float) -> Status:
        try:
            return status_of(await http.send(client, request, timeout=timeout))
        except http.Refused as refused:
            if refused.status_code != 404:
                raise
            return Status("failed", error=(
                f"RunPod no longer has job {run.provider_job_id} (HTTP 404: {refused.words}): it keeps a job's result "
                "30 min after it ends and a queued job until its ttl, then deletes it"))

    async def cancel(self, client, provider: Provider, run) -> bool:
        answer = await confirmed(client, "POST", _cancel_url(run), headers=_headers(provider))
        if answer is None:
            return False
        if answer.status_code == 404:
            return True
        try:
            said = answer.json().get("status") if answer.is_success else None
        except (ValueError, AttributeError):
            return False
        return said in ENDED_AT_RUNPOD

    def callback_read(self, provider: Provider, *, body: bytes, headers, query) -> Callback:
        token = query.get("token") or ""
        if not token:
            raise CallbackRefused("This callback URL carries no token: RunPod calls back to the URL we gave it, "
                                  "token included.")
        payload = json.loads(body or b"null")
        if not isinstance(payload, dict) or payload.get("id") in (None, ""):
            raise ValueError("The body names no RunPod job: {\"id\": <RunPod's job id>, \"status\": ...}.")
        # Unsigned: its status is asked of RunPod (callbacks.py), not taken from the body.
        return Callback(str(payload["id"]), None, token=token)

    def callback_check(self, callback: Callback, run) -> None:
        if not hmac.compare_digest((callback.token or "").encode(), callback_token(run.job_id, run.attempt).encode()):
            raise CallbackRefused("The callback's token is not the one this job's attempt was given.")
