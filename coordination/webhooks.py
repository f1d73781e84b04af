"""Webhooks: a job's events POSTed to its `webhook_url`, signed as the Standard Webhooks specification
says (the `standardwebhooks` package signs; we do not hand-roll it), never lost.

- An event is written as a `webhook_deliveries` row in the transaction of the transition itself (an
  outbox, from coordination/transitions.py), so it exists exactly when the transition does.
- It is sent after commit by the worker cluster (a django-q2 task per new row, and every reaper pass
  for the rows that are due), never under the coordinator lock.
- A non-2xx answer, a timeout or a refused connection is tried again with growing delays for 24 hours,
  with the same `webhook-id` (receivers de-duplicate on it); one job's events go in order.
- No server-side request forgery: the URL must be https (http with COORDINATOR_WEBHOOK_ALLOW_HTTP=1),
  and a host that resolves to a loopback, private, link-local, multicast or reserved address is
  refused, at submit and again at every send (DNS rebinding), unless COORDINATOR_WEBHOOK_ALLOW_PRIVATE=1.
  Redirects are not followed.
"""

import base64
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import urllib.parse
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from coordination.exceptions import InvalidJob
from coordination.models import Job, WebhookAttempt, WebhookDelivery, WebhookSecret

logger = logging.getLogger(__name__)

EVENTS = ("started", "completed", "failed", "cancelled", "expired")
DEFAULT_EVENTS = ("completed", "failed", "cancelled", "expired")
# After the first try: 5 s, 30 s, 2 min, 10 min, 1 h, then hourly, for 24 hours in all.
DELAYS = (5, 30, 120, 600, 3600)
GIVE_UP_AFTER = timedelta(hours=24)
ROTATION_OVERLAP = timedelta(hours=24)


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


def url_check(url: str, *, field: str = "webhook_url") -> list[str]:
    """The addresses `url`'s host resolves to, all of them public; else UnsafeUrl (a 400 at submit)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise UnsafeUrl("webhook_url must be a URL of at most 2,048 characters.", field=field)
    parts = urllib.parse.urlsplit(url)
    allowed = ("https", "http") if settings.COORDINATOR_WEBHOOK_ALLOW_HTTP else ("https",)
    if parts.scheme not in allowed or not parts.hostname:
        raise UnsafeUrl(
            f"webhook_url must be an {' or '.join(allowed)} URL with a host (got '{url[:100]}')"
            + ("" if "http" in allowed else "; http needs COORDINATOR_WEBHOOK_ALLOW_HTTP=1 on the server") + ".",
            field=field,
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as error:
        raise UnsafeUrl(f"webhook_url's host {parts.hostname} does not resolve ({error}).", field=field) from None
    addresses = sorted({info[4][0] for info in infos})
    if not settings.COORDINATOR_WEBHOOK_ALLOW_PRIVATE:
        for address in addresses:
            kind = _private_kind(ipaddress.ip_address(address.split("%")[0]))
            if kind:
                raise UnsafeUrl(
                    f"webhook_url's host {parts.hostname} resolves to {address}, a {kind} address; webhooks go "
                    "to public addresses only (COORDINATOR_WEBHOOK_ALLOW_PRIVATE=1 allows others, for local tests).",
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


# --- the signing secret ---------------------------------------------------------------------------


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_get(*, user) -> WebhookSecret:
    record, _ = WebhookSecret.objects.get_or_create(user=user, defaults={"secret": _new_secret()})
    return record


def secret_rotate(*, user) -> WebhookSecret:
    """A new secret; the old one keeps signing beside it for 24 hours (receivers switch meanwhile)."""
    with transaction.atomic():
        record = WebhookSecret.objects.select_for_update().filter(user=user).first()
        if record is None:
            return secret_get(user=user)
        record.previous, record.previous_until = record.secret, timezone.now() + ROTATION_OVERLAP
        record.secret, record.created_at = _new_secret(), timezone.now()
        record.save()
    return record


def _signers(owner_id) -> list[Webhook]:
    """The owner's secret (made now if the owner never asked for it: GET /webhooks/secret shows the
    same one), and the previous one while a rotation's day lasts."""
    if not owner_id:
        return []
    record, _ = WebhookSecret.objects.get_or_create(user_id=owner_id, defaults={"secret": _new_secret()})
    keys = [record.secret]
    if record.previous and record.previous_until and record.previous_until > timezone.now():
        keys.append(record.previous)
    return [Webhook(key) for key in keys]


# --- the outbox (in the transition's transaction) -------------------------------------------------


def webhook_record(job: Job, event: str) -> None:
    """Called by coordination/transitions.py after it saved `job` in `event`'s state: write the
    delivery if the job wants that event, and have it sent once the transaction commits."""
    if not job.webhook_url:
        return
    wanted = job.webhook_events_filter or DEFAULT_EVENTS
    if event not in wanted:
        return
    from coordination.api.serializers import detail_of  # the job as GET /jobs/{id} shows it

    now = timezone.now()
    delivery = WebhookDelivery.objects.create(
        webhook_id=f"msg_{uuid.uuid4().hex}",
        job=job,
        event_type=f"job.{event}",
        url=job.webhook_url,
        payload={"type": f"job.{event}", "timestamp": now.isoformat(), "data": detail_of(job)},
        next_attempt_at=now,
        created_at=now,
    )
    transaction.on_commit(lambda: _enqueue(delivery.job_id))


