"""The reconciler's comparison: slot rows against running jobs against the workers' leases.

Three records say what runs: the slot rows (`job_queue_state`, the guide's display and the lock),
the jobs with status `running`, and each running attempt's lease, which its worker renews. They agree
unless someone edited rows by hand (the guide's SQL), or a worker died and the reaper has not come
by yet. `differences()` only reads; the operator sees its list, and `queue_reconcile` repairs exactly
that list under the coordinator lock.
"""

from dataclasses import asdict, dataclass

from coordination.models import Job, JobQueueState
from coordination.queue.attempts import LEASE_EXPIRED, RESEND, TIMED_OUT, at_provider, running_check

SLOT_NAMES_NO_RUNNING_JOB = "slot names a job that is not running"
JOB_IN_TWO_SLOTS = "job named by more than one slot"
SLOT_MODELS_DIFFER = "slot shows other models than its job holds"
JOB_IN_NO_SLOT = "running job is in no slot"
ATTEMPT_LAPSED = "running attempt needs recovery"


@dataclass(frozen=True)
class Difference:
    problem: str
    slot: int | None
    job_id: str | None
    found: str
    repair: str

    def as_row(self) -> dict:
        return asdict(self)

    @property
    def key(self) -> str:
        """What the operator saw, repair included, as one string the confirmation posts back: a
        difference whose repair changed since (a lapsed lease that is now a timeout) is not run."""
        return f"{self.problem}|{self.slot or ''}|{self.job_id or ''}|{self.repair}"


def differences(slots: list[JobQueueState], running: dict, *, now, timeouts: dict) -> list[Difference]:
    """What disagrees, and what the repair will do about each; `running` maps job_id to running Job."""
    found: list[Difference] = []
    named: set = set()
    for slot in slots:
        job_id = slot.active_job_id
        if job_id is None:
            continue
        job = running.get(job_id)
        if job is None:
            found.append(Difference(SLOT_NAMES_NO_RUNNING_JOB, slot.id, str(job_id),
                                    "the job is finished, waiting or missing", "free the slot"))
        elif job_id in named:
            found.append(Difference(JOB_IN_TWO_SLOTS, slot.id, str(job_id),
                                    "an earlier slot already shows this job", "free this slot"))
        else:
            named.add(job_id)
            if slot.active_models != job.required_models or slot.active_job_type != job.kind:
                found.append(Difference(
                    SLOT_MODELS_DIFFER, slot.id, str(job_id),
                    f"slot shows {slot.active_job_type} {slot.active_models}, job is {job.kind} {job.required_models}",
                    "write the job's kind and models into the slot",
                ))
    for job_id, job in running.items():
        if job_id not in named:
            found.append(Difference(JOB_IN_NO_SLOT, None, str(job_id), "no slot row shows it",
                                    "write it into a free slot"))
        check = running_check(job, now, timeouts)
        if check is not None:
            action, reason = check
            repair = {
                TIMED_OUT: "fail it as timed out",
                LEASE_EXPIRED: "retry it if attempts remain, else fail it (worker lost)",
                RESEND: "send its task again (no attempt used)",
            }[action]
            if action != RESEND and job.cancel_requested_at is not None:
                repair = "end it as cancelled (a stop was asked for it)"
            elif action == TIMED_OUT and at_provider(job):
                repair = "cancel it at its provider, then fail it as timed out (it keeps its models until the provider confirms)"
            found.append(Difference(ATTEMPT_LAPSED, None, str(job_id), reason, repair))
    return found


def running_jobs() -> dict:
    return {job.job_id: job for job in Job.objects.filter(status=Job.Status.RUNNING).order_by("started_at")}
