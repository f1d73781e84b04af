"""Live status as a client meets it: the web server `make run` starts (gunicorn, uvicorn workers,
ASGI) in its own process, a real qcluster, and plain HTTP: event streams (Server-Sent Events),
reconnects with Last-Event-ID, and answers that wait (`Prefer: wait=N`)."""

import http.client
import json
import time
import urllib.parse
from pathlib import Path

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token

from coordination.models import Job, JobEvent
from tests.e2e.harness import HttpApi, start_web, wait_until
from tests.factories import UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WEB_THREADS = 8
SERVER_NAME = "jobqueue-test-web"


@pytest.fixture
def web(transactional_db, tmp_path):
    # PGAPPNAME names the server's PostgreSQL connections, so that a test can count them.
    server = start_web(tmp_path / "web.log", COORDINATOR_EVENTS_KEEPALIVE="1", WEB_THREADS=str(WEB_THREADS),
                       PGAPPNAME=SERVER_NAME)
    yield server
    server.stop()


def token_for(user) -> str:
    return Token.objects.create(user=user).key


@pytest.fixture
def alice():
    return token_for(UserFactory())


@pytest.fixture
def api(web, alice):
    return HttpApi(web.url, alice)


class EventStream:
    """A client of one text/event-stream answer, read event by event as it arrives."""

    def __init__(self, base_url: str, path: str, token: str | None, last_event_id: str | None = None):
        parts = urllib.parse.urlsplit(base_url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        headers = {"Accept": "text/event-stream"}
        if token:
            headers["Authorization"] = f"Token {token}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.connection.request("GET", path, headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.comments = 0

    def events(self):
        """Each event as {"id", "event", "data"} (data parsed), until the server ends the stream."""
        fields = {}
        while True:
            line = self.response.readline()
            if not line:
                return
            line = line.decode().rstrip("\r\n")
            if line.startswith(":"):
                self.comments += 1
            elif line:
                key, _, value = line.partition(":")
                fields[key] = value[1:] if value.startswith(" ") else value
            elif fields:
                yield {"id": fields.get("id"), "event": fields.get("event"), "data": json.loads(fields["data"])}
                fields = {}

    def until(self, event: str) -> list[dict]:
        got = []
        for item in self.events():
            got.append(item)
            if item["event"] == event:
                return got
        raise AssertionError(f"the stream ended before {event}: {[item['event'] for item in got]}")

    def close(self) -> None:
        self.connection.close()


def submit(api, model="flux-dev", seconds=0.5, **extra) -> dict:
    status, job = api.post("/jobs", {"prompt": "A knight", "model": model, "params": {"simulate_seconds": seconds}, **extra})
    assert status == 201, job
    return job


def ended(job_id) -> bool:
    return Job.objects.get(pk=job_id).status in Job.FINISHED


def test_a_jobs_stream_starts_with_it_now_tells_each_change_in_order_and_ends_after_the_last(web, api, alice, worker):
    first = submit(api, seconds=1.0)
    second = submit(api, seconds=0.3)
    stream = EventStream(web.url, f"/jobs/{second['job_id']}/events", alice)
    assert stream.status == 200 and stream.response.getheader("Content-Type").startswith("text/event-stream")

    events = list(stream.events())  # the server ends it after the terminal event

    names = [item["event"] for item in events]
    # It ends with job.files: the job's file kept (coordination/outputs), after its completion.
    assert names[0] == "job.state" and names[-2:] == ["job.completed", "job.files"] and "job.started" in names
    assert all(item["data"]["job_id"] == second["job_id"] for item in events)
    state = events[0]["data"]
    assert state["status"] == "pending" and state["blocked_by_job_id"] == first["job_id"]
    assert state["conflict_reason"] == f"Model conflict: flux-dev in use by normal job {first['job_id']}"
    started = events[names.index("job.started")]["data"]
    assert started["status"] == "running" and started["started_at"] and started["blocked_by_job_id"] is None
    done = events[-2]["data"]
    assert done["status"] == "completed" and done["result"]["output"] == f"simulated://flux-dev/{second['job_id']}"
    assert [file["state"] for file in events[-1]["data"]["result"]["files"]] == ["stored"]
    ids = [int(item["id"].split(":")[0]) for item in events]
    assert ids == sorted(ids)
    _, now = api.get(f"/jobs/{second['job_id']}")
    assert {key: done[key] for key in ("status", "started_at", "completed_at")} == {
        key: now[key] for key in ("status", "started_at", "completed_at")
    }
    assert done["result"]["output"] == now["result"]["output"]


def test_a_reconnect_with_last_event_id_is_told_every_change_it_missed_and_then_that_nothing_more_will_come(
    web, api, alice, worker,
):
    submit(api, seconds=0.5)
    job = submit(api, seconds=0.2)
    stream = EventStream(web.url, f"/jobs/{job['job_id']}/events", alice)
    first = next(stream.events())
    stream.close()  # gone while the job waits, starts and completes
    assert first["event"] == "job.state" and first["data"]["status"] == "pending"
    wait_until(lambda: ended(job["job_id"]), timeout=60, message="the job to end")

    again = EventStream(web.url, f"/jobs/{job['job_id']}/events", alice, last_event_id=first["id"])
    missed = list(again.events())

    names = [item["event"] for item in missed]
    assert names[-3:] == ["job.started", "job.completed", "job.files"]
    started = missed[-3]["data"]
    # The job as it was when it started, not as it is now.
    assert started["status"] == "running" and started["completed_at"] is None and started["result"] is None
    assert missed[-2]["data"]["status"] == "completed"
    assert first["id"] not in [item["id"] for item in missed]

    last = EventStream(web.url, f"/jobs/{job['job_id']}/events", alice, last_event_id=missed[-1]["id"])
    assert last.status == 204  # a browser's EventSource stops reconnecting

    JobEvent.objects.filter(job_id=job["job_id"]).delete()  # pruned: a day has passed
    late = list(EventStream(web.url, f"/jobs/{job['job_id']}/events", alice, last_event_id=first["id"]).events())
    assert [(item["event"], item["data"]["status"]) for item in late] == [("job.state", "completed")]
    assert EventStream(web.url, f"/jobs/{job['job_id']}/events", alice, last_event_id=late[0]["id"]).status == 204


def test_a_waiting_job_is_told_when_its_place_in_line_moves(web, api, alice):
    running = submit(api, seconds=30)  # no worker: it holds flux-dev, the others wait
    ahead = submit(api)
    submit(api)
    mine = submit(api)
    stream = EventStream(web.url, f"/jobs/{mine['job_id']}/events", alice)
    events = stream.events()
    assert next(events)["data"]["queue_position"] == 3

    assert api.post(f"/jobs/{ahead['job_id']}/cancel", {})[0] == 200
    moved = next(item for item in events if item["event"] == "job.queue_position")
    assert moved["data"]["queue_position"] == 2 and moved["data"]["job_id"] == mine["job_id"]
    assert running["status"] == "running"
    stream.close()


def test_another_users_stream_is_not_found_and_no_token_is_refused(web, api, alice):
    job = submit(api)
    bob = token_for(UserFactory())
    assert EventStream(web.url, f"/jobs/{job['job_id']}/events", bob).status == 404
    assert EventStream(web.url, "/jobs/not-a-uuid/events", alice).status == 404
    assert EventStream(web.url, f"/jobs/{job['job_id']}/events", None).status == 401
    response = EventStream(web.url, f"/jobs/{job['job_id']}/events", bob).response
    assert json.loads(response.read())["error"]  # errors are JSON, even to an EventSource


def test_a_quiet_stream_gets_a_comment_line_that_keeps_proxies_from_closing_it(web, api, alice):
    submit(api, seconds=30)
    waiting = submit(api)
    stream = EventStream(web.url, f"/jobs/{waiting['job_id']}/events", alice)  # the server says one every 1 s
    next(stream.events())
    deadline = time.monotonic() + 10
    line = b""
    while not line.startswith(b":") and time.monotonic() < deadline:
        line = stream.response.readline()
    assert line == b": keepalive\n"
    stream.close()


def test_staff_follow_every_jobs_changes_and_others_may_not(web, api, alice):
    staff = token_for(UserFactory(is_staff=True))
    assert EventStream(web.url, "/queue/events", alice).status == 403
    stream = EventStream(web.url, "/queue/events", staff)
    events = stream.events()
    status = next(events)
    assert status["event"] == "queue.status" and "queue_length" in status["data"]

    job = submit(api, seconds=30)
    heard = []
    for item in events:
        if item["data"].get("job_id") == job["job_id"]:
            heard.append(item)
            if item["data"]["status"] == "running":
                break
    # Accepted and started in one transaction: both events, in order.
    assert [item["event"] for item in heard] == ["job.submitted", "job.started"]
    stream.close()


# --- Prefer: wait ----------------------------------------------------------------------------------


def test_a_submit_that_prefers_to_wait_is_answered_once_the_job_has_ended(web, api, worker):
    api_wait = HttpApi(web.url, api.token)
    began = time.monotonic()
    status, job = request(api_wait, "POST", "/jobs", {"prompt": "A knight", "model": "flux-dev",
                                                      "params": {"simulate_seconds": 0.5}}, prefer="wait=30")
    assert status == 201 and job["status"] == "completed", job
    assert api_wait.last_headers["Preference-Applied"] == "wait=30"
    assert time.monotonic() - began < 30


def test_an_answer_that_prefers_to_wait_longer_than_the_job_takes_comes_after_n_seconds_as_it_is(web, api):
    job = submit(api, seconds=30)  # no worker: it stays running
    began = time.monotonic()
    status, answer = request(api, "GET", f"/jobs/{job['job_id']}", prefer="Wait=1")  # as RFC 7240 allows
    assert status == 200 and answer["status"] == "running"
    assert "waiting_for" in answer  # GET /jobs/{id}'s own answer
    assert api.last_headers["Preference-Applied"] == "wait=1"
    assert time.monotonic() - began >= 1


def test_a_workflow_that_prefers_to_wait_is_answered_when_it_has_ended(web, api, worker):
    status, job = request(api, "POST", "/workflows/knight-style-img-to-video/execute",
                          {"input_image": "https://example.com/me.png", "params": {"simulate_seconds": 0.2}},
                          prefer="wait=30")
    assert status == 201 and job["status"] == "completed" and job["current_step"] == 2, job
    assert api.last_headers["Preference-Applied"] == "wait=30"


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=soon", "wait=-1"])
def test_a_wait_that_is_not_1_to_60_seconds_is_refused_and_changes_nothing(web, api, prefer):
    status, answer = request(api, "POST", "/jobs", {"prompt": "A knight", "model": "flux-dev"}, prefer=prefer)
    assert status == 400 and "1 to 60" in answer["error"], answer
    assert not Job.objects.exists()


def request(api: HttpApi, method: str, path: str, body: dict | None = None, *, prefer: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    outgoing = urllib.request.Request(api.base_url + path, data=data, method=method)
    outgoing.add_header("Content-Type", "application/json")
    outgoing.add_header("Authorization", f"Token {api.token}")
    outgoing.add_header("Prefer", prefer)
    try:
        with urllib.request.urlopen(outgoing, timeout=90) as response:
            api.last_headers = response.headers
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        api.last_headers = error.headers
        return error.code, json.loads(error.read())


# --- what an open stream costs ---------------------------------------------------------------------


def server_threads(web) -> int:
    """Threads of the gunicorn worker process (the one child of the server's main process)."""
    children = Path(f"/proc/{web.process.pid}/task/{web.process.pid}/children").read_text().split()
    assert len(children) == 1, children
    status = Path(f"/proc/{children[0]}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def server_sockets(web) -> int:
    children = Path(f"/proc/{web.process.pid}/task/{web.process.pid}/children").read_text().split()
    fds = Path(f"/proc/{children[0]}/fd")
    return sum(1 for fd in fds.iterdir() if _readlink(fd).startswith("socket:"))


def _readlink(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return ""


def server_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [SERVER_NAME])
        return cursor.fetchone()[0]


def test_open_streams_and_waiting_answers_hold_neither_threads_nor_database_connections(web, api, alice):
    import threading

    submit(api, seconds=30)
    waiting = [submit(api) for _ in range(5)]
    submit(api)  # warms the server's pool
    threads_before = server_threads(web)

    streams = [EventStream(web.url, f"/jobs/{waiting[n % 5]['job_id']}/events", alice) for n in range(60)]
    for stream in streams:
        assert next(stream.events())["event"] == "job.state"
    waiters = [threading.Thread(target=request, args=(HttpApi(web.url, alice), "GET", f"/jobs/{waiting[0]['job_id']}"),
                                kwargs={"prefer": "wait=5"}) for _ in range(30)]
    for waiter in waiters:
        waiter.start()
    wait_until(lambda: server_sockets(web) >= 90, timeout=30, message="90 requests open at the server")
    threads_during = server_threads(web)
    assert threads_during <= max(threads_before, WEB_THREADS + 4), (threads_before, threads_during)
    # At most one per thread of the server's pool, its listener's thread, and the LISTEN connection.
    assert 0 < server_connections() <= WEB_THREADS + 2
    assert all(waiter.is_alive() for waiter in waiters)  # still waiting, 90 requests open
    for waiter in waiters:
        waiter.join(30)
    for stream in streams:
        stream.close()
