"""The web server's application (ASGI): what `make run` serves with gunicorn's uvicorn workers.

Live event streams and answers that wait (`Prefer: wait`) are coroutines that hold neither a thread
nor a database connection while they wait (coordination/events). The rest of the API is synchronous
Django and DRF code, which an ASGI server runs in threads. Django's own handler gives each request a
thread of its own that lives as long as the request, so every open stream would keep an idle thread
(and with it a database connection). Here every request's synchronous work runs instead, one call
at a time, on one bounded pool of threads shared by the process (WEB_THREADS, default 16): a process
never has more threads, nor database connections, than that, however many streams are open.
"""

import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler

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


class PooledThreadsHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with ThreadSensitiveContext(executor=_RequestThreads()):
            await self.handle(scope, receive, send)


get_asgi_application()  # django.setup(), as Django's own entry point does
application = PooledThreadsHandler()
