"""(j) Live events: 1,000 event streams open on one web process (gunicorn, one uvicorn worker, the
ASGI app `make run` serves), in the benchmark's own database.

- the web process's memory (RSS) before and with the 1,000 streams open;
- the submit path's throughput (POST /jobs over HTTP, 8 connections) with the 1,000 open, against no
  stream open measured before and after it (this machine drifts): the ratio to their mean;
- latency from a transition's commit to its event at the clients: waiting jobs (each with its stream)
  are cancelled one after another, 20 a second, by this process; each cancel's commit time is taken
  when job_cancel returns, and its `job.cancelled` event's arrival by the stream's reader (same clock).
  Each cancel also moves every job behind it in line, so the streams carry place-in-line events too.

Clients are plain asyncio sockets in one thread of this process, so that they cost little beside the
server on a machine with two cores.
"""

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
STREAMS = 1000
CANCELS = 200
CANCELS_PER_SECOND = 20
SUBMITS = 1500
SUBMIT_CONNECTIONS = 8


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def start_server(db_url: str, log_path: Path) -> tuple[subprocess.Popen, int, int]:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.set_inheritable(True)
    port = listener.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": db_url, "COORDINATOR_MAX_ACTIVE_JOBS": "1", "COORDINATOR_LOG_LEVEL": "WARNING",
           "LOG_LEVEL": "WARNING", "LOG_FILE": "", "COORDINATOR_SUBMIT_RATE": "0", "COORDINATOR_MAX_PENDING_PER_USER": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "jobqueue_site.asgi:application", "--worker-class", "jobqueue_site.server.Worker",
         "--bind", f"fd://{listener.fileno()}", "--workers", "1", "--backlog", "4096"],
        cwd=BASE_DIR, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        pass_fds=[listener.fileno()],
    )
    listener.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if b"200 OK" in probe.recv(200):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"the web server did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return process, port, int(children[0])


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # its worker too, should it outlive the master
    except ProcessLookupError:
        pass
    process.wait()


# --- the clients (asyncio, in a thread) ------------------------------------------------------------


