"""The per-user submission rate (COORDINATOR_SUBMIT_RATE), for the two endpoints that create jobs."""

from django.conf import settings
from django.core.cache import caches
from rest_framework import exceptions
from rest_framework.throttling import UserRateThrottle


class SubmitRateThrottle(UserRateThrottle):
    """Counts a user's POSTs (job submissions, workflow executions) over the last minute.

    The counts live in the database cache, so the limit holds across all web processes. Two
    requests at the same instant may both pass the last free place (read, then write): the rate
    is a guard against floods, not an exact quota; the pending-jobs limit is the exact one.
    """

    scope = "submit"

    @property
    def cache(self):
        return caches["throttle"]

    def get_rate(self) -> str | None:
        # Read per request, not at import, so an operator's setting (and a test's) applies.
        rate = settings.COORDINATOR_SUBMIT_RATE
        return f"{rate}/min" if rate > 0 else None

    def allow_request(self, request, view) -> bool:
        if request.method != "POST":
            return True  # reading the job list is not a submission
        if request.user.is_staff:
            return True  # operators are not limited (nor is their pending count)
        return super().allow_request(request, view)


class SubmitThrottledMixin:
    """Views that submit: throttled per user, with a 429 that says the limit."""

    throttle_classes = [SubmitRateThrottle]

    def throttled(self, request, wait):
        raise exceptions.Throttled(
            wait,
            detail=f"Too many submissions: at most {settings.COORDINATOR_SUBMIT_RATE} a minute per user "
            "(COORDINATOR_SUBMIT_RATE).",
        )
