from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Protocol
from uuid import UUID


class RunnerError(Exception):
    """The model call failed; the message says how, for the job's `error`."""


class RunnerStopped(Exception):
    """The runner stopped because its worker told it to (cancelled, or the job moved on)."""


def _never() -> bool:
    return False


@dataclass(frozen=True)
class KeptFile:
    """A file the coordinator keeps (a user's input file, a workflow step's file), in a job's params or
    inputs for a provider that takes files by upload rather than by URL (provider_catalog's
    `uploads_files`): its adapter uploads it (Leonardo's init image, ComfyUI's /upload/image) and sends
    what the provider then calls it. Without a public address of ours: the bytes go to the provider."""

    name: str  # from the file's id and its type's extension: never a user's or a provider's file name
    content_type: str
    open: Callable[[], IO[bytes]]  # its bytes, from the coordinator's storage


@dataclass(frozen=True)
class Provider:
    """Where the http runner sends a model's work, as the catalog says (the runner reads no table)."""

    # Which adapter speaks to it (coordination/runners/adapters; provider_catalog.PROVIDERS' keys).
    kind: str = "generic"
    # generic: where a job is POSTed (provider_url). The others: the scheme and host their own paths
    # follow (provider_base_url, else the public API).
    url: str = ""
    # The provider's own name for the model (provider_model), its input mapping (provider_input) and,
    # for ComfyUI, the workflow (provider_workflow): coordination/provider_catalog.py has their shapes.
    model: str = ""
    input_map: dict = field(default_factory=dict)
    workflow: dict | None = None
    # The NAME of the environment variable holding the token; the secret never leaves the worker's environment.
    credential_env: str = ""
    style: str = "sync"  # sync: answers the result; poll: answers a job to poll; callback: a job, then calls back
    # The model's deadline for one attempt, from the attempt's start (CatalogModel.attempt_timeout).
    timeout_seconds: float = 600
    max_connect_retries: int = 3
    poll_interval_seconds: float = 5.0
    callback_url: str = ""  # where a callback provider sends the job's end (COORDINATOR_PUBLIC_URL)
    # The NAME of the variable holding the secret its webhooks carry (Replicate's whsec_..., Leonardo's key).
    callback_secret_env: str = ""


@dataclass(frozen=True)
class RunnerCall:
    job_id: UUID
    model: str
    prompt: str
    params: dict = field(default_factory=dict)
    # What the previous workflow step produced, or the workflow's own inputs for its first step.
    inputs: dict = field(default_factory=dict)
    default_seconds: float = 0.0
    # The model's media type (image, video): the simulated runner's file says it.
    media_type: str = ""
    # Polled by the runner (the simulated one every 0.1 s): True once it must stop.
    should_stop: Callable[[], bool] = _never
    # The model's provider, for the http runner (None for the simulated one).
    provider: Provider | None = None
    # The job's attempt: a provider is sent `Idempotency-Key: <job_id>:<attempt>`.
    attempt: int | None = None
    # When the attempt started (time.time()): the provider's timeout_seconds count from then, as the
    # reaper counts them. None: from the call.
    started_at: float | None = None


class Runner(Protocol):
    def run(self, call: RunnerCall) -> dict: ...
