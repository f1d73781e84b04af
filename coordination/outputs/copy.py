"""Copying one file a job produced into storage (Django's default storage): streamed through a
temporary file, never whole in memory; at most COORDINATOR_OUTPUT_MAX_BYTES; its size, SHA-256 and
content type found on the way. Its name in storage comes from ids: outputs/<job id>/<file id><ext>.

Where from: an `https://` URL (http only with COORDINATOR_WEBHOOK_ALLOW_HTTP), at a public address
only (as webhooks are sent: webhook_targets.url_check), except the host of the model's own
provider_base_url or provider_url (a ComfyUI box on the LAN); redirects are followed, each checked
the same way, five at most. A `data:` URL is decoded; a simulated job's `simulated://` file is its
runner's few bytes. The content type is the bytes' when they are a common image or video type (a
provider's claim is not taken over them), else the provider's.
"""

import base64
import hashlib
import mimetypes
import tempfile
import urllib.parse
from dataclasses import dataclass

import httpx
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage

from coordination.runners.simulated import SIMULATED_BYTES
from coordination.webhook_targets import UnsafeUrl, url_check

CHUNK = 1024 * 1024
REDIRECTS = 5
TIMEOUT = 60.0  # seconds without a byte before a copy gives up (it is tried again)
# The first bytes of the common image and video types.
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"), (b"\xff\xd8\xff", 0, "image/jpeg"), (b"GIF8", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"), (b"ftyp", 4, "video/mp4"), (b"\x1a\x45\xdf\xa3", 0, "video/webm"),
)
_TYPES = mimetypes.MimeTypes()


class CopyFailed(Exception):
    """The copy did not happen; `again`: worth trying again later (an outage), else it never will."""

    def __init__(self, message: str, *, again: bool):
        super().__init__(message)
        self.again = again


@dataclass(frozen=True)
class Copied:
    storage_name: str
    size: int
    sha256: str
    content_type: str


def sniffed(head: bytes) -> str | None:
    for signature, at, content_type in SIGNATURES:
        if head[at:at + len(signature)] == signature:
            return "video/quicktime" if content_type == "video/mp4" and head[8:12] == b"qt  " else content_type
    return None


def copy_file(*, file_id, job_id, source_url: str, claimed_type: str, trusted_host: str | None,
              should_stop=lambda: False) -> Copied:
    """Copy one file; `should_stop()`, asked between chunks, gives it up (to be tried again later)."""
    with tempfile.TemporaryFile() as spool:
        digest, size, head, said_type = hashlib.sha256(), 0, b"", claimed_type
        for chunk, said in _chunks(source_url, claimed_type, trusted_host):
            if should_stop():
                raise CopyFailed("its qcluster stopped during the copy", again=True)
            said_type = said_type or said
            size += len(chunk)
            if size > settings.COORDINATOR_OUTPUT_MAX_BYTES:
                raise CopyFailed(f"larger than COORDINATOR_OUTPUT_MAX_BYTES ({settings.COORDINATOR_OUTPUT_MAX_BYTES:,} bytes)",
                                 again=False)
            if len(head) < 16:
                head += chunk[:16 - len(head)]
            digest.update(chunk)
            spool.write(chunk)
        content_type = sniffed(head) or (said_type if not said_type.startswith(("image/", "video/")) else "") \
            or "application/octet-stream"
        spool.seek(0)
        extension = _TYPES.guess_extension(content_type) or ""
        kept = File(spool)
        kept.content_type = content_type  # an S3 object's ContentType (a local file has none)
        # An S3 bucket's storage uploads it with boto3's upload_fileobj: from the temporary file, in
        # parts (multipart past 8 MiB), never whole in memory, as a local copy is written in chunks.
        name = default_storage.save(f"outputs/{job_id}/{file_id}{extension}", kept)
    return Copied(name, size, digest.hexdigest(), content_type)


def _chunks(source_url: str, claimed_type: str, trusted_host: str | None):
    """(bytes, the content type the source said) as they come."""
    scheme = urllib.parse.urlsplit(source_url).scheme
    if scheme == "simulated":  # the simulated runner's file: its bytes, by the type it listed
        yield SIMULATED_BYTES.get(claimed_type, SIMULATED_BYTES["image/png"]), ""
        return
    if scheme == "data":
        try:
            meta, data = source_url[5:].split(",", 1)
            yield (base64.b64decode(data) if meta.endswith(";base64") else urllib.parse.unquote_to_bytes(data)), \
                meta.split(";")[0]
        except ValueError as error:
            raise CopyFailed(f"not a data: URL ({error})", again=False) from None
        return
    url = source_url
    with httpx.Client(follow_redirects=False, timeout=TIMEOUT) as client:
        for _ in range(REDIRECTS + 1):
            try:
                url_check(url, field="the file's URL", trusted_host=trusted_host)
            except UnsafeUrl as refused:
                raise CopyFailed(str(refused), again=False) from None
            try:
                with client.stream("GET", url, headers={"User-Agent": "job-queue-coordinator"}) as answer:
                    if answer.is_redirect and answer.headers.get("location"):
                        url = urllib.parse.urljoin(url, answer.headers["location"])
                        continue
                    if answer.status_code in (404, 410):
                        raise CopyFailed(f"the provider no longer has it (HTTP {answer.status_code})", again=False)
                    if answer.status_code != 200:
                        raise CopyFailed(f"HTTP {answer.status_code} from {urllib.parse.urlsplit(url).hostname}",
                                         again=answer.status_code in (408, 425, 429) or answer.status_code >= 500)
                    said = answer.headers.get("content-type", "").split(";")[0].strip()
                    for chunk in answer.iter_bytes(CHUNK):
                        yield chunk, said
                    return
            except httpx.HTTPError as error:
                raise CopyFailed(f"{type(error).__name__}: {error}", again=True) from None
        raise CopyFailed(f"more than {REDIRECTS} redirects", again=False)
