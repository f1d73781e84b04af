"""A workflow step's files, kept before the next step runs (issue 27): the worker copies each into
storage itself (copy.py), writes its `job_files` row `stored` with `n` its place in the workflow's
eventual `result.files` (the steps' files in order), and the next step is handed, in place of a file's
provider URL, a signed absolute link to the coordinator's copy under COORDINATOR_PUBLIC_URL, good for
the next step's attempt timeout (a provider's own URL may expire before the next step fetches it).
When the workflow completes, the database's insert of its files (coordination/events/triggers.py) is
ON CONFLICT (job_id, n) DO NOTHING: these rows stay as they are. The workflow runner (workflows.services.workflow_run) is handed
step_files_keep by workflows/apps.py, so the layers still flow one way. A next step whose provider
takes files by upload (Leonardo, ComfyUI) is handed the kept file itself, which its adapter uploads.
"""

import time
import uuid

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from coordination.exceptions import StaleAttempt
from coordination.models import Job, JobFile
from coordination.outputs.copy import CopyFailed, copy_file
from coordination.outputs.links import signed_path
from coordination.outputs.store import trusted_host
from coordination.runners.base import RunnerError, RunnerStopped
from coordination.services.input_files import kept_file

AGAIN = (2, 10)  # seconds before trying again a copy that may pass (a 5xx, a timeout), then it fails the step


def step_files_keep(*, job_id, attempt: int, step: int, model: str, files: list, first_n: int,
                    values: dict, next_model, should_stop=lambda: False) -> dict:
    """Keep step `step`'s `files` (its result's `files`; the first is `result.files[first_n]`) and
    return `values` (the next step's inputs) with each value that is one of those files' source URLs
    (or a list holding some) replaced by the kept copy as `next_model`'s runner takes it: a signed
    absolute link, good for its attempt timeout, or, for a provider that takes files by upload, the file
    itself (input_files.kept_file).

    A copy that fails (after AGAIN's waits, when it may pass) fails the step (RunnerError): the next
    step would get a URL that may expire, and the workflow's file would be lost. A next step that
    fetches links needs COORDINATOR_PUBLIC_URL: without it a RunnerError says so, before any copy (the
    simulated runner takes the path as it is)."""
    listed = [(first_n + i, file) for i, file in enumerate(files or [])
              if isinstance(file, dict) and isinstance(file.get("source_url"), str)]
    if not listed:
        return values
    public = settings.COORDINATOR_PUBLIC_URL.strip().rstrip("/")
    uploads = next_model.uploads_files
    if not public and not (uploads or next_model.runner == "simulated"):
        raise RunnerError(f"Step {step}'s files are kept for the next step, which fetches them from this service: "
                          "set COORDINATOR_PUBLIC_URL.")
    host = trusted_host(model)
    links = {}
    for n, file in listed:
        file_id = uuid.uuid4()
        copied = _copied(file_id=file_id, job_id=job_id, file=file, host=host, should_stop=should_stop,
                         what=f"Step {step}'s file {n}")
        _stored(job_id=job_id, attempt=attempt, file_id=file_id, n=n, source_url=file["source_url"], copied=copied)
        links[file["source_url"]] = (
            kept_file(file_id, copied.storage_name, copied.content_type) if uploads
            else f"{public}{signed_path(job_id, n, seconds=next_model.attempt_timeout)}")

    def linked(value):
        if isinstance(value, str):
            return links.get(value, value)
        if isinstance(value, list):
            return [links.get(item, item) if isinstance(item, str) else item for item in value]
        return value

    return {key: linked(value) for key, value in values.items()}


def _copied(*, file_id, job_id, file: dict, host, should_stop, what: str):
    for wait in (*AGAIN, None):
        try:
            return copy_file(file_id=file_id, job_id=job_id, source_url=file["source_url"],
                             claimed_type=file.get("content_type") or "", trusted_host=host, should_stop=should_stop)
        except CopyFailed as failed:
            if should_stop():
                raise RunnerStopped(f"Stopped while keeping {what}") from failed
            if not failed.again or wait is None:
                raise RunnerError(f"{what} could not be kept for the next step: {failed}") from failed
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if should_stop():
                raise RunnerStopped(f"Stopped while keeping {what}")
            time.sleep(0.1)
    raise AssertionError("unreachable")


def _stored(*, job_id, attempt: int, file_id, n: int, source_url: str, copied) -> None:
    """Its row, `stored`; fenced like everything a worker writes (a lost worker's late copy is deleted,
    not recorded). A row left at this `n` by an earlier attempt of the job is replaced, its copy deleted."""
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).values("status", "attempt").first()
        if job is None or job["status"] != Job.Status.RUNNING or job["attempt"] != attempt:
            default_storage.delete(copied.storage_name)
            raise StaleAttempt(f"Job {job_id} moved on; its step's file is not kept by this worker")
        for old in JobFile.objects.filter(job_id=job_id, n=n):
            if old.storage_name:
                transaction.on_commit(lambda name=old.storage_name: default_storage.delete(name))
            old.delete()
        JobFile.objects.create(
            id=file_id, job_id=job_id, n=n, source_url=source_url, state=JobFile.State.STORED, size=copied.size,
            sha256=copied.sha256, content_type=copied.content_type, storage_name=copied.storage_name, tries=1,
            next_try_at=now, created_at=now, stored_at=now)
