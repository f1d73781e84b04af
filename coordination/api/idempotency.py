"""`Idempotency-Key` on the submit endpoints: a client may retry a submission without making a
second job. The same key from the same user within KEY_LIFETIME returns the first job; the same key
with another request is refused (422). The key row is written in the job's own transaction (through
job_accept's `on_create`), and (user, key) is unique, so two racing requests make one job.

A batch's key is stored against its first job, and a replay answers the whole batch again
(selectors.job_batch finds the rest from it)."""

import hashlib
import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from django.db import IntegrityError
from django.utils import timezone
from rest_framework import exceptions, status

from coordination.models import IdempotencyKey, Job

HEADER = "Idempotency-Key"
KEY_LIFETIME = timedelta(hours=24)
_PRINTABLE = re.compile(r"[\x20-\x7e]{1,255}")
T = TypeVar("T")


class IdempotencyKeyReused(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "idempotency_key_reused"


def idempotency_key_from(request) -> str | None:
    """The request's key, None if it sends none; a malformed key is a 400."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _PRINTABLE.fullmatch(key):
        problem = f"{HEADER} must be 1 to 255 printable ASCII characters, e.g. a UUID"
        raise exceptions.ValidationError({HEADER: [f"{problem} (got {len(key)} characters)."]})
    return key


def request_hash(*, path: str, data: dict) -> str:
    """A canonical hash of the validated request: its path and its body after defaults are applied."""
    canonical = json.dumps({"path": path, "body": data}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _live_key(*, user, key: str) -> IdempotencyKey | None:
    cutoff = timezone.now() - KEY_LIFETIME
    return IdempotencyKey.objects.filter(user=user, key=key, created_at__gte=cutoff).select_related("job").first()


def _replay(record: IdempotencyKey, *, digest: str) -> Job:
    if record.request_hash != digest:
        raise IdempotencyKeyReused(
            f"{HEADER} '{record.key}' was used for another request (job {record.job_id}) in the last "
            f"{int(KEY_LIFETIME.total_seconds() // 3600)} hours; send a new key for a new submission."
        )
    return record.job


def submit_once(
    *, user, key: str, digest: str, submit: Callable[..., T], replay: Callable[[Job], T] | None = None
) -> tuple[T, bool]:
    """Run `submit(on_create=...)` unless this key already made a job; (what it answered, created).

    `submit` calls `on_create(job)` with the job the key stands for (a batch: its first job);
    `replay(job)` turns that job into what `submit` answers (a batch: all its jobs)."""
    replay = replay or (lambda job: job)
    record = _live_key(user=user, key=key)
    if record is not None:
        return replay(_replay(record, digest=digest)), False

    def remember(job: Job) -> None:
        # Inside the job's transaction. An expired key is free again: its old row goes first.
        IdempotencyKey.objects.filter(
            user=user, key=key, created_at__lt=timezone.now() - KEY_LIFETIME
        ).delete()
        IdempotencyKey.objects.create(user=user, key=key, request_hash=digest, job=job)

    try:
        return submit(on_create=remember), True
    except IntegrityError:
        # Another request with this key committed first; ours rolled back whole (job and key row),
        # so the answer is the winner's job (or a 422 if it was another request).
        record = _live_key(user=user, key=key)
        if record is None:
            raise
        return replay(_replay(record, digest=digest)), False
