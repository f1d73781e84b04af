"""The database goes away mid-run and comes back: the API says so (503, JSON), nothing is lost.

Runs its own throw-away PostgreSQL (initdb and pg_ctl from the machine's PostgreSQL, its own
folder and port), a web server (gunicorn) and a worker (qcluster) against it.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import BASE_DIR, HttpApi, wait_until

pytestmark = pytest.mark.e2e  # its own PostgreSQL

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


PORT_PG, PORT_WEB = free_port(), free_port()


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def as_postgres(command: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server's tools as the postgres user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@pytest.fixture
def throwaway_pg(tmp_path):
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("needs PostgreSQL's initdb and pg_ctl (Debian package postgresql)")
    # Not under pytest's tmp_path: its parents are closed to the postgres user.
    home = Path(tempfile.mkdtemp(prefix="jobqueue-outage-"))
    data = home / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "root"]), check=True,
                   capture_output=True)
    log = home / "pg.log"
    control = Control(pg_ctl, data, log)
    control.start()
    subprocess.run(as_postgres([pg_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(PORT_PG), "-U", "root",
                                "jobqueue"]), check=True)
    yield control
    control.stop()
    shutil.rmtree(home, ignore_errors=True)


class Control:
    def __init__(self, pg_ctl: str, data: Path, log: Path):
        self.pg_ctl, self.data, self.log = pg_ctl, data, log

    def start(self) -> None:
        subprocess.run(as_postgres([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-o",
                                    f"-p {PORT_PG} -k /tmp -c listen_addresses=127.0.0.1", "start"]),
                       check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(as_postgres([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)


def manage(env: dict, *args: str) -> str:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, check=True,
                          capture_output=True, text=True).stdout


def get_json(url: str) -> tuple[int, dict | None]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except OSError:
        return 0, None


def test_an_outage_is_answered_503_and_every_accepted_job_ends(throwaway_pg, tmp_path):
    env = {**os.environ, "DATABASE_URL": f"postgres://root@127.0.0.1:{PORT_PG}/jobqueue", "LOG_FILE": "",
           "COORDINATOR_LEASE_SECONDS": "3", "COORDINATOR_REAPER_SECONDS": "1", "CONN_MAX_AGE": "0"}
    manage(env, "migrate", "--noinput")
    manage(env, "shell", "-c", "from django.contrib.auth.models import User; User.objects.create_user('outage')")
    token = manage(env, "drf_create_token", "outage").split()[2]
    processes = []
    try:
        for name, command in (
            ("web", [sys.executable, "-m", "gunicorn", "jobqueue_site.wsgi:application", "--bind",
                     f"127.0.0.1:{PORT_WEB}", "--workers", "2"]),
            ("worker", [sys.executable, "manage.py", "qcluster"]),
        ):
            log = open(tmp_path / f"{name}.log", "w")
            processes.append(subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        base = f"http://127.0.0.1:{PORT_WEB}"
        wait_until(lambda: get_json(base + "/health")[0] == 200, timeout=30, message="the web server")
        api = HttpApi(base, token)
        accepted = []
        for prompt, seconds in (("before the outage", 4), ("queued behind it", 0.5)):
            status, job = api.post("/jobs", {"prompt": prompt, "model": "flux-dev", "params": {"simulate_seconds": seconds}})
            assert status == 201
            accepted.append(job["job_id"])

        throwaway_pg.stop()
        status, body = api.post("/jobs", {"prompt": "during the outage", "model": "flux-dev"})
        assert status == 503 and body["code"] == "database_unavailable", body
        status, body = api.get(f"/jobs/{accepted[0]}")
        assert status == 503 and "unavailable" in body["error"]
        assert get_json(base + "/health")[0] == 503
        throwaway_pg.start()

        def outcomes():
            results = [api.get(f"/jobs/{job_id}") for job_id in accepted]
            if all(code == 200 and body["status"] in {"completed", "failed", "cancelled"} for code, body in results):
                return [body for _, body in results]
            return None

        ended = wait_until(outcomes, timeout=60, message="every accepted job to end with an outcome")
        assert all(job["completed_at"] for job in ended)
        status, job = api.post("/jobs", {"prompt": "after the outage", "model": "flux-dev", "params": {"simulate_seconds": 0}})
        assert status == 201, "the web side carries on"
        wait_until(lambda: api.get(f"/jobs/{job['job_id']}")[1]["status"] == "completed", timeout=30,
                   message="the worker to carry on")
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
