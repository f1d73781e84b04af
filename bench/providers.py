"""(k) A thousand provider jobs in flight on one qcluster with COORDINATOR_WORKERS=2, twice: at a
provider speaking our generic protocol, then at one shaped as Replicate is, which reports progress.

A local fake provider (bench/fake_provider.py, or bench/fakes/replicate.py whose predictions write a
tqdm line to their logs, so that each poll reads a new progress, stored and streamed as
job.progress events at most twice a second per job; in this process) takes 30 s a job and is
polled every 5 s (the catalog's default interval). 1,000 slots and a model of capacity 1,000; 1,200 jobs are
submitted, so 1,000 are at the provider at once and 200 wait for them. Measured, in one run:

- that every job completed once, and the provider was sent each attempt once (the generic fake counts
  them by Idempotency-Key; Replicate takes none: its fake counts its predictions);
- the worker cluster's memory (the sum of the RSS of every process in its session: django-q2's
  sentinel, pusher, monitor, the two workers, and the main process with its poller) and its CPU (the
  sum of their user + system time over the seconds when all 1,000 were in flight and none had ended
  yet), as a share of one core;
- its database connections (pg_stat_activity on the bench's database, without this process's own),
  the most seen at any sample;
- database statements per poll tick, from the poller's own report lines (every 5 s here: it counts
  every statement its database thread runs, tick or poll);
- time from the provider's answer (a first-wave job's end at the provider) to the next job's start
  (`started_at` of a waiting job): the k-th end against the k-th start, p50 and p99;
- against today's design, where each in-flight job held a worker process: 1,000 of the measured
  worker processes, and a connection each.
"""

import os
import re
import statistics
import time
from pathlib import Path

IN_FLIGHT = 1000
WAITING = 200
JOB_SECONDS = 30.0
POLL_INTERVAL = 5.0
MODEL = "flux-dev"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPORT = re.compile(r"^(\S+ \S+) .*Provider poller \S+: watching (\d+) jobs; .* (\d+) ticks, (\d+) statements")


def session_processes(leader: int) -> list[int]:
    """Every process in the cluster's session (it was started with start_new_session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == leader:  # the session id
                pids.append(int(entry.name))
    return pids


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return int(next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), 0)) / 1024


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """Each process's CPU time so far (user + system), by pid."""
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return times


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings, process by process (one that started meanwhile from zero)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Generic:
    """Our own protocol's fake (bench/fake_provider.py)."""

    label = "a fake provider (generic protocol)"

    def __init__(self):
        from bench.fake_provider import FakeProvider

        self.fake = FakeProvider(seconds=JOB_SECONDS).start()

    def model_fields(self) -> dict:
        return {"provider": "generic", "provider_url": f"{self.fake.url}/poll", "provider_style": "poll"}

    def starts(self) -> list[float]:
        """When each job started at the provider (monotonic), in no order."""
        with self.fake.lock:
            return [job.started for job in self.fake.jobs.values()]

    def sent_again(self) -> int:
        return sum(count > 1 for count in self.fake.submits_per_key().values())

    def stop(self) -> None:
        self.fake.stop()


class ReplicateShaped:
    """Replicate's API (bench/fakes/replicate.py): progress in every poll's logs."""

    label = "a fake Replicate (progress in its logs)"
    TOKEN = "r8_bench"

    def __init__(self):
        from bench.fakes.replicate import FakeReplicate

        os.environ["BENCH_REPLICATE_TOKEN"] = self.TOKEN  # the qcluster inherits it
        self.fake = FakeReplicate(token=self.TOKEN, seconds=JOB_SECONDS, queue_seconds=0.05).start()

    def model_fields(self) -> dict:
        return {"provider": "replicate", "provider_model": "black-forest-labs/flux-dev", "provider_base_url": self.fake.url,
                "credential_env": "BENCH_REPLICATE_TOKEN"}

    def starts(self) -> list[float]:
        with self.fake.lock:
            return [p.created + p.queue_seconds for p in self.fake.predictions.values()]

    def sent_again(self) -> int:
        """Predictions beyond one per job (the bench's jobs have no retries)."""
        from coordination.models import Job

        with self.fake.lock:
            made = len(self.fake.predictions)
        return max(0, made - Job.objects.filter(model=MODEL).count())

    def stop(self) -> None:
        self.fake.stop()


