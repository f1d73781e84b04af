"""Runners: the code that calls a model. A runner gets one step of work and returns its output."""

from urllib.parse import quote

from django.conf import settings

from coordination import provider_catalog
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
    """Where a provider calls back about a job of `model_name`: this service's public address ("" when
    COORDINATOR_PUBLIC_URL is not set: no provider could reach us, so none is asked to)."""
    public = settings.COORDINATOR_PUBLIC_URL.strip().rstrip("/")
    return f"{public}/providers/{quote(model_name, safe='/')}/callback" if public else ""


def style_of(model) -> str:
    """How a model's job waits for its provider: "sync" (the call answers the result: generic only),
    "poll", or "callback" (the provider calls back, and is polled ten times as seldom as a safety net).
    A provider calls back only when it can (provider_catalog's `webhooks`), we have a public address
    and, for one whose callbacks carry a secret, the model names the variable holding it."""
    kind = model.provider or "generic"
    if kind == "generic" and model.provider_style != "callback":
        return model.provider_style
    facts = provider_catalog.PROVIDERS[kind]
    if not (facts.webhooks and settings.COORDINATOR_PUBLIC_URL.strip()) or facts.callback_secret and not model.callback_secret_env:
        return "poll"
    return "callback"


def runner_call(model, **fields) -> RunnerCall:
    """The call for one step of work on catalog `model` (a CatalogModel): everything the runner needs
    comes in it, so runners never read the database."""
    provider = None
    if model.runner == "http":
        style = style_of(model)
        provider = Provider(
            kind=model.provider or "generic",
            url=model.provider_url if (model.provider or "generic") == "generic"
            else provider_catalog.base_url(model.provider, model.provider_base_url),
            model=model.provider_model,
            input_map=model.provider_input or {},
            workflow=model.provider_workflow,
            credential_env=model.credential_env,
            style=style,
            timeout_seconds=model.attempt_timeout,
            max_connect_retries=model.max_connect_retries,
            poll_interval_seconds=model.poll_interval_seconds,
            callback_url=callback_url_of(model.name) if style == "callback" else "",
            callback_secret_env=model.callback_secret_env,
        )
    return RunnerCall(model=model.name, default_seconds=model.default_simulate_seconds, media_type=model.media_type,
                      provider=provider, **fields)


__all__ = ["Provider", "Runner", "RunnerCall", "RunnerError", "RunnerStopped", "get_runner", "runner_call", "style_of"]
