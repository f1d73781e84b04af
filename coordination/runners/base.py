from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID


class RunnerError(Exception):
    """The model call failed; the message says how, for the job's `error`."""


class RunnerStopped(Exception):
    """The runner stopped because its worker told it to (cancelled, or the job moved on)."""


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RunnerCall:
    job_id: UUID
    model: str
    prompt: str
    params: dict = field(default_factory=dict)
    # What the previous workflow step produced, or the workflow's own inputs for its first step.
    inputs: dict = field(default_factory=dict)
    default_seconds: float = 0.0
    # Polled by the runner (the simulated one every 0.1 s): True once it must stop.
    should_stop: Callable[[], bool] = _never


class Runner(Protocol):
    def run(self, call: RunnerCall) -> dict: ...
