"""Domain errors. Each knows the HTTP status it maps to; api/errors.py turns them into responses."""


class CoordinationError(Exception):
    status_code = 400
    default_code = "invalid"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidJob(CoordinationError):
    """The submitted job cannot be accepted as it is (the client can fix it)."""

    status_code = 400
    default_code = "invalid"


class UnknownModel(InvalidJob):
    default_code = "unknown_model"


class JobNotFound(CoordinationError):
    status_code = 404
    default_code = "not_found"


class WorkflowNotFound(CoordinationError):
    status_code = 404
    default_code = "not_found"


class ModelNotFound(CoordinationError):
    status_code = 404
    default_code = "not_found"


class NotAllowed(CoordinationError):
    status_code = 403
    default_code = "permission_denied"


class InvalidTransition(CoordinationError):
    """The job is not in a state that allows this change (it moved on, or never could)."""

    status_code = 409
    default_code = "conflict"


class StaleAttempt(InvalidTransition):
    """A worker acted for an attempt that is no longer the job's current one."""

    default_code = "stale_attempt"


class PendingLimitReached(CoordinationError):
    """The owner already has COORDINATOR_MAX_PENDING_PER_USER jobs waiting."""

    status_code = 429
    default_code = "pending_limit"


class LineFull(CoordinationError):
    """The job would wait in a model's line that already holds its catalog `max_waiting` jobs.

    The coordinator raises it under its lock without `retry_after`: an estimate is not read there
    (STYLE.md §9). The service that took the lock completes it once the transaction has rolled back
    (with_retry_after), so a client always gets one."""

    status_code = 429
    default_code = "line_full"

    def __init__(self, message: str, *, model: str, retry_after: int | None = None, field: str | None = None):
        super().__init__(message, field=field)
        self.model = model
        self.retry_after = retry_after

    def with_retry_after(self, seconds: int) -> "LineFull":
        return LineFull(
            f"{self.message} Try again in about {seconds} s, when its next job should have started.",
            model=self.model, retry_after=seconds, field=self.field,
        )


class DuplicateJob(CoordinationError):
    """A live job of the same owner already has this dedupe_key (and may not, or cannot, be replaced)."""

    status_code = 409
    default_code = "duplicate"

    def __init__(self, message: str, *, job_id, field: str | None = "dedupe_key"):
        super().__init__(message, field=field)
        self.job_id = job_id
