from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID


class RunnerError(Exception):
    """The model call failed; the message says how, for the job's `error`."""


@dataclass(frozen=True)
class RunnerCall:
    job_id: UUID
    model: str
    prompt: str
    params: dict = field(default_factory=dict)
    # What the previous workflow step produced, or the workflow's own inputs for its first step.
    inputs: dict = field(default_factory=dict)
    default_seconds: float = 0.0


class Runner(Protocol):
    def run(self, call: RunnerCall) -> dict: ...
