"""The coordinator service: every change to a job's state goes through here.

Each function is one transaction: take the coordinator lock (LockedQueue), re-read the job under
it, refuse an illegal transition, change it, write its audit row, and start whatever may start now.
The worker task is enqueued on commit, never while the lock is held.

submit.py: accepting jobs (one, or a batch); jobs.py: the rest of a job's life (start, finish,
cancel, claim, retry); repairs.py: the guide's "Clear
stale queue" and "Reset state"; operations.py: the operators' console actions; catalog.py: the
operators' edits of the model catalog.
"""

from coordination.services.jobs import (
    job_attempt_end,
    job_cancel,
    job_claim,
    job_complete,
    job_end_running,
    job_fail,
    job_finish_and_take_next,
    job_max_attempts,
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

__all__ = [
    "BATCH_MAX_JOBS", "PROMPT_MAX_LENGTH", "capacity_group_delete", "capacity_group_save", "catalog_model_get", "job_policies_set", "catalog_model_save", "job_accept", "job_cancel", "job_claim", "job_complete",
    "job_attempt_end", "job_build", "job_end_running", "job_fail", "job_finish_and_take_next", "job_max_attempts", "job_priority_set",
    "job_retry", "job_stopped", "job_submit", "jobs_submit_batch", "model_pause", "pending_limit_check", "priority_check",
    "queue_clear_stale", "queue_dispatch", "queue_reconcile", "queue_reset", "waiting_repair",
]
