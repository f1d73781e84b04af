"""The coordinator's benchmark: one command, one fresh PostgreSQL database, one table of figures.

    make bench            # or: .venv/bin/python bench/run.py [--quick]

Measures, in one run on this machine:
  (a) the cost of one submit and one completion with 100, 10,000 and 100,000 jobs already waiting
      (bulk-inserted), as times and as the ratio to the 100 case;
  (a), (b), (d) and (e) run twice: in the default configuration, and with every policy's cost in play
      (a webhook on every job, to a local receiver, and a capacity group over the four models with as
      much room as there are slots, so that it is read on every decision and never the limit);
  (b) end-to-end throughput of zero-second jobs, 2 slots over 4 models, 2 worker processes, against
      bare django-q2 running as many no-op tasks on the same database with the same cluster
      settings, run before and after ours (this machine drifts): the ratio is to their mean;
  (c) latency from a job's completion to the next job's runner starting, p50 and p99;
  (d) statements per transition between BEGIN and COMMIT (Django's CaptureQueriesContext);
  (e) serialized mode (one slot): zero-second jobs back to back, against the same bare baseline;
  (f) 4 slots with 4 worker processes, against (b)'s 2 slots with 2;
  (g) how long the coordinator lock is held per transition (from the lock statement to COMMIT's
      end), p50 and p99, for a submit and for a completion that hands the next job over;
  (h) POST /jobs/batch of 1,000 jobs: accepted jobs per second (in-process API client);
  (j) 1,000 live event streams on one web process: its memory, the submit path's throughput with
      them open against none, and the time from a transition's commit to its event (bench/events.py);
  (k) 1,000 jobs in flight at a (fake, local) provider on one qcluster of 2 worker processes: the
      cluster's memory, CPU, connections and statements per poll tick, and the time from the
      provider's answer to the next job's start (bench/providers.py);
  (o) 100 outputs of 20 MB copied at once by one qcluster's copier, then one of 2 GB: throughput, the
      copying process's peak memory, and that no slot waited on a copy (bench/outputs.py);
  (m) how honest `estimated_start_at` is on a mixed load (4 slots, 1-3 s jobs on four models, a few
      workflows): |estimated start - actual start| / wait, median and p90 (bench/estimates.py).

Nothing here asserts a time: it prints what it measured, and docs/performance.md quotes it.
"""

import argparse
import operator
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from functools import reduce
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgres://root@127.0.0.1:5432/postgres")
DB_NAME = os.environ.get("BENCH_DB", "jobqueue_bench")
DB_URL = ADMIN_URL.rsplit("/", 1)[0] + "/" + DB_NAME
MODELS = ["nano-banana-pro-leonardo", "motion-2.0-fast", "flux-dev", "minimax/video-01"]


def out(*parts) -> None:
    """The benchmark's report goes to standard output (it is the command's result, not a log)."""
    sys.stdout.write(" ".join(str(part) for part in parts) + "\n")
    sys.stdout.flush()


def fresh_database() -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DB_NAME}"')


def django_setup(slots: int) -> None:
    os.environ["DATABASE_URL"] = DB_URL
    os.environ["COORDINATOR_MAX_ACTIVE_JOBS"] = str(slots)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jobqueue_site.settings")
    # This process prints the table; its own coordinator lines would bury it (workers keep theirs).
    os.environ["COORDINATOR_LOG_LEVEL"] = "WARNING"
    os.environ["LOG_LEVEL"] = "WARNING"
    # The second configuration's webhooks go to a receiver on this machine (plain http, loopback).
    os.environ["COORDINATOR_WEBHOOK_ALLOW_HTTP"] = os.environ["COORDINATOR_WEBHOOK_ALLOW_PRIVATE"] = "1"
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def reset_queue() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE job_model_lines, workflow_executions, idempotency_keys, jobs, job_queue_log, "
            "job_queue_counters, job_queue_state, job_line_shares, webhook_attempts, webhook_deliveries, "
            "job_events, provider_runs, job_files, django_q_ormq, django_q_task"
        )


# --- (a) decision cost against queue length ---------------------------------------------------


