"""Clients that hear back without polling: event streams (Server-Sent Events) and `Prefer: wait`.

The views check who asks and what, as every view does (token or session, 404 for another user's job),
then hand over to coordination/events, where waiting costs no thread (under ASGI).
"""

import logging
from functools import wraps

from asgiref.sync import sync_to_async
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.permissions import IsAdminUser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.views import APIView

from coordination import selectors
from coordination.api.prefer import prefer_wait
from coordination.api.views import COMMON_ERRORS, NOT_FOUND, _error, job_answer
from coordination.events.streams import Resume, job_has_ended_for, job_stream, queue_stream, wait_until_ended
from coordination.models import Job

logger = logging.getLogger(__name__)

def waitable(view):
    """`view` (a DRF view function of a PreferWaitMixin view), able to hold its answer: with
    `Prefer: wait=N` on one of its `wait_methods`, a job answered with 200/201 that has not ended is
    waited for (at most N s, with no thread held), then answered as it is by then: a GET is asked
    once more, a submit's job read again (with the submit's status code)."""
    call = sync_to_async(view)
    methods = view.cls.wait_methods

    @wraps(view)
    async def answer(request, *args, **kwargs):
        response = await call(request, *args, **kwargs)
        if request.method not in methods or response.status_code not in (200, 201):
            return response
        try:
            seconds = prefer_wait(request)
        except ValidationError:
            return response  # the view refused it already
        data = getattr(response, "data", None)
        if seconds is None or not isinstance(data, dict) or "job_id" not in data:
            return response
        if data.get("status") not in Job.FINISHED:
            try:
                await wait_until_ended(data["job_id"], seconds)
                if request.method == "GET":
                    response = await call(request, *args, **kwargs)
                else:
                    response.data = await sync_to_async(job_answer)(data["job_id"])
            except Exception:
                # The job is accepted already: a failed wait must not turn its 201 into a 500 (which
                # a client would retry, submitting it twice). It is answered as it was, not waited for.
                logger.exception("Prefer: wait on job %s failed; answering without waiting", data["job_id"])
                return response
        response["Preference-Applied"] = f"wait={seconds}"
        return response

    answer.without_wait = view  # what jobqueue_site.asgi calls when a request does not ask to wait
    return answer


class EventStreamRenderer(BaseRenderer):
    """Lets a client that asks for `Accept: text/event-stream` (a browser's EventSource) in."""

    media_type = "text/event-stream"
    format = "event-stream"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return JSONRenderer().render(data)


class ServedSynchronously(APIException):
    status_code = 501
    default_code = "needs_asgi"
    default_detail = (
        "Live events need the ASGI server, where an open stream holds no thread: `make run` serves it "
        "(gunicorn with uvicorn workers, jobqueue_site.asgi:application). This server runs the app as WSGI "
        "(runserver, say), which could only send a stream once it has ended."
    )


class EventStreamView(APIView):
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if "wsgi.version" in request.META:
            raise ServedSynchronously()

    def finalize_response(self, request, response, *args, **kwargs):
        # Errors are JSON, whatever the client accepts.
        if getattr(response, "data", None) is not None and response.status_code >= 400:
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)

    @staticmethod
    def stream(frames) -> StreamingHttpResponse:
        response = StreamingHttpResponse(frames, content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        return response


NEEDS_ASGI = {501: _error("The app is served as WSGI (runserver, say): live events need the ASGI server (`make run`).")}
async def _nothing():
    return
    yield


LAST_EVENT_ID = OpenApiParameter(
    "Last-Event-ID", OpenApiTypes.STR, OpenApiParameter.HEADER,
    description="The `id:` of the last event received (a browser's EventSource sends it when it reconnects): "
                "the events after it are sent, none lost.",
)
EVENTS_DESCRIPTION = (
    "`text/event-stream`: each event has `event: job.<what>`, `id:` and `data:` the job's JSON (as `POST /jobs` "
    "answers it), as it was right after the change. `<what>` is `state` (the first event: the job now), "
    "`submitted`, `started`, `requeued`, `completed`, `failed`, `cancelled`, `expired`, `blocked` (what it waits "
    "for changed), `queue_position`, `priority`, `cancel_requested`, `step` (a workflow's current step), "
    "`progress` (what its provider says of it), `files` (a completed job's files kept; the stream then ends) or "
    "`changed` (anything else a client sees). A comment line every 15 s keeps proxies from closing it."
)


@extend_schema(
    summary="A job's live events",
    description=EVENTS_DESCRIPTION + " The stream ends after the job's terminal event; a reconnect after it is "
    "answered 204 (a browser's EventSource then stops).",
    parameters=[OpenApiParameter("job_id", OpenApiTypes.UUID, OpenApiParameter.PATH), LAST_EVENT_ID],
    responses={
        (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="The stream."),
        204: OpenApiResponse(description="Reconnected after the job's last event: nothing more will come."),
        **COMMON_ERRORS,
        **NOT_FOUND,
        **NEEDS_ASGI,
    },
)
class JobEventsView(EventStreamView):
    def get(self, request, job_id: str):
        job = selectors.job_get(user=request.user, job_id=job_id)
        resume = Resume.parse(request.headers.get("Last-Event-ID"))
        if job_has_ended_for(resume, job):
            return HttpResponse(status=204)
        if request.method == "HEAD":  # the headers a GET would have, not a stream until the job ends
            return self.stream(_nothing())
        return self.stream(job_stream(job.job_id, resume))


@extend_schema(
    summary="Every job's live events (staff)",
    description="Every job's changes, as `GET /jobs/{id}/events` sends them (without `queue_position`), after a "
    "first `queue.status` event with `GET /queue/status`'s answer. The queue console listens to it.",
    parameters=[LAST_EVENT_ID],
    responses={(200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="The stream."),
               **COMMON_ERRORS, 403: _error("Not staff: only staff may follow every job."), **NEEDS_ASGI},
)
class QueueEventsView(EventStreamView):
    permission_classes = [IsAdminUser]

    def get(self, request):
        resume = Resume.parse(request.headers.get("Last-Event-ID"))
        user = request.user
        if request.method == "HEAD":
            return self.stream(_nothing())
        return self.stream(queue_stream(resume, lambda: selectors.queue_status(user=user)))
