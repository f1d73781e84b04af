"""Runners: the code that calls a model. A runner gets one step of work and returns its output."""

from coordination.runners.base import Runner, RunnerCall, RunnerError, RunnerStopped
from coordination.runners.http import HttpRunner
from coordination.runners.simulated import SimulatedRunner

RUNNERS: dict[str, Runner] = {"simulated": SimulatedRunner(), "http": HttpRunner()}


def get_runner(name: str) -> Runner:
    try:
        return RUNNERS[name]
    except KeyError:
        raise RunnerError(f"No runner named '{name}' (known: {', '.join(sorted(RUNNERS))})") from None


__all__ = ["Runner", "RunnerCall", "RunnerError", "RunnerStopped", "get_runner"]