def fill_queue(size: int, owner, owners: list | None = None, extra: dict | None = None) -> None:
    """One job running on motion-2.0-fast and `size` waiting behind it, as the coordinator would
    have left them (each names the one before it), written in bulk. `owners`: the waiting jobs'
    owners, in turn (else all `owner`'s)."""
    from django.db import connection, transaction
    from django.utils import timezone

    from coordination.models import Job, JobLine, JobQueueCounter
    from coordination.services import job_submit

    running = job_submit(owner=owner, model="motion-2.0-fast", prompt="running", params={"simulate_seconds": 0}, **(extra or {}))
    base = timezone.now()
    previous = running.job_id
    batch_jobs, batch_lines = [], []
    with transaction.atomic():
        for i in range(size):
            job_id = uuid.uuid4()
            created = base + timedelta(microseconds=i + 1)
            batch_jobs.append(Job(
                job_id=job_id, kind="normal", job_type="video", model="motion-2.0-fast", prompt=f"waiting {i}",
                params={"simulate_seconds": 0}, owner=owners[i % len(owners)] if owners else owner, status="pending",
                required_models=["motion-2.0-fast"],
                blocked_by_job_id=previous, conflict_reason=f"Waiting in line for motion-2.0-fast: normal job {previous} goes first",
                queued_at=created, created_at=created, queue_position=i + 1, webhook_url=(extra or {}).get("webhook_url"),
            ))
            batch_lines.append(JobLine(
                job_id=job_id, model="motion-2.0-fast", priority=0, created_at=created,
                owner_key=(owners[i % len(owners)] if owners else owner).pk,
            ))
            previous = job_id
            if len(batch_jobs) == 5000:
                Job.objects.bulk_create(batch_jobs)
                JobLine.objects.bulk_create(batch_lines)
                batch_jobs, batch_lines = [], []
        Job.objects.bulk_create(batch_jobs)
        JobLine.objects.bulk_create(batch_lines)
        JobQueueCounter.objects.update_or_create(id=1, defaults={"pending": size})
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs; ANALYZE job_model_lines;")


def measure_decisions(size: int, owner, repeats: int, owners: list | None = None, extra: dict | None = None) -> dict:
    from coordination.models import CatalogModel, Job
    from coordination.queue.fair import shares_rebuild
    from coordination.services import job_cancel, job_complete, job_submit

    reset_queue()
    fill_queue(size, owner, owners, extra)
    if CatalogModel.objects.filter(name="motion-2.0-fast", line_policy="fair").exists():
        shares_rebuild("motion-2.0-fast", fair=True)
    submits, completions = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        job = job_submit(owner=owner, model="motion-2.0-fast", prompt="bench", params={"simulate_seconds": 0}, **(extra or {}))
        submits.append(time.perf_counter() - began)
        job_cancel(job_id=job.job_id)  # keep the queue at its size
    for _ in range(repeats):
        running = Job.objects.get(status="running")
        began = time.perf_counter()
        job_complete(job_id=running.job_id, attempt=running.attempt)  # starts the head of the line
        completions.append(time.perf_counter() - began)
    return {"submit": statistics.median(submits), "complete": statistics.median(completions)}


# --- the second configuration: a webhook on every job and a capacity group ------------------------

CONFIGURATIONS = (("default", False), ("webhooks + group", True))


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers every delivery 204, in a thread of this process."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps a connection open for the next delivery, as most receivers do

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


_receiver: list[Receiver] = []


def policies(on: bool, slots: int) -> dict:
    """What job_submit takes for the configuration (a webhook_url with `on`), with the capacity group
    over the four models in place (capacity: the slots) or removed."""
    from coordination.models import CapacityGroup, CatalogModel
    from coordination.services import capacity_group_save

    CapacityGroup.objects.filter(name="bench-all").delete()
    if not on:
        return {}
    group = CapacityGroup(name="bench-all", capacity=slots)
    capacity_group_save(group=group, models=list(CatalogModel.objects.filter(name__in=MODELS)), actor="bench")
    if not _receiver:
        _receiver.append(Receiver())
    return {"webhook_url": _receiver[0].url}


# --- workers ------------------------------------------------------------------------------------


