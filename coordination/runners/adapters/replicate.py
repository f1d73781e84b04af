"""Replicate (https://replicate.com/docs; ../shared/PROVIDERS.md, "Replicate").

- **Submit**: provider_model `owner/name` → `POST /v1/models/{owner}/{name}/predictions`;
  `owner/name:<version>` → `POST /v1/predictions` with `"version": "<version>"`; `deployments/owner/name`
  → `POST /v1/deployments/{owner}/{name}/predictions`. Body `{"input": <prompt, params and inputs
  after provider_input>}`, with `"webhook"` and `"webhook_events_filter": ["start", "completed"]` when
  we have a public address. `Authorization: Bearer <token>`; our deadline as `Cancel-After: <N>s`
  (the seconds left of the attempt): Replicate ends the prediction itself when it passes.
- **At most once**: Replicate takes no idempotency key, so a submit whose answer was lost is not
  sent again (base.py `submitted`).
- **Status**: `GET urls.get`. starting → queued, processing → running, succeeded, failed (its
  `error`), canceled → cancelled, aborted (its deadline passed before it started) → cancelled, in
  Replicate's words. Progress: the last tqdm line of its `logs` (`NN%|...| i/N`), read as
  replicate-python reads it. `output` as given; its files are the URLs in it.
- **Cancel**: `POST urls.cancel`; confirmed when the prediction it answers has ended (canceled, or
  it had ended already) or there is no such prediction (404).
- **Webhooks**: the prediction itself, signed as Standard Webhooks (`webhook-id`,
  `webhook-timestamp`, `webhook-signature`) with the `whsec_…` secret the variable
  callback_secret_env names (Replicate's `GET /v1/webhooks/default/secret`); a signature more than
  5 minutes off is refused.
"""

import json
import logging
import re

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from coordination.runners.adapters.base import (
    Adapter, Callback, CallbackRefused, SecondsLeft, confirmed, json_headers, mapped_input, secret, submitted,
)
from coordination.runners.base import Provider, RunnerCall, RunnerError
from coordination.runners.client import Accepted, Status, message_of

logger = logging.getLogger(__name__)

STATES = {"starting": "queued", "processing": "running", "succeeded": "succeeded", "failed": "failed",
          "canceled": "cancelled", "aborted": "cancelled"}
# replicate-python's Prediction.Progress: the last line of the logs like " 45%|████▌     | 9/20 [...]".
_PROGRESS = re.compile(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)")


def _headers(provider: Provider) -> dict:
    return json_headers(Authorization=f"Bearer {secret(provider.credential_env)}")


def submit_path(model: str) -> tuple[str, dict]:
    """The path a prediction of provider_model is created at, and what its body names besides the input."""
    if model.startswith("deployments/"):
        return f"/v1/{model}/predictions", {}
    if ":" in model:
        return "/v1/predictions", {"version": model.split(":", 1)[1]}
    return f"/v1/models/{model}/predictions", {}


def progress_of(logs) -> float | None:
    if not isinstance(logs, str):
        return None
    for line in reversed(logs.split("\n")):
        match = _PROGRESS.match(line.strip())
        if match:
            current, total = int(match[2]), int(match[3])
            return min(1.0, current / total) if total else int(match[1]) / 100
    return None


def status_of(prediction) -> Status:
    if not isinstance(prediction, dict):
        return Status("unknown", error=message_of(prediction))
    said = str(prediction.get("status") or "unknown")
    state = STATES.get(said, said)
    error = None
    if said == "aborted":
        error = "aborted by Replicate: its deadline passed before it started"
    elif state in ("failed", "cancelled"):
        error = message_of(prediction.get("error")) if prediction.get("error") else f"{said} at Replicate"
    return Status(state, prediction.get("output"), error, progress_of(prediction.get("logs")))


class Replicate(Adapter):
    kind = "replicate"

    async def submit(self, client, call: RunnerCall, *, deadline: float, callback_url: str | None):
        provider = call.provider
        path, body = submit_path(provider.model)
        body["input"] = mapped_input(call, provider)
        if callback_url:
            body.update(webhook=callback_url, webhook_events_filter=["start", "completed"])
        answer = await submitted(client, f"{provider.url}{path}", provider=provider, deadline=deadline, json=body,
                                 headers=_headers(provider), auth=SecondsLeft(deadline, "Cancel-After", "s"))
        if not isinstance(answer, dict) or not answer.get("id"):
            raise RunnerError(f"Replicate answered no prediction: {message_of(answer)}")
        # Its urls.get and urls.cancel, at the model's base URL (api.replicate.com unless provider_base_url says).
        status_url = f"{provider.url}/v1/predictions/{answer['id']}"
        return Accepted(str(answer["id"]), status_url, status_of(answer), data={"cancel_url": f"{status_url}/cancel"},
                        job_id=call.job_id)

    def status_request(self, client, provider: Provider, run):
        return client.build_request("GET", run.status_url, headers=_headers(provider))

    def status_from(self, body, run) -> Status:
        return status_of(body)

    async def cancel(self, client, provider: Provider, run) -> bool:
        url = run.data.get("cancel_url") or f"{run.status_url}/cancel"
        answer = await confirmed(client, "POST", url, headers=_headers(provider))
        if answer is None:
            return False
        if answer.status_code == 404:
            return True
        try:
            return answer.is_success and status_of(answer.json()).ended
        except ValueError:
            return False

    def callback_read(self, provider: Provider, *, body: bytes, headers, query) -> Callback:
        try:
            key = secret(provider.callback_secret_env, what="Webhook secret")
        except RunnerError:
            raise CallbackRefused("This model takes no webhooks (no secret is set for it).") from None
        try:
            verifier = Webhook(key)
        except Exception as error:  # not a whsec_ secret: an operator's mistake, said in the log
            logger.error("The webhook secret in %s is not a Replicate whsec_ secret: %s", provider.callback_secret_env, error)
            raise CallbackRefused("This model's webhook secret is not a whsec_ secret.") from None
        try:
            verifier.verify(body, {name.lower(): value for name, value in headers.items()})
        except WebhookVerificationError as refused:
            raise CallbackRefused(f"The webhook's signature does not verify: {refused}") from None
        prediction = json.loads(body or b"null")
        if not isinstance(prediction, dict) or not prediction.get("id"):
            raise ValueError("The body is not a prediction: it names no id.")
        return Callback(str(prediction["id"]), status_of(prediction))
