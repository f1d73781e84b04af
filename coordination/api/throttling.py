"""The per-user submission rate (COORDINATOR_SUBMIT_RATE), for the endpoints that create jobs."""

from django.conf import settings
from django.core.cache import caches
from rest_framework import exceptions
from rest_framework.throttling import UserRateThrottle


class SubmitRateThrottle(UserRateThrottle):
    """Counts a user's submissions (POST /jobs, each job of POST /jobs/batch, workflow executions)
    over the last minute.

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
        if self.rate is None:
            return True
        # UserRateThrottle's count, where a request may weigh more than one: a batch of N jobs is N
        # submissions. It counts when it arrives, as a single POST /jobs does, accepted or not
        # (checking a thousand bodies is work too).
        self.cost = view.submission_count(request)
        self.key = self.get_cache_key(request, view)
        self.history = self.cache.get(self.key, [])
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        if len(self.history) + self.cost > self.num_requests:
            return self.throttle_failure()
        self.history[:0] = [self.now] * self.cost  # newest first, as UserRateThrottle keeps them
        self.cache.set(self.key, self.history, self.duration)
        return True

    def wait(self) -> float | None:
        """Seconds until enough of the counted submissions are a minute old for this request's to
        fit; None if it never will (a batch larger than the rate)."""
        if self.cost > self.num_requests:
            return None
        # history is newest first: once the entry at num_requests - cost expires, the request fits.
        return max(self.duration - (self.now - self.history[self.num_requests - self.cost]), 0.0)


class SubmitThrottledMixin:
    """Views that submit: throttled per user, with a 429 that says the limit."""

    throttle_classes = [SubmitRateThrottle]

    def submission_count(self, request) -> int:
        """How many submissions the request counts as (a batch view says its size)."""
        return 1

    def throttled(self, request, wait):
        rate, count = settings.COORDINATOR_SUBMIT_RATE, self.submission_count(request)
        if count > rate:
            detail = (
                f"A batch of {count} jobs counts as {count} submissions, more than the {rate} a minute one user "
                f"may make (COORDINATOR_SUBMIT_RATE): send at most {rate} jobs in a batch."
            )
        else:
            detail = f"Too many submissions: at most {rate} a minute per user (COORDINATOR_SUBMIT_RATE)."
            if count > 1:
                detail += f" A batch counts each of its jobs: this one counts {count}."
        raise exceptions.Throttled(wait, detail=detail)