def measure(out, tmp: Path, *, quick: bool = False) -> None:
    for shape in (Generic, ReplicateShaped):
        measure_one(out, tmp, shape, quick=quick)


def measure_one(out, tmp: Path, shape, *, quick: bool = False) -> None:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import close_old_connections, connection

    from bench.run import Cluster, reset_queue
    from coordination.maintenance import slots_sync
    from coordination.models import CatalogModel, Job, JobEvent, JobQueueLog, ProviderRun
    from coordination.providers.poller import PROGRESS_EVERY
    from coordination.services import job_submit

    in_flight = 200 if quick else IN_FLIGHT
    waiting = 40 if quick else WAITING
    out(f"\n(k) {in_flight:,} provider jobs in flight on one qcluster, COORDINATOR_WORKERS=2, {in_flight:,} slots: "
        f"{shape.label} taking {JOB_SECONDS:g} s a job, polled every {POLL_INTERVAL:g} s; "
        f"{in_flight + waiting:,} jobs ({waiting} wait for the first ones)")
    reset_queue()
    owner = get_user_model().objects.get(username="bench")
    provider = shape()
    wall_offset = time.time() - time.monotonic()  # the fake provider keeps monotonic times
    CatalogModel.objects.filter(name=MODEL).update(
        runner="http", capacity=in_flight, poll_interval_seconds=POLL_INTERVAL, timeout_seconds=600, max_attempts=1,
        enabled=True, paused=False, **provider.model_fields(),
    )
    settings.COORDINATOR_MAX_ACTIVE_JOBS = in_flight
    slots_sync()
    os.environ["COORDINATOR_POLLER_REPORT"] = "5"
    log_path = tmp / "qcluster-providers.log"
    cluster = Cluster(in_flight, 2, log_path)
    samples = []  # (monotonic time, jobs at the provider, connections, RSS MB, CPU s, RSS MB of each process)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own_pid = cursor.fetchone()[0]

    def sample() -> tuple:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s",
                           [own_pid])
            connections = cursor.fetchone()[0]
        pids = session_processes(cluster.process.pid)
        at_provider = ProviderRun.objects.filter(state="in_flight").count()
        sizes = sorted((rss_mb(pid) for pid in pids), reverse=True)
        row = (time.monotonic(), at_provider, connections, sum(sizes), cpu_seconds(pids), sizes)
        samples.append(row)
        return row

    try:
        cluster.wait_running()
        idle = sample()
        began = time.monotonic()
        for _ in range(in_flight + waiting):
            job_submit(owner=owner, model=MODEL, prompt="bench", params={"seconds": JOB_SECONDS})
        submitted = time.monotonic() - began
        deadline = time.monotonic() + 600
        first_end = None
        while Job.objects.exclude(status__in=Job.FINISHED).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the provider jobs did not all end within 10 minutes")
            sample()
            if first_end is None:
                starts = provider.starts()
                if starts:
                    first_end = min(starts) + JOB_SECONDS
            time.sleep(0.5)  # the sampling interval
        worker_pids = [pid for pid in session_processes(cluster.process.pid) if pid != cluster.process.pid]
        worker_rss = sorted(rss_mb(pid) for pid in worker_pids)
    finally:
        cluster.stop()
        provider.stop()
        close_old_connections()

    all_there = next((row[0] - began for row in samples if row[1] >= in_flight), None)
    out(f"    submitted {in_flight + waiting:,} jobs in {submitted:.1f} s (this process, job_submit); all {in_flight:,} at the "
        f"provider {'after %.1f s' % all_there if all_there is not None else 'never at once'}")
    # The waiting window: all in flight, none ended yet (the first ends JOB_SECONDS after its submit).
    full = [row for row in samples if row[1] >= in_flight and row[0] < first_end - 0.5]
    jobs = list(Job.objects.filter(model=MODEL).order_by("started_at").values_list("job_id", "status", "started_at"))
    completed_once = JobQueueLog.objects.filter(event_type="completed", job_id__in=[job for job, *_ in jobs]).values("job_id")
    completions = {}
    for row in completed_once:
        completions[row["job_id"]] = completions.get(row["job_id"], 0) + 1
    out(f"    jobs completed: {sum(status == 'completed' for _, status, _ in jobs):,} of {len(jobs):,}; "
        f"completed more than once: {sum(count > 1 for count in completions.values())}; "
        f"attempts the provider was sent more than once: {provider.sent_again()}")
    if len(full) >= 2:
        (t0, _, _, _, cpu0, _), (t1, _, _, _, cpu1, _) = full[0], full[-1]
        cpu = cpu_used(cpu0, cpu1) / (t1 - t0) * 100
        each = sorted(((seconds - cpu0.get(pid, 0.0)) / (t1 - t0) * 100 for pid, seconds in cpu1.items()), reverse=True)
        largest = max(full, key=lambda row: row[3])
        out(f"    worker cluster while {in_flight:,} wait at the provider ({t1 - t0:.0f} s): memory {largest[3]:.0f} MB in all "
            f"(target <= 400; {len(largest[5])} processes: {' + '.join(f'{size:.0f}' for size in largest[5])}; "
            f"idle before the jobs: {idle[3]:.0f} MB), CPU {cpu:.1f} % of one core (target <= 10; "
            f"{' + '.join(f'{share:.1f}' for share in each)})")
    else:
        out("    (no sample with every job in flight and none ended: the submits took longer than a job)")
    out(f"    database connections of the worker cluster: at most {max(row[2] for row in samples)} (target <= 20)")
    reports = [match for match in map(REPORT.match, log_path.read_text().splitlines()) if match]
    busy = [(int(ticks), int(statements)) for _, watching, ticks, statements in (m.groups() for m in reports)
            if int(watching) >= in_flight]
    if busy:
        ticks, statements = sum(t for t, _ in busy), sum(s for _, s in busy)
        out(f"    database statements per poll tick, watching {in_flight:,}: {statements / ticks:.1f} "
            f"({statements} in {ticks} ticks of {settings.COORDINATOR_POLLER_TICK:g} s, polls' status changes included)")
    ends = sorted(start + JOB_SECONDS + wall_offset for start in provider.starts())[:waiting]
    second_wave = [started.timestamp() for _, _, started in jobs[in_flight:] if started is not None]
    latencies = [(start - end) * 1000 for start, end in zip(sorted(second_wave), ends)]
    if latencies:
        out(f"    provider's answer -> next job's start: p50 {percentile(latencies, 50):.0f} ms, "
            f"p99 {percentile(latencies, 99):.0f} ms, max {max(latencies):.0f} ms (n={len(latencies)}; "
            f"target p99 <= {POLL_INTERVAL * 1000 + 100:.0f} ms: one poll interval + 100 ms)")
    events = JobEvent.objects.filter(event="progress", job_id__in=[job for job, *_ in jobs]).count()
    out(f"    job.progress events written: {events:,} ({events / max(1, len(jobs)):.1f} a job; at most one a job per "
        f"{PROGRESS_EVERY:g} s, and only when the provider's word changed)")
    per_worker = statistics.median(worker_rss) if worker_rss else 0
    out(f"    today's design, a worker process per job in flight: {in_flight:,} processes x {per_worker:.0f} MB "
        f"(this run's median process) = {in_flight * per_worker / 1024:.1f} GB, and {in_flight:,}+ connections")
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 1
    CatalogModel.objects.filter(name=MODEL).update(runner="simulated", capacity=1, provider="replicate",
                                                   provider_model="black-forest-labs/flux-dev", provider_base_url="")
    reset_queue()
    slots_sync()
