"""RunPod's serverless API (queue-based endpoints) on 127.0.0.1, as its documentation and its official
client (runpod-python) have it (../shared/PROVIDERS.md, RunPod):

- `POST /v2/{endpoint}/run` `{"input", "webhook"?, "policy"?: {"executionTimeout", "ttl"}}` answers
  `{"id", "status": "IN_QUEUE"}`; `POST /v2/{endpoint}/runsync[?wait=ms]` answers the job's status
  once it ended, or `{"id", "status"}` when `wait` passed first;
- `GET /v2/{endpoint}/status/{id}` answers `{"id", "status", "delayTime", "executionTime", "output"?,
  "error"?}`; a job the fake does not have (never, or no longer: `retention` s after it ended, or
  `forget`) is a 404;
- `POST /v2/{endpoint}/cancel/{id}` answers `{"id", "status": "CANCELLED"}` for a queued or running
  job, and its own status for one that ended;
- `Authorization: Bearer <api_key>` (or the bare key, as the documentation's curl examples send it);
  without it, 401;
- a job waits IN_QUEUE until one of `workers` is free, is IN_PROGRESS for its `seconds` with its
  progress as `output` (progress_update), then COMPLETED or FAILED; TIMED_OUT when it runs longer
  than its executionTimeout, or waits in the queue longer than its ttl;
- when a job ends (COMPLETED, FAILED, TIMED_OUT) its status is POSTed to its `webhook`, tried again
  up to 2 more times `webhook_gap` s apart (RunPod: 10 s) until one is answered 200;
- its output's files are served by the fake itself: `GET /files/{name}`.

What RunPod does not document, decided here: the bodies of its 401, 404 and 429 answers (`{"error":
...}`), whether a cancelled job calls the webhook (no: the SDK counts CANCELLED as no final state),
and a cancel's answer for a job that had ended (its status).

A job's input says how it goes: `seconds` (else the fake's), `fail` (it FAILS with these words, as a
handler that raised them, or, with `"fail_as": "return"`, returned `{"error": ...}`), `output` (its
output, else images and a video of the fake's own), `progress_as` (else the fake's: "fraction" 0-1,
"percent" 0-100, "object" `{"progress", "message"}`, "text" "step i of 8").
"""

import json
import threading
import uuid
from dataclasses import dataclass

from bench.fakes.base import Answer, FakeServer, Request, post

