"""GET /jobs/{job_id}/files/{n}: a file a job produced, as the coordinator keeps it (coordination/outputs),
to the job's owner and to staff (anyone else: 404), or to whoever holds a link signed for it
(`?sig=`, from `result.files[n].signed_url`: a browser's <img> or <video> sends no token). Its
Content-Type, Content-Length and an ETag from its SHA-256; a byte range (`Range: bytes=a-b`) is
answered 206, as a video player seeking asks. Kept in an S3 bucket (COORDINATOR_OUTPUT_S3_BUCKET),
a file is not served through this process: once the same checks pass, a 302 redirects to a URL
presigned for it, for COORDINATOR_FILE_LINK_SECONDS at most (no longer than a signed link has left),
and the bucket answers it, ranges included.

POST /files and GET /files/{file_id}: a user's own input files (coordination/outputs/inputs.py), served
the same way (_kept_answer) to their owner and staff, or to whoever holds a link signed for it (the
link a job's runner gets)."""

import re

from django.conf import settings
from django.core.files.storage import FileSystemStorage, default_storage
from django.http import FileResponse, HttpResponse, HttpResponseRedirect, JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotAuthenticated
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from coordination.api.views import COMMON_ERRORS, NOT_FOUND, _error
from coordination.exceptions import InvalidJob, JobNotFound
from coordination.models import InputFile, Job, JobFile
from coordination.outputs.inputs import CappedUploadHandler, TooLarge, input_keep, kept_type
from coordination.outputs.links import input_path, input_signature_left, signature_left
from coordination.selectors import job_get

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@extend_schema(
    summary="A file a job produced",
    parameters=[OpenApiParameter("n", OpenApiTypes.INT, OpenApiParameter.PATH, description="Its place in result.files, from 0."),
                OpenApiParameter("sig", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False,
                                 description="A signed link's signature (result.files[n].signed_url): no token needed.")],
    responses={200: OpenApiResponse(OpenApiTypes.BINARY, description="The file."),
               302: OpenApiResponse(description="Kept in an S3 bucket: its URL, presigned for a short while (Location)."),
               206: OpenApiResponse(OpenApiTypes.BINARY, description="The byte range asked for."),
               304: OpenApiResponse(description="If-None-Match named its ETag."),
               409: _error("Not kept (yet): its copy is under way, failed, or expired; the error says which."),
               416: _error("The range lies outside the file."), **COMMON_ERRORS, **NOT_FOUND},
)
class JobFileView(APIView):
    permission_classes = [AllowAny]  # the owner, staff, or a signed link: checked below

    def get(self, request, job_id: str, n: int):
        signature = request.query_params.get("sig")
        link_seconds = settings.COORDINATOR_FILE_LINK_SECONDS
        if signature is not None:
            link_seconds = signature_left(job_id, n, signature)
            if link_seconds is None:
                raise JobNotFound(f"No file {n} of job {job_id}, or the link has expired.")
        elif not request.user.is_authenticated:
            raise NotAuthenticated()
        else:
            job_get(user=request.user, job_id=job_id, jobs=Job.objects.all())  # the owner or staff; else 404
        row = JobFile.objects.filter(job_id=job_id, n=n).first()
        if row is None:
            raise JobNotFound(f"Job {job_id} has no file {n}.")
        if row.state != JobFile.State.STORED:
            words = {JobFile.State.COPYING: "is still being copied: ask again shortly"}.get(row.state, f"is {row.state}: {row.error}")
            return JsonResponse({"error": f"File {n} of job {job_id} {words}.", "code": "not_kept"}, status=409)
        return _kept_answer(request, row, link_seconds=link_seconds)


def _kept_answer(request, row, *, link_seconds: int):
    """A kept file (a JobFile or an InputFile: its storage_name, size, sha256 and content_type) once
    the checks passed: 304 for its ETag, a 302 to a bucket, else its bytes (a range: 206)."""
    etag = f'"{row.sha256}"'
    if etag in request.headers.get("If-None-Match", ""):
        return HttpResponse(status=304, headers={"ETag": etag})
    if not isinstance(default_storage, FileSystemStorage):  # a bucket: it serves the file itself
        return _redirected(row, seconds=link_seconds)
    return _served(row, request.headers.get("Range"), etag)


