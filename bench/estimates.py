"""(m) How honest is `estimated_start_at`? A mixed load on 4 slots, each estimate against the real start.

4 slots and 4 worker processes; jobs of 1-3 s (`simulate_seconds`, uniform) on the four seeded
models, and one in ten a `knight-style-img-to-video` workflow (two steps of 1-3 s each, holding
nano-banana-pro-leonardo and motion-2.0-fast throughout), submitted through the API (in-process
client) at random (Poisson) instants. Each job's `estimated_start_at` is read with `GET /jobs/{id}`
right after its `201`. A first wave of jobs, not measured, gives every model a recent run-time history.

For each job that waited (it has an estimate), the error is |estimated start - actual start| as a
share of its wait (actual start - acceptance): the median and p90 are printed, with the median
signed error (late estimates are negative) by kind, to show where the estimate goes wrong.
"""

import random
import statistics
import time
from datetime import datetime

SLOTS = 4
WORKFLOW = "knight-style-img-to-video"
WORKFLOW_SHARE = 0.1
RATE = 1.2  # submissions per second, on average
WARM_UP = 24


def _body(rng: random.Random, models: list[str]) -> tuple[str, dict]:
    seconds = round(rng.uniform(1.0, 3.0), 2)
    if rng.random() < WORKFLOW_SHARE:
        return f"/workflows/{WORKFLOW}/execute", {
            "prompt": "bench", "input_image": "https://example.com/a.png", "params": {"simulate_seconds": seconds},
        }
    return "/jobs", {"prompt": "bench", "model": rng.choice(models), "params": {"simulate_seconds": seconds}}


def measure(out, owner, cluster_class, reset_queue, wait_for, percentile, models: list[str], tmp, *, quick: bool) -> None:
    from django.conf import settings
    from rest_framework.test import APIClient

    from coordination.models import Job

    count = 60 if quick else 150
    settings.COORDINATOR_MAX_ACTIVE_JOBS = SLOTS
    settings.COORDINATOR_SUBMIT_RATE = 100_000  # the bench submits faster than a user may
    settings.COORDINATOR_MAX_PENDING_PER_USER = 100_000
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    client = APIClient()
    client.force_authenticate(owner)
    rng = random.Random(25)
    reset_queue()

    def submit(path: str, body: dict) -> dict:
        answer = client.post(path, body, format="json")
        if answer.status_code != 201:
            raise RuntimeError(f"POST {path} answered {answer.status_code}: {answer.content[:300]!r}")
        return answer.json()

    def all_done() -> bool:
        return not Job.objects.exclude(status__in=Job.FINISHED).exists()

    cluster = cluster_class(SLOTS, SLOTS, tmp / "qcluster-estimates.log")
    estimates: dict[str, datetime] = {}
    try:
        cluster.wait_running()
        for _ in range(WARM_UP):  # a history for every model: a burst, then wait for it to end
            submit("/jobs", {"prompt": "warm up", "model": rng.choice(models),
                             "params": {"simulate_seconds": round(rng.uniform(1.0, 3.0), 2)}})
        submit(f"/workflows/{WORKFLOW}/execute", {"prompt": "warm up", "input_image": "https://example.com/a.png",
                                                  "params": {"simulate_seconds": 2.0}})
        wait_for(all_done, timeout=300)
        warmed = set(Job.objects.values_list("job_id", flat=True))
        next_at = time.monotonic()
        for _ in range(count):
            next_at += rng.expovariate(RATE)
            time.sleep(max(0.0, next_at - time.monotonic()))  # the arrival process, not a wait for a condition
            job = submit(*_body(rng, models))
            if job["status"] == "pending":
                value = client.get(f"/jobs/{job['job_id']}").json()["estimated_start_at"]
                if value:
                    estimates[job["job_id"]] = datetime.fromisoformat(value)
        wait_for(all_done, timeout=600)
    finally:
        cluster.stop()
    errors, signed = [], {}
    jobs = Job.objects.exclude(job_id__in=warmed).filter(started_at__isnull=False)
    for job in jobs.only("job_id", "kind", "created_at", "started_at"):
        estimate = estimates.get(str(job.job_id))
        wait = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
        if estimate is None or wait <= 0:
            continue
        errors.append(abs((estimate - job.started_at).total_seconds()) / wait)
        signed.setdefault(job.kind, []).append((estimate - job.started_at).total_seconds() / wait)
    out(f"\n(m) estimated_start_at against the real start: {count} jobs (1-3 s, 1 in 10 a two-step workflow) at "
        f"{RATE}/s on 4 models, {SLOTS} slots; {len(errors)} waited (target: median <= 25 %)")
    if not errors:
        out("    no job waited")
        return
    out(f"    |estimate - start| / wait: median {statistics.median(errors) * 100:5.1f} %  "
        f"p90 {percentile(errors, 90) * 100:5.1f} %")
    for kind, values in sorted(signed.items()):
        out(f"    {kind:<9} n={len(values):<4} median signed error {statistics.median(values) * 100:+6.1f} % "
            f"(negative: started later than estimated)")
