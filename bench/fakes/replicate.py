"""Replicate's HTTP API on 127.0.0.1, from its documentation and replicate-python's client
(../shared/PROVIDERS.md, "Replicate"): predictions created at the three documented paths (201),
read at `urls.get`, cancelled at `urls.cancel`; `Authorization: Bearer <token>` or a 401 problem
document; `Cancel-After` honoured (aborted before the start, canceled after); webhooks signed as
Standard Webhooks with `whsec_…`; the files it made served at `/files/<name>`.

A prediction is `starting` for `queue_seconds` (so a create answers `starting`, as Replicate's does), then `processing` for its input's `seconds` (else
`seconds`), writing a tqdm line to its logs as it goes, then `succeeded` with `output` a list of one
PNG URL (`output="single"`: the URL itself), or `failed` with its input's `fail` as `error`.
"""

import base64
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook

from bench.fakes.base import Answer, FakeServer, Request, post

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
UNAUTHENTICATED = {"title": "Unauthenticated", "detail": "You did not pass a valid authentication token", "status": 401}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms)")


def duration(text: str) -> float | None:
    """`Cancel-After` as seconds: "30s", "1m", "1h30m", "500ms"."""
    parts = _DURATION.findall(text or "")
    if not parts or "".join(f"{n}{u}" for n, u in parts) != (text or "").strip():
        return None
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in parts)


@dataclass
class Prediction:
    id: str
    model: str
    version: str | None
    input: dict
    created: float
    queue_seconds: float
    seconds: float
    cancel_after: float | None
    webhook: str | None
    events: list
    canceled_at: float | None = None
    sent: set = field(default_factory=set)  # webhook events sent


