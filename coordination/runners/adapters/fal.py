"""`fal`: fal's queue API (docs/providers.md, "fal"; ../shared/PROVIDERS.md has the sources). The
catalog model names the app (`provider_model`, e.g. fal-ai/flux/dev) and the variable holding the key
(`credential_env`); `provider_base_url` replaces https://queue.fal.run.

- **Submit**: `POST {base}/{app}`, the body the model's input itself (the job's prompt, params and
  inputs after provider_input), `Authorization: Key <key>`, `X-Fal-Request-Timeout: <whole seconds
  left until the attempt's deadline, at least 1>` (fal does not start a request we would no longer
  wait for), and `?fal_webhook=<our callback URL>` for a callback model. fal answers its
  `request_id` and three URLs (owner/app only, used as given): `status_url` is polled,
  `response_url` and `cancel_url` are kept on the run. At most once: fal takes no idempotency key,
  so a submit whose answer was lost is not sent again (base.py `submitted`).
- **Status**: `GET status_url?logs=1`: IN_QUEUE is queued (its `queue_position`), IN_PROGRESS
  running, with the progress of the last log line when it holds a percentage (`NN%`, as a tqdm bar
  writes it; none otherwise); COMPLETED with `error`/`error_type` failed in fal's words
  (`client_cancelled`: cancelled), COMPLETED without one succeeded: the output is then read from
  `response_url` (an error answer there fails the job with its `detail`), and its files are every
  `url` found in it (`images[].url`, `video.url`, ...).
- **Cancel**: `PUT cancel_url`; it is confirmed once the status says COMPLETED (asked at once), or
  fal answers NOT_FOUND or ALREADY_COMPLETED.
- **Webhooks**: signed with ED25519 over `request_id\\nuser_id\\ntimestamp\\nsha256hex(body)`, with
  the keys fal publishes (COORDINATOR_FAL_JWKS_URL, kept for a day, read again when none verifies
  and they are older than five minutes); a timestamp more than five minutes off is refused. The body
  `{request_id, status: "OK"|"ERROR", payload, error?}` is the job's end.
"""

import base64
import binascii
import hashlib
import json
import re
import threading
import time

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings

from coordination.runners import client as http
from coordination.runners.adapters.base import (
    Adapter, Callback, CallbackRefused, SecondsLeft, confirmed, json_headers, mapped_input, rebased, secret, submitted,
)
from coordination.runners.base import Provider, RunnerCall, RunnerError
from coordination.runners.client import Accepted, Status

COMPLETED = "completed"  # fal's COMPLETED without an error: succeeded, once its output is read
CANCELLED_TYPE = "client_cancelled"
PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")
SIGNATURE_LEEWAY = 300  # seconds a webhook's timestamp may be off
KEYS_KEPT = 24 * 3600  # seconds fal's public keys are kept
KEYS_RECHECKED = 300  # a signature no kept key verifies: the keys are read again if older than this
KEYS_TIMEOUT = 5.0  # seconds to read them (in the web request that brought the webhook)


def _headers(provider: Provider) -> dict:
    return json_headers(Authorization=f"Key {secret(provider.credential_env)}")


