"""`Prefer: wait=N` (RFC 7240): how a client asks that an answer wait for its job to end (the waiting
itself: coordination/api/events.py, `waitable`)."""

import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError

WAIT_MAX_SECONDS = 60
_WAIT = re.compile(r"^\s*wait\s*=\s*\"?([^\s\";,]*)\"?\s*$", re.IGNORECASE)

PREFER_WAIT = OpenApiParameter(
    "Prefer", OpenApiTypes.STR, OpenApiParameter.HEADER,
    description=f"`wait=N` (1 ≤ N ≤ {WAIT_MAX_SECONDS}): hold the answer until the job has ended or N seconds "
                "passed; the answer then says `Preference-Applied: wait=N`.",
)
PREFERENCE_APPLIED = OpenApiParameter(
    "Preference-Applied", OpenApiTypes.STR, OpenApiParameter.HEADER, response=[200, 201],
    description="`wait=N` when the answer waited (Prefer: wait=N).",
)


def prefer_wait(request) -> int | None:
    """The N of a `Prefer: wait=N` header (other preferences beside it are ignored, as RFC 7240
    allows); None without one. A wait outside 1..60 or not a number is a ValidationError."""
    for preference in request.headers.get("Prefer", "").split(","):
        match = _WAIT.match(preference.split(";")[0])
        if match is None:
            continue
        value = match[1]
        if not value.isdigit() or not 1 <= int(value) <= WAIT_MAX_SECONDS:
            raise ValidationError({"Prefer": [
                f"wait must be a whole number of seconds from 1 to {WAIT_MAX_SECONDS}, e.g. \"Prefer: wait=10\" "
                f"(got \"{value[:20]}\")."
            ]})
        return int(value)
    return None


class PreferWaitMixin:
    """Refuses a bad `Prefer: wait` once the request is authenticated, before the view changes anything."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if request.method in getattr(self, "wait_methods", ()):
            prefer_wait(request)
