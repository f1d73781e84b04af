"""A job's webhook: where it goes and which of its events it wants, checked at submit (the URL again
at every send), and the wake that has the deliveries sent once a change commits.

Below everything that sends (coordination/webhooks.py): it imports no payload, no API and no HTTP
client, so the submit service and the transitions, which run under the coordinator lock, may use it.
The delivery rows themselves are written by the database, with the change (the job_events trigger,
coordination/events/triggers.py, from EVENTS and DEFAULT_EVENTS here).
"""

import ipaddress
import socket
import urllib.parse

from django.conf import settings

from coordination.exceptions import InvalidJob
from coordination.models import Job

# "files": a completed job's files have all been kept (or failed to be): coordination/outputs.
EVENTS = ("started", "completed", "failed", "cancelled", "expired", "files")
DEFAULT_EVENTS = ("completed", "failed", "cancelled", "expired")


# --- what a submit may ask for --------------------------------------------------------------------


def webhook_set(job: Job, *, webhook_url: str | None = None, webhook_events_filter: list | None = None) -> None:
    """Check a submission's webhook and set it on its job (not saved yet)."""
    if webhook_url is None:
        if webhook_events_filter is not None:
            raise InvalidJob("webhook_events_filter applies to a webhook_url: send one with it.", field="webhook_events_filter")
        return
    url_check(webhook_url, field="webhook_url")
    if webhook_events_filter is not None:
        unknown = [event for event in webhook_events_filter if event not in EVENTS]
        if unknown or not webhook_events_filter:
            raise InvalidJob(
                f"webhook_events_filter is a non-empty list from {', '.join(EVENTS)}"
                + (f" (unknown: {', '.join(map(str, unknown))})." if unknown else "."),
                field="webhook_events_filter",
            )
        webhook_events_filter = [event for event in EVENTS if event in webhook_events_filter]
    job.webhook_url = webhook_url
    job.webhook_events_filter = webhook_events_filter


class UnsafeUrl(InvalidJob):
    pass


def url_check(url: str, *, field: str = "webhook_url", trusted_host: str | None = None) -> list[str]:
    """The addresses `url`'s host resolves to, all of them public; else UnsafeUrl (a 400 at submit).
    https only, unless COORDINATOR_WEBHOOK_ALLOW_HTTP; public addresses only, unless
    COORDINATOR_WEBHOOK_ALLOW_PRIVATE. `trusted_host` (a model's own provider_base_url's host: a
    ComfyUI box on the LAN) may be reached over http and at a private address."""
    if not isinstance(url, str) or len(url) > 2048:
        raise UnsafeUrl(f"{field} must be a URL of at most 2,048 characters.", field=field)
    parts = urllib.parse.urlsplit(url)
    trusted = trusted_host is not None and parts.hostname == trusted_host
    allowed = ("https", "http") if settings.COORDINATOR_WEBHOOK_ALLOW_HTTP or trusted else ("https",)
    if parts.scheme not in allowed or not parts.hostname:
        raise UnsafeUrl(
            f"{field} must be an {' or '.join(allowed)} URL with a host (got '{url[:100]}')"
            + ("" if "http" in allowed else "; http needs COORDINATOR_WEBHOOK_ALLOW_HTTP=1 on the server") + ".",
            field=field,
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as error:
        raise UnsafeUrl(f"{field}'s host {parts.hostname} does not resolve ({error}).", field=field) from None
    addresses = sorted({info[4][0] for info in infos})
    if not (settings.COORDINATOR_WEBHOOK_ALLOW_PRIVATE or trusted):
        for address in addresses:
            kind = _private_kind(ipaddress.ip_address(address.split("%")[0]))
            if kind:
                raise UnsafeUrl(
                    f"{field}'s host {parts.hostname} resolves to {address}, a {kind} address; only public addresses "
                    "are reached (COORDINATOR_WEBHOOK_ALLOW_PRIVATE=1 allows others, for local tests).",
                    field=field,
                )
    return addresses


def _private_kind(address) -> str | None:
    """Why `address` is not a public one to send to, or None if it is (anything not globally routable:
    loopback, private, link-local, multicast, shared 100.64/10, reserved, 6to4 of any of those...)."""
    if getattr(address, "ipv4_mapped", None):
        address = address.ipv4_mapped
    if getattr(address, "sixtofour", None):
        address = address.sixtofour
    for kind, test in (("loopback", "is_loopback"), ("link-local", "is_link_local"), ("multicast", "is_multicast"),
                       ("private", "is_private"), ("reserved", "is_reserved"), ("unspecified", "is_unspecified")):
        if getattr(address, test):
            return kind
    return None if address.is_global else "non-public"


# --- the wake -----------------------------------------------------------------------------------

# How this process wakes its qcluster's sender (webhooks.sender_start, webhooks.worker_wake_register);
# empty in a process that has none (the web server).
_local_wake: list = []


def webhooks_sender_register(wake) -> None:
    _local_wake[:] = [wake]


def webhooks_wake() -> None:
    """After commit, once a change made webhook deliveries (the coordinator's write says so:
    LockedQueue.flush): wake this process's sender, or where there is none (the web server), enqueue a
    django-q2 task that sends what is due (coordination.webhooks.deliver_due, named, not imported: the
    sender and its payloads stay out of the code that runs under the lock). A wake lost with its
    process is made good by the workers' background pass."""
    if _local_wake:
        _local_wake[0]()
        return
    from django_q.tasks import async_task  # reads its settings at import time

    async_task("coordination.webhooks.deliver_due", task_name="webhooks")