FINAL = ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED")
CALLED_BACK = ("COMPLETED", "FAILED", "TIMED_OUT")
WEBHOOK_TRIES = 3
FILES = {"png": ("image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64), "mp4": ("video/mp4", b"\0\0\0\x18ftypmp42" + b"\0" * 64)}


@dataclass
class Job:
    id: str
    endpoint: str
    input: dict
    submitted_at: float
    execution_timeout: float | None  # seconds
    ttl: float | None  # seconds
    webhook: str | None
    status: str = "IN_QUEUE"
    started_at: float | None = None
    ended_at: float | None = None
    output: object = None
    error: str | None = None


class FakeRunPod(FakeServer):
    limit_answer = Answer(429, {"error": "Too many requests."})

    def __init__(self, *, api_key: str = "rp-test-key", workers: int = 1, seconds: float = 1.0,
                 progress_as: str = "fraction", webhook_gap: float = 10.0, retention: float = 1800.0):
        super().__init__()
        self.api_key, self.workers, self.seconds, self.progress_as = api_key, workers, seconds, progress_as
        self.webhook_gap, self.retention = webhook_gap, retention
        self.jobs: dict[str, Job] = {}
        self.webhooks: list[tuple[str, int | None]] = []  # each try: (job id, the answer's status, None: no answer)
        self._changed = threading.Condition(self.lock)


    def job(self, job_id: str) -> Job:
        with self.lock:
            return self.jobs[job_id]

    def forget(self, job_id: str) -> None:
        """RunPod deleted the job (its result expired, or its ttl passed): asked about, it is a 404."""
        with self.lock:
            del self.jobs[job_id]

    def submitted(self) -> list[dict]:
        """The bodies of the jobs submitted (/run and /runsync), in order."""
        return [r.json for r in self.asked("POST", "/v2/") if r.path.endswith(("/run", "/runsync"))]

    # --- answering ------------------------------------------------------------------------------

    def answer(self, request: Request) -> Answer:
        parts = request.path.strip("/").split("/")
        if request.method == "GET" and len(parts) == 2 and parts[0] == "files":
            content_type, data = FILES.get(parts[1].rpartition(".")[2], ("application/octet-stream", b"\0" * 16))
            return Answer(200, headers={"Content-Type": content_type}, raw=data)
        if parts[0] != "v2" or len(parts) < 3:
            return Answer(404, {"error": "not found"})
        if request.headers.get("authorization", "").removeprefix("Bearer ").strip() != self.api_key:
            return Answer(401, {"error": "Unauthorized"})
        endpoint, operation, rest = parts[1], parts[2], parts[3:]
        if request.method == "POST" and operation in ("run", "runsync") and not rest:
            return self._submit(endpoint, request, sync=operation == "runsync")
        if len(rest) == 1 and (request.method, operation) in (("GET", "status"), ("POST", "cancel")):
            with self.lock:
                self._advance()
                job = self.jobs.get(rest[0])
                if job is None or job.endpoint != endpoint:
                    return Answer(404, {"error": "request does not exist"})
                if operation == "cancel" and job.status not in FINAL:
                    self._end(job, "CANCELLED")
                    self._advance()
                return Answer(200, self._status(job) if operation == "status" else {"id": job.id, "status": job.status})
        return Answer(404, {"error": "not found"})

    def _submit(self, endpoint: str, request: Request, *, sync: bool) -> Answer:
        try:
            body = request.json
        except ValueError:
            return Answer(400, {"error": "The body is not JSON."})
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return Answer(400, {"error": "The body needs \"input\": an object."})
        policy = body.get("policy") or {}
        timeout, ttl = policy.get("executionTimeout"), policy.get("ttl")
        if timeout is not None and not (isinstance(timeout, int) and timeout > 5000):
            return Answer(400, {"error": "policy.executionTimeout must be more than 5000 ms."})
        if ttl is not None and not (isinstance(ttl, int) and 10_000 <= ttl <= 7 * 24 * 3600 * 1000):
            return Answer(400, {"error": "policy.ttl must be 10000 ms to one week."})
        with self.lock:
            job = Job(f"{'sync-' if sync else ''}{uuid.uuid4()}-u1", endpoint, body["input"], self.now(),
                      timeout / 1000 if timeout else 600.0, ttl / 1000 if ttl else None, body.get("webhook"))
            self.jobs[job.id] = job
            self._advance()
            if not sync:
                return Answer(200, {"id": job.id, "status": job.status})
            wait = min(max(int(request.query.get("wait") or 90_000), 1000), 300_000) / 1000
            self._changed.wait_for(lambda: job.status in FINAL, timeout=wait)
            return Answer(200, self._status(job) if job.status in FINAL else {"id": job.id, "status": job.status})

    def _status(self, job: Job) -> dict:
        now = self.now()
        body = {"id": job.id, "status": job.status,
                "delayTime": round(1000 * ((job.started_at or job.ended_at or now) - job.submitted_at)),
                "executionTime": round(1000 * ((job.ended_at or now) - job.started_at)) if job.started_at else 0}
        if job.status == "IN_PROGRESS":
            body["output"] = self._progress(job, now)
        elif job.output is not None:
            body["output"] = job.output
        if job.error is not None:
            body["error"] = job.error
        return body

    def _progress(self, job: Job, now: float):
        fraction = round(min(1.0, (now - job.started_at) / max(self._seconds(job), 1e-9)), 2)
        form = job.input.get("progress_as", self.progress_as)
        return {"fraction": fraction, "percent": round(100 * fraction),
                "object": {"progress": fraction, "message": f"step {int(8 * fraction)} of 8"},
                "text": f"step {int(8 * fraction)} of 8"}.get(form, fraction)

    # --- the jobs' lives ------------------------------------------------------------------------

    def _seconds(self, job: Job) -> float:
        return float(job.input.get("seconds", self.seconds))

    def tick(self) -> None:
        with self.lock:
            self._advance()

    def _advance(self) -> None:
        """Under the lock: end the jobs whose time came, start queued ones on the free workers, and
        delete the results kept past `retention`."""
        now = self.now()
        for job in list(self.jobs.values()):
            if job.status == "IN_PROGRESS":
                ran, seconds = now - job.started_at, self._seconds(job)
                if seconds > job.execution_timeout and ran >= job.execution_timeout:
                    self._end(job, "TIMED_OUT")
                elif ran >= seconds:
                    self._finish(job)
            elif job.status == "IN_QUEUE" and job.ttl is not None and now - job.submitted_at >= job.ttl:
                self._end(job, "TIMED_OUT")
            elif job.status in FINAL and now - job.ended_at >= self.retention:
                del self.jobs[job.id]
        busy = sum(job.status == "IN_PROGRESS" for job in self.jobs.values())
        for job in self.jobs.values():
            if busy >= self.workers:
                break
            if job.status == "IN_QUEUE":
                job.status, job.started_at, busy = "IN_PROGRESS", now, busy + 1

    def _finish(self, job: Job) -> None:
        if "fail" in job.input:
            words = str(job.input["fail"])
            if job.input.get("fail_as") != "return":  # a handler that raised: runpod-python's error_info
                words = json.dumps({"error_type": "<class 'RuntimeError'>", "error_message": words,
                                    "error_traceback": f"Traceback (most recent call last):\nRuntimeError: {words}\n",
                                    "hostname": "fake", "worker_id": "fake", "runpod_version": "1.12.0"})
            job.error = words
            self._end(job, "FAILED")
            return
        default = {"images": [{"url": f"{self.url}/files/{job.id}-0.png", "seed": 42}],
                   "video": f"{self.url}/files/{job.id}.mp4", "prompt": job.input.get("prompt")}
        job.output = job.input.get("output", default)
        self._end(job, "COMPLETED")

    def _end(self, job: Job, status: str) -> None:
        job.status, job.ended_at = status, self.now()
        self._changed.notify_all()
        if job.webhook and status in CALLED_BACK:
            threading.Thread(target=self._call_back, args=(job.id, job.webhook, self._status(job)), daemon=True).start()

    def _call_back(self, job_id: str, url: str, body: dict) -> None:
        data = json.dumps(body).encode()
        for tried in range(WEBHOOK_TRIES):
            if tried and self.stopped.wait(self.webhook_gap):
                return
            code = post(url, data, {})
            with self.lock:
                self.webhooks.append((job_id, code))
            if code == 200:
                return