def _redirected(row, *, seconds: int):
    """A 302 to the stored object's URL, presigned for `seconds` (at least 1, at most 7 days: S3's
    limit); never cached, as it expires."""
    url = default_storage.url(row.storage_name, expire=max(1, min(seconds, 7 * 24 * 3600)))
    response = HttpResponseRedirect(url)
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _served(row, asked: str | None, etag: str):
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600",
               "X-Content-Type-Options": "nosniff"}
    size = row.size
    match = _RANGE.match((asked or "").strip())
    if match is None or not (match[1] or match[2]):
        response = FileResponse(default_storage.open(row.storage_name, "rb"), content_type=row.content_type, headers=headers)
        response["Content-Length"] = str(size)
        return response
    first, last = match[1], match[2]
    start, end = (size - int(last), size - 1) if not first else (int(first), min(int(last), size - 1) if last else size - 1)
    if start < 0 or start > end or start >= size:
        return HttpResponse(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    stored = default_storage.open(row.storage_name, "rb")
    stored.seek(start)
    response = FileResponse(_part(stored, end - start + 1), status=206, content_type=row.content_type, headers=headers)
    response["Content-Length"] = str(end - start + 1)
    response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response


def _part(stored, length: int, chunk: int = 1024 * 1024):
    try:
        while length > 0:
            data = stored.read(min(chunk, length))
            if not data:
                return
            length -= len(data)
            yield data
    finally:
        stored.close()


class InputFileAnswerSerializer(serializers.Serializer):
    file_id = serializers.UUIDField()
    url = serializers.CharField(help_text="GET it (its owner, staff): /files/{file_id}.")
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    content_type = serializers.CharField(help_text="The bytes' own type for the common image and video types.")


@extend_schema(
    summary="Keep a file of yours, for your jobs to name",
    description="Multipart form, one field `file`, at most COORDINATOR_INPUT_MAX_BYTES. A job names it as "
                "`file:<file_id>` in its params, a workflow in its inputs; its runner gets a signed link instead.",
    request={"multipart/form-data": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                                     "required": ["file"]}},
    responses={201: InputFileAnswerSerializer, 413: _error("Larger than COORDINATOR_INPUT_MAX_BYTES: nothing kept."),
               400: _error("No `file`, or its content type is contradicted by its bytes."), **COMMON_ERRORS},
)
class InputFileListView(APIView):
    parser_classes = [MultiPartParser]

    def post(self, request):
        cap = settings.COORDINATOR_INPUT_MAX_BYTES
        words = f"The file is larger than COORDINATOR_INPUT_MAX_BYTES ({cap:,} bytes); nothing was kept."
        too_large = JsonResponse({"error": words, "code": "too_large", "fields": {"file": [words]}}, status=413)
        try:
            if int(request.headers.get("Content-Length") or 0) > cap + 64 * 1024:  # not read at all
                return too_large
        except ValueError:
            pass
        request._request.upload_handlers = [CappedUploadHandler(request._request)]
        try:
            uploaded = request.FILES.get("file")
        except TooLarge:
            return too_large
        if uploaded is None:
            raise InvalidJob("Send the file as the multipart form's field `file`.", field="file")
        try:
            content_type, refused = kept_type(uploaded.content_type, uploaded.head)
            if refused:
                raise InvalidJob(refused, field="file")
            kept = input_keep(owner=request.user, uploaded=uploaded, content_type=content_type)
        finally:
            uploaded.close()
        return JsonResponse({"file_id": str(kept.id), "url": input_path(kept.id), "size": kept.size,
                             "sha256": kept.sha256, "content_type": kept.content_type}, status=201)


@extend_schema(
    summary="A file of yours",
    parameters=[OpenApiParameter("sig", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False,
                                 description="A signed link's signature (the link a job's runner gets): no token needed.")],
    responses={200: OpenApiResponse(OpenApiTypes.BINARY, description="The file."),
               302: OpenApiResponse(description="Kept in an S3 bucket: its URL, presigned for a short while (Location)."),
               206: OpenApiResponse(OpenApiTypes.BINARY, description="The byte range asked for."),
               304: OpenApiResponse(description="If-None-Match named its ETag."),
               416: _error("The range lies outside the file."), **COMMON_ERRORS, **NOT_FOUND},
)
class InputFileView(APIView):
    permission_classes = [AllowAny]  # the owner, staff, or a signed link: checked below

    def get(self, request, file_id):
        signature = request.query_params.get("sig")
        link_seconds = settings.COORDINATOR_FILE_LINK_SECONDS
        rows = InputFile.objects.filter(id=file_id)
        if signature is not None:
            link_seconds = input_signature_left(file_id, signature)
            if link_seconds is None:
                raise JobNotFound(f"No file {file_id}, or the link has expired.")
        elif not request.user.is_authenticated:
            raise NotAuthenticated()
        elif not request.user.is_staff:
            rows = rows.filter(owner=request.user)
        row = rows.first()
        if row is None:
            raise JobNotFound(f"No file {file_id} of yours.")
        return _kept_answer(request, row, link_seconds=link_seconds)
