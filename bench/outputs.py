"""(o) Copying outputs: 100 files of 20 MB, made by 100 jobs that complete at once, copied by one
qcluster's copier (COORDINATOR_COPY_THREADS at a time) from a local fake provider (in this process,
real sockets) into storage (MEDIA_ROOT, a temporary folder). Measured, in one run:

- throughput: the bytes kept / the time from the jobs' completion to the last file stored;
- the copying process's memory: the qcluster's main process (its copier's) RSS, sampled every
  50 ms, its peak against its RSS before the copies;
- that no model waited on a copy: the jobs were completed (their slots free) before their files were
  stored, and how many slots were busy while the copies ran (0: none waited).
"""

import hashlib
import os
import tempfile
import time
from pathlib import Path

FILES = 100
SIZE = 20 * 1024 * 1024
MODEL = "flux-dev"


def measure(out, tmp: Path, *, quick: bool = False) -> None:
    from django.contrib.auth import get_user_model
    from django.db import close_old_connections

    from bench.fakes.base import Answer, FakeServer
    from bench.providers import rss_mb
    from bench.run import Cluster, reset_queue
    from coordination.maintenance import slots_sync
    from coordination.models import CatalogModel, Job, JobFile, JobQueueState
    from coordination.services import job_claim, job_complete, job_submit

    files = 20 if quick else FILES
    payload = os.urandom(SIZE)

    class Files(FakeServer):
        def answer(self, request):
            return Answer(200, raw=payload, headers={"Content-Type": "video/mp4"})

    out(f"\n(o) {files} outputs of {SIZE // 2**20} MB copied at once by one qcluster's copier "
        f"(COORDINATOR_COPY_THREADS={os.environ.get('COORDINATOR_COPY_THREADS', '4')}) from a local fake")
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
        main = cluster.process.pid
        before = rss_mb(main)
        # The jobs complete one after another, each handing its slot to the next at once.
        began = time.monotonic()
        for n in range(files):
            job = job_submit(owner=owner, model=MODEL, prompt="bench", params={})
            job_claim(job_id=job.job_id, attempt=1)
            job_complete(job_id=job.job_id, attempt=1, result={"output": "bench", "files": [
                {"source_url": f"{fake.url}/files/{n}.mp4", "content_type": "video/mp4"}]})
        completed = time.monotonic() - began
        peak, busy_seen, deadline = before, 0, time.monotonic() + 600
        while JobFile.objects.filter(state="copying").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the copies did not end within 10 minutes")
            peak = max(peak, rss_mb(main))
            busy_seen = max(busy_seen, JobQueueState.objects.filter(active_job_id__isnull=False).count())
            time.sleep(0.05)
        copied = time.monotonic() - began
        stored = list(JobFile.objects.values_list("state", "size", "storage_name"))
    finally:
        cluster.stop()
        fake.stop()
        close_old_connections()
    kept = [row for row in stored if row[0] == "stored"]
    right = sum(1 for _, _, name in kept if hashlib.sha256((Path(media) / name).read_bytes()).digest()
                == hashlib.sha256(payload).digest())
    total = sum(size for _, size, _ in kept)
    out(f"    {len(kept)} of {files} stored, {right} with the right bytes; {total / 2**20:.0f} MB in {copied:.1f} s from the "
        f"first completion: {total / 2**20 / copied:.0f} MB/s")
    out(f"    the {files} jobs completed in {completed:.2f} s, before their files were kept; slots busy while the copies "
        f"ran: at most {busy_seen} (0: no model waited on a copy)")
    out(f"    the copying process (the qcluster's main process): {before:.0f} MB before, {peak:.0f} MB at most "
        f"(+{peak - before:.0f} MB; target: a 2 GB file adds <= 50 MB)")
    CatalogModel.objects.filter(name=MODEL).update(runner="simulated", provider="replicate",
                                                   provider_model="black-forest-labs/flux-dev", provider_url="")
    reset_queue()
    slots_sync()
    assert Job.objects.count() == 0
