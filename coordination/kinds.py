"""What the coordinator needs to know about each kind of job, given by the app that owns the kind.

The coordinator knows `normal` jobs itself (coordination.tasks registers how they run). Other apps
register their kinds when Django starts (`workflows` in its AppConfig.ready), so imports flow one
way: workflows imports coordination, never the reverse.
"""

from collections.abc import Callable
from dataclasses import dataclass

from coordination.models import Job


@dataclass(frozen=True)
class JobKind:
    # run(job=..., attempt=..., should_stop=...) -> the job's result; raises to fail it.
    run: Callable[..., dict]
    # Called under the coordinator lock when a job's blocker changes, for a kind that shows it
    # elsewhere too (a workflow's execution row mirrors `blocked_by_job_id`).
    blocked_changed: Callable[[Job, object], None] | None = None
    # resubmit(job=..., on_create=..., **policies) -> a new job with `job`'s request, accepted: for a
    # kind whose request is kept beside the job (a workflow's copy of its steps). None: the job's own
    # columns are the whole request (coordination/services/resubmit.py).
    resubmit: Callable[..., Job] | None = None


_KINDS: dict[str, JobKind] = {}


def job_kind_register(
    kind: str, *, run: Callable[..., dict], blocked_changed: Callable[[Job, object], None] | None = None,
    resubmit: Callable[..., Job] | None = None,
) -> None:
    if kind not in Job.Kind.values:
        raise ValueError(f"'{kind}' is not a kind of job (known: {', '.join(Job.Kind.values)})")
    _KINDS[kind] = JobKind(run=run, blocked_changed=blocked_changed, resubmit=resubmit)


def job_kind(kind: str) -> JobKind:
    try:
        return _KINDS[kind]
    except KeyError:
        raise LookupError(f"No app registered how '{kind}' jobs run (is its app in INSTALLED_APPS?)") from None


def job_blocked_changed(job: Job, writes) -> None:
    """Under the coordinator lock: what `job` waits for changed; its kind's mirror (if any) writes
    that with the transition's other changes (`writes`, coordination/writes.py)."""
    registered = _KINDS.get(job.kind)
    if registered is not None and registered.blocked_changed is not None:
        registered.blocked_changed(job, writes)
