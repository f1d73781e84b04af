"""`manage.py qcluster`: django-q2's worker cluster, and beside it this cluster's provider poller.

The cluster runs as django-q2 runs it (its sentinel and worker processes, its signals: SIGTERM stops
it). Its main process, which only waits for the cluster otherwise, runs the poller
(coordination/providers/poller.py) until the cluster has stopped; the poller then lets go of the jobs
it watched, so that another cluster's poller takes them at once. This command replaces django-q2's
own (coordination comes before django_q in INSTALLED_APPS) and takes the same options.
"""

import asyncio
import logging
import os

from django.conf import settings
from django.core.checks import Tags
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as ClusterCommand

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
        cluster = Cluster()
        cluster.start()
        if options.get("run_once"):
            cluster.stop()
            return
        asyncio.run(_poll_while_running(cluster))


async def _poll_while_running(cluster: Cluster) -> None:
    # Imported once the cluster's processes are forked: they do not carry the poller's HTTP stack.
    from coordination.providers.poller import Poller

    stop = asyncio.Event()

    async def watch() -> None:
        # The cluster stops on SIGTERM (its own handler, which returns once its processes ended).
        while cluster.sentinel is not None and cluster.sentinel.is_alive():
            await asyncio.sleep(0.2)
        stop.set()

    watching = asyncio.ensure_future(watch())
    try:
        await Poller().run(stop)
    finally:
        watching.cancel()
