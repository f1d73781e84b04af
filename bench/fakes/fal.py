"""fal's queue API on 127.0.0.1, as its documentation and official client describe it
(../shared/PROVIDERS.md, "fal"): the tests' and the benchmark's fal.

- `POST /{owner}/{app}[/{path}]` (`Authorization: Key <key>`, else 401) takes the body as the model's
  input and answers `{request_id, status: "IN_QUEUE", queue_position, status_url, response_url,
  cancel_url}`; the three URLs name owner/app only, as fal's do. `?fal_webhook=<url>`: the end is
  POSTed there, signed (below); `X-Fal-Request-Timeout: <seconds>` is recorded, and a request still
  queued that long ends COMPLETED with `error_type: request_timeout` (fal's client: the header bounds
  the wait before processing starts, not the processing).
- At most `concurrency` requests are IN_PROGRESS at once; the others wait IN_QUEUE with their
  `queue_position` (0-indexed). A request takes the input's `seconds` (else `seconds`), logging
  `NN%|███   | i/10` lines as it goes (`?logs=1` shows them), then ends COMPLETED.
- `GET …/requests/{id}/status`: 202 while IN_QUEUE or IN_PROGRESS, 200 once COMPLETED. `GET
  …/requests/{id}` (response_url): the output, `{"images": [{"url": <this fake>/files/<id>.png,
  "content_type": "image/png", ...}], "seed", "prompt"}` (an app whose id names "video":
  `{"video": {"url": …/<id>.mp4, ...}}`); `GET /files/<name>` serves the file's bytes.
- Failures, from the input: `"fail": <words>` ends COMPLETED with `error` and `error_type:
  runner_server_error` (its response_url answers 500 with them); `"reject": <words>` ends COMPLETED
  without an error whose response_url answers 422 with a model error, `detail: [{loc, msg, type}]`.
- `PUT …/requests/{id}/cancel`: a queued request is removed (200 `OK`; then COMPLETED with
  `error_type: client_cancelled`), one in progress gets the signal (202 `CANCELLATION_REQUESTED`) and
  ends so `cancel_delay` seconds later; an ended one: 400 `ALREADY_COMPLETED`, an unknown one: 404
  `NOT_FOUND`. (fal names these four answers; their status codes and words are ours.)
- Webhooks: `{request_id, gateway_request_id, status: "OK"|"ERROR", payload[, error]}`, signed with
  an ED25519 key pair made at start: headers `X-Fal-Webhook-Request-Id`, `-User-Id`, `-Timestamp`,
  `-Signature` (hex) over `request_id\\nuser_id\\ntimestamp\\nsha256hex(body)`; its public key at
  `GET /.well-known/jwks.json`. `signed(body, ...)` makes such headers for a test (a stale time, another key).
- `limit(n, retry_after=...)` (bench/fakes/base.py): the next n requests are answered 429. `tls=True`:
  https, with a certificate made for 127.0.0.1 (`cert_file`), for fal's own client (fal_client).
"""

import base64
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.fakes.base import Answer, FakeServer, Request, localhost_tls, post

# A 1x1 PNG: what every "image" is.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
STEPS = 10


@dataclass
class Job:
    id: str
    app: str  # owner/app: where its URLs live
    endpoint: str  # owner/app[/path], as submitted
    input: dict
    submitted: float
    seconds: float
    timeout: float | None
    webhook: str | None
    started: float | None = None
    ended: float | None = None
    cancel_asked: float | None = None
    error: str | None = None
    error_type: str | None = None
    logs: list = field(default_factory=list)


