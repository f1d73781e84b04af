"""Webhooks: a job's events POSTed to its `webhook_url`, signed as the Standard Webhooks specification
says (the `standardwebhooks` package signs; we do not hand-roll it), never lost.

- An event is written as a `webhook_deliveries` row by the database, in the transaction of the change
  itself (the job_events trigger, coordination/events/triggers.py: whoever changes the job, the
  coordinator, a repair or an operator's SQL), so it exists exactly when the change does.
  The row keeps the job's changing fields as they were right after it (`event_state`).
- Everything else happens here, after commit, in the worker cluster, never under the coordinator
  lock: a change that made deliveries wakes the qcluster's sender once it commits (a thread of its
  main process, `Sender`; from the web server, which has none, a django-q2 task:
  webhook_targets.webhooks_wake), and every worker's background pass sends what is due (retries, a
  lost wake). What is due goes in batches: claimed, rendered, POSTed side by side and recorded in a
  few statements a batch, whatever its size (deliver_due). The payload is rendered at the first
  send, from `event_state`, as the live event streams render an event (coordination/events/feed.py),
  and kept for every retry.
- A non-2xx answer, a timeout or a refused connection is tried again with growing delays for 24 hours,
  with the same `webhook-id` (receivers de-duplicate on it); one job's events go in order.
- No server-side request forgery: the URL must be https (http with COORDINATOR_WEBHOOK_ALLOW_HTTP=1),
  and a host that resolves to a loopback, private, link-local, multicast or reserved address is
  refused, at submit and again at every send (DNS rebinding), unless COORDINATOR_WEBHOOK_ALLOW_PRIVATE=1.
  Redirects are not followed. The POST itself, on a connection kept for the next one:
  coordination/webhook_transport.py.
"""

import base64
import json
import logging
import multiprocessing
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, connections, transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from coordination.events import feed
from coordination.exceptions import InvalidJob
from coordination.models import Job, WebhookDelivery, WebhookSecret
from coordination.selectors import jobs_shown
from coordination.webhook_targets import UnsafeUrl, url_check, webhooks_sender_register, webhooks_wake
from coordination.webhook_transport import post
from coordination.writes import PLANNED_ONCE

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


def _signers(batch: list[WebhookDelivery]) -> dict:
    """Each owner's signers, by owner id: the keys the claim read for the batch (signing_keys: their
    secret, and the previous one while a rotation's day lasts), or a secret made now for an owner who
    never asked for one (GET /webhooks/secret shows the same one)."""
    keys = {delivery.owner_id: delivery.signing_keys for delivery in batch if delivery.owner_id is not None}
    for owner_id in [owner_id for owner_id, found in keys.items() if found is None]:
        record, _ = WebhookSecret.objects.get_or_create(user_id=owner_id, defaults={"secret": _new_secret()})
        keys[owner_id] = [record.secret]
    return {owner_id: [Webhook(key) for key in found] for owner_id, found in keys.items()}


# --- sending ----------------------------------------------------------------------------------------

IN_FLIGHT = timedelta(seconds=60)  # a send claims its row this long; a sender that died frees it so
# A batch is as many deliveries as a process sends at once (COORDINATOR_WEBHOOK_SENDS): claimed,
# rendered, sent side by side and recorded together, in one round of sends that its claim outlasts.
# A pass (the background pass, the web server's task) sends at most PASS_ROUNDS batches.
PASS_ROUNDS = 12