class Cluster:
    def __init__(self, slots: int, workers: int, log_path: Path):
        env = {**os.environ, "DATABASE_URL": DB_URL, "COORDINATOR_MAX_ACTIVE_JOBS": str(slots),
               "COORDINATOR_WORKERS": str(workers), "COORDINATOR_LOG_LEVEL": "INFO", "LOG_LEVEL": "INFO",
               "LOG_FILE": ""}
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=BASE_DIR, env=env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_running(self, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while "running." not in self.log_path.read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"qcluster did not start:\n{self.log_path.read_text()}")
            time.sleep(0.005)
        return time.perf_counter()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def wait_for(predicate, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark run did not finish in time")
        time.sleep(0.01)
    return time.perf_counter()


def drain_jobs(count: int, slots: int, owner, workers: int, tmp: Path, with_policies: bool = False) -> dict:
    """Submit `count` zero-second jobs with the workers stopped, then time how long 2 workers take
    (`with_policies`: the second configuration, see policies())."""
    from django.db import close_old_connections
    from django.db.models import Q

    from coordination.models import Job
    from coordination.services import job_submit

    reset_queue()
    extra = policies(with_policies, slots)
    rng = random.Random(7)
    for _ in range(count):
        job_submit(owner=owner, model=rng.choice(MODELS), prompt="bench", params={"simulate_seconds": 0}, **extra)
    cluster = Cluster(slots, workers, tmp / f"qcluster-{slots}.log")
    try:
        began = cluster.wait_running()
        # One statement the partial indexes of waiting and running jobs answer (an OR of the two
        # states): "not finished" would scan every row, a hundred times a second, on the machine the
        # workers share.
        live = reduce(operator.or_, (Q(status=status) for status in Job.LIVE))
        ended = wait_for(lambda: not Job.objects.filter(live).exists(), timeout=600)
    finally:
        cluster.stop()
        close_old_connections()
    failed = Job.objects.exclude(status="completed").count()
    policies(False, slots)
    return {"seconds": ended - began, "rate": count / (ended - began), "failed": failed,
            "latencies": dispatch_latencies()}


def drain_bare(count: int, workers: int, tmp: Path) -> dict:
    from django_q.models import OrmQ
    from django_q.tasks import async_task

    reset_queue()
    for _ in range(count):
        async_task("bench.tasks.noop")
    cluster = Cluster(1, workers, tmp / "qcluster-bare.log")
    try:
        began = cluster.wait_running()
        ended = wait_for(lambda: not OrmQ.objects.exists(), timeout=600)
    finally:
        cluster.stop()
    return {"seconds": ended - began, "rate": count / (ended - began)}


def dispatch_latencies() -> list[float]:
    """For each job that waited: its runner's start minus the completion that started it.

    The completion that started job B is the one whose transaction wrote B's `started` row: the
    `completed` row just before it in the audit log (log ids follow the coordinator lock's order).
    """
    from coordination.models import Job, JobQueueLog

    completed_at = dict(Job.objects.values_list("job_id", "completed_at"))
    runner_start = {
        job_id: datetime.fromisoformat(result["runner_started_at"])
        for job_id, result in Job.objects.filter(queued_at__isnull=False).values_list("job_id", "result")
        if result
    }
    latencies, last_finished = [], None
    for job_id, event in JobQueueLog.objects.filter(event_type__in=["completed", "failed", "started"]).order_by(
        "id"
    ).values_list("job_id", "event_type"):
        if event != "started":
            last_finished = job_id
        elif job_id in runner_start and last_finished is not None:
            latencies.append((runner_start[job_id] - completed_at[last_finished]).total_seconds())
    return latencies


# --- (d) queries per life cycle --------------------------------------------------------------------


def in_transaction(queries: list[dict]) -> int:
    """Statements between BEGIN and COMMIT (those two not counted): what runs under the lock."""
    sql = [query["sql"] for query in queries]
    if "BEGIN" not in sql:
        return len(sql)
    begin = sql.index("BEGIN")
    commit = len(sql) - 1 - sql[::-1].index("COMMIT") if "COMMIT" in sql else len(sql)
    return commit - begin - 1


def count_queries(owner, with_policies: bool = False) -> dict:
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from coordination.services import job_claim, job_complete, job_report_and_take_next, job_submit

    reset_queue()
    extra = policies(with_policies, settings.COORDINATOR_MAX_ACTIVE_JOBS)
    job_complete(job_id=job_submit(owner=owner, model="flux-dev", prompt="warm", params={}, **extra).job_id, attempt=1)
    counts = {}
    with CaptureQueriesContext(connection) as q:
        first = job_submit(owner=owner, model="flux-dev", prompt="a", params={"simulate_seconds": 0}, **extra)
    counts["submit, starts at once"] = in_transaction(q.captured_queries)
    with CaptureQueriesContext(connection) as q:
        second = job_submit(owner=owner, model="flux-dev", prompt="b", params={"simulate_seconds": 0}, **extra)
    counts["submit, has to wait"] = in_transaction(q.captured_queries)
    with CaptureQueriesContext(connection) as q:
        job_claim(job_id=first.job_id, attempt=1)
    counts["claim (worker takes its job)"] = in_transaction(q.captured_queries)
    with CaptureQueriesContext(connection) as q:
        taken = job_report_and_take_next(job_id=first.job_id, attempt=1, status="completed", result={})
    counts["complete + start the next + hand it over"] = in_transaction(q.captured_queries)
    assert taken is not None and taken.job_id == second.job_id
    with CaptureQueriesContext(connection) as q:
        job_complete(job_id=second.job_id, attempt=1, result={})
    counts["complete, nothing waiting"] = in_transaction(q.captured_queries)
    from coordination.services import jobs_submit_batch

    bodies = [{"model": MODELS[n % 4], "prompt": f"batch {n}", "params": {"simulate_seconds": 0}, **extra} for n in range(100)]
    with CaptureQueriesContext(connection) as q:
        jobs_submit_batch(owner=owner, bodies=bodies)
    statements = in_transaction(q.captured_queries)
    counts["a batch of 100 submitted: per batch (per job)"] = f"{statements} ({statements / 100:g})"
    policies(False, settings.COORDINATOR_MAX_ACTIVE_JOBS)
    return counts


def lock_holds(owner, repeats: int) -> dict:
    """(g) The coordinator lock, held from its SELECT ... FOR UPDATE until COMMIT has returned, per
    transition: a submit that waits, and a completion that starts the next job and hands it over."""
    from django.db import connection, transaction

    from coordination.models import Job
    from coordination.queue.locked import takes_the_lock
    from coordination.services import jobs as job_services
    from coordination.services import submit as submit_services

    held: list[float] = []

    def timed_lock(execute, sql, params, many, context):
        if takes_the_lock(sql, params):
            began = time.perf_counter()
            transaction.on_commit(lambda: held.append(time.perf_counter() - began))  # runs right after COMMIT
        return execute(sql, params, many, context)

    reset_queue()
    with connection.execute_wrapper(timed_lock):
        submit_services.job_submit(owner=owner, model="flux-dev", prompt="first", params={})
        submits, completions = [], []
        for _ in range(repeats):
            held.clear()
            submit_services.job_submit(owner=owner, model="flux-dev", prompt="next", params={})
            submits.extend(held)
        running = Job.objects.get(status="running")
        for _ in range(repeats):
            held.clear()
            taken = job_services.job_report_and_take_next(
                job_id=running.job_id, attempt=running.attempt, status="completed", result={}
            )
            completions.extend(held)
            running = taken
    return {"submit (waits)": submits, "complete + hand over": completions}


def batch_rate(owner, size: int, repeats: int) -> float:
    """(h) POST /jobs/batch with `size` jobs through the API (in-process client), best of `repeats`."""
    from django.conf import settings
    from rest_framework.test import APIClient

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]  # the in-process client's host
    client = APIClient()
    client.force_authenticate(owner)
    rng = random.Random(11)
    rates = []
    for _ in range(repeats):
        reset_queue()
        body = {"jobs": [{"prompt": "bench", "model": rng.choice(MODELS), "params": {"simulate_seconds": 0}}
                         for _ in range(size)]}
        began = time.perf_counter()
        response = client.post("/jobs/batch", body, format="json")
        elapsed = time.perf_counter() - began
        if response.status_code != 201:
            raise RuntimeError(f"POST /jobs/batch answered {response.status_code}: {response.content[:300]!r}")
        rates.append(size / elapsed)
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--parts", default="abcdefghijkmo", help="which parts to run, e.g. 'be' (default: all)")
    args = parser.parse_args()
    sizes = [100, 1_000, 5_000] if args.quick else [100, 10_000, 100_000]
    drain_count = 300 if args.quick else 2_000
    serial_count = 300 if args.quick else 1_000
    repeats = 15 if args.quick else 40

    fresh_database()
    django_setup(slots=1)
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    owner = get_user_model().objects.create(username="bench", is_staff=True)
    tmp = Path(os.environ.get("BENCH_TMP", "/tmp"))
    from django.db import connection

    with connection.cursor() as cursor:  # the server's own settings that move the figures most
        cursor.execute("SELECT current_setting('server_version'), current_setting('autovacuum'), "
                       "current_setting('synchronous_commit')")
        version, autovacuum, synchronous_commit = cursor.fetchone()
    out(f"Benchmark on {DB_URL} (PostgreSQL {version.split()[0]}; autovacuum {autovacuum}, synchronous_commit "
        f"{synchronous_commit}), {os.cpu_count()} cores, Q poll {settings.Q_CLUSTER['poll']} s\n")

    if "a" in args.parts:
        decision_costs(sizes, owner, repeats)
    if "d" in args.parts:
        out("\n(d) statements per transition, between BEGIN and COMMIT (target <= 4; claim <= 2)")
        out(f"    {'':<44}" + "".join(f"{name:>18}" for name, _ in CONFIGURATIONS))
        counted = [count_queries(owner, with_policies=on) for _, on in CONFIGURATIONS]
        for step in counted[0]:
            out(f"    {step:<44}" + "".join(f"{counts[step]:>18}" for counts in counted))
    if "g" in args.parts:
        out(f"\n(g) coordinator lock held per transition, {repeats * 5} each (target p50 <= 2 ms, p99 <= 10 ms)")
        for name, values in lock_holds(owner, repeats * 5).items():
            ms = [value * 1000 for value in values]
            out(f"    {name:<22} p50 {percentile(ms, 50):6.2f} ms  p99 {percentile(ms, 99):6.2f} ms")
    ours, serial, wide = {}, {}, None
    bares = []
    if any(part in args.parts for part in "bcef"):
        bares.append(drain_bare(drain_count, workers=2, tmp=tmp))
    for name, on in CONFIGURATIONS:
        if "b" in args.parts or ("c" in args.parts and not on):
            settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
            ours[name] = drain_jobs(drain_count, slots=2, owner=owner, workers=2, tmp=tmp, with_policies=on)
        if "e" in args.parts or ("c" in args.parts and not on):
            settings.COORDINATOR_MAX_ACTIVE_JOBS = 1
            serial[name] = drain_jobs(serial_count, slots=1, owner=owner, workers=2, tmp=tmp, with_policies=on)
    if "f" in args.parts:
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 4
        wide = drain_jobs(drain_count, slots=4, owner=owner, workers=4, tmp=tmp)
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 1
    if bares:
        bares.append(drain_bare(drain_count, workers=2, tmp=tmp))
        bare_rate = statistics.mean(run["rate"] for run in bares)
        out(f"\nbare django-q2: {drain_count} no-op tasks, 2 worker processes, ORM broker, same settings: "
            f"{bares[0]['rate']:.0f} tasks/s before ours, {bares[1]['rate']:.0f} after; mean {bare_rate:.0f}")
    if ours:
        out(f"\n(b) {drain_count} zero-second jobs over 4 models, 2 slots, 2 worker processes (target ratio >= 1.5)")
        for name, run in ours.items():
            out(f"    {name:<18} {run['rate']:>5.0f} jobs/s ({run['seconds']:.2f} s, {run['failed']} not completed);"
                f" ratio to bare django-q2: {run['rate'] / bare_rate:.2f}")
    if serial:
        out(f"\n(e) serialized mode (1 slot): {serial_count} zero-second jobs back to back, 2 worker processes (target ratio >= 1.0)")
        for name, run in serial.items():
            out(f"    {name:<18} {run['rate']:>5.0f} jobs/s ({run['seconds']:.2f} s, {run['failed']} not completed);"
                f" ratio to bare django-q2: {run['rate'] / bare_rate:.2f}")
    ours, serial = ours.get("default"), serial.get("default")
    if wide:
        out(f"\n(f) {drain_count} zero-second jobs over 4 models, 4 slots, 4 worker processes")
        out(f"    {wide['rate']:.0f} jobs/s ({wide['failed']} not completed)"
            + (f"; against 2 slots and 2 workers (b): {wide['rate'] / ours['rate']:.2f}" if ours else ""))
    if "c" in args.parts and ours and serial:
        out("\n(c) latency from a job's completion to the next job's runner starting (target p99 <= 20 ms)")
        for name, run in (("serialized (e)", serial), ("2 slots (b)", ours)):
            lat = [value * 1000 for value in run["latencies"]]
            out(f"    {name:<15} p50 {percentile(lat, 50):6.1f} ms  p99 {percentile(lat, 99):6.1f} ms"
                f"  max {max(lat):6.1f} ms  (n={len(lat)})")
    if "i" in args.parts:
        policy_costs(sizes, owner, repeats)
    if "h" in args.parts:
        rate = batch_rate(owner, 1000, 3)
        out(f"\n(h) POST /jobs/batch of 1,000 jobs (best of 3): {rate:.0f} accepted jobs/s (target >= 2,000)")
    if "j" in args.parts:
        from bench.events import measure as measure_events

        settings.COORDINATOR_MAX_ACTIVE_JOBS = 1
        reset_queue()
        measure_events(DB_URL, owner, out, tmp, quick=args.quick)
    if "k" in args.parts:
        from bench.providers import measure as measure_providers

        measure_providers(out, tmp, quick=args.quick)
    if "o" in args.parts:
        from bench.outputs import measure as measure_outputs

        measure_outputs(out, tmp, quick=args.quick)
    if "m" in args.parts:
        from bench.estimates import measure as measure_estimates

        measure_estimates(out, owner, Cluster, reset_queue, wait_for, percentile, MODELS, tmp, quick=args.quick)
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 1


