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