def _claim_sql(target) -> str:
    """jq_webhooks_claim, as `target` (a connection) types the delivery's columns.

    It claims the due deliveries, each its job's earliest pending one (a later event waits for an
    earlier one, which another sender may be sending: its claim moved its next try, not its state), by
    moving their next try `p_until`; SKIP LOCKED: two senders claim different rows, never one twice.
    Each row comes with what its send needs besides: its job's owner, the keys that sign for that owner
    at `p_now` (null: the owner has no secret yet) and when it was first tried. `p_job`, `p_jobs`:
    only that job's deliveries, or those jobs' (null: any).

    A function, planned once per connection like the copier's, and never with a bitmap scan: each
    delivery sent leaves a dead entry in the partial index of pending ones until the table is
    vacuumed, and a bitmap scan visits every one of them again at every claim (over a drain of
    thousands of jobs, most of a claim's time), where a plain index scan marks them dead once.

    Its cost is its batch's, not the backlog's, whatever the statistics its plan was made with: the due
    rows are read in the order claimed (webhook_deliveries_due_idx) until the batch is full, and
    "its job's earliest pending one" is a sub-plan, one probe of webhook_deliveries_pending_idx per row
    read. (Written as NOT EXISTS, planned while the table looked empty, it was a join that compared
    every pending delivery with every other: 33 ms to claim 8 of 300.)"""
    columns = [(field.column, field.db_type(target)) for field in WebhookDelivery._meta.concrete_fields]
    return f"""
CREATE OR REPLACE FUNCTION jq_webhooks_claim(
    p_now timestamptz, p_until timestamptz, p_limit int, p_job uuid, p_jobs uuid[]
) RETURNS TABLE ({", ".join(f"{column} {kind}" for column, kind in columns)},
                 owner_id bigint, signing_keys text[], first_try timestamptz)
LANGUAGE plpgsql VOLATILE
{PLANNED_ONCE} AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    -- MATERIALIZED: taken once. As a sub-select, a plan that joins it by nested loop with it inside
    -- runs it again for each outer row, each time locking and taking up to p_limit more rows.
    WITH due AS MATERIALIZED (
        SELECT c.id FROM webhook_deliveries AS c
        WHERE c.state = 'pending' AND c.next_attempt_at <= p_now
          AND (p_job IS NULL OR c.job_id = p_job) AND (p_jobs IS NULL OR c.job_id = ANY(p_jobs))
          AND c.id = (SELECT e.id FROM webhook_deliveries AS e WHERE e.job_id = c.job_id AND e.state = 'pending'
                      ORDER BY e.id LIMIT 1)
        ORDER BY c.next_attempt_at, c.id LIMIT p_limit
        FOR UPDATE OF c SKIP LOCKED)
    UPDATE webhook_deliveries AS d SET next_attempt_at = p_until
    FROM due, jobs AS j
    WHERE d.id = due.id AND j.job_id = d.job_id
    RETURNING {", ".join(f"d.{column}" for column, _ in columns)}, j.owner_id::bigint,
        (SELECT (ARRAY[s.secret] || CASE WHEN s.previous <> '' AND s.previous_until > p_now
                                         THEN ARRAY[s.previous] ELSE '{{}}' END)::text[]
         FROM webhook_secrets AS s WHERE s.user_id = j.owner_id),
        (SELECT min(a.at) FROM webhook_attempts AS a WHERE a.delivery_id = d.id);
END $$;
"""


def install(schema_editor=None) -> None:
    """Create (or replace) jq_webhooks_claim; migrations 0043, 0045 and 0046 call it, and so must a
    migration that changes a column of webhook_deliveries."""
    target = schema_editor.connection if schema_editor is not None else connection
    with target.cursor() as cursor:
        cursor.execute(_claim_sql(target))


# The bodies rendered for a first try, kept before it is sent: every retry sends the same body.
_RENDERED_SQL = """
UPDATE webhook_deliveries AS d SET payload = r.payload
FROM jsonb_to_recordset(%s::jsonb) AS r(id bigint, payload jsonb) WHERE d.id = r.id AND d.payload IS NULL
"""

# Each claimed delivery's try and its outcome, in one statement for the batch; only where the claim
# still holds (a send that outlasted it leaves the delivery to the sender that claimed it since).
_RECORD_SQL = """
WITH outcome AS (
    SELECT * FROM jsonb_to_recordset(%s::jsonb) AS o(
        id bigint, held_until timestamptz, at timestamptz, status_code integer, error text, state text,
        attempts integer, next_attempt_at timestamptz, delivered_at timestamptz)
), held AS (
    UPDATE webhook_deliveries AS d
    SET state = o.state, attempts = o.attempts, last_status_code = o.status_code, last_error = o.error,
        next_attempt_at = o.next_attempt_at, delivered_at = coalesce(o.delivered_at, d.delivered_at)
    FROM outcome AS o WHERE d.id = o.id AND d.state = 'pending' AND d.next_attempt_at = o.held_until
    RETURNING d.id
)
INSERT INTO webhook_attempts (delivery_id, at, status_code, error)
SELECT o.id, o.at, o.status_code, o.error FROM outcome AS o JOIN held USING (id) ORDER BY o.id
RETURNING delivery_id
"""


