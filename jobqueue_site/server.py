"""gunicorn's worker for `make run`: uvicorn serving jobqueue_site.asgi (the uvicorn-worker package),
with Django's lack of ASGI lifespan events said up front rather than found out at each start, and
open event streams given 3 s to end when the server stops (browsers then reconnect elsewhere)."""

from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "lifespan": "off", "timeout_graceful_shutdown": 3}
