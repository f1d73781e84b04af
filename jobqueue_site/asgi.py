"""The web server's application (ASGI): what `make run` serves with gunicorn's uvicorn workers.

Live event streams and answers that wait (`Prefer: wait`) are coroutines that hold neither a thread
nor a database connection while they wait (coordination/events). The rest of the API is synchronous
Django and DRF code, which an ASGI server runs in threads. Django's own handler gives each request a
thread of its own that lives as long as the request, so every open stream would keep an idle thread
(and with it a database connection). Here every request's synchronous work runs instead, one call
at a time, on one bounded pool of threads shared by the process (WEB_THREADS, default 16): a process
never has more threads, nor database connections, than that, however many streams are open.

And an ordinary request (no stream, no wait) goes through Django's synchronous middleware and view
in one call on that pool, as under WSGI, instead of hopping between the event loop and a thread for
every middleware hook (about fifteen hops a request, a quarter of a submit's time here).

What this gives up: asgiref asks that a request's synchronous calls run on one thread; here each
runs on whichever pool thread is free. Each call is whole in itself (a view, a middleware hook: no
transaction, lock or session setting spans two of them), so nothing here depends on it; code that
wants one database session across several `sync_to_async` calls of one request must not be added.
"""

import gc
import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jobqueue_site.settings")

_threads = ThreadPoolExecutor(max_workers=int(os.environ.get("WEB_THREADS") or 16), thread_name_prefix="web")


class _RequestThreads(Executor):
    """One request's synchronous calls, on the shared pool. The request awaits each call before it
    makes the next, so they run one at a time, as asgiref asks of a context's executor."""

    def __init__(self):
        self._used: set[int] = set()

    def submit(self, fn, /, *args, **kwargs):
        return _threads.submit(self._call, fn, args, kwargs)

    def _call(self, fn, args, kwargs):
        ident = threading.get_ident()
        if ident not in self._used:
            # What request_started does for a request's own thread under WSGI: a connection that
            # broke or outlived CONN_MAX_AGE is closed before this request uses it.
            self._used.add(ident)
            from django.db import close_old_connections

            close_old_connections()
        return fn(*args, **kwargs)


class _SynchronousHandler(BaseHandler):
    """Django's middleware and views, synchronously. A view that can hold its answer (coordination's
    `waitable`) is called as the plain view it wraps: such a request has no wait to hold."""

    def resolve_request(self, request):
        match = super().resolve_request(request)
        match.func = getattr(match.func, "without_wait", match.func)
        return match


class PooledThreadsHandler(ASGIHandler):
    def __init__(self):
        super().__init__()
        self._synchronous = _SynchronousHandler()
        self._synchronous.load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with ThreadSensitiveContext(executor=_RequestThreads()):
            await self.handle(scope, receive, send)

    def create_request(self, scope, body_file):
        request, error_response = super().create_request(scope, body_file)
        if request is not None and not request.META.get("CONTENT_LENGTH"):
            # A chunked body comes without Content-Length, and DRF reads no body without one (it took
            # the body for empty: "A prompt is required"). By now the whole body is in body_file
            # (read_body), so its length is known; Django's limit applies to it as to any other.
            size = body_file.seek(0, os.SEEK_END)
            body_file.seek(0)
            if size:
                request.META["CONTENT_LENGTH"] = str(size)
        return request, error_response

    async def run_get_response(self, request):
        if _waits(request):
            return await super().run_get_response(request)
        response = await sync_to_async(self._synchronous.get_response)(request)
        response._handler_class = self.__class__
        return response


def _waits(request) -> bool:
    """What needs the asynchronous way: an event stream, an answer asked to wait, a static file
    (served asynchronously: jobqueue_site.middleware)."""
    path = request.path_info
    return (path.endswith("/events") or "wait" in request.headers.get("Prefer", "").lower()
            or path.startswith("/" + settings.STATIC_URL.lstrip("/")))


get_asgi_application()  # django.setup(), as Django's own entry point does
application = PooledThreadsHandler()
# What is loaded by now (Django, DRF, our modules: most of a process's objects) lives as long as the
# process: moved out of the collector's sight, a full collection only walks what requests made. With
# 1,000 open streams a full collection paused the event loop 116-232 ms, and 53-73 ms once frozen
# (bench part (j)): every stream's events wait out such a pause.
gc.freeze()
