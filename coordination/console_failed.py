"""The queue console's "Failed" section: the jobs that failed or expired in the last FAILED_WINDOW,
grouped by model, newest first, each with its error and (for operators) a Retry that opens the
retry's preview (console_actions.py). One query, however many jobs there are."""

from datetime import datetime, timedelta

from coordination.models import Job

FAILED_WINDOW = timedelta(hours=24)
FAILED_SHOWN = 50  # the most recent failures listed; the page says when there were more


def console_failed(now: datetime) -> dict:
    """{"groups": [{"model", "jobs": [...]}, ...], "more": bool}: the groups in the order of their
    newest failure; a workflow is listed under all the models it held ("a + b")."""
    jobs = list(
        Job.objects.filter(status__in=[Job.Status.FAILED, Job.Status.EXPIRED], completed_at__gt=now - FAILED_WINDOW)
        .only("job_id", "kind", "status", "required_models", "completed_at", "error")
        .order_by("-completed_at", "-job_id")[:FAILED_SHOWN + 1]
    )
    groups: dict[str, list[dict]] = {}
    for job in jobs[:FAILED_SHOWN]:
        groups.setdefault(" + ".join(job.required_models), []).append({
            "job_id": job.job_id, "kind": job.kind, "status": job.status, "at": job.completed_at,
            "error": job.error or "",
        })
    return {"groups": [{"model": model, "jobs": rows} for model, rows in groups.items()],
            "more": len(jobs) > FAILED_SHOWN, "hours": int(FAILED_WINDOW.total_seconds() // 3600)}