class FakeFal(FakeServer):
    def __init__(self, *, key: str = "fal-test-key", seconds: float = 1.0, concurrency: int = 2,
                 cancel_delay: float = 0.3, user_id: str = "fake-user", tls: bool = False):
        super().__init__()
        if tls:  # fal's own client speaks https only: FAL_QUEUE_RUN_HOST=127.0.0.1:<port>, SSL_CERT_FILE=cert_file
            self.tls, self.cert_file = localhost_tls()
        self.key, self.seconds, self.concurrency, self.cancel_delay, self.user_id = key, seconds, concurrency, cancel_delay, user_id
        self.jobs: dict[str, Job] = {}
        self.webhooks: list[tuple[str, int]] = []  # (request id, the status code our receiver answered)
        self.signing_key = Ed25519PrivateKey.generate()

    def tick(self) -> None:
        """The clock moves without requests: requests start, end and call back on their own."""
        self._advance()

    # --- what a test looks at -----------------------------------------------------------------

    def job(self, request_id: str) -> Job:
        with self.lock:
            return self.jobs[request_id]

    def state(self, request_id: str) -> str:
        with self.lock:
            return _state(self.jobs[request_id])

    def signed(self, body: bytes, *, request_id: str, timestamp: int | None = None, key: Ed25519PrivateKey | None = None) -> dict:
        """The headers fal signs a webhook with (at `timestamp`, with `key`: this fake's unless given)."""
        timestamp = int(time.time()) if timestamp is None else timestamp
        message = f"{request_id}\n{self.user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
        return {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": self.user_id,
                "X-Fal-Webhook-Timestamp": str(timestamp),
                "X-Fal-Webhook-Signature": (key or self.signing_key).sign(message).hex()}

    def webhook_body(self, request_id: str) -> bytes:
        """What this fake POSTs (or POSTed) to the request's webhook when it ended."""
        with self.lock:
            job = self.jobs[request_id]
            body = {"request_id": job.id, "gateway_request_id": job.id}
            if job.error_type:
                body.update(status="ERROR", error=job.error, payload=self._failure(job))
            elif "reject" in job.input:
                body.update(status="ERROR", error="Invalid status code: 422", payload=self._failure(job))
            else:
                body.update(status="OK", payload=self._output(job))
        return json.dumps(body).encode()

    def deliver(self, request_id: str) -> int:
        """POST the request's webhook (again), signed now; the status code our receiver answered."""
        job = self.job(request_id)
        body = self.webhook_body(request_id)
        code = post(job.webhook, body, self.signed(body, request_id=request_id)) or 0
        with self.lock:
            self.webhooks.append((request_id, code))
        return code

    # --- the clock ----------------------------------------------------------------------------

    def _advance(self) -> None:
        """Move every request on to now: ends first (freeing room), then starts in submission order."""
        ended = []
        with self.lock:
            now = self.now()
            for job in self.jobs.values():
                if job.ended is not None:
                    continue
                if job.started is None:
                    if job.timeout is not None and now - job.submitted >= job.timeout:
                        self._end(job, now, "Request timed out", "request_timeout")
                        ended.append(job)
                    continue
                if job.cancel_asked is not None and now >= job.cancel_asked + self.cancel_delay:
                    self._end(job, now, "Request was cancelled by the client", "client_cancelled")
                elif now >= job.started + job.seconds:
                    self._end(job, now, job.input.get("fail"), "runner_server_error" if "fail" in job.input else None)
                else:
                    done = min(STEPS, int(STEPS * (now - job.started) / max(job.seconds, 1e-6)))
                    while len(job.logs) <= done:
                        self._log(job, len(job.logs))
                    continue
                ended.append(job)
            running = sum(1 for job in self.jobs.values() if job.started is not None and job.ended is None)
            for job in self.jobs.values():
                if running >= self.concurrency:
                    break
                if job.started is None and job.ended is None:
                    job.started, running = now, running + 1
                    self._log(job, 0)
        for job in ended:
            if job.webhook:
                threading.Thread(target=self.deliver, args=(job.id,), daemon=True).start()

    def _end(self, job: Job, now: float, error: str | None, error_type: str | None) -> None:
        job.ended, job.error, job.error_type = now, error, error_type
        if job.started is not None and error is None:
            while len(job.logs) <= STEPS:
                self._log(job, len(job.logs))

    @staticmethod
    def _log(job: Job, step: int) -> None:
        bar = "█" * step + " " * (STEPS - step)
        job.logs.append({"message": f"{100 * step // STEPS:3d}%|{bar}| {step}/{STEPS}", "level": "INFO",
                         "source": "USER", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())})

    # --- answering ----------------------------------------------------------------------------

    def answer(self, request: Request) -> Answer:
        parts = [part for part in request.path.split("/") if part]
        if request.method == "GET" and request.path == "/.well-known/jwks.json":
            return Answer(200, self.jwks())
        if request.method == "GET" and parts[:1] == ["files"] and len(parts) == 2:
            return self._file(parts[1])
        if request.headers.get("authorization") != f"Key {self.key}":
            return Answer(401, {"detail": "No user found for Key ID and Secret"})
        self._advance()
        if request.method == "POST" and len(parts) >= 2:
            return self._submit(request, parts)
        if len(parts) >= 4 and parts[2] == "requests":
            with self.lock:
                job = self.jobs.get(parts[3])
                if job is None or job.app != "/".join(parts[:2]):
                    return Answer(404, {"detail": f"Request {parts[3]} not found"} if request.method != "PUT"
                                  else {"status": "NOT_FOUND"})
                rest = parts[4:]
                if request.method == "GET" and rest == ["status"]:
                    return self._status(job, logs=request.query.get("logs") in ("1", "true", "True"))
                if request.method == "GET" and rest == []:
                    return self._result(job)
                if request.method == "PUT" and rest == ["cancel"]:
                    return self._cancel(job)
        return Answer(404, {"detail": "Not Found"})

    def jwks(self) -> dict:
        raw = self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "fake-fal", "use": "sig", "alg": "EdDSA"}]}

    def _submit(self, request: Request, parts: list[str]) -> Answer:
        try:
            body = request.json
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return Answer(422, {"detail": [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]})
        timeout = request.headers.get("x-fal-request-timeout")
        seconds = body.get("seconds", self.seconds)
        job = Job(uuid.uuid4().hex, "/".join(parts[:2]), "/".join(parts), body, self.now(),
                  float(seconds) if isinstance(seconds, (int, float)) else self.seconds,
                  float(timeout) if timeout else None, request.query.get("fal_webhook"))
        with self.lock:
            self.jobs[job.id] = job
        self._advance()
        with self.lock:
            answer = {**self._urls(job), "status": "IN_QUEUE", "queue_position": self._position(job) or 0}
        if job.webhook:
            answer["gateway_request_id"] = job.id
        return Answer(200, answer)

    def _urls(self, job: Job) -> dict:
        base = f"{self.url}/{job.app}/requests/{job.id}"
        return {"request_id": job.id, "response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    def _position(self, job: Job) -> int | None:
        queued = [other for other in self.jobs.values() if other.started is None and other.ended is None]
        return queued.index(job) if job in queued else None

    def _status(self, job: Job, *, logs: bool) -> Answer:
        state = _state(job)
        body = {**self._urls(job), "status": state, "logs": list(job.logs) if logs else None}
        if state == "IN_QUEUE":
            body["queue_position"] = self._position(job)
        if state == "COMPLETED":
            body["metrics"] = {"inference_time": round(job.ended - job.started, 3) if job.started is not None else None}
            if job.error_type:
                body.update(error=job.error, error_type=job.error_type)
        return Answer(200 if state == "COMPLETED" else 202, body)

    def _result(self, job: Job) -> Answer:
        if job.ended is None:
            return Answer(400, {"detail": "Request is still in progress"})
        if job.error_type:
            return Answer({"request_timeout": 504, "client_cancelled": 499}.get(job.error_type, 500),
                          self._failure(job), headers={"X-Fal-Error-Type": job.error_type})
        if "reject" in job.input:
            return Answer(422, self._failure(job), headers={"X-Fal-Retryable": "false"})
        return Answer(200, self._output(job))

    def _failure(self, job: Job) -> dict:
        if job.error_type:
            return {"detail": job.error, "error_type": job.error_type}
        return {"detail": [{"loc": ["body", "prompt"], "msg": str(job.input["reject"]), "type": "content_policy_violation"}]}

    def _output(self, job: Job) -> dict:
        if "video" in job.app:
            return {"video": {"url": f"{self.url}/files/{job.id}.mp4", "content_type": "video/mp4",
                              "file_name": f"{job.id}.mp4", "file_size": len(MP4)}, "seed": 42}
        return {"images": [{"url": f"{self.url}/files/{job.id}.png", "content_type": "image/png", "file_name": f"{job.id}.png",
                            "file_size": len(PNG), "width": 1, "height": 1}],
                "seed": 42, "has_nsfw_concepts": [False], "prompt": job.input.get("prompt")}

    def _cancel(self, job: Job) -> Answer:
        if job.ended is not None:
            return Answer(400, {"status": "ALREADY_COMPLETED"})
        if job.started is None:
            self._end(job, self.now(), "Request was cancelled by the client", "client_cancelled")
            if job.webhook:
                threading.Thread(target=self.deliver, args=(job.id,), daemon=True).start()
            return Answer(200, {"status": "OK"})
        if job.cancel_asked is None:
            job.cancel_asked = self.now()
        return Answer(202, {"status": "CANCELLATION_REQUESTED"})

    @staticmethod
    def _file(name: str) -> Answer:
        if name.endswith(".png"):
            return Answer(200, raw=PNG, headers={"Content-Type": "image/png"})
        if name.endswith(".mp4"):
            return Answer(200, raw=MP4, headers={"Content-Type": "video/mp4"})
        return Answer(404, {"detail": "Not Found"})


def _state(job: Job) -> str:
    if job.ended is not None:
        return "COMPLETED"
    return "IN_QUEUE" if job.started is None else "IN_PROGRESS"
