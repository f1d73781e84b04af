"""The database side of kept files: copiers claim the files due (SKIP LOCKED, held for a while, so
that a copier that died leaves them to another), record how each copy went, and the daily prune
expires the old ones (jobs' files) or deletes them (users' own input files)."""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection
from django.utils import timezone

from coordination.models import CatalogModel, InputFile, JobFile

HOLD = timedelta(minutes=10)  # a claimed file is another copier's after this (its copier died)
BACKOFF = (5, 30, 120, 600)  # seconds before the next try of a copy that may succeed later


@dataclass(frozen=True)
class Due:
    id: object
    job_id: object
    n: int
    source_url: str
    content_type: str
    model: str
    provider_urls: tuple = ("", "")  # the model's provider_base_url and provider_url, read with the claim

    @property
    def trusted_host(self) -> str | None:
        return _provider_host(*self.provider_urls)


def files_claim(*, limit: int) -> list[Due]:
    """Up to `limit` files due for a copy, held for this copier, with what their copy needs to know
    of their model (one statement)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """UPDATE job_files AS f SET held_until = now() + %s, tries = f.tries + 1
               FROM (SELECT id FROM job_files WHERE state = 'copying' AND next_try_at <= now()
                     AND (held_until IS NULL OR held_until < now()) ORDER BY next_try_at LIMIT %s
                     FOR UPDATE SKIP LOCKED) AS due, jobs AS j
               WHERE f.id = due.id AND j.job_id = f.job_id
               RETURNING f.id, f.job_id, f.n, f.source_url, f.content_type, j.model,
                         (SELECT ARRAY[c.provider_base_url, c.provider_url] FROM model_catalog AS c WHERE c.name = j.model)""",
            [HOLD, limit],
        )
        return [Due(*row[:6], provider_urls=tuple(row[6] or ("", ""))) for row in cursor.fetchall()]


def trusted_host(model_name: str) -> str | None:
    """The host of the model's own provider: its files may be fetched over http and from a private
    address (a ComfyUI box on the LAN)."""
    model = CatalogModel.objects.filter(name=model_name).values_list("provider_base_url", "provider_url").first()
    return _provider_host(*model) if model else None


def _provider_host(base_url: str, url: str) -> str | None:
    """The host of a model's provider: its provider_base_url's, else its provider_url's."""
    from urllib.parse import urlsplit

    chosen = base_url or url
    return urlsplit(chosen).hostname if chosen else None


def file_stored(due: Due, *, storage_name: str, size: int, sha256: str, content_type: str) -> None:
    _let_go(due, state=JobFile.State.STORED, storage_name=storage_name, size=size, sha256=sha256,
            content_type=content_type, error="", stored_at=timezone.now())


def file_failed(due: Due, *, error: str, again: bool) -> None:
    """A copy that failed: tried again later (back-off) while it may succeed and tries are left, else
    the file is `failed`, with the reason."""
    tries = JobFile.objects.filter(pk=due.id).values_list("tries", flat=True).first() or 0
    if again and tries < settings.COORDINATOR_COPY_TRIES:
        delay = BACKOFF[min(tries - 1, len(BACKOFF) - 1)]
        _let_go(due, next_try_at=timezone.now() + timedelta(seconds=delay), error=error[:500])
        return
    _let_go(due, state=JobFile.State.FAILED, error=f"Not kept: {error}"[:500])


def _let_go(due: Due, **fields) -> None:
    """The copier lets go of the file it held, with `fields` (stored, failed, or due again later), if it
    is still being copied (an operator may have deleted it meanwhile), its job's files locked together
    first: the last to settle sees the others' (its job.files event). One statement: the job's files
    found and locked by their job, the file updated by its key (a test of its state in the UPDATE
    itself could let the planner walk the partial index of every file being copied, the copier's whole
    backlog)."""
    columns = {JobFile._meta.get_field(name): value for name, value in {"held_until": None, **fields}.items()}
    assignments = ", ".join(f"{field.column} = %s" for field in columns)
    values = [field.get_db_prep_save(value, connection) for field, value in columns.items()]
    with connection.cursor() as cursor:
        cursor.execute(
            f"""WITH locked AS (SELECT id, state FROM job_files WHERE job_id = %s FOR UPDATE)
                UPDATE job_files AS f SET {assignments} FROM locked
                WHERE f.id = locked.id AND locked.id = %s AND locked.state = %s""",
            [str(due.job_id), *values, str(due.id), JobFile.State.COPYING],
        )


def files_prune(*, days: int | None = None) -> int:
    """Files kept longer than COORDINATOR_OUTPUT_RETENTION_DAYS: deleted from storage and marked
    `expired` on their jobs (the jobs stay). Returns how many."""
    days = settings.COORDINATOR_OUTPUT_RETENTION_DAYS if days is None else days
    old = JobFile.objects.filter(state=JobFile.State.STORED, stored_at__lt=timezone.now() - timedelta(days=days))
    pruned = 0
    for row in old.iterator():
        file_expire(row, reason=f"Deleted after {days} days (COORDINATOR_OUTPUT_RETENTION_DAYS).")
        pruned += 1
    return pruned


def input_files_prune(*, days: int | None = None) -> int:
    """Users' own input files (POST /files) older than COORDINATOR_OUTPUT_RETENTION_DAYS: deleted from
    storage, and their rows with them (a job naming one later fails saying it is gone). Returns how many."""
    days = settings.COORDINATOR_OUTPUT_RETENTION_DAYS if days is None else days
    old = list(InputFile.objects.filter(created_at__lt=timezone.now() - timedelta(days=days)))
    for row in old:
        input_file_delete(row)
    return len(old)


def input_file_delete(row: InputFile) -> None:
    default_storage.delete(row.storage_name)
    row.delete()


def file_expire(row: JobFile, *, reason: str) -> None:
    """Delete a kept file from storage (an operator's, or the prune's); the job says it is gone."""
    if row.storage_name:
        default_storage.delete(row.storage_name)
    JobFile.objects.filter(pk=row.pk).update(state=JobFile.State.EXPIRED, error=reason, storage_name="")
