"""A provider's callback: `POST /providers/{model}/callback` with the job's end, as its status URL
would answer it (`{"id", "status", "output"?, "files"?, "error"?}`), authenticated with the model's secret (the
variable `callback_secret_env` names): `Authorization: Bearer <secret>`, or `X-Signature:
sha256=<hex HMAC-SHA256 of the body under the secret>`. It ends the job through the coordinator, once:
a repeated callback, or one after the poller's safety net already saw the end, changes nothing."""

import hashlib
import hmac
import json
import os
from dataclasses import dataclass

from coordination.models import CatalogModel, ProviderRun
from coordination.providers import store
from coordination.runners.client import Status


class CallbackRefused(Exception):
    """Not the model's provider (no, or a wrong, secret): 401, and nothing changes."""


@dataclass(frozen=True)
class Heard:
    code: int
    message: str
    job_id: str | None = None


def callback_verify(model: CatalogModel | None, *, body: bytes, headers) -> None:
    secret = os.environ.get(model.callback_secret_env, "") if model is not None and model.callback_secret_env else ""
    if not secret:
        raise CallbackRefused("This model takes no callbacks (no secret is set for it).")
    bearer = headers.get("Authorization", "")
    if bearer.startswith("Bearer ") and hmac.compare_digest(bearer.removeprefix("Bearer ").strip().encode(), secret.encode()):
        return
    signature = headers.get("X-Signature", "")
    if signature.startswith("sha256="):
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(signature.removeprefix("sha256=").strip().lower().encode(), expected.encode()):
            return
    raise CallbackRefused("The callback's Authorization or X-Signature does not match this model's secret.")


def callback_receive(*, model_name: str, body: bytes, headers) -> Heard:
    """Check who calls, then record what it says. Raises CallbackRefused (401)."""
    model = CatalogModel.objects.filter(name=model_name).first()
    callback_verify(model, body=body, headers=headers)
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        return Heard(400, "The body must be JSON: {\"id\": <the provider's job id>, \"status\": ..., \"output\"?: ...}.")
    if not isinstance(payload, dict) or payload.get("id") in (None, ""):
        return Heard(400, "The body names no provider job: {\"id\": <the provider's job id>, \"status\": ...}.")
    run = ProviderRun.objects.filter(model=model.name, provider_job_id=str(payload["id"])).order_by("-id").first()
    if run is None:
        return Heard(404, f"No job of {model.name} is at this provider as {payload['id']}.")
    status = Status.of(payload)
    if run.state == ProviderRun.State.DONE:
        return Heard(200, "Already recorded: nothing changed.", str(run.job_id))
    if not status.ended:
        store.status_seen(run.pk, status.state)
        return Heard(202, f"Noted: {status.state}.", str(run.job_id))
    ended = store.runs_end([store.Ending(run.pk, status)])
    return Heard(200, "Recorded: the job has ended." if ended else "Already recorded: nothing changed.", str(run.job_id))
