"""The usage guide's troubleshooting entry point, for `manage.py shell`:

    >>> from job_coordinator import get_job_coordinator
    >>> coordinator = get_job_coordinator()
    >>> coordinator.get_active_job_state()   # should not be None
"""


class _Coordinator:
    def get_active_job_state(self) -> dict | None:
        """Slot 1 as the guide's singleton row; `active_jobs` lists every slot."""
        from coordination.selectors import queue_status

        status = queue_status()
        first = status["active_job"]
        return {
            "active_job_id": first["job_id"],
            "active_job_type": first["job_type"],
            "active_models": first["models"],
            "active_jobs": status["active_jobs"],
            "queue_length": status["queue_length"],
        }


def get_job_coordinator() -> _Coordinator:
    return _Coordinator()