def deliver_due(*, now: datetime | None = None, limit: int | None = None, job_id=None,
                rounds: int | None = PASS_ROUNDS) -> int:
    """Send the deliveries that are due, a batch of `limit` (COORDINATOR_WEBHOOK_SENDS) at a time, each
    job's events in order (a job's next event is due once the one before it was delivered; one that
    failed holds back those after it), until none is due or after `rounds` batches (None: no bound, a
    sender's own thread). `job_id`: that job's only. Returns how many were delivered.

    After a batch that claimed fewer than `limit` (all it could claim then), the next claim looks only
    at that batch's jobs: their later events, due now that the earlier ones went (another sender may
    have been woken for one and found it behind the event this one was sending). What arrived for other
    jobs meanwhile is left to the sender its commit woke, or to the next pass. So a sender woken while
    jobs end every few milliseconds sends full batches, not one delivery each.

    A batch is a few statements whatever its size (the claim, with the owners' signing keys; for first
    tries, the jobs their payloads need and the bodies kept; the record: _send), and no transaction is open
    while a receiver is called."""
    delivered, done, jobs = 0, 0, None
    size = limit or settings.COORDINATOR_WEBHOOK_SENDS
    while rounds is None or done < rounds:
        moment = now or timezone.now()
        batch = list(WebhookDelivery.objects.raw(
            "SELECT * FROM jq_webhooks_claim(%s, %s, %s, %s::uuid, %s::uuid[])",
            [moment, moment + IN_FLIGHT, size, None if job_id is None else str(job_id), jobs],
        ))
        if not batch:
            break
        sent = _send(batch, now=moment)
        delivered, done = delivered + sent, done + 1
        if not sent:  # each failed: their next tries are later
            break
        jobs = None if len(batch) == size else sorted({str(delivery.job_id) for delivery in batch})
    return delivered


def deliver_job(job_id, *, now: datetime | None = None) -> int:
    """Send the job's due deliveries in order, stopping at the first that fails (deliver_due, for one job)."""
    return deliver_due(now=now, job_id=job_id, rounds=None)


def _send(batch: list[WebhookDelivery], *, now: datetime) -> int:
    """Render what was never sent (and keep it), sign, POST each (side by side: webhooks.sends), record
    every outcome. A delivery that cannot be rendered, checked or signed is a failed try like any other."""
    unrendered = [delivery for delivery in batch if delivery.payload is None]
    # A body shows no run at a provider (_payload): none is read.
    jobs = jobs_shown({delivery.job_id for delivery in unrendered}, runs=False) if unrendered else {}
    signers = _signers(batch)
    checked: dict[str, list[str] | Exception] = {}
    requests, rendered = [], []
    for delivery in batch:
        try:
            if delivery.payload is None:
                delivery.payload = _payload(delivery, jobs[delivery.job_id])
                rendered.append({"id": delivery.pk, "payload": delivery.payload})
            if delivery.url not in checked:
                try:
                    checked[delivery.url] = url_check(delivery.url)  # again at send: the name may resolve elsewhere now
                except Exception as refused:
                    checked[delivery.url] = refused
            requests.append(_request(delivery, checked[delivery.url], signers.get(delivery.owner_id, [])))
        except Exception as failure:
            requests.append(f"{type(failure).__name__}: {failure}")
    with connection.cursor() as cursor:
        if rendered:
            cursor.execute(_RENDERED_SQL, [json.dumps(rendered, default=str)])
        answers = sends.map(_answer, requests)
        outcomes = [_outcome(delivery, status, error, now=now) for delivery, (status, error) in zip(batch, answers)]
        cursor.execute(_RECORD_SQL, [json.dumps(outcomes, default=str)])
        recorded = {row[0] for row in cursor.fetchall()}
    return sum(1 for outcome in outcomes if outcome["id"] in recorded and outcome["state"] == WebhookDelivery.State.DELIVERED)


def _request(delivery: WebhookDelivery, addresses, signers: list[Webhook]):
    """What to POST for `delivery`, or why it cannot be sent (its error)."""
    if isinstance(addresses, InvalidJob):
        return f"refused: {addresses.message}"
    if isinstance(addresses, Exception):
        return f"{type(addresses).__name__}: {addresses}"
    if not signers:
        return "RuntimeError: the job has no owner whose secret could sign it"
    body = json.dumps(delivery.payload, separators=(",", ":"), default=str)
    signed_at = timezone.now()
    signature = " ".join(signer.sign(delivery.webhook_id, signed_at, body) for signer in signers)
    return delivery.url, addresses[0], body.encode(), {
        "Content-Type": "application/json",
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": str(int(signed_at.timestamp())),
        "webhook-signature": signature,
        "User-Agent": "job-queue-coordinator-webhooks",
    }


def _answer(request) -> tuple[int | None, str]:
    """The receiver's status code and the error to record ("" for a 2xx)."""
    if isinstance(request, str):
        return None, request
    try:
        status = post(*request)
    except Exception as failure:  # a timeout, a refused connection, a TLS error: tried again later
        return None, f"{type(failure).__name__}: {failure}"
    return status, "" if 200 <= status < 300 else f"HTTP {status}"


