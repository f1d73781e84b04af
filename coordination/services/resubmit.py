"""Retry: an ended job made again as a new job, with the request it was accepted with, by its owner
(POST /jobs/{id}/retry) or an operator (the admin). Not job_retry (jobs.py), which is a second attempt
of one job; hence the audit event `resubmitted`.

The new job is accepted by job_accept, as any submission is: it starts or waits by the same rules,
says the same [COORDINATOR] lines, counts towards its owner's pending limit and a model's line limit,
and is refused for the same reasons (a model disabled since, an input file deleted since, ...).
"""

import logging
import math
from collections.abc import Callable

from coordination.exceptions import InvalidTransition, JobNotFound
from coordination.kinds import job_kind
from coordination.models import Job, JobQueueLog
from coordination.services.submit import DEADLINE_MAX, job_accept, job_build

logger = logging.getLogger("job_coordinator")

NOT_ENDED = ("only a job that has ended (completed, failed, cancelled or expired) can be retried; "
             "cancel it first, or wait for it to end")


def job_resubmit_policies(job: Job) -> dict:
    """The scheduling policies and webhook a retry of `job` asks for (job_policies_set's arguments).

    The same webhook (URL and events), checked again as at any submit; the same dedupe_key, so that a
    retry is refused (409) while another live job of the owner holds it, as a submission would be
    (the ended job holds it no more). A start-by deadline is relative: the retry may wait as long as
    the job was allowed to wait from its acceptance (start_by - created_at), counted from the retry's
    own acceptance; a deadline already past would expire the retry at once."""
    policies = {"dedupe_key": job.dedupe_key, "webhook_url": job.webhook_url,
                "webhook_events_filter": job.webhook_events_filter}
    if job.start_by is not None:
        allowed = math.ceil((job.start_by - job.created_at).total_seconds())
        policies["max_wait_seconds"] = min(max(allowed, 1), int(DEADLINE_MAX.total_seconds()))
    return policies


def job_resubmit(*, job_id, actor: str, on_create: Callable[[Job], None] | None = None,
                 retries_seen: int | None = None) -> Job:
    """A new job with the ended job `job_id`'s request, accepted; its `retry_of` is that job.

    The request is what the job was accepted with, as its row keeps it: prompt, model (a workflow:
    its execution's own copy of its steps, models and inputs, through the kind's `resubmit` hook),
    job_type, params, priority (an operator's change included), client_ref, and its owner, whoever
    retries it; the policies as job_resubmit_policies says. Who may retry it is the caller's check
    (the API: its owner or staff; the admin: the operate permission).

    Audit: a `resubmitted` row on the old job's trail, naming the new job and `actor`, in the new
    job's own transaction (beside its `submitted` row), so a refused retry leaves no trace.
    `on_create(new_job)` runs in that transaction too (an Idempotency-Key).

    `retries_seen`: how many retries the job had when the operator decided (the admin's preview). It
    is checked under the coordinator lock, which every acceptance holds, so of two "Yes" sent at once
    only one makes a job; the other is refused (InvalidTransition), having changed nothing."""
    try:
        job = Job.objects.select_related("owner").get(pk=job_id)
    except (Job.DoesNotExist, ValueError):
        raise JobNotFound(f"No job {job_id}.") from None
    # An ended job never changes status again, so this check needs no lock.
    if not job.is_finished:
        raise InvalidTransition(f"Job {job.job_id} is {job.status}: {NOT_ENDED}.")

    def audited(new: Job) -> None:
        if retries_seen is not None and Job.objects.filter(retry_of_id=job.job_id).exclude(pk=new.pk).count() != retries_seen:
            raise InvalidTransition(f"Job {job.job_id} was retried since the preview; nothing was retried twice.")
        JobQueueLog.objects.record(
            event_type=JobQueueLog.Event.RESUBMITTED, job=job, details={"new_job": str(new.job_id), "actor": actor},
        )
        if on_create is not None:
            on_create(new)

    policies = job_resubmit_policies(job)
    if job.kind == Job.Kind.NORMAL:
        new = job_build(
            owner=job.owner, model=job.model, prompt=job.prompt, job_type=job.job_type, params=job.params,
            priority=job.priority, client_ref=job.client_ref, **policies,
        )
        new.retry_of = job
        job_accept(job=new, on_create=audited)
    else:
        new = job_kind(job.kind).resubmit(job=job, on_create=audited, **policies)
    logger.info("[COORDINATOR] Job %s retried as job %s by %s", job.job_id, new.job_id, actor)
    return new
