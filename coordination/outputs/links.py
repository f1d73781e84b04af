"""How a kept file is named to those who may read it: its path, a link signed to serve it without a
token for COORDINATOR_FILE_LINK_SECONDS, and a job's `result.files` as the API shows them."""

import time

from django.conf import settings
from django.core import signing

SALT = "coordination.outputs.links"


def file_path(job_id, n: int) -> str:
    return f"/jobs/{job_id}/files/{n}"


def signed_path(job_id, n: int) -> str:
    """The path with `?sig=` (the signature and its time): it serves the file to whoever has it,
    until the link expires."""
    value = f"{job_id}:{n}"
    return f"{file_path(job_id, n)}?sig={signing.TimestampSigner(salt=SALT).sign(value)[len(value) + 1:]}"


def signature_left(job_id, n: int, sig: str) -> int | None:
    """How many seconds a signed link has left (at least 1), or None: wrong, or expired."""
    try:
        signing.TimestampSigner(salt=SALT).unsign(f"{job_id}:{n}:{sig}", max_age=settings.COORDINATOR_FILE_LINK_SECONDS)
    except signing.BadSignature:  # wrong, or expired (SignatureExpired is one)
        return None
    signed_at = signing.b62_decode(sig.split(":", 1)[0])
    return max(1, int(signed_at + settings.COORDINATOR_FILE_LINK_SECONDS - time.time()))


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
