"""Jobs that name a user's own input file (POST /files) as `file:<file id>`: a normal job as a value of
its `params`, a workflow job as one of its inputs. At submit, a file that is not the submitter's is
refused (input_refs_check); when the job runs, its kind's run puts in its place, just before the
runner call (inputs_resolved), a signed absolute link under COORDINATOR_PUBLIC_URL, good for the
model's attempt timeout, which the provider fetches without a token; or, for a provider that takes
files by upload (Leonardo, ComfyUI), the file itself, which its adapter uploads. The job keeps
`file:<id>`; the link is never stored.

Here too is the one rule links to kept files are signed by (link_signature, link_seconds_left): a job's files
(coordination/outputs/links.py) and input files alike."""

import mimetypes
import time
import uuid
from functools import partial

from django.conf import settings
from django.core import signing
from django.core.files.storage import default_storage

from coordination.exceptions import InvalidJob
from coordination.models import InputFile
from coordination.runners.base import KeptFile, RunnerError

SALT = "coordination.outputs.links"
PREFIX = "file:"


def link_signature(value: str, *, seconds: int) -> str:
    """What a link to a kept file carries as `?sig=`: `<lifetime>:<time>:<signature>`, the lifetime
    signed with `value` (what the link names), so a link lives as long as it was signed for."""
    lifetime = signing.b62_encode(max(1, int(seconds)))
    signed = f"{value}:{lifetime}"
    return f"{lifetime}:{signing.TimestampSigner(salt=SALT).sign(signed)[len(signed) + 1:]}"


def link_seconds_left(value: str, sig: str) -> int | None:
    """How many seconds a link_signature of `value` has left (at least 1), or None: wrong, or expired."""
    lifetime = sig.split(":", 1)[0]
    try:
        seconds = signing.b62_decode(lifetime)
        signing.TimestampSigner(salt=SALT).unsign(f"{value}:{sig}", max_age=seconds)
        signed_at = signing.b62_decode(sig.split(":", 2)[1])
    except (signing.BadSignature, ValueError, IndexError):  # wrong, or expired (SignatureExpired is one)
        return None
    return max(1, int(signed_at + seconds - time.time()))


def input_path(file_id) -> str:
    return f"/files/{file_id}"


def input_signed_path(file_id, *, seconds: int) -> str:
    """An input file's path with `?sig=`, good for `seconds` (a link may live as long as the job that uses it)."""
    return f"{input_path(file_id)}?sig={link_signature(f'input:{file_id}', seconds=seconds)}"


def input_signature_left(file_id, sig: str) -> int | None:
    """How many seconds an input file's signed link has left (at least 1), or None: wrong, or expired."""
    return link_seconds_left(f"input:{file_id}", sig)


def _refs(values) -> dict[str, str]:
    """{key: file id} for each top-level value that is `file:<id>`."""
    if not isinstance(values, dict):
        return {}
    return {key: value[len(PREFIX):].strip().lower() for key, value in values.items()
            if isinstance(value, str) and value.startswith(PREFIX)}


def input_refs_check(*, owner, values, field: str = "") -> None:
    """Each `file:<id>` in `values` must be one of `owner`'s files: else InvalidJob (400) naming the field."""

    refs = _refs(values)
    if not refs:
        return
    valid = {key: file_id for key, file_id in refs.items() if _is_uuid(file_id)}
    owned = {str(pk) for pk in InputFile.objects.filter(owner=owner, id__in=set(valid.values())).values_list("id", flat=True)}
    for key, file_id in refs.items():
        if file_id not in owned:
            where = f"{field}.{key}" if field else key
            raise InvalidJob(f"{where}: no file {file_id} of yours (POST /files gives a file_id).", field=where)


def inputs_resolved(values: dict, *, owner_id, model) -> dict:
    """`values` with each `file:<id>` of `owner_id`'s replaced by what `model`'s runner takes: a KeptFile
    its adapter uploads (a provider that takes files by upload: CatalogModel.uploads_files), else a
    signed absolute link under COORDINATOR_PUBLIC_URL, good for the model's attempt timeout. Without a
    public address a provider could not fetch the link: a RunnerError says so (the simulated runner
    takes the link as it is)."""

    refs = _refs(values)
    if not refs:
        return values
    public = settings.COORDINATOR_PUBLIC_URL.strip().rstrip("/")
    uploads, simulated = model.uploads_files, model.runner == "simulated"
    if not public and not (simulated or uploads):
        raise RunnerError(f"The job names an input file ({', '.join(sorted(refs))}): a provider cannot fetch it "
                          "without a public address for this service; set COORDINATOR_PUBLIC_URL.")
    owned = {str(row.pk): row for row in InputFile.objects.filter(
        owner_id=owner_id, id__in={file_id for file_id in refs.values() if _is_uuid(file_id)})}
    missing = sorted(key for key, file_id in refs.items() if file_id not in owned)
    if missing:
        raise RunnerError(f"The input file of {', '.join(missing)} is no longer kept.")
    if uploads:
        return {**values, **{key: kept_file(file_id, owned[file_id].storage_name, owned[file_id].content_type)
                             for key, file_id in refs.items()}}
    seconds = model.attempt_timeout
    return {**values, **{key: f"{public}{input_signed_path(file_id, seconds=seconds)}" for key, file_id in refs.items()}}


def kept_file(file_id, storage_name: str, content_type: str) -> KeptFile:
    """A file in our storage as an upload provider's adapter takes it, named from its id and type."""
    extension = mimetypes.guess_extension(content_type) or ""
    return KeptFile(name=f"{file_id}{extension}", content_type=content_type,
                    open=partial(default_storage.open, storage_name, "rb"))


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
