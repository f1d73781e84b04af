"""The `http` runner: a real model provider (the protocol: coordination/runners/client.py).

A sync provider's answer is the result. A poll or callback provider's job is, for a normal job,
submitted by the worker and then left at the provider (`submit`): the job costs a row, watched by
its qcluster's poller (coordination/providers), not a worker process. A workflow's step waits for its
provider here (`run`), since the next step needs its output in this worker: it is polled at the
model's interval, a stop asked for is seen within 0.1 s and cancels the provider's job, and the
model's timeout_seconds, counted from the attempt's start, bounds the call ("timed out after N s").

The HTTP stack (httpx) is imported when a provider is first called, not when Django starts: a
qcluster's sentinel, pusher and monitor, forked from its main process, never carry it.
"""

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from coordination.runners.base import Provider, RunnerCall, RunnerError

if TYPE_CHECKING:
    from coordination.runners.client import Accepted

logger = logging.getLogger("coordination.runners.http")


class HttpRunner:
    def run(self, call: RunnerCall) -> dict:
        """The result, waiting here for a poll or callback provider's job to end."""
        from coordination.runners import client as provider_client
        from coordination.runners.client import Accepted

        provider = _provider(call)
        deadline = _deadline(call, provider)

        async def work(client):
            answer = await provider_client.submit(client, call, attempt=call.attempt, deadline=deadline)
            if not isinstance(answer, Accepted):
                return answer
            return await _wait_here(client, call, answer, deadline)

        return provider_client.run(work, should_stop=call.should_stop)

    def submit(self, call: RunnerCall) -> "dict | Accepted":
        """Send the job and let go of it: a poll or callback provider's acceptance (the job now waits
        at the provider), or the result when the provider answered it at once."""
        from coordination.runners import client as provider_client
        from coordination.runners.client import Accepted

        provider = _provider(call)
        deadline = _deadline(call, provider)

        async def work(client):
            answer = await provider_client.submit(client, call, attempt=call.attempt, deadline=deadline,
                                                  callback_url=provider.callback_url or None)
            if isinstance(answer, Accepted) and answer.status.ended:
                return _outcome(answer.provider_job_id, answer.status)
            return answer

        return provider_client.run(work, should_stop=call.should_stop)


def _provider(call: RunnerCall) -> Provider:
    provider = call.provider
    if provider is None or not provider.url:
        raise RunnerError(f"Model {call.model} uses the http runner but has no provider URL")
    return provider


def _deadline(call: RunnerCall, provider: Provider) -> float:
    """The attempt's deadline on the monotonic clock: timeout_seconds from the attempt's start (from now
    when the call does not say when that was)."""
    elapsed = max(0.0, time.time() - call.started_at) if call.started_at is not None else 0.0
    return time.monotonic() + provider.timeout_seconds - elapsed


def _outcome(provider_job_id: str, status) -> dict:
    from coordination.runners.client import result_of

    if status.state == "succeeded":
        return result_of(provider_job_id, status)
    raise RunnerError(f"Provider job {provider_job_id} {status.state}: {status.error or '(no message)'}")


async def _wait_here(client, call: RunnerCall, accepted: "Accepted", deadline: float) -> dict:
    from coordination.runners import client as provider_client
    from coordination.runners.client import ProviderTimeout

    provider, job = call.provider, accepted.provider_job_id
    interval = max(float(call.params.get("poll_interval", provider.poll_interval_seconds)), 0.01)
    status = accepted.status
    try:
        while not status.ended:
            if status.progress is not None:
                logger.info("Job %s: provider job %s at %.0f%%", call.job_id, job, 100 * status.progress)
            if time.monotonic() + interval >= deadline:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                raise ProviderTimeout(f"timed out after {provider.timeout_seconds:g} s")
            await asyncio.sleep(interval)
            status = await provider_client.status(client, provider, accepted.status_url, job_id=call.job_id,
                                                  deadline=deadline)
    except (asyncio.CancelledError, ProviderTimeout):
        # Stopped, or out of time: the provider's job is dropped too (best effort, bounded).
        confirmed = await asyncio.shield(provider_client.cancel(client, provider, accepted.status_url, job_id=call.job_id))
        (logger.info if confirmed else logger.warning)(
            "Job %s: cancel of provider job %s %s", call.job_id, job, "confirmed" if confirmed else "not confirmed")
        raise
    return _outcome(job, status)
