"""`generic`: our own protocol, for a provider that speaks it (or a proxy in front of one). The catalog
model says where and how: `provider_url`, `provider_style`, `credential_env`, `timeout_seconds`,
`max_connect_retries`.

- **Submit**: `POST provider_url`, JSON `{"model", "prompt", "params", "inputs", "job_id"}` (and
  `"callback_url"` for a callback provider), `Idempotency-Key: <job_id>:<attempt>` (a submit sent
  again for the same attempt is the same job to the provider), and `Authorization: Bearer <token>`
  when `credential_env` names a variable (only its name is in the database).
- **sync**: the 2xx JSON answer is the result (one that is not an object is wrapped as
  `{"output": answer}`, so a workflow's next step still finds `output`).
- **poll** and **callback**: the 2xx answer names the provider's job, `{"id", "status_url"?, "status"?}`;
  without a `status_url` it is `provider_url/<id>` (a relative one is resolved against
  `provider_url`). `GET status_url` answers `{"status": "queued" | "running" | "succeeded" | "failed" |
  "cancelled", "output"?, "files"?, "error"?, "progress"?, "queue_position"?}`; a callback provider
  POSTs the same body, with its `id`, to `callback_url` when the job ends, with `Authorization: Bearer
  <secret>` or `X-Signature: sha256=<hex HMAC-SHA256 of the body under the secret>` (the secret: the
  variable `callback_secret_env` names).
- **Cancel**: `DELETE status_url`; a 2xx (or a 404: there is no such job any more) confirms it.
"""

import hashlib
import hmac
import json
from urllib.parse import urljoin

from coordination.runners import client as http
from coordination.runners.adapters.base import Adapter, Callback, CallbackRefused, confirmed, json_headers, secret, submitted
from coordination.runners.base import Provider, RunnerCall, RunnerError
from coordination.runners.client import Accepted, Status
from coordination.runners.results import runner_result


def status_of(body) -> Status:
    if not isinstance(body, dict):
        return Status("unknown", error=http.message_of(body))
    progress, position = body.get("progress"), body.get("queue_position")
    error = http.message_of(body) if body.get("status") in ("failed", "cancelled") else None
    return Status(str(body.get("status") or "unknown"), body.get("output"), error,
                  float(progress) if isinstance(progress, (int, float)) else None, body.get("files"),
                  position if isinstance(position, int) and not isinstance(position, bool) else None)


def sync_result(answer) -> dict:
    """A sync provider's answer as the result: its fields as given, with `output` and `files`."""
    if not isinstance(answer, dict):
        return runner_result(answer)
    fields = {key: value for key, value in answer.items() if key not in ("output", "files")}
    return runner_result(answer.get("output"), files=answer.get("files"), **fields)


def _headers(provider: Provider, *, job_id, attempt: int | None = None) -> dict:
    out = json_headers()
    if provider.credential_env:
        out["Authorization"] = f"Bearer {secret(provider.credential_env)}"
    if attempt is not None:
        out["Idempotency-Key"] = f"{job_id}:{attempt}"
    return out


class Generic(Adapter):
    kind = "generic"

    async def submit(self, client, call: RunnerCall, *, deadline: float, callback_url: str | None):
        provider = call.provider
        body = {"model": call.model, "prompt": call.prompt, "params": call.params, "inputs": call.inputs,
                "job_id": str(call.job_id)}
        if callback_url:
            body["callback_url"] = callback_url
        answer = await submitted(client, provider.url, provider=provider, deadline=deadline, json=body,
                                 headers=_headers(provider, job_id=call.job_id, attempt=call.attempt))
        if provider.style == "sync":
            return sync_result(answer)
        if not isinstance(answer, dict) or answer.get("id") in (None, ""):
            raise RunnerError(f"Provider answered no job id to poll: {http.message_of(answer)}")
        provider_job_id = str(answer["id"])
        status_url = (urljoin(provider.url, answer["status_url"]) if answer.get("status_url")
                      else f"{provider.url.rstrip('/')}/{provider_job_id}")
        return Accepted(provider_job_id, status_url, status_of({**answer, "status": answer.get("status") or "queued"}),
                        job_id=call.job_id)

    def status_request(self, client, provider: Provider, run):
        return client.build_request("GET", run.status_url, headers=_headers(provider, job_id=run.job_id))

    def status_from(self, body, run) -> Status:
        return status_of(body)

    async def cancel(self, client, provider: Provider, run) -> bool:
        answer = await confirmed(client, "DELETE", run.status_url, headers=_headers(provider, job_id=run.job_id))
        return answer is not None and (answer.is_success or answer.status_code == 404)

    def callback_read(self, provider: Provider, *, body: bytes, headers, query) -> Callback:
        if not provider.callback_secret_env:
            raise CallbackRefused("This model takes no callbacks (no secret is set for it).")
        try:
            key = secret(provider.callback_secret_env, what="Callback secret")
        except RunnerError:
            raise CallbackRefused("This model takes no callbacks (no secret is set for it).") from None
        bearer = headers.get("Authorization", "")
        signature = headers.get("X-Signature", "")
        if not (bearer.startswith("Bearer ") and hmac.compare_digest(bearer.removeprefix("Bearer ").strip().encode(), key.encode())
                or signature.startswith("sha256=") and hmac.compare_digest(
                    signature.removeprefix("sha256=").strip().lower().encode(),
                    hmac.new(key.encode(), body, hashlib.sha256).hexdigest().encode())):
            raise CallbackRefused("The callback's Authorization or X-Signature does not match this model's secret.")
        payload = json.loads(body or b"null")
        if not isinstance(payload, dict) or payload.get("id") in (None, ""):
            raise ValueError("The body names no provider job: {\"id\": <the provider's job id>, \"status\": ...}.")
        return Callback(str(payload["id"]), status_of(payload))