class Fal(Adapter):
    kind = "fal"

    async def submit(self, client, call: RunnerCall, *, deadline: float, callback_url: str | None):
        provider = call.provider
        answer = await submitted(client, f"{provider.url}/{provider.model.strip('/')}", provider=provider, deadline=deadline,
                                 json=mapped_input(call, provider), headers=_headers(provider), auth=SecondsLeft(deadline, "X-Fal-Request-Timeout"),
                                 params={"fal_webhook": callback_url} if callback_url else None,
                                 words=words_of)
        if not isinstance(answer, dict) or not all(answer.get(key) for key in ("request_id", "status_url", "response_url", "cancel_url")):
            raise RunnerError(f"fal answered no request to poll: {http.message_of(answer)}")
        # Its URLs, asked at the model's base URL (fal's own host unless provider_base_url replaces it).
        data = {key: rebased(answer[key], provider.url) for key in ("response_url", "cancel_url")}
        if answer.get("gateway_request_id"):
            data["gateway_request_id"] = answer["gateway_request_id"]
        return Accepted(str(answer["request_id"]), rebased(answer["status_url"], provider.url), self.status_from({"status": "IN_QUEUE", **answer}, None),
                        data=data, job_id=call.job_id)

    def status_request(self, client, provider: Provider, run):
        return client.build_request("GET", run.status_url, params={"logs": "1"}, headers=_headers(provider))

    def status_from(self, body, run) -> Status:
        """A status answer in our terms; COMPLETED without an error is COMPLETED here: `ask` reads its output."""
        if not isinstance(body, dict):
            return Status("unknown", error=http.message_of(body))
        state = body.get("status")
        if state == "IN_QUEUE":
            position = body.get("queue_position")
            return Status("queued", queue_position=position if isinstance(position, int) and not isinstance(position, bool) else None)
        if state == "IN_PROGRESS":
            return Status("running", progress=progress_of(body.get("logs")))
        if state == "COMPLETED":
            if body.get("error") or body.get("error_type"):
                return Status("cancelled" if body.get("error_type") == CANCELLED_TYPE else "failed", error=words_of(body))
            return Status(COMPLETED)
        return Status(str(state or "unknown"))

    async def ask(self, client, provider: Provider, run, *, request, timeout: float) -> Status:
        started = time.monotonic()
        status = self.status_from(await http.send(client, request, timeout=timeout), run)
        if status.state != COMPLETED:
            return status
        return await self._result(client, provider, run, timeout=max(0.01, timeout - (time.monotonic() - started)))

    async def _result(self, client, provider: Provider, run, *, timeout: float) -> Status:
        """The output of a request fal says COMPLETED, from its response_url. An error answer there is
        fal's last word on it (a model's 422, a runner's 500), except a limit (429) or an ingress's
        502-504 that is not fal's own (no `detail`): those are asked again."""
        request = client.build_request("GET", run.data["response_url"], headers=_headers(provider))
        response = await http.response_to(client, request, timeout=timeout)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        code = response.status_code
        fals_own = (isinstance(body, dict) and "detail" in body) or "x-fal-error-type" in response.headers
        if code < 400 or code == 429 or code in (502, 503, 504) and not fals_own:
            output = http.decoded(response)  # the output; a limit or an outage raises AskAgain
            return Status("succeeded", output, files=files_in(output))
        error_type = response.headers.get("x-fal-error-type") or (body.get("error_type") if isinstance(body, dict) else None)
        return Status("cancelled" if error_type == CANCELLED_TYPE else "failed", error=words_of(body))

    async def cancel(self, client, provider: Provider, run) -> bool:
        headers = _headers(provider)
        answer = await confirmed(client, "PUT", run.data["cancel_url"], headers=headers)
        if answer is not None and _said(answer) in ("NOT_FOUND", "ALREADY_COMPLETED"):
            return True
        status = await confirmed(client, "GET", run.status_url, headers=headers)
        return status is not None and status.status_code < 400 and _said(status) == "COMPLETED"

    def callback_read(self, provider: Provider, *, body: bytes, headers, query) -> Callback:
        signature_check(body, headers)
        payload = json.loads(body or b"null")
        if not isinstance(payload, dict) or not payload.get("request_id"):
            raise ValueError("The body names no fal request: {\"request_id\": ..., \"status\": \"OK\" | \"ERROR\", ...}.")
        return Callback(str(payload["request_id"]), webhook_status(payload))


