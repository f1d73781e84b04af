"""The `http` runner: a real model provider, spoken to by its adapter (coordination/runners/adapters:
Replicate, fal, RunPod, Leonardo, ComfyUI, or our own generic protocol).

A generic sync provider's answer is the result. Every other provider's job is, for a normal job,
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
        """The result, waiting here for the provider's job to end."""
        from coordination.runners import client as http
        from coordination.runners.client import Accepted

        provider, adapter = _provider(call)
        deadline = _deadline(call, provider)

        async def work(client):
            answer = await adapter.submit(client, call, deadline=deadline, callback_url=None)
            if not isinstance(answer, Accepted):
                return answer
            return await _wait_here(client, call, adapter, answer, deadline)

        return http.run(work, should_stop=call.should_stop)

    def submit(self, call: RunnerCall) -> "dict | Accepted":
        """Send the job and let go of it: the provider's acceptance (the job now waits at the provider),
        or the result when the provider answered it at once."""
        from coordination.runners import client as http
        from coordination.runners.client import Accepted

        provider, adapter = _provider(call)
        deadline = _deadline(call, provider)

        async def work(client):
            answer = await adapter.submit(client, call, deadline=deadline, callback_url=provider.callback_url or None)
            if isinstance(answer, Accepted) and answer.status.ended:
                return outcome(answer.provider_job_id, answer.status)
            return answer

        return http.run(work, should_stop=call.should_stop)

    def drop(self, call: RunnerCall, accepted: "Accepted") -> bool:
        """Cancel a job the provider accepted that we cannot keep (its cancel came meanwhile, or the
        attempt is no longer ours); True once the provider confirmed."""
        from coordination.runners import client as http

        provider, adapter = _provider(call)
        return http.run(lambda client: adapter.cancel(client, provider, accepted), should_stop=lambda: False)


def _provider(call: RunnerCall):
    from coordination.runners.adapters import adapter_of

    provider = call.provider
    if provider is None or not provider.url:
        raise RunnerError(f"Model {call.model} uses the http runner but has no provider URL")
    return provider, adapter_of(provider.kind)


def _deadline(call: RunnerCall, provider: Provider) -> float:
    """The attempt's deadline on the monotonic clock: timeout_seconds from the attempt's start (from now
    when the call does not say when that was)."""
    elapsed = max(0.0, time.time() - call.started_at) if call.started_at is not None else 0.0
    return time.monotonic() + provider.timeout_seconds - elapsed


def outcome(provider_job_id: str, status) -> dict:
    """The result of a provider's job that ended; a RunnerError in the provider's words if it did not succeed."""
    from coordination.runners.client import result_of

    if status.state == "succeeded":
        return result_of(provider_job_id, status)
    raise RunnerError(f"Provider job {provider_job_id} {status.state}: {status.error or '(no message)'}")


async def _wait_here(client, call: RunnerCall, adapter, accepted: "Accepted", deadline: float) -> dict:
    from coordination.runners import client as http
    from coordination.runners.client import AskAgain, ProviderTimeout

    provider, job = call.provider, accepted.provider_job_id
    interval = max(float(call.params.get("poll_interval", provider.poll_interval_seconds)), 0.01)
    request = adapter.status_request(client, provider, accepted)
    status, pause, unanswered = accepted.status, interval, 0
    try:
        while not status.ended:
            if status.progress is not None:
                logger.info("Job %s: provider job %s at %.0f%%", call.job_id, job, 100 * status.progress)
            if time.monotonic() + pause >= deadline:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                raise ProviderTimeout(f"timed out after {provider.timeout_seconds:g} s")
            await asyncio.sleep(pause)
            try:
                status = await adapter.ask(client, provider, accepted, request=request,
                                           timeout=max(0.01, deadline - time.monotonic()))
                pause, unanswered = interval, 0
            except AskAgain as again:  # a limit or an outage: the job is there; ask again later
                unanswered += 1
                pause = http.pause_before(unanswered, again)
    except (asyncio.CancelledError, ProviderTimeout):
        # Stopped, or out of time: the provider's job is dropped too (best effort, bounded).
        confirmed = await asyncio.shield(adapter.cancel(client, provider, accepted))
        (logger.info if confirmed else logger.warning)(
            "Job %s: cancel of provider job %s %s", call.job_id, job, "confirmed" if confirmed else "not confirmed")
        raise
    return outcome(job, status)
