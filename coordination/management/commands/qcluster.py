"""`manage.py qcluster`: django-q2's worker cluster, and beside it this cluster's provider poller, the
copier that keeps the files jobs produced (coordination/outputs) and the webhook sender.

The cluster runs as django-q2 runs it (its sentinel and worker processes). Its main process runs the
poller (coordination/providers/poller.py), the webhook sender (coordination/webhooks.py) and the
stop. This command replaces django-q2's own (coordination comes before django_q in INSTALLED_APPS)
and takes the same options.

A stop (SIGTERM, or SIGINT: Ctrl-C) starts nothing more: the poller lets go of its jobs at once (they
stay at their provider; the next poller adopts them), and the worker processes let their running jobs
finish for up to COORDINATOR_STOP_GRACE seconds, then hand back those still running (a second signal:
at once). See coordination/tasks.py. The signal handlers only take note: django-q2's own handler stops
the cluster inside the handler, and a second signal landing there deadlocked it.
"""

import asyncio
import logging
import os
import signal

from django.conf import settings
from django.core.checks import Tags
from django.db import connections
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as ClusterCommand

from coordination.recovery import reaper_pass
from coordination.tasks import ClusterStop, cluster_stop_prepare
from coordination.webhooks import cluster_sender_prepare, sender_start

logger = logging.getLogger(__name__)


class Command(ClusterCommand):
    help = "Starts the worker cluster (django-q2) and its provider poller."
    # The models' checks only. The others (the URLs, the admin, the templates) import the whole web
    # side, 15 MB that every process of the cluster would carry from its fork and never use;
    # `migrate`, which `make run` and a deployment run first, checks everything.
    requires_system_checks = [Tags.models]

    def handle(self, *args, **options):
        settings.SECRET_KEY  # the cluster signs its tasks with it: fail before starting without one
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        shared = cluster_stop_prepare()  # before the cluster forks: its processes inherit it
        cluster_sender_prepare()  # the same: its worker processes wake this process's webhook sender
        cluster = Cluster()
        signals = _Signals()
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, signals.note)  # in place of django-q2's handler (see the docstring)
        cluster.start()
        if options.get("run_once"):
            cluster.stop()
            return
        _start_what_waits()
        sender_start()
        asyncio.run(_run(cluster, shared, signals))


class _Signals:
    """How many stop signals came (a handler must not log or wait: it only counts)."""

    def __init__(self):
        self.count = 0

    def note(self, signum, frame) -> None:
        self.count += 1


def _start_what_waits() -> None:
    """A reaper pass as the cluster starts: jobs a stopped worker left waiting for the next worker
    (and anything a lapsed lease left) start now, not at the first tick."""
    try:
        reaper_pass()
    except Exception:  # the database may be away: the workers' reaper ticks try again
        logger.exception("Reaper pass at start failed")
    finally:
        connections.close_all()


async def _run(cluster: Cluster, shared: ClusterStop, signals: _Signals) -> None:
    # Imported once the cluster's processes are forked: they do not carry the poller's HTTP stack.
    from coordination.outputs.copier import Copier
    from coordination.providers.poller import Poller

    stop = asyncio.Event()
    watching = asyncio.ensure_future(_watch(cluster, shared, signals, stop))
    try:
        await asyncio.gather(Poller().run(stop), Copier().run(stop))
    except BaseException:
        watching.cancel()
        raise
    await watching


async def _watch(cluster: Cluster, shared: ClusterStop, signals: _Signals, poller_stop: asyncio.Event) -> None:
    while signals.count == 0:
        if cluster.sentinel is None or not cluster.sentinel.is_alive():  # the cluster ended on its own
            poller_stop.set()
            return
        await asyncio.sleep(0.1)
    shared.stopping.set()
    poller_stop.set()  # jobs at a provider never hold up a stop
    grace = settings.COORDINATOR_STOP_GRACE
    logger.info(
        "Stopping: starting no more jobs; waiting for %d running job(s) to finish, for at most %d s, then "
        "handing back any still running (a second signal: at once). Jobs at a provider stay there for the next poller.",
        shared.running_jobs(), grace,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    stopped = asyncio.ensure_future(asyncio.to_thread(cluster.stop))
    while not stopped.done():
        if not shared.hand_back.is_set() and (signals.count > 1 or loop.time() >= deadline):
            shared.hand_back.set()
            logger.info("Stopping: %s; handing back the %d job(s) still running",
                        "a second signal" if signals.count > 1 else f"{grace} s passed", shared.running_jobs())
        await asyncio.wait([stopped], timeout=0.1)
    await stopped
    logger.info("Stopped")
