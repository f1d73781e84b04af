"""A provider's callback: `POST /providers/{model}/callback` (Leonardo's, set once per API key:
`POST /providers/leonardo/webhook`). The model's adapter checks it its provider's way
(coordination/runners/adapters; docs/providers.md has each): a signature, a secret, or a token of ours
in the URL. A signed callback's body is the job's status; an unsigned one only says "ask me", and the
status is asked of the provider. It ends the job through the coordinator, once: a repeated callback,
or one after the poller's safety net already saw the end, changes nothing."""

from dataclasses import dataclass

from coordination.models import CatalogModel, ProviderRun
from coordination.providers import store
from coordination.runners import runner_call
from coordination.runners.adapters import CallbackRefused, adapter_of
from coordination.runners.base import RunnerError
from coordination.runners.client import AskAgain

ASK_TIMEOUT = 10.0  # seconds: asking the provider to confirm an unsigned callback


@dataclass(frozen=True)
class Heard:
    code: int
    message: str
    job_id: str | None = None


def callback_receive(*, model_name: str, body: bytes, headers, query=None) -> Heard:
    """Check who calls, then record what it says. Raises CallbackRefused (401)."""
    model = CatalogModel.objects.filter(name=model_name, runner=CatalogModel.Runner.HTTP).first()
    if model is None:
        raise CallbackRefused("This model takes no callbacks (no such model on the http runner).")
    return _heard(model, body=body, headers=headers, query=query or {})


def key_webhook_receive(*, kind: str, body: bytes, headers) -> Heard:
    """A webhook set once per API key (Leonardo's): the job it names says which model's key checks it."""
    adapter = adapter_of(kind)
    provider_job_id = adapter.callback_job_id(body)
    if provider_job_id is None:
        return Heard(400, f"The body names no {kind} job.")
    run = ProviderRun.objects.filter(provider_job_id=provider_job_id, model__in=CatalogModel.objects.filter(
        provider=kind, runner=CatalogModel.Runner.HTTP).values("name")).order_by("-id").first()
    model = CatalogModel.objects.filter(name=run.model).first() if run is not None else None
    if model is None:
        # Nothing of ours to check it with: refused, as any caller who does not know a key is.
        raise CallbackRefused(f"No job of a {kind} model is at the provider as {provider_job_id}.")
    return _heard(model, body=body, headers=headers, query={})


def _heard(model: CatalogModel, *, body: bytes, headers, query) -> Heard:
    call = runner_call(model, job_id=None, prompt="")
    provider, adapter = call.provider, adapter_of(call.provider.kind)
    try:
        callback = adapter.callback_read(provider, body=body, headers=headers, query=query)
    except ValueError as error:
        return Heard(400, str(error))
    run = ProviderRun.objects.filter(model=model.name, provider_job_id=callback.provider_job_id).order_by("-id").first()
    if run is None:
        return Heard(404, f"No job of {model.name} is at this provider as {callback.provider_job_id}.")
    adapter.callback_check(callback, run)
    if run.state == ProviderRun.State.DONE:
        return Heard(200, "Already recorded: nothing changed.", str(run.job_id))
    status = callback.status
    if status is None:  # not signed: what the provider says when asked is what counts
        status = _asked(adapter, provider, run)
        if status is None:
            return Heard(202, "Noted: the provider did not answer; its poller asks again.", str(run.job_id))
    if not status.ended:
        store.runs_seen([store.Seen(run.pk, status.state, status.progress, status.queue_position)])
        return Heard(202, f"Noted: {status.state}.", str(run.job_id))
    ended = store.runs_end([store.Ending(run.pk, status)])
    return Heard(200, "Recorded: the job has ended." if ended else "Already recorded: nothing changed.", str(run.job_id))


def _asked(adapter, provider, run: ProviderRun):
    from coordination.runners import client as http

    async def ask(client):
        return await adapter.ask(client, provider, run, request=adapter.status_request(client, provider, run),
                                 timeout=ASK_TIMEOUT)

    try:
        return http.run(ask, should_stop=lambda: False)
    except (AskAgain, RunnerError):
        return None
