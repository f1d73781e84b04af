"""Tests of each provider's adapter against a local fake of its documented API (bench/fakes): real
sockets, nothing of HTTP mocked."""

import asyncio
import threading
from contextlib import contextmanager

from coordination.providers.poller import Poller


@contextmanager
def poller():
    """A qcluster's poller, on a thread of this process."""
    started, held = threading.Event(), {}

    async def main():
        held["loop"], held["stop"] = asyncio.get_running_loop(), asyncio.Event()
        started.set()
        await Poller(name="test-poller").run(held["stop"])

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield
    finally:
        held["loop"].call_soon_threadsafe(held["stop"].set)
        thread.join(30)


def files_kept(job_id) -> bool:
    """Whether every file the job produced is kept by the coordinator (coordination/outputs)."""
    from coordination.models import JobFile

    states = list(JobFile.objects.filter(job_id=job_id).values_list("state", flat=True))
    return bool(states) and all(state == "stored" for state in states)


def kept_bytes(job_id, n: int) -> bytes:
    """File `n` of the job, as the coordinator keeps it."""
    from django.core.files.storage import default_storage

    from coordination.models import JobFile

    with default_storage.open(JobFile.objects.get(job_id=job_id, n=n).storage_name, "rb") as kept:
        return kept.read()