def _enqueue(job_id) -> None:
    from django_q.tasks import async_task  # reads its settings at import time

    async_task("coordination.webhooks.deliver_job", str(job_id), task_name=f"webhooks of job {job_id}")


# --- sending ----------------------------------------------------------------------------------------

IN_FLIGHT = timedelta(seconds=60)  # a send claims its row this long; a sender that died frees it so


def deliver_job(job_id: str, *, now: datetime | None = None) -> int:
    """Send the job's due deliveries in order, stopping at the first that fails (the next ones wait
    for it: one job's events arrive in order). Returns how many were delivered.

    No transaction is open while a receiver is called: the job's earliest pending row is claimed in
    one short UPDATE (its next try moved IN_FLIGHT ahead, so another sender finds it not due and stops
    rather than skip to a later event), then sent, then its outcome recorded in a second statement."""
    delivered = 0
    while True:
        moment = now or timezone.now()
        earliest = (
            WebhookDelivery.objects.filter(job_id=job_id, state=WebhookDelivery.State.PENDING)
            .order_by("id").values_list("pk", flat=True).first()
        )
        if earliest is None:
            return delivered
        claimed = WebhookDelivery.objects.filter(
            pk=earliest, state=WebhookDelivery.State.PENDING, next_attempt_at__lte=moment
        ).update(next_attempt_at=moment + IN_FLIGHT)
        if not claimed or not _attempt(WebhookDelivery.objects.get(pk=earliest), now=moment):
            return delivered
        delivered += 1


def deliver_due(*, now: datetime | None = None, limit: int = 100) -> int:
    """The jobs whose earliest pending delivery is due (the background pass): each job's in order.
    A later event waiting behind an earlier one is not "due" itself, so it cannot crowd out others."""
    now = now or timezone.now()
    earlier = WebhookDelivery.objects.filter(
        job_id=OuterRef("job_id"), state=WebhookDelivery.State.PENDING, id__lt=OuterRef("id")
    )
    jobs = (
        WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING, next_attempt_at__lte=now)
        .filter(~Exists(earlier)).order_by("next_attempt_at").values_list("job_id", flat=True)[:limit]
    )
    return sum(deliver_job(job_id, now=now) for job_id in list(dict.fromkeys(jobs)))


def _post(url: str, address: str, body: bytes, headers: dict) -> int:
    """POST to `url`, connecting to `address` (the one url_check passed: a name that resolves elsewhere
    by now is not asked again), with the host's name kept for TLS and the Host header. A redirect is an
    answer like any other (not followed)."""
    parts = urllib.parse.urlsplit(url)
    timeout = settings.COORDINATOR_WEBHOOK_TIMEOUT
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    port = connection.port
    connection._create_connection = lambda _, *args, **kwargs: socket.create_connection((address, port), *args, **kwargs)
    try:
        path = parts.path or "/"
        connection.request("POST", path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def _attempt(delivery: WebhookDelivery, *, now: datetime) -> bool:
    body = json.dumps(delivery.payload, separators=(",", ":"), default=str)
    status, error = None, ""
    signers = _signers(Job.objects.filter(pk=delivery.job_id).values_list("owner_id", flat=True).first())
    try:
        addresses = url_check(delivery.url)  # again at send: the name may resolve elsewhere now
        if not signers:
            raise RuntimeError("the job has no owner whose secret could sign it")
        signed_at = timezone.now()
        signature = " ".join(signer.sign(delivery.webhook_id, signed_at, body) for signer in signers)
        status = _post(delivery.url, addresses[0], body.encode(), {
            "Content-Type": "application/json",
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": signature,
            "User-Agent": "job-queue-coordinator-webhooks",
        })
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except InvalidJob as refused:
        error = f"refused: {refused.message}"
    except Exception as failure:  # a timeout, a refused connection, a TLS error: tried again later
        error = f"{type(failure).__name__}: {failure}"
    ok = status is not None and 200 <= status < 300
    with transaction.atomic():
        WebhookAttempt.objects.create(delivery=delivery, at=now, status_code=status, error=error)
        first_try = delivery.attempt_rows.order_by("id").values_list("at", flat=True).first()
        delivery.attempts += 1
        delivery.last_status_code, delivery.last_error = status, error
        if ok:
            delivery.state, delivery.delivered_at, delivery.next_attempt_at = WebhookDelivery.State.DELIVERED, now, None
        else:
            delay = timedelta(seconds=DELAYS[delivery.attempts - 1] if delivery.attempts <= len(DELAYS) else 3600)
            # 24 hours from its first try (an event that waited behind an earlier one gets its full day).
            if now + delay > first_try + GIVE_UP_AFTER:
                delivery.state, delivery.next_attempt_at = WebhookDelivery.State.FAILED, None
                logger.warning("Webhook %s of job %s given up after %s attempts: %s",
                               delivery.webhook_id, delivery.job_id, delivery.attempts, error)
            else:
                delivery.next_attempt_at = now + delay
        delivery.save()
    return ok


def delivery_resend(delivery: WebhookDelivery) -> None:
    """An operator's "send again": the same webhook_id, due now, a fresh day of tries."""
    delivery.attempt_rows.all().delete()
    delivery.state, delivery.attempts, delivery.next_attempt_at = WebhookDelivery.State.PENDING, 0, timezone.now()
    delivery.save(update_fields=["state", "attempts", "next_attempt_at"])
    transaction.on_commit(lambda: _enqueue(delivery.job_id))
