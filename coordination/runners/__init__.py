"""Runners: the code that calls a model. A runner gets one step of work and returns its output."""

from urllib.parse import quote

from django.conf import settings

from coordination.runners.base import Provider, Runner, RunnerCall, RunnerError, RunnerStopped
from coordination.runners.http import HttpRunner
from coordination.runners.simulated import SimulatedRunner

RUNNERS: dict[str, Runner] = {"simulated": SimulatedRunner(), "http": HttpRunner()}


def get_runner(name: str) -> Runner:
    try:
        return RUNNERS[name]
    except KeyError:
        raise RunnerError(f"No runner named '{name}' (known: {', '.join(sorted(RUNNERS))})") from None


def callback_url_of(model_name: str) -> str:
    """Where a callback provider reports a job of `model_name`: this service's public address."""
    return f"{settings.COORDINATOR_PUBLIC_URL.rstrip('/')}/providers/{quote(model_name, safe='/')}/callback"


def runner_call(model, **fields) -> RunnerCall:
    """The call for one step of work on catalog `model` (a CatalogModel): everything the runner needs
    comes in it, so runners never read the database."""
    provider = None
    if model.provider_url:
        provider = Provider(
            url=model.provider_url,
            credential_env=model.credential_env,
            style=model.provider_style,
            timeout_seconds=model.attempt_timeout,
            max_connect_retries=model.max_connect_retries,
            poll_interval_seconds=model.poll_interval_seconds,
            callback_url=callback_url_of(model.name) if model.provider_style == "callback" else "",
        )
    return RunnerCall(model=model.name, default_seconds=model.default_simulate_seconds, media_type=model.media_type,
                      provider=provider, **fields)


__all__ = ["Provider", "Runner", "RunnerCall", "RunnerError", "RunnerStopped", "get_runner", "runner_call"]
