"""The coordinator service: every change to a job's state goes through here.

Three kinds of function, and which kind each is:

- A transaction of its own: job_submit, jobs_submit_batch, job_accept, job_cancel, job_complete,
  job_fail, job_stopped, job_report, job_report_and_take_next, job_hand_back, catalog_model_save,
  capacity_group_save, capacity_group_delete, model_pause, job_priority_set, queue_dispatch,
  queue_reconcile, queue_clear_stale, queue_reset, job_resubmit. Each takes the coordinator lock (LockedQueue),
  re-reads what it changes under it, refuses an illegal transition, changes it, writes its audit row and
  starts whatever may start now; the worker task is enqueued on commit, never while the lock is held.
  (job_resubmit reads the ended job it copies before the lock: an ended job never changes status.)
  job_claim is a transaction too, but without the coordinator lock: one UPDATE fenced by the attempt,
  which touches no slot and decides nothing.
- A step inside a caller's transaction and lock (the LockedQueue is its first argument):
  job_attempt_end, job_end, job_retry, waiting_repair.
- A check or a read that writes nothing: catalog_model_get, job_build, job_policies_set,
  priority_check, job_max_attempts, and pending_limit_check (which its callers run under the lock,
  so that two submissions cannot both slip under the limit).

submit.py: accepting jobs (one, or a batch); jobs.py: the rest of a job's life (claim, cancel, and
how a running attempt ends: its docstring names the verbs); repairs.py: the guide's "Clear stale
queue" and "Reset state"; operations.py: the operators' console actions; catalog.py: the operators'
edits of the model catalog; resubmit.py: Retry, an ended job made again as a new one.
"""

from coordination.services.jobs import (
    job_attempt_end,
    job_cancel,
    job_claim,
    job_complete,
    job_end,
    job_fail,
    job_hand_back,
    job_max_attempts,
    job_report,
    job_report_and_take_next,
    job_retry,
    job_stopped,
)
from coordination.services.submit import (
    BATCH_MAX_JOBS,
    PROMPT_MAX_LENGTH,
    catalog_model_get,
    job_accept,
    job_build,
    job_policies_set,
    job_submit,
    jobs_submit_batch,
    pending_limit_check,
    priority_check,
)
from coordination.services.catalog import capacity_group_delete, capacity_group_save, catalog_model_save
from coordination.services.operations import job_priority_set, model_pause, queue_dispatch, queue_reconcile
from coordination.services.repairs import queue_clear_stale, queue_reset, waiting_repair
from coordination.services.resubmit import job_resubmit

__all__ = [
    "BATCH_MAX_JOBS", "PROMPT_MAX_LENGTH", "capacity_group_delete", "capacity_group_save", "catalog_model_get", "job_policies_set", "catalog_model_save", "job_accept", "job_cancel", "job_claim", "job_complete",
    "job_attempt_end", "job_build", "job_end", "job_fail", "job_hand_back", "job_max_attempts", "job_priority_set", "job_report",
    "job_report_and_take_next",
    "job_resubmit", "job_retry", "job_stopped", "job_submit", "jobs_submit_batch", "model_pause", "pending_limit_check", "priority_check",
    "queue_clear_stale", "queue_dispatch", "queue_reconcile", "queue_reset", "waiting_repair",
]
