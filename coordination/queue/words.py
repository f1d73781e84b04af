"""The coordinator's [COORDINATOR] lines, word for word as the usage guide prints them, in one table.

The coordinator (locked.py, rules.py) says them through here as it decides.
"""

import logging

logger = logging.getLogger("job_coordinator")

LINES = {
    "checking": "[COORDINATOR] Checking if job %s can start - Models: %s",
    "conflict": "[COORDINATOR] Model conflict detected: %s",
    "start_beside": "[COORDINATOR] No model conflict - %s can start immediately",
    "start_idle": "[COORDINATOR] No active job - %s can start immediately",
    "set_active": "[COORDINATOR] Set active job: %s (%s) - Models: %s",
    "blocked": "[COORDINATOR] Job %s blocked: %s",
    "marked_queued": "[COORDINATOR] Marked job %s as queued (blocked by %s)",
    "still_queued": "[COORDINATOR] Job %s still queued (blocked by %s): %s",
    "no_queued": "[COORDINATOR] No queued jobs",
    "found": "[COORDINATOR] Found %d queued job(s), checking for next eligible job...",
    "starting_next": "[COORDINATOR] Starting next queued job: %s",
    "ended": "[COORDINATOR] Job %s %s, checking for next queued job...",
}

NO_BLOCKER = "no job: model paused"
NO_WORKER = "no job: waiting for a worker"


def models_repr(models) -> str:
    """A set of model names as the guide prints it: {'motion-2.0-fast'} (sorted, so stable)."""
    return "{" + ", ".join(repr(m) for m in sorted(models)) + "}"


class _IdleNotice:
    """Whether this process last said "No queued jobs" (and nothing happened since)."""

    said = False


_idle = _IdleNotice()


def say(key: str, *args) -> None:
    if key in ("checking", "found", "ended"):
        # Something happened: whether anything waits is news again.
        _idle.said = False
    elif key == "no_queued":
        # Once per change of state: the reaper dispatches every few seconds, and an idle queue
        # saying so each time would bury the lines that matter.
        if _idle.said:
            return
        _idle.said = True
    logger.info(LINES[key], *args)
