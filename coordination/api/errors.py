"""Every API error is JSON with a message a person can act on: {"error", "code", "fields"?}."""

from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
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


def exception_handler(exc, context):
    if isinstance(exc, CoordinationError):
        body = {"error": exc.message, "code": exc.default_code}
        if exc.field:
            body["fields"] = {exc.field: [exc.message]}
        return Response(body, status=exc.status_code)
    if isinstance(exc, Http404):
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


def not_found_json(request, exception=None):
    """404 for any unknown path, in the API's error shape (paths have no trailing slash)."""
    return JsonResponse(
        {"error": f"Nothing at {request.path}. API paths have no trailing slash, e.g. /jobs.", "code": "not_found"},
        status=status.HTTP_404_NOT_FOUND,
    )


def server_error_json(request):
    return JsonResponse({"error": "Internal server error; it has been logged.", "code": "server_error"}, status=500)
