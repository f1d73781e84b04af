"""The coordinator: its decisions' rules (rules.py), the changes made under its lock (locked.py), the one
read a decision starts from (snapshot.py), the lines they read (lines.py), and the reads that recovery
and the reconciler share (attempts.py, reconcile.py)."""

from coordination.queue.lines import LINE_ORDER, ahead_of, line, line_position, nearest_behind, stale_waiting, waiting_for
from coordination.queue.locked import LockedQueue, enqueue_job_run
from coordination.queue.rules import Verdict

__all__ = ["LINE_ORDER", "LockedQueue", "Verdict", "ahead_of", "enqueue_job_run", "line", "line_position", "nearest_behind", "stale_waiting", "waiting_for"]
