"""A user's own input files (POST /files): kept in Django's default storage as they were uploaded
(streamed: Django's upload handler spools a large upload to a temporary file; this one stops past
COORDINATOR_INPUT_MAX_BYTES and hashes and sniffs the bytes as they come), named from ids only
(inputs/<owner id>/<file id><ext>).

Jobs name one as `file:<file id>` (coordination/services/input_files.py)."""

import hashlib
import mimetypes
import uuid

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.files.uploadhandler import TemporaryFileUploadHandler

from coordination.outputs.copy import sniffed

# The types sniffed() knows; a claim of one of these must match the bytes (mp4 and QuickTime are one family).
CHECKED = {"image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp", "video/mp4", "video/quicktime", "video/webm"}
_FAMILY = {"image/jpg": "image/jpeg", "video/quicktime": "video/mp4"}
_TYPES = mimetypes.MimeTypes()


class TooLarge(Exception):
    """The upload passed COORDINATOR_INPUT_MAX_BYTES: its temporary file is gone; the view answers 413."""


class CappedUploadHandler(TemporaryFileUploadHandler):
    """Django's spooling to a temporary file, stopped past COORDINATOR_INPUT_MAX_BYTES, with the
    bytes' SHA-256 and first bytes taken on the way (no second read)."""

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.digest, self.head, self.size = hashlib.sha256(), b"", 0

    def receive_data_chunk(self, raw_data, start):
        self.size += len(raw_data)
        if self.size > settings.COORDINATOR_INPUT_MAX_BYTES:
            self.file.close()  # the temporary file is deleted
            raise TooLarge()
        self.digest.update(raw_data)
        if len(self.head) < 16:
            self.head += raw_data[:16 - len(self.head)]
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size):
        uploaded = super().file_complete(file_size)
        uploaded.sha256, uploaded.head = self.digest.hexdigest(), self.head
        return uploaded


def kept_type(claimed: str, head: bytes) -> tuple[str | None, str | None]:
    """(the content type kept, None) or (None, why refused): the bytes' own type when sniffed() knows
    them; a claim of such a type that the bytes contradict is refused; an unconfirmed image or video
    claim, or one a browser would run (HTML, SVG, XML, JavaScript), is kept as octet-stream."""
    claimed = (claimed or "").split(";")[0].strip().lower()
    found = sniffed(head)
    if claimed in CHECKED and _FAMILY.get(claimed, claimed) != _FAMILY.get(found, found):
        return None, f"The file is sent as {claimed}, but its bytes are {'not a known image or video type' if found is None else found}."
    if found:
        return found, None
    harmless = claimed.startswith("audio/") or claimed in ("text/plain", "application/json", "application/pdf")
    return (claimed if harmless else "application/octet-stream"), None


def input_keep(*, owner, uploaded, content_type: str):
    """Save an uploaded file (CappedUploadHandler's) into storage, streamed, and record it."""
    from coordination.models import InputFile

    file_id = uuid.uuid4()
    uploaded.content_type = content_type  # an S3 object's ContentType
    uploaded.seek(0)
    name = default_storage.save(f"inputs/{owner.pk}/{file_id}{_TYPES.guess_extension(content_type) or ''}", uploaded)
    return InputFile.objects.create(id=file_id, owner=owner, storage_name=name, size=uploaded.size,
                                    sha256=uploaded.sha256, content_type=content_type)
