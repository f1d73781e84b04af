"""A real worker (`manage.py qcluster` in its own process) and a small HTTP client for e2e tests."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

BASE_DIR = Path(settings.BASE_DIR)
# "2026-12-01 10:30:00,123 [COORDINATOR] ...": the guide's words after the time the other lines have.
TIMED_COORDINATOR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\[COORDINATOR\] .*)$")


def wait_until(predicate, *, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def test_database_url() -> str:
    """The URL of the database this test runs against, for a process we start."""
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db["HOST"] or "127.0.0.1"
    # A Unix socket's folder (the embedded PostgreSQL's) goes in the host part, percent-encoded.
    host = quote(host, safe="") if host.startswith("/") else host
    return f"postgres://{db['USER']}{password}@{host}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class Started:
    """A process of the product's that a test started, its output going to `log_path`."""

    process: subprocess.Popen
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGTERM to the main process only: qcluster (or gunicorn) then stops its workers cleanly.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@dataclass
class Worker(Started):
    def coordinator_lines(self) -> list[str]:
        """The worker's [COORDINATOR] lines without their time (each must carry one, as django-q's do)."""
        return [match[1] for line in self.output().splitlines() if (match := TIMED_COORDINATOR_LINE.match(line))]


def start_worker(log_path: Path, **env) -> Worker:
    environment = {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "LOG_FILE": "",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=BASE_DIR,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = Worker(process, log_path)
    try:
        wait_until(
            lambda: process.poll() is not None or "running." in worker.output(),
            timeout=60,
            message="the qcluster to report it is running",
        )
    except AssertionError:
        worker.stop()
        raise
    if process.poll() is not None:
        raise AssertionError(f"qcluster exited early:\n{worker.output()}")
    return worker


class HttpApi:
    """Talks to the live server over real HTTP, with token auth, as a user's curl would."""

    def __init__(self, base_url: str, token: str | None):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.last_headers = None  # the last answer's headers (Retry-After, say)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                self.last_headers = response.headers
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            self.last_headers = error.headers
            return error.code, json.loads(error.read() or b"null")

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        return self.request("POST", path, body)

    def get(self, path: str) -> tuple[int, dict]:
        return self.request("GET", path)


@dataclass
class Web(Started):
    """The web server as `make run` starts it (gunicorn, uvicorn workers, jobqueue_site.asgi), in its
    own process, on a port of its own."""

    url: str = ""


def start_web(log_path: Path, **env) -> Web:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.set_inheritable(True)
    port = listener.getsockname()[1]
    environment = {**os.environ, "DATABASE_URL": test_database_url(), "LOG_FILE": "", "PYTHONUNBUFFERED": "1", **env}
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "jobqueue_site.asgi:application", "--worker-class", "jobqueue_site.server.Worker",
         "--bind", f"fd://{listener.fileno()}", "--workers", "1", "--graceful-timeout", "5"],
        cwd=BASE_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        pass_fds=[listener.fileno()],
    )
    listener.close()
    web = Web(process, log_path, f"http://127.0.0.1:{port}")

    def answers():
        if process.poll() is not None:
            return True
        try:
            with urllib.request.urlopen(web.url + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(answers, timeout=60, interval=0.1, message="the web server to answer /health")
    except AssertionError:
        web.stop()
        raise
    if process.poll() is not None:
        raise AssertionError(f"the web server exited early:\n{web.output()}")
    return web
