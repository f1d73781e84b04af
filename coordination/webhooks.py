"""Webhooks: a job's events POSTed to its `webhook_url`, signed as the Standard Webhooks specification
says (the `standardwebhooks` package signs; we do not hand-roll it), never lost.

- An event is written as a `webhook_deliveries` row by the database, in the transaction of the change
  itself (the job_events trigger, coordination/events/triggers.py: whoever changes the job, the
  Python path, the SQL fast path or an operator's SQL), so it exists exactly when the change does.
  The row keeps the job's changing fields as they were right after it (`event_state`).
- Everything else happens here, after commit, in the worker cluster (a django-q2 task for each job
  whose change made a delivery, as the coordinator's write reports them to LockedQueue.flush, and
  every worker's background pass for the rows that are due), never
  under the coordinator lock: the payload is rendered at the first send, from `event_state`, as the
  live event streams render an event (coordination/events/feed.py), and kept for every retry.
- A non-2xx answer, a timeout or a refused connection is tried again with growing delays for 24 hours,
  with the same `webhook-id` (receivers de-duplicate on it); one job's events go in order.
- No server-side request forgery: the URL must be https (http with COORDINATOR_WEBHOOK_ALLOW_HTTP=1),
  and a host that resolves to a loopback, private, link-local, multicast or reserved address is
  refused, at submit and again at every send (DNS rebinding), unless COORDINATOR_WEBHOOK_ALLOW_PRIVATE=1.
  Redirects are not followed.
"""

import base64
import http.client
import json
import logging
import secrets
import socket
import ssl
import urllib.parse
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from coordination.events import feed
from coordination.exceptions import InvalidJob
from coordination.models import Job, WebhookAttempt, WebhookDelivery, WebhookSecret
from coordination.webhook_targets import UnsafeUrl, url_check, webhooks_send_task

__all__ = ["UnsafeUrl", "deliver_due", "deliver_job", "delivery_resend", "secret_get", "secret_rotate", "url_check"]

logger = logging.getLogger(__name__)

# After the first try: 5 s, 30 s, 2 min, 10 min, 1 h, then hourly, for 24 hours in all.
DELAYS = (5, 30, 120, 600, 3600)
GIVE_UP_AFTER = timedelta(hours=24)
ROTATION_OVERLAP = timedelta(hours=24)


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


def _payload(delivery: WebhookDelivery) -> dict:
    """`delivery`'s body: the job's JSON as GET /jobs/{id} showed it right after the event (the fields
    the event kept laid over the job, as the live streams show it: events/feed.py), with the fields
    of a waiting job null, and no provider run (an attempt that has just started has none yet)."""
    job = feed.jobs_by_id([delivery.job_id])[delivery.job_id]
    data = feed.as_of(job, delivery.event_state, None)
    data.update(at_provider=None, waiting_for=None, estimated_start_at=None, start_overdue=None, waiting_for_slot=None)
    return {"type": delivery.event_type, "timestamp": delivery.created_at.isoformat(), "data": data}


def _attempt(delivery: WebhookDelivery, *, now: datetime) -> bool:
    if delivery.payload is None:
        # Rendered once, before the first try, and kept: every retry sends the same body.
        delivery.payload = _payload(delivery)
        WebhookDelivery.objects.filter(pk=delivery.pk).update(payload=delivery.payload)
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
    transaction.on_commit(lambda: webhooks_send_task(delivery.job_id))