def decision_costs(sizes: list[int], owner, repeats: int) -> None:
    from django.conf import settings

    out("(a) decision cost, median of", repeats, "(submit to the back of a line; completion that starts its head)")
    out(f"    {'configuration':<18} {'slots':>5} {'waiting':>8} {'submit ms':>10} {'ratio':>6} {'complete ms':>12} {'ratio':>6}")
    for name, on in CONFIGURATIONS:
        for slots in (1, 4):
            settings.COORDINATOR_MAX_ACTIVE_JOBS = slots
            extra = policies(on, slots)
            base = None
            for size in sizes:
                cost = measure_decisions(size, owner, repeats, extra=extra)
                base = base or cost
                out(f"    {name:<18} {slots:>5} {size:>8} {cost['submit'] * 1000:>10.2f} {cost['submit'] / base['submit']:>6.2f}"
                    f" {cost['complete'] * 1000:>12.2f} {cost['complete'] / base['complete']:>6.2f}")
            policies(False, slots)
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 1


def policy_costs(sizes: list[int], owner, repeats: int) -> None:
    """(i) The decision cost with a scheduling policy in use: a capacity group over the line's model
    and another (4 slots). The cost must stay flat with the queue's length."""
    from django.conf import settings

    from coordination.models import CapacityGroup, CatalogModel
    from coordination.services import capacity_group_save

    settings.COORDINATOR_MAX_ACTIVE_JOBS = 4
    out("\n(i) decision cost with a scheduling policy in use, median of", repeats)
    out("    a capacity group over the line's model and another (4 slots)")
    out(f"    {'waiting':>8} {'submit ms':>10} {'ratio':>6} {'complete ms':>12} {'ratio':>6}")
    group = CapacityGroup(name="bench-key", capacity=2)
    capacity_group_save(group=group, models=list(CatalogModel.objects.filter(name__in=["motion-2.0-fast", "minimax/video-01"])),
                        actor="bench")
    base = None
    for size in (sizes[0], sizes[-1]):
        cost = measure_decisions(size, owner, repeats)
        base = base or cost
        out(f"    {size:>8} {cost['submit'] * 1000:>10.2f} {cost['submit'] / base['submit']:>6.2f}"
            f" {cost['complete'] * 1000:>12.2f} {cost['complete'] / base['complete']:>6.2f}   (target <= 1.5)")
    group.delete()

    from django.contrib.auth import get_user_model

    from coordination.models import LineShare

    out(f"\n    a fair line (4 slots): {sizes[-1]:,} waiting from 1,000 owners against {sizes[0]} from 10")
    out(f"    {'waiting':>8} {'owners':>7} {'submit ms':>10} {'ratio':>6} {'complete ms':>12} {'ratio':>6}")
    CatalogModel.objects.filter(name="motion-2.0-fast").update(line_policy="fair")
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"bench-owner-{n}", is_staff=True) for n in range(1000)]
    )
    base = None
    for size, count in ((sizes[0], 10), (sizes[-1], 1000)):
        cost = measure_decisions(size, owner, repeats, owners=users[:count])
        base = base or cost
        out(f"    {size:>8} {count:>7} {cost['submit'] * 1000:>10.2f} {cost['submit'] / base['submit']:>6.2f}"
            f" {cost['complete'] * 1000:>12.2f} {cost['complete'] / base['complete']:>6.2f}   (target <= 1.5)")
    CatalogModel.objects.filter(name="motion-2.0-fast").update(line_policy="fifo")
    LineShare.objects.all().delete()
    reset_queue()
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 1


if __name__ == "__main__":
    main()
