"""Every API error is JSON with a message a person can act on: {"error", "code", "fields"?}."""

import sys

from django.conf import settings
from django.core.exceptions import DisallowedHost, PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from coordination.exceptions import CoordinationError


def _first_message(detail) -> str:
    if isinstance(detail, dict):
        for field, value in detail.items():
            message = _first_message(value)
            return message if field == "non_field_errors" else f"{field}: {message}"
        return "Invalid input."
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else "Invalid input."
    return str(detail)


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"

    def __init__(self):
        super().__init__(too_large_message())


def too_large_message() -> str:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return (f"The request body is larger than {limit:,} bytes ({limit / 2**20:g} MiB), the most this server takes "
            "(DATA_UPLOAD_MAX_MEMORY_SIZE); nothing was accepted. Send less at once, e.g. a batch in parts.")


NOT_AUTHENTICATED = ("Authentication credentials were not provided: send Authorization: Token <your API token> "
                     "(Bearer <your API token> works too), or sign in to /admin/.")


def exception_handler(exc, context):
    if isinstance(exc, CoordinationError):
        body = {"error": exc.message, "code": exc.default_code}
        if exc.field:
            # A message that names its field first (a batch's "jobs[3].model: ...") names it once here.
            body["fields"] = {exc.field: [exc.message.removeprefix(f"{exc.field}: ")]}
        if getattr(exc, "job_id", None) is not None:
            body["job_id"] = str(exc.job_id)  # the live job a duplicate names
        response = Response(body, status=exc.status_code)
        if getattr(exc, "retry_after", None) is not None:
            response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, RequestDataTooBig):  # raised by DRF reading request.data
        exc = RequestTooLarge()
    elif isinstance(exc, exceptions.NotAuthenticated):
        # The same exception, its WWW-Authenticate challenge (auth_header) kept: only the words change.
        exc.detail = exceptions.ErrorDetail(NOT_AUTHENTICATED, code=exc.default_code)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    detail = exc.detail if isinstance(exc, exceptions.APIException) else response.data
    body = {"error": _first_message(detail), "code": getattr(exc, "default_code", "error")}
    if isinstance(exc, exceptions.ValidationError) and isinstance(detail, dict):
        body["code"] = "invalid"
        body["fields"] = response.data
    response.data = body
    return response


def bad_request_json(request, exception=None):
    """400 in the API's error shape (413 for a body over DATA_UPLOAD_MAX_MEMORY_SIZE), for what Django
    itself refuses before or outside a view, such as a Host header not in ALLOWED_HOSTS. The admin
    keeps Django's HTML page."""
    if request.path.startswith("/admin/"):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return JsonResponse({"error": too_large_message(), "code": "request_too_large"},
                            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exception, DisallowedHost):
        message = "This server does not answer to the Host this request names (ALLOWED_HOSTS); nothing was changed."
    else:
        message = "Bad request; nothing was changed."
    return JsonResponse({"error": message, "code": "bad_request"}, status=status.HTTP_400_BAD_REQUEST)


def not_found_json(request, exception=None):
    """404 for any unknown path, in the API's error shape (paths have no trailing slash)."""
    return JsonResponse(
        {"error": f"Nothing at {request.path}. API paths have no trailing slash, e.g. /jobs.", "code": "not_found"},
        status=status.HTTP_404_NOT_FOUND,
    )


def server_error_json(request):
    """500 in the API's error shape; 503 when the cause is that the database cannot be reached.

    Django calls this while handling the exception (from a view or a middleware, such as session
    or token lookups), so the exception is still at hand.
    """
    error = sys.exc_info()[1]
    if isinstance(error, (OperationalError, InterfaceError)):
        response = JsonResponse(
            {"error": "The database is unavailable; nothing was changed. Try again shortly.",
             "code": "database_unavailable"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
        response["Retry-After"] = "5"
        return response
    return JsonResponse({"error": "Internal server error; it has been logged.", "code": "server_error"}, status=500)