def _said(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("status") if isinstance(body, dict) else None


def webhook_status(body: dict) -> Status | None:
    """A webhook's end in our terms; None (ask fal) when it says OK but could not carry the output."""
    payload = body.get("payload")
    if body.get("status") == "OK":
        if payload is None and body.get("payload_error"):
            return None
        return Status("succeeded", payload, files=files_in(payload))
    if body.get("status") != "ERROR":
        raise ValueError("A fal webhook's status is OK or ERROR.")
    error = str(body.get("error") or "")
    detail = words_of(payload) if isinstance(payload, dict) and payload else ""
    words = f"{error}: {detail}" if error and detail and not detail.startswith(error) else detail or error or "(no message)"
    cancelled = isinstance(payload, dict) and payload.get("error_type") == CANCELLED_TYPE
    return Status("cancelled" if cancelled else "failed", error=words[:http.MESSAGE_LIMIT])


# --- fal's words, files and progress ---------------------------------------------------------

def words_of(body) -> str:
    """fal's words for a failure: `error`, else `detail` (a model's list of `{loc, msg}` read as
    `body.prompt: msg`), with the `error_type` after them."""
    if not isinstance(body, dict):
        return http.message_of(body)
    said = body.get("error") or body.get("detail")
    if isinstance(said, list):
        said = "; ".join(_one_error(item) for item in said)
    words = str(said) if said else http.message_of(body)
    error_type = body.get("error_type")
    if error_type and error_type not in words:
        words = f"{words} ({error_type})"
    return words[:http.MESSAGE_LIMIT]


def _one_error(item) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc") or [])
    said = str(item.get("msg") or item.get("type") or item)
    return f"{where}: {said}" if where else said


def files_in(output) -> list[dict]:
    """Every http(s) `url` in fal's output, with the `content_type` beside it, in the order found."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            url = value.get("url")
            if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
                content_type = value.get("content_type")
                found.append({"url": url, **({"content_type": content_type} if isinstance(content_type, str) else {})})
            for key, inner in value.items():
                if key != "url":
                    walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(output)
    return found


def progress_of(logs) -> float | None:
    """The percentage the last log line holds (`NN%`), 0-1; None when it holds none."""
    if not isinstance(logs, list) or not logs or not isinstance(logs[-1], dict):
        return None
    match = PERCENT.search(str(logs[-1].get("message") or ""))
    if match is None or float(match[1]) > 100:
        return None
    return float(match[1]) / 100


# --- webhook signatures --------------------------------------------------------------------

_keys_lock = threading.Lock()
_keys: dict[str, tuple[float, list[Ed25519PublicKey]]] = {}  # JWKS URL -> (read at, its keys)


def signature_check(body: bytes, headers) -> None:
    """CallbackRefused unless fal signed this body, within SIGNATURE_LEEWAY of now."""
    request_id, user_id, timestamp, signature = (headers.get(f"X-Fal-Webhook-{name}") or "" for name in
                                                 ("Request-Id", "User-Id", "Timestamp", "Signature"))
    if not (request_id and user_id and timestamp and signature):
        raise CallbackRefused("The webhook carries no fal signature (X-Fal-Webhook-Request-Id, -User-Id, -Timestamp, -Signature).")
    try:
        at, signed = int(timestamp), bytes.fromhex(signature)
    except ValueError:
        raise CallbackRefused("The webhook's fal signature or timestamp is malformed.") from None
    if abs(time.time() - at) > SIGNATURE_LEEWAY:
        raise CallbackRefused(f"The webhook's timestamp is more than {SIGNATURE_LEEWAY} s from now: refused as stale.")
    message = f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    url = settings.COORDINATOR_FAL_JWKS_URL
    if not _verifies(_public_keys(url, kept_for=KEYS_KEPT), signed, message) and not _verifies(
            _public_keys(url, kept_for=KEYS_RECHECKED), signed, message):
        raise CallbackRefused("The webhook's signature is not fal's.")


def _verifies(keys, signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


def _public_keys(url: str, *, kept_for: float) -> list[Ed25519PublicKey]:
    """fal's public keys, as read from `url` less than `kept_for` seconds ago, else read now."""
    with _keys_lock:
        held = _keys.get(url)
        if held is not None and time.monotonic() - held[0] < kept_for:
            return held[1]
    try:
        answer = httpx.get(url, timeout=KEYS_TIMEOUT, headers=json_headers(), follow_redirects=True)
        answer.raise_for_status()
        keys = [Ed25519PublicKey.from_public_bytes(_unpadded_b64(key["x"])) for key in answer.json().get("keys", [])
                if isinstance(key, dict) and key.get("kty") == "OKP" and key.get("crv") == "Ed25519" and key.get("x")]
    except (httpx.HTTPError, ValueError, KeyError, AttributeError, binascii.Error) as error:
        raise CallbackRefused(f"fal's public keys could not be read from {url} ({type(error).__name__}: {error}).") from None
    with _keys_lock:
        _keys[url] = (time.monotonic(), keys)
    return keys


def _unpadded_b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
