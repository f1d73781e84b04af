"""With four slots, jobs on different models run at the same time; each model stays exclusive.

The four models call a provider (the http runner) that holds every request until the test lets
them go, which it does once the provider holds all four at the same time: the jobs complete only
if they really ran at once, however slow the machine is.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coordination.models import CatalogModel, Job
from tests.e2e.harness import start_worker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MODELS = [("flux-dev", "image"), ("motion-2.0-fast", "video"), ("minimax/video-01", "video"),
          ("nano-banana-pro-leonardo", "image")]
# Give-up bounds, not claims: how long the test waits for the four requests to be held together,
# and how long the provider holds a request the test never lets go.
GIVE_UP = 60
HOLD_LIMIT = 2 * GIVE_UP


class Rendezvous:
    """A provider that holds each request until `open()`, then answers every request at once."""

    def __init__(self):
        self.arrived: list[str] = []  # the job ids, in the order their requests came
        self.held = 0  # requests being held now
        self.opened = False
        self.changed = threading.Condition()

    def handle(self, job_id: str) -> tuple[int, dict]:
        with self.changed:
            self.arrived.append(job_id)
            self.held += 1
            self.changed.wait_for(lambda: self.opened, timeout=HOLD_LIMIT)
            self.held -= 1
        return 200, {"output": f"done: {job_id}"}

    def open(self) -> None:
        with self.changed:
            self.opened = True
            self.changed.notify_all()


@pytest.fixture
def rendezvous():
    provider = Rendezvous()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, answer = provider.handle(body["job_id"])
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    provider.url = f"http://127.0.0.1:{server.server_address[1]}/generate"
    yield provider
    provider.open()  # a request still held ends now
    server.shutdown()
    server.server_close()
    thread.join()


def test_four_slots_run_different_models_side_by_side(http, settings, tmp_path, rendezvous):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 4
    CatalogModel.objects.filter(name__in=[model for model, _ in MODELS]).update(runner="http", provider="generic", provider_url=rendezvous.url)
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_MAX_ACTIVE_JOBS="4")
    try:
        jobs = []
        for model, media in MODELS:
            status, job = http.post("/jobs", {"prompt": f"on {model}", "model": model, "job_type": media})
            assert status == 201 and job["status"] == "running", job
            jobs.append(job)
        status, second_flux = http.post("/jobs", {"prompt": "again", "model": "flux-dev", "job_type": "image"})
        assert second_flux["status"] == "pending"
        assert second_flux["conflict_reason"] == f"Model conflict: flux-dev in use by normal job {jobs[0]['job_id']}"
        status, queue = http.get("/queue/status")
        assert len(queue["active_jobs"]) == 4

        # The claim: the worker runs the four at once, so the provider comes to hold all four requests.
        wait_until(lambda: rendezvous.held == 4, timeout=GIVE_UP,
                   message="the four jobs' requests to be held by the provider at the same time")
        rendezvous.open()
        ids = [job["job_id"] for job in jobs] + [second_flux["job_id"]]
        wait_until(lambda: Job.objects.filter(job_id__in=ids, status__in=Job.FINISHED).count() == 5,
                   timeout=GIVE_UP, message="all five jobs to finish")
    finally:
        rendezvous.open()  # so a failed test's worker can stop
        worker.stop()

    runs = {str(job.job_id): job for job in Job.objects.filter(job_id__in=ids)}
    assert {job_id: (runs[job_id].status, runs[job_id].error) for job_id in ids} == {
        job_id: (Job.Status.COMPLETED, None) for job_id in ids
    }
    # The second flux-dev job's request came only after the four were let go.
    assert sorted(rendezvous.arrived[:4]) == sorted(ids[:4]) and rendezvous.arrived[4:] == ids[4:]
    first_four = [runs[job["job_id"]] for job in jobs]
    # In the database too: each of the four started before any of them completed.
    assert max(job.started_at for job in first_four) < min(job.completed_at for job in first_four)
    # flux-dev stayed exclusive: its second job started only after the first ended.
    assert runs[second_flux["job_id"]].started_at >= first_four[0].completed_at