class FakeReplicate(FakeServer):
    limit_answer = Answer(429, {"detail": "Request was throttled. Your rate limit resets in ~30s."})

    def __init__(self, *, token: str = "r8_test", seconds: float = 1.0, queue_seconds: float = 0.05,
                 webhook_secret: str = "whsec_" + base64.b64encode(b"replicate-fake-webhook-key!").decode(),
                 output: str = "list"):
        super().__init__()
        self.token, self.seconds, self.queue_seconds, self.output = token, seconds, queue_seconds, output
        self.webhook_secret = webhook_secret
        self.predictions: dict[str, Prediction] = {}
        self.webhooks_sent: list[tuple[str, str, int | None]] = []  # (prediction id, event, status code)

    # --- a prediction's life ----------------------------------------------------------------------

    def state(self, p: Prediction, now: float | None = None) -> dict:
        now = self.now() if now is None else now
        start, end = p.created + p.queue_seconds, p.created + p.queue_seconds + p.seconds
        body = {"id": p.id, "model": p.model, "version": p.version or "v-" + p.id[:8], "input": p.input, "logs": "",
                "output": None, "error": None, "status": "starting", "created_at": _iso(p.created),
                "started_at": None, "completed_at": None, "data_removed": False, "metrics": {},
                "urls": {"get": f"{self.url}/v1/predictions/{p.id}", "cancel": f"{self.url}/v1/predictions/{p.id}/cancel",
                         "web": f"https://replicate.com/p/{p.id}"}}
        ended_at = min(t for t in (end, p.canceled_at, p.cancel_after and p.created + p.cancel_after) if t)
        if now < min(start, ended_at):
            return body
        body["started_at"] = _iso(start) if start < ended_at else None
        if now < ended_at:
            done = int(20 * (now - start) / p.seconds) if p.seconds else 20
            body.update(status="processing", logs=f"Starting\n{done * 5:3d}%|{'#' * done:<20}| {done}/20 [00:01<00:01]\n")
            return body
        body["completed_at"] = _iso(ended_at)
        if p.canceled_at is not None and p.canceled_at <= ended_at:
            body["status"] = "canceled"
        elif ended_at < end:  # its Cancel-After passed
            body["status"] = "aborted" if ended_at <= start else "canceled"
        elif p.input.get("fail"):
            body.update(status="failed", error=str(p.input["fail"]))
        else:
            url = f"{self.url}/files/{p.id}.png"
            body.update(status="succeeded", logs="100%|####################| 20/20 [00:02<00:00]\n",
                        output=url if self.output == "single" else [url], metrics={"predict_time": p.seconds})
        return body

    def tick(self) -> None:
        """The webhooks that are due: a prediction's start and its end, when it asked for them."""
        with self.lock:
            due = []
            for p in self.predictions.values():
                if not p.webhook:
                    continue
                state = self.state(p)
                if state["started_at"] and "start" in p.events and "start" not in p.sent:
                    p.sent.add("start")
                    due.append((p, "start", state))
                if state["completed_at"] and "completed" in p.events and "completed" not in p.sent:
                    p.sent.add("completed")
                    due.append((p, "completed", state))
        for p, event, state in due:
            self.send_webhook(p.webhook, state, event=event)

    def send_webhook(self, url: str, prediction: dict, *, event: str = "completed", secret: str | None = None,
                     timestamp: datetime | None = None) -> int | None:
        """POST the prediction to `url`, signed as Replicate signs it (with another secret or time, to test)."""
        body = json.dumps(prediction).encode()
        message_id = f"msg_{uuid.uuid4().hex}"
        when = timestamp or datetime.now(timezone.utc)
        signature = Webhook(secret or self.webhook_secret).sign(message_id, when, body.decode())
        code = post(url, body, {"webhook-id": message_id, "webhook-timestamp": str(int(when.timestamp())),
                                "webhook-signature": signature})
        with self.lock:
            self.webhooks_sent.append((prediction["id"], event, code))
        return code

    # --- the API ----------------------------------------------------------------------------------

    def answer(self, request: Request) -> Answer:
        if request.method == "GET" and request.path.startswith("/files/"):
            return Answer(200, raw=PNG, headers={"Content-Type": "image/png"})
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Answer(401, UNAUTHENTICATED, {"Content-Type": "application/problem+json"})
        path = request.path
        if request.method == "POST" and path.endswith("/predictions"):
            return self._create(request)
        match = re.fullmatch(r"/v1/predictions/([^/]+)(/cancel)?", path)
        with self.lock:
            p = self.predictions.get(match[1]) if match else None
            if p is None:
                return Answer(404, {"detail": "Not found.", "status": 404})
            if match[2] and request.method == "POST":
                if not self.state(p)["completed_at"]:
                    p.canceled_at = self.now()
                return Answer(200, self.state(p))
            if request.method == "GET" and not match[2]:
                return Answer(200, self.state(p))
        return Answer(405, {"detail": "Method not allowed."})

    def _create(self, request: Request) -> Answer:
        body = request.json
        model_path = re.fullmatch(r"/v1/(?:models|deployments)/([^/]+/[^/]+)/predictions", request.path)
        if request.path == "/v1/predictions":
            if not body.get("version"):
                return Answer(422, {"detail": "- version: Required", "status": 422})
            model, version = None, body["version"]
        elif model_path:
            model, version = model_path[1], None
        else:
            return Answer(404, {"detail": "Not found.", "status": 404})
        if not isinstance(body.get("input"), dict):
            return Answer(422, {"detail": "- input: Required", "status": 422})
        cancel_after = None
        if "cancel-after" in request.headers:
            cancel_after = duration(request.headers["cancel-after"])
            if cancel_after is None:
                return Answer(400, {"detail": f"Invalid Cancel-After: {request.headers['cancel-after']}", "status": 400})
        p = Prediction(uuid.uuid4().hex[:26], model or "", version, body["input"], self.now(), self.queue_seconds,
                       float(body["input"].get("seconds", self.seconds)), cancel_after, body.get("webhook"),
                       body.get("webhook_events_filter") or ["output", "completed"])
        with self.lock:
            self.predictions[p.id] = p
            return Answer(201, self.state(p))


def _iso(monotonic: float) -> str:
    return datetime.fromtimestamp(time.time() - (time.monotonic() - monotonic), timezone.utc).isoformat().replace("+00:00", "Z")
