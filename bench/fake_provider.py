"""A generation provider on 127.0.0.1 that speaks the http runner's protocol (coordination/runners/
client.py), for the tests and the benchmark: real sockets, nothing of HTTP faked.

- `POST /poll` starts a job (`{"id", "status_url", "status": "queued"}`), `POST /callback` one that
  is also POSTed to the body's `callback_url` when it ends (signed `X-Signature: sha256=<HMAC>` with
  `callback_secret`, or `Authorization: Bearer` with it when `callback_bearer`), `POST /sync` answers
  the result at once. A job takes `params.seconds` (else `seconds`) and then succeeds, or fails when
  `params.fail` says so. The same `Idempotency-Key` is the same job.
- `GET /jobs/<id>` says how the job stands; `DELETE /jobs/<id>` cancels it (unless `confirm_cancel`
  is off: then 500).
- A finished job's `output` is `video://<id>.mp4` (names no file); with `files="listed"` its answer
  also lists `files: [{"url": <this fake>/files/<id>.mp4, "content_type": "video/mp4"}]`, with
  `files="in_output"` its `output` is that URL itself. `GET /files/<name>` answers a few bytes.
- `limit(n, retry_after=...)`: the next n requests are answered 429; `down()` / `up()`: the port
  refuses connections, then listens again (the same port).
"""

import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Job:
    id: str
    kind: str
    started: float
    seconds: float
    fail: str | None
    callback_url: str | None
    idempotency_key: str | None
    cancelled: bool = False
    called_back: bool = False