class Clients:
    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.arrivals: dict[tuple[str, str], float] = {}  # (job_id, event) -> time.time() of arrival
        self.events = 0
        self.readers: list = []

    def run(self, coroutine, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _stream(self, job_id: str, opened: asyncio.Event, counter: list):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        writer.write(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                     f"Authorization: Token {self.token}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"stream answered {head[:100]!r}")
        # Only the event names are looked for, in whole chunks (a browser is a process of its own:
        # this reader must not fall behind a burst and delay the arrival times it records).
        tail = b""
        try:
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    return
                now = time.time()
                text = tail + chunk
                self.events += text.count(b"\nevent: ") + text.startswith(b"event: ")
                for name in (b"job.cancelled", b"job.state"):
                    if b"event: " + name in text and (job_id, name.decode()) not in self.arrivals:
                        self.arrivals[(job_id, name.decode())] = now
                        if name == b"job.state":
                            counter[0] += 1
                            if counter[0] == counter[1]:
                                opened.set()
                tail = text[-40:]
        finally:
            writer.close()

    async def open_streams(self, job_ids: list[str]) -> None:
        opened, counter = asyncio.Event(), [0, len(job_ids)]
        for start in range(0, len(job_ids), 100):  # as a crowd of browsers would, not in one instant
            for job_id in job_ids[start:start + 100]:
                self.readers.append(asyncio.ensure_future(self._stream(job_id, opened, counter)))
            await asyncio.sleep(0.05)
        await asyncio.wait_for(opened.wait(), 120)

    async def close_streams(self) -> None:
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.readers = []

    async def submits(self, count: int, connections: int, model: str) -> float:
        body = json.dumps({"prompt": "bench", "model": model, "params": {"simulate_seconds": 0}}).encode()
        request = (f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   f"Authorization: Token {self.token}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        left = [count]

        async def one_connection():
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                while left[0] > 0:
                    left[0] -= 1
                    writer.write(request)
                    await writer.drain()
                    head = await reader.readuntil(b"\r\n\r\n")
                    if b" 201 " not in head.split(b"\r\n", 1)[0]:
                        raise RuntimeError(f"POST /jobs answered {head[:200]!r}")
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length")))
                    await reader.readexactly(length)
            finally:
                writer.close()

        began = time.perf_counter()
        await asyncio.gather(*(one_connection() for _ in range(connections)))
        return count / (time.perf_counter() - began)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def measure(db_url: str, owner, out, tmp: Path, quick: bool = False) -> None:
    from django.db import close_old_connections
    from rest_framework.authtoken.models import Token

    from coordination.services import job_cancel, job_submit, jobs_submit_batch

    streams = 200 if quick else STREAMS
    cancels = 50 if quick else CANCELS
    submits = 300 if quick else SUBMITS
    token = Token.objects.get_or_create(user=owner)[0].key
    # One job holds flux-dev (no worker runs here: it stays), the streams' jobs wait behind it.
    job_submit(owner=owner, model="flux-dev", prompt="holds the model", params={"simulate_seconds": 0})
    waiting = []
    for start in range(0, streams, 500):
        batch = [{"model": "flux-dev", "prompt": f"waiting {n}", "params": {"simulate_seconds": 0}}
                 for n in range(start, min(streams, start + 500))]
        waiting += [str(job.job_id) for job in jobs_submit_batch(owner=owner, bodies=batch)]
    close_old_connections()

    process, port, worker_pid = start_server(db_url, tmp / "bench-web.log")
    clients = Clients(port, token)
    try:
        clients.run(clients.submits(50, SUBMIT_CONNECTIONS, "motion-2.0-fast"))  # warm the server up
        idle = clients.run(clients.submits(submits, SUBMIT_CONNECTIONS, "motion-2.0-fast"))
        rss_idle = rss_mb(worker_pid)
        began = time.perf_counter()
        clients.run(clients.open_streams(waiting))
        opened_in = time.perf_counter() - began
        rss_open = rss_mb(worker_pid)
        with_streams = clients.run(clients.submits(submits, SUBMIT_CONNECTIONS, "motion-2.0-fast"))

        commits = {}
        for job_id in waiting[:cancels]:
            job_cancel(job_id=job_id, reason="bench")
            commits[job_id] = time.time()
            time.sleep(1 / CANCELS_PER_SECOND)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all((job_id, "job.cancelled") in clients.arrivals for job_id in commits):
            time.sleep(0.05)
        latencies = [(clients.arrivals[(job_id, "job.cancelled")] - at) * 1000 for job_id, at in commits.items()
                     if (job_id, "job.cancelled") in clients.arrivals]
        rss_after = rss_mb(worker_pid)
        clients.run(clients.close_streams())
        idle_again = clients.run(clients.submits(submits, SUBMIT_CONNECTIONS, "motion-2.0-fast"))
    finally:
        stop_server(process)
        clients.loop.call_soon_threadsafe(clients.loop.stop)
    missing = len(commits) - len(latencies)
    out(f"\n(j) live events: {streams:,} event streams on one web process (gunicorn, 1 uvicorn worker)")
    out(f"    opened in {opened_in:.1f} s; web process RSS {rss_idle:.0f} MB before, {rss_open:.0f} MB with them open, "
        f"{rss_after:.0f} MB after the cancels (target <= 300 MB)")
    baseline = (idle + idle_again) / 2
    out(f"    POST /jobs over HTTP, {SUBMIT_CONNECTIONS} connections: {with_streams:.0f} jobs/s with {streams:,} streams open; "
        f"with none, {idle:.0f} before and {idle_again:.0f} after: ratio {with_streams / baseline:.2f} (target >= 0.8)")
    out(f"    commit -> event at the client, {len(latencies)} cancels at {CANCELS_PER_SECOND}/s "
        f"({clients.events:,} events sent in all, place-in-line ones included): p50 {percentile(latencies, 50):.1f} ms, "
        f"p99 {percentile(latencies, 99):.1f} ms, max {max(latencies):.1f} ms (target p99 <= 250 ms)"
        + (f"; {missing} never arrived" if missing else ""))
