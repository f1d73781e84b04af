"""How a kept file is named to those who may read it: its path, a link signed to serve it without a
token for as long as it was signed for (a job's file shown in its JSON: COORDINATOR_FILE_LINK_SECONDS;
one handed to a workflow's next step, or a user's input file handed to a job: the attempt's timeout),
and a job's `result.files` as the API shows them. One signing rule for both: link_signature and
link_seconds_left (coordination/services/input_files.py, where a job's run signs its input files' links)."""

from django.conf import settings

from coordination.services.input_files import (
    input_path, input_signature_left, input_signed_path, link_seconds_left, link_signature,
)

__all__ = ["file_path", "files_shown", "input_path", "input_signature_left", "input_signed_path", "signature_left",
           "signed_path"]


def file_path(job_id, n: int) -> str:
    return f"/jobs/{job_id}/files/{n}"


def signed_path(job_id, n: int, *, seconds: int | None = None) -> str:
    """The path with `?sig=`: it serves the file to whoever has it for `seconds`
    (COORDINATOR_FILE_LINK_SECONDS unless given), then the link has expired."""
    seconds = settings.COORDINATOR_FILE_LINK_SECONDS if seconds is None else seconds
    return f"{file_path(job_id, n)}?sig={link_signature(f'{job_id}:{n}', seconds=seconds)}"


def signature_left(job_id, n: int, sig: str) -> int | None:
    """How many seconds a signed link has left (at least 1), or None: wrong, or expired."""
    return link_seconds_left(f"{job_id}:{n}", sig)


def files_shown(job, listed: list, kept) -> list[dict]:
    """`result.files` as the API shows them: each as the runner listed it, with where the coordinator
    keeps it (`url`, `signed_url`), and how its copy stands (`state`, `size`, `sha256`,
    `content_type`, `error`)."""
    kept = {row.n: row for row in kept}
    shown = []
    for n, listed_file in enumerate(listed):
        row = kept.get(n)
        if row is None or not isinstance(listed_file, dict):
            shown.append(listed_file)
            continue
        shown.append({
            **listed_file, "url": file_path(job.job_id, n), "signed_url": signed_path(job.job_id, n),
            "state": row.state, "size": row.size, "sha256": row.sha256 or None,
            "content_type": row.content_type or listed_file.get("content_type"), "error": row.error or None,
        })
    return shown