def _outcome(delivery: WebhookDelivery, status: int | None, error: str, *, now: datetime) -> dict:
    """The try's row and the delivery's next state: delivered, tried again after the next delay, or
    given up 24 hours after its first try (an event that waited behind an earlier one gets its full day)."""
    attempts = delivery.attempts + 1
    state, next_attempt_at, delivered_at = WebhookDelivery.State.PENDING, None, None
    if not error:
        state, delivered_at = WebhookDelivery.State.DELIVERED, now
    else:
        delay = timedelta(seconds=DELAYS[attempts - 1] if attempts <= len(DELAYS) else 3600)
        if now + delay > (delivery.first_try or now) + GIVE_UP_AFTER:
            state = WebhookDelivery.State.FAILED
            logger.warning("Webhook %s of job %s given up after %s attempts: %s",
                           delivery.webhook_id, delivery.job_id, attempts, error)
        else:
            next_attempt_at = now + delay
    return {"id": delivery.pk, "held_until": delivery.next_attempt_at, "at": now, "status_code": status, "error": error,
            "state": state, "attempts": attempts, "next_attempt_at": next_attempt_at, "delivered_at": delivered_at}


class SendPool:
    """The POSTs of a batch, side by side on a few threads of this process (a slow receiver holds up
    its own sends, not the others'); one at a time on the caller's thread when there is only one."""

    def __init__(self) -> None:
        self._executor = None
        self._pid = None
        self._guard = threading.Lock()

    def map(self, function, items: list) -> list:
        if len(items) <= 1:
            return [function(item) for item in items]
        with self._guard:
            if self._executor is None or self._pid != os.getpid():  # a forked worker process makes its own
                self._executor = ThreadPoolExecutor(settings.COORDINATOR_WEBHOOK_SENDS, thread_name_prefix="webhook-send")
                self._pid = os.getpid()
            executor = self._executor
        return list(executor.map(function, items))


sends = SendPool()

def _payload(delivery: WebhookDelivery, job: Job) -> dict:
    """`delivery`'s body: the job's JSON as GET /jobs/{id} showed it right after the event (the fields
    the event kept laid over the job, as the live streams show it: events/feed.py), with the fields
    of a waiting job null, and no provider run (an attempt that has just started has none yet)."""
    data = feed.as_of(job, delivery.event_state, None)
    data.update(at_provider=None, waiting_for=None, estimated_start_at=None, start_overdue=None, waiting_for_slot=None)
    return {"type": delivery.event_type, "timestamp": delivery.created_at.isoformat(), "data": data}


def delivery_resend(delivery: WebhookDelivery) -> None:
    """An operator's "send again": the same webhook_id, due now, a fresh day of tries."""
    delivery.attempt_rows.all().delete()
    delivery.state, delivery.attempts, delivery.next_attempt_at = WebhookDelivery.State.PENDING, 0, timezone.now()
    delivery.save(update_fields=["state", "attempts", "next_attempt_at"])
    transaction.on_commit(webhooks_wake)


# --- the sender ------------------------------------------------------------------------------------

IDLE = 1.0  # seconds without a wake after which the sender gives its database connection back
# How long a woken sender lets further wakes gather before it claims: while jobs end every few
# milliseconds, one batch then carries many deliveries (its statements are paid once for all of them).
LINGER = 0.05


class Sender:
    """A qcluster's webhook sender: a thread of its main process that sends what is due each time a
    change made in one of its worker processes made deliveries (woken after that commit through
    `woken`, an Event the worker processes inherit: webhook_targets.webhooks_wake), so a job's webhook
    costs no task of its own, and its sending takes no turn from the job threads (they share their
    process's interpreter lock, not the main process's). The wakes of the next LINGER seconds, and
    those that come while it sends, are served by the same batch or the next. What it does not see (a
    retry's time, a change made elsewhere) the background pass sends."""

    def __init__(self, woken=None) -> None:
        self._woken = woken if woken is not None else threading.Event()
        self._thread = threading.Thread(target=self._send, name="webhook-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._woken.set()

    def _send(self) -> None:
        while True:
            if not self._woken.wait(IDLE):
                connections.close_all()  # idle: hold no connection between bursts
                self._woken.wait()
            time.sleep(LINGER)
            self._woken.clear()
            try:
                deliver_due(rounds=None)
            except Exception:  # the database may be away: the background pass sends it later
                logger.exception("Sending webhooks failed")
                connections.close_all()


_cluster_wake: list = []  # the Event a qcluster's worker processes wake its sender with


def cluster_sender_prepare() -> None:
    """In a qcluster's main process, before it forks its worker processes (which inherit the Event)."""
    _cluster_wake[:] = [multiprocessing.get_context("fork").Event()]


def sender_start() -> Sender:
    """In a qcluster's main process once it forked (its sender, woken by its worker processes), or in
    a process of its own (its sender, woken by its own changes)."""
    sender = Sender(_cluster_wake[0] if _cluster_wake else None)
    webhooks_sender_register(sender.wake)
    return sender


def worker_wake_register() -> None:
    """In a qcluster's worker process: its changes wake the main process's sender."""
    webhooks_sender_register(_cluster_wake[0].set)
