"""(o) Copying outputs: 100 files of 20 MB, made by 100 jobs that complete at once, copied by one
qcluster's copier (COORDINATOR_COPY_THREADS at a time) from a local fake provider (in this process,
real sockets) into storage (MEDIA_ROOT, a temporary folder). Measured, in one run:

- throughput: the bytes kept / the time from the jobs' completion to the last file stored;
- the copying process's memory: the qcluster's main process (its copier's) RSS, sampled every
  50 ms, its peak against its RSS before the copies;
- that no model waited on a copy: the jobs were completed (their slots free) before their files were
  stored, and how many slots were busy while the copies ran (0: none waited);
- then one file of 2 GB (256 MB with --quick): that it is stored whole, and what it adds to the
  copying process's memory (the issue's target: at most 50 MB).
"""

import hashlib
import os
import tempfile
import time
from pathlib import Path

FILES = 100
SIZE = 20 * 1024 * 1024
LARGE = 2 * 1024**3  # then one file of 2 GB, sent by the fake in pieces of PIECE
PIECE = 1024 * 1024
MODEL = "flux-dev"


def measure(out, tmp: Path, *, quick: bool = False) -> None:
    from django.contrib.auth import get_user_model
    from django.db import close_old_connections

    from bench.fakes.base import Answer, FakeServer
    from bench.run import Cluster, reset_queue
    from coordination.maintenance import slots_sync
    from coordination.models import CatalogModel, Job

    files = 20 if quick else FILES
    large = LARGE // 8 if quick else LARGE
    payload = os.urandom(SIZE)
    piece = os.urandom(PIECE)

    class Files(FakeServer):
        def answer(self, request):
            if request.path.startswith("/large/"):  # sent in pieces: the fake never holds it whole either
                return Answer(200, pieces=(large, lambda: (piece for _ in range(large // PIECE))),
                              headers={"Content-Type": "video/mp4"})
            return Answer(200, raw=payload, headers={"Content-Type": "video/mp4"})

    out(f"\n(o) {files} outputs of {SIZE // 2**20} MB copied at once by one qcluster's copier "
        f"(COORDINATOR_COPY_THREADS={os.environ.get('COORDINATOR_COPY_THREADS', '4')}) from a local fake; then one of "
        f"{large / 2**30:g} GB")
    reset_queue()
    fake = Files().start()
    media = tempfile.mkdtemp(prefix="bench-media-", dir=tmp)
    os.environ["MEDIA_ROOT"] = media
    CatalogModel.objects.filter(name=MODEL).update(runner="http", provider="generic", provider_url=f"{fake.url}/sync",
                                                   provider_style="sync", capacity=1)
    slots_sync()
    owner = get_user_model().objects.get(username="bench")
    cluster = Cluster(1, 1, tmp / "qcluster-outputs.log")
    try:
        cluster.wait_running()
        many = _copied(cluster.process.pid, owner, [f"{fake.url}/files/{n}.mp4" for n in range(files)])
        one = _copied(cluster.process.pid, owner, [f"{fake.url}/large/0.mp4"])
    finally:
        cluster.stop()
        fake.stop()
        close_old_connections()
    expected = hashlib.sha256(payload).hexdigest()
    right = sum(1 for name in many["names"] if _sha256(Path(media) / name) == expected)
    out(f"    {many['stored']} of {files} stored, {right} with the right bytes; {many['bytes'] / 2**20:.0f} MB in "
        f"{many['seconds']:.1f} s from the first completion: {many['bytes'] / 2**20 / many['seconds']:.0f} MB/s")
    out(f"    the {files} jobs completed in {many['completed']:.2f} s, before their files were kept; slots busy while "
        f"the copies ran: at most {many['busy']} (0: no model waited on a copy)")
    out(f"    the copying process (the qcluster's main process): {many['before']:.0f} MB before, {many['peak']:.0f} MB at "
        f"most (+{many['peak'] - many['before']:.0f} MB with {os.environ.get('COORDINATOR_COPY_THREADS', '4')} copies at once)")
    whole = hashlib.sha256()
    for _ in range(large // PIECE):
        whole.update(piece)
    right = one["stored"] == 1 and _sha256(Path(media) / one["names"][0]) == whole.hexdigest()
    out(f"    one {large / 2**30:g} GB file: {'stored with the right bytes' if right else 'NOT stored right'} in "
        f"{one['seconds']:.1f} s ({one['bytes'] / 2**20 / one['seconds']:.0f} MB/s); the copying process "
        f"{one['before']:.0f} MB before, {one['peak']:.0f} MB at most (+{one['peak'] - one['before']:.0f} MB; "
        "target: a 2 GB file adds <= 50 MB)")
    CatalogModel.objects.filter(name=MODEL).update(runner="simulated", provider="replicate",
                                                   provider_model="black-forest-labs/flux-dev", provider_url="")
    reset_queue()
    slots_sync()
    assert Job.objects.count() == 0


def _copied(pid: int, owner, urls: list[str]) -> dict:
    """Jobs that complete one after another, one file each (`urls`), and their copies watched to the
    end: how long, how many bytes, the copying process's memory before and at most, and the slots
    busy meanwhile."""
    from bench.providers import rss_mb
    from coordination.models import JobFile, JobQueueState
    from coordination.services import job_claim, job_complete, job_submit

    JobFile.objects.all().delete()
    before = rss_mb(pid)
    began = time.monotonic()
    for url in urls:  # each job hands its slot to the next at once
        job = job_submit(owner=owner, model=MODEL, prompt="bench", params={})
        job_claim(job_id=job.job_id, attempt=1)
        job_complete(job_id=job.job_id, attempt=1, result={"output": "bench", "files": [
            {"source_url": url, "content_type": "video/mp4"}]})
    completed = time.monotonic() - began
    peak, busy, deadline = before, 0, time.monotonic() + 600
    while JobFile.objects.filter(state="copying").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the copies did not end within 10 minutes")
        peak = max(peak, rss_mb(pid))
        busy = max(busy, JobQueueState.objects.filter(active_job_id__isnull=False).count())
        time.sleep(0.05)
    kept = list(JobFile.objects.filter(state="stored").values_list("size", "storage_name"))
    return {"seconds": time.monotonic() - began, "completed": completed, "before": before, "peak": peak, "busy": busy,
            "stored": len(kept), "bytes": sum(size for size, _ in kept), "names": [name for _, name in kept]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stored:
        while chunk := stored.read(PIECE):
            digest.update(chunk)
    return digest.hexdigest()
