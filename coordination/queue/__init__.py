"""The coordinator's decisions (locked.py) and the lines they read (lines.py)."""

from coordination.queue.lines import LINE_ORDER, ahead_of, line, line_position, nearest_behind, stale_waiting, waiting_for
from coordination.queue.locked import LockedQueue, Verdict, enqueue_job_run

__all__ = ["LINE_ORDER", "LockedQueue", "Verdict", "ahead_of", "enqueue_job_run", "line", "line_position", "nearest_behind", "stale_waiting", "waiting_for"]