@dataclass
class FakeProvider:
    seconds: float = 1.0
    callback_secret: str = "cb-secret"
    callback_bearer: bool = False
    confirm_cancel: bool = True
    files: str = ""  # "": output names no file; "listed": the answer lists `files`; "in_output": output is a file's URL
    jobs: dict = field(default_factory=dict)
    by_key: dict = field(default_factory=dict)
    submits: list = field(default_factory=list)  # (idempotency key, job id), each POST accepted
    polls: list = field(default_factory=list)  # (job id, time)
    cancels: list = field(default_factory=list)
    downloads: list = field(default_factory=list)  # paths of the files it served
    limited: list = field(default_factory=list)  # paths answered 429
    callbacks: list = field(default_factory=list)  # (job id, status code we got back)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: set = field(default_factory=set)  # sockets of the connections open now
    _limit_left: int = 0
    _retry_after: str | None = None
    port: int = 0

    # --- running it ---------------------------------------------------------------------------

    def start(self, port: int = 0) -> "FakeProvider":
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._ticker_stop = threading.Event()
        threading.Thread(target=self._call_back_when_done, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._ticker_stop.set()
        self.server.shutdown()
        self.server.server_close()

    def down(self) -> None:
        """Refuse connections from now on (the port is closed, open ones are cut), until up()."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            open_ones, self.connections = list(self.connections), set()
        for sock in open_ones:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def up(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def limit(self, count: int, retry_after: str | None = None) -> None:
        with self.lock:
            self._limit_left, self._retry_after = count, retry_after

    # --- what it was asked ----------------------------------------------------------------------

    def submits_per_key(self) -> dict:
        with self.lock:
            counts: dict = {}
            for key, _ in self.submits:
                counts[key] = counts.get(key, 0) + 1
            return counts

    def polls_of(self, job_id: str) -> list[float]:
        with self.lock:
            return [at for polled, at in self.polls if polled == job_id]

    # --- the jobs -------------------------------------------------------------------------------

    def _state(self, job: Job) -> dict:
        if job.cancelled:
            return {"id": job.id, "status": "cancelled", "error": "cancelled by the client"}
        elapsed = time.monotonic() - job.started
        if elapsed < job.seconds:
            return {"id": job.id, "status": "running" if elapsed > 0 else "queued", "progress": round(elapsed / job.seconds, 3)}
        if job.fail:
            return {"id": job.id, "status": "failed", "error": job.fail}
        return {"id": job.id, "status": "succeeded", **self.made(job.id)}

    def made(self, name: str) -> dict:
        """A finished job's output (and `files`), as `files` says."""
        url = f"{self.url}/files/{name}.mp4"
        if self.files == "in_output":
            return {"output": url}
        if self.files == "listed":
            return {"output": f"video://{name}.mp4", "files": [{"url": url, "content_type": "video/mp4"}]}
        return {"output": f"video://{name}.mp4"}

    def _call_back_when_done(self) -> None:
        while not self._ticker_stop.wait(0.02):
            with self.lock:
                due = [job for job in self.jobs.values() if job.callback_url and not job.called_back
                       and (job.cancelled or time.monotonic() - job.started >= job.seconds)]
                for job in due:
                    job.called_back = True
            for job in due:
                self._call_back(job)

    def _call_back(self, job: Job) -> None:
        body = json.dumps(self._state(job)).encode()
        request = urllib.request.Request(job.callback_url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        if self.callback_bearer:
            request.add_header("Authorization", f"Bearer {self.callback_secret}")
        else:
            signature = hmac.new(self.callback_secret.encode(), body, hashlib.sha256).hexdigest()
            request.add_header("X-Signature", f"sha256={signature}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                code = answer.status
        except urllib.error.HTTPError as error:
            code = error.code
        except OSError:
            code = None
        with self.lock:
            self.callbacks.append((job.id, code))


def _handler(provider: FakeProvider):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real provider's API
        # Headers and body go out in two writes: with Nagle's algorithm on, a kept-alive connection's
        # second write waits for the client's delayed ACK (40 ms a request). A real server sends at once.
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def setup(self):
            super().setup()
            with provider.lock:
                provider.connections.add(self.connection)

        def finish(self):
            with provider.lock:
                provider.connections.discard(self.connection)
            super().finish()

        def _answer(self, status: int, body, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _limited(self) -> bool:
            with provider.lock:
                if provider._limit_left <= 0:
                    return False
                provider._limit_left -= 1
                retry_after = provider._retry_after
                provider.limited.append(urlsplit(self.path).path)
            self._answer(429, {"error": "rate limited"}, {"Retry-After": retry_after} if retry_after else None)
            return True

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self._limited():
                return
            path = urlsplit(self.path).path
            params = body.get("params") or {}
            if path == "/sync":
                return self._answer(200, provider.made(str(body.get("job_id"))))
            if path not in ("/poll", "/callback"):
                return self._answer(404, {"error": "no such route"})
            key = self.headers.get("Idempotency-Key")
            with provider.lock:
                job = provider.by_key.get(key) if key else None
                if job is None:
                    job = Job(f"p-{uuid.uuid4().hex[:10]}", path[1:], time.monotonic(),
                              float(params.get("seconds", provider.seconds)), params.get("fail"),
                              body.get("callback_url") if path == "/callback" else None, key)
                    provider.jobs[job.id] = job
                    if key:
                        provider.by_key[key] = job
                provider.submits.append((key, job.id))
                state = provider._state(job)
            self._answer(202, {**state, "status_url": f"/jobs/{job.id}"})

        def do_GET(self):
            if self._limited():
                return
            path = urlsplit(self.path).path
            if path.startswith("/files/"):
                with provider.lock:
                    provider.downloads.append(path)
                data = b"\x00\x00\x00\x18ftypmp42 fake video"
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                return self.wfile.write(data)
            job_id = path.rsplit("/", 1)[-1]
            with provider.lock:
                job = provider.jobs.get(job_id)
                provider.polls.append((job_id, time.monotonic()))
                state = provider._state(job) if job else None
            if state is None:
                return self._answer(404, {"error": f"no job {job_id}"})
            self._answer(200, state)

        def do_DELETE(self):
            job_id = urlsplit(self.path).path.rsplit("/", 1)[-1]
            with provider.lock:
                provider.cancels.append(job_id)
                job = provider.jobs.get(job_id)
                confirm = provider.confirm_cancel
                if job and confirm:
                    job.cancelled = True
            if not confirm:
                return self._answer(500, {"error": "cancel failed upstream"})
            self._answer(200 if job else 404, {"id": job_id, "status": "cancelled"})

    return Handler
