"""Webhooks (issue 12, part 1): signed as Standard Webhooks, written with the transition (an outbox,
by the database's job_events trigger), rendered and sent after commit, retried with the same
webhook-id, in order per job, and never sent to a private address."""

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from coordination.models import Job, WebhookDelivery
from coordination.services import job_cancel, job_complete
from coordination.webhook_targets import webhooks_wake
from coordination.webhook_transport import kept_close, post
from coordination.webhooks import UnsafeUrl, deliver_due, deliver_job, secret_get, secret_rotate, url_check
from tests.factories import JobRowFactory
from tests.helpers import at_once, fresh, submit

pytestmark = pytest.mark.django_db


class Receiver:
    """A local HTTP server that records each delivery and answers with the next of `answers` (then 200).
    `keep_alive`: it speaks HTTP/1.1 and keeps a connection open for the next request, as most do;
    `drops_idle`: it says so, but closes each connection once it answered (an idle timeout at its shortest)."""

    def __init__(self, keep_alive: bool = False, drops_idle: bool = False):
        self.received: list[dict] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}  # names are case-insensitive
                receiver.received.append({"body": body.decode(), "headers": headers, "port": self.client_address[1]})
                code = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(code)
                if code in (301, 302):
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.close_connection = self.close_connection or drops_idle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def stop(self) -> None:
        kept_close()  # this thread's connection to it, kept for a next delivery
        self.server.shutdown()
        self.server.server_close()

    def ids(self) -> list[str]:
        return [delivery["headers"]["webhook-id"] for delivery in self.received]


@pytest.fixture
def receiver(settings):
    settings.COORDINATOR_WEBHOOK_ALLOW_HTTP = True
    settings.COORDINATOR_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on this machine
    made = Receiver()
    made.thread.start()
    yield made
    made.stop()


def test_a_completed_job_is_delivered_signed_with_the_job_as_the_api_shows_it(user, api, receiver):
    secret = secret_get(user=user).secret
    job = submit(user, webhook_url=receiver.url)
    job_complete(job_id=job.job_id, attempt=1, result={"output": "done"})
    [delivery] = WebhookDelivery.objects.filter(job=job)  # written with the completion; the default filter

    assert deliver_job(str(job.job_id)) == 1

    [got] = receiver.received
    payload = Webhook(secret).verify(got["body"], got["headers"])  # raises unless the signature is right
    assert payload["type"] == "job.completed" and got["headers"]["webhook-id"] == delivery.webhook_id
    assert payload["data"] == api.get(f"/jobs/{job.job_id}").json()
    assert fresh_delivery(delivery).state == WebhookDelivery.State.DELIVERED


def fresh_delivery(delivery: WebhookDelivery) -> WebhookDelivery:
    return WebhookDelivery.objects.get(pk=delivery.pk)


def test_a_failing_receiver_gets_the_same_webhook_id_until_it_answers_2xx(user, receiver):
    secret_get(user=user)
    job = submit(user, webhook_url=receiver.url)
    job_complete(job_id=job.job_id, attempt=1, result={})
    receiver.answers = [500, 500]
    now = timezone.now()

    deliver_job(str(job.job_id), now=now)
    delivery = WebhookDelivery.objects.get(job=job)
    assert delivery.state == WebhookDelivery.State.PENDING and delivery.next_attempt_at == now + timedelta(seconds=5)
    assert deliver_job(str(job.job_id), now=now + timedelta(seconds=1)) == 0  # not due yet: nothing sent
    deliver_job(str(job.job_id), now=now + timedelta(seconds=5))
    assert fresh_delivery(delivery).next_attempt_at == now + timedelta(seconds=35)
    deliver_job(str(job.job_id), now=now + timedelta(seconds=35))

    assert receiver.ids() == [delivery.webhook_id] * 3
    delivery = fresh_delivery(delivery)
    assert delivery.state == WebhookDelivery.State.DELIVERED and delivery.attempts == 3
    assert [attempt.status_code for attempt in delivery.attempt_rows.all()] == [500, 500, 200]


def test_a_receiver_down_for_a_day_is_given_up_on_after_24_hours(user, settings):
    settings.COORDINATOR_WEBHOOK_ALLOW_HTTP = settings.COORDINATOR_WEBHOOK_ALLOW_PRIVATE = True
    secret_get(user=user)
    job = submit(user, webhook_url="http://127.0.0.1:9/nobody-listens")
    job_complete(job_id=job.job_id, attempt=1, result={})
    delivery = WebhookDelivery.objects.get(job=job)
    now = delivery.created_at
    while fresh_delivery(delivery).state == WebhookDelivery.State.PENDING:
        now = fresh_delivery(delivery).next_attempt_at
        deliver_job(str(job.job_id), now=now)
    delivery = fresh_delivery(delivery)
    assert delivery.state == WebhookDelivery.State.FAILED
    assert 24 <= delivery.attempts <= 30 and "Connection refused" in delivery.last_error
    assert now - delivery.created_at <= timedelta(hours=24)


def test_one_jobs_events_arrive_in_order_a_later_one_waits_for_an_earlier_one(user, receiver):
    secret_get(user=user)
    job = submit(user, webhook_url=receiver.url, webhook_events_filter=["started", "completed"])
    job_complete(job_id=job.job_id, attempt=1, result={})
    receiver.answers = [503]
    now = timezone.now()

    deliver_job(str(job.job_id), now=now)  # started: refused; completed must not overtake it
    assert [json.loads(d["body"])["type"] for d in receiver.received] == ["job.started"]
    deliver_job(str(job.job_id), now=now + timedelta(seconds=5))
    assert [json.loads(d["body"])["type"] for d in receiver.received] == ["job.started", "job.started", "job.completed"]


def test_the_filter_chooses_the_events(user, receiver):
    job = submit(user, webhook_url=receiver.url, webhook_events_filter=["cancelled"])
    waiting = submit(user, webhook_url=receiver.url, webhook_events_filter=["cancelled"])
    job_cancel(job_id=waiting.job_id, user=user)
    job_complete(job_id=job.job_id, attempt=1, result={})
    assert list(WebhookDelivery.objects.values_list("job_id", "event_type")) == [(waiting.job_id, "job.cancelled")]


def test_after_a_rotation_both_secrets_sign_for_a_day(user, receiver):
    old = secret_get(user=user).secret
    new = secret_rotate(user=user).secret
    job = submit(user, webhook_url=receiver.url)
    job_complete(job_id=job.job_id, attempt=1, result={})
    deliver_job(str(job.job_id))

    [got] = receiver.received
    assert len(got["headers"]["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(got["body"], got["headers"])

    later = submit(user, webhook_url=receiver.url)
    job_complete(job_id=later.job_id, attempt=1, result={})
    deliver_job(str(later.job_id), now=timezone.now() + timedelta(hours=24, minutes=1))  # the day has passed

    got = receiver.received[-1]
    assert len(got["headers"]["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(got["body"], got["headers"])


def test_a_redirect_is_not_followed(user, receiver):
    secret_get(user=user)
    job = submit(user, webhook_url=receiver.url)
    job_complete(job_id=job.job_id, attempt=1, result={})
    receiver.answers = [302]
    deliver_job(str(job.job_id))
    delivery = WebhookDelivery.objects.get(job=job)
    assert delivery.state == WebhookDelivery.State.PENDING and delivery.last_status_code == 302
    assert len(receiver.received) == 1


def test_the_delivery_is_written_with_the_transition_or_not_at_all(user, receiver, fail_audit):
    job = submit(user, webhook_url=receiver.url)
    fail_audit("completed")
    with pytest.raises(Exception):
        job_complete(job_id=job.job_id, attempt=1, result={})
    assert fresh(job).status == Job.Status.RUNNING and not WebhookDelivery.objects.exists()


@pytest.mark.parametrize(
    "url, refused",
    [
        ("http://example.com/hook", "must be an https URL"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://localhost/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://224.0.0.1/hook", "multicast"),
        ("https://[::1]/hook", "loopback"),
        ("https://100.100.100.200/latest/meta-data", "non-public"),  # shared address space (100.64/10)
        ("https://[2002:7f00:1::]/hook", "loopback"),  # 6to4 of 127.0.0.1
        ("ftp://example.com/hook", "must be an https URL"),
    ],
)
def test_unsafe_urls_are_refused(url, refused):
    with pytest.raises(UnsafeUrl, match=refused):
        url_check(url)


def test_an_unsafe_url_is_a_400_at_submit_and_changes_nothing(api):
    answer = api.post("/jobs", {"prompt": "A castle", "model": "flux-dev", "webhook_url": "https://10.0.0.5/x"}, format="json")
    assert answer.status_code == 400 and "private" in answer.json()["error"]
    assert not Job.objects.exists()


def test_an_address_that_turned_private_after_submit_is_refused_at_send(user, receiver, settings):
    """DNS rebinding: the check runs again at every send."""
    secret_get(user=user)
    job = submit(user, webhook_url=receiver.url)
    job_complete(job_id=job.job_id, attempt=1, result={})
    settings.COORDINATOR_WEBHOOK_ALLOW_PRIVATE = False
    deliver_job(str(job.job_id))
    delivery = WebhookDelivery.objects.get(job=job)
    assert not receiver.received and "loopback" in delivery.last_error and delivery.state == WebhookDelivery.State.PENDING


def test_the_api_shows_the_webhook_the_secret_and_the_deliveries(api, user, other_user, receiver):
    job = api.post("/jobs", {"prompt": "A castle", "model": "flux-dev", "webhook_url": receiver.url,
                             "webhook_events_filter": ["started", "completed"]}, format="json").json()
    assert job["webhook_url"] == receiver.url and job["webhook_events_filter"] == ["started", "completed"]
    secret = api.get("/webhooks/secret").json()["secret"]
    assert secret.startswith("whsec_") and api.get("/webhooks/secret").json()["secret"] == secret
    rotated = api.post("/webhooks/secret/rotate").json()
    assert rotated["secret"] != secret and rotated["previous_until"] is not None

    deliver_job(job["job_id"])
    [started] = api.get(f"/jobs/{job['job_id']}/webhooks").json()
    assert started["event_type"] == "job.started" and started["state"] == "delivered"
    assert [attempt["status_code"] for attempt in started["attempts"]] == [200]

    from rest_framework.test import APIClient

    stranger = APIClient()
    stranger.force_authenticate(other_user)
    assert stranger.get(f"/jobs/{job['job_id']}/webhooks").status_code == 404


def test_an_operator_sends_a_failed_delivery_again_and_metrics_count_outcomes(user, staff_user, client, receiver):
    secret_get(user=user)
    job = submit(user, webhook_url=receiver.url)
    job_complete(job_id=job.job_id, attempt=1, result={})
    delivery = WebhookDelivery.objects.get(job=job)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(state=WebhookDelivery.State.FAILED, next_attempt_at=None)
    client.force_login(staff_user)
    assert 'jobqueue_webhook_deliveries{state="failed"} 1.0' in client.get("/metrics").content.decode()

    answer = client.post("/admin/coordination/webhookdelivery/", {"action": "send_again", "_selected_action": [delivery.pk]})

    assert answer.status_code == 302
    assert fresh_delivery(delivery).state == WebhookDelivery.State.PENDING
    deliver_job(str(job.job_id))
    assert receiver.ids() == [delivery.webhook_id]
    assert 'jobqueue_webhook_deliveries{state="delivered"} 1.0' in client.get("/metrics").content.decode()


def test_a_delivery_whose_task_was_lost_is_sent_by_the_background_pass(user, receiver):
    """A worker killed before (or while) sending: the row is still pending, and due (a claim lapses
    after a minute); the next pass of a worker's ticker sends it."""
    from coordination.recovery import background_pass

    secret_get(user=user)
    job = submit(user, webhook_url=receiver.url)
    job_complete(job_id=job.job_id, attempt=1, result={})  # its task is never run here

    report = background_pass()

    assert report["webhooks_delivered"] == 1 and len(receiver.received) == 1


@pytest.mark.django_db(transaction=True)
def test_two_senders_at_once_keep_one_jobs_events_in_order(user, receiver):
    """Two workers deliver the same job's events at once: the second does not skip past the event the
    first is sending."""
    secret_get(user=user)
    job = submit(user, webhook_url=receiver.url, webhook_events_filter=["started", "completed"])
    job_complete(job_id=job.job_id, attempt=1, result={})

    at_once(lambda: deliver_job(str(job.job_id)), 2)

    deliver_job(str(job.job_id))  # whatever a skipped sender left
    assert [json.loads(d["body"])["type"] for d in receiver.received] == ["job.started", "job.completed"]



def test_the_send_connects_to_the_address_that_was_checked(receiver):
    """The name is resolved once, checked, and that address is the one connected to (a name that
    resolves elsewhere by the time of the connection is not asked again); the Host stays the name."""
    port = receiver.server.server_address[1]
    status = post(f"http://hooks.example.invalid:{port}/hook?x=1", "127.0.0.1", b"{}", {"Content-Type": "application/json"})
    assert status == 200 and receiver.received[0]["headers"]["host"] == f"hooks.example.invalid:{port}"


@pytest.fixture
def keeping_receiver(settings, request):
    settings.COORDINATOR_WEBHOOK_ALLOW_HTTP = settings.COORDINATOR_WEBHOOK_ALLOW_PRIVATE = True
    made = Receiver(keep_alive=True, drops_idle=getattr(request, "param", False))
    made.thread.start()
    yield made
    made.stop()


def three_webhooks_one_at_a_time(user, url: str) -> None:
    secret_get(user=user)
    first = submit(user, webhook_url=url, webhook_events_filter=["started", "completed"])
    job_complete(job_id=first.job_id, attempt=1, result={})
    second = submit(user, webhook_url=url)
    job_complete(job_id=second.job_id, attempt=1, result={})
    for _ in range(3):  # one at a time, each on this thread
        assert deliver_due(limit=1, rounds=1) == 1
    assert WebhookDelivery.objects.filter(state=WebhookDelivery.State.DELIVERED).count() == 3


def test_a_receiver_that_keeps_connections_open_gets_the_webhooks_on_one_connection(user, keeping_receiver):
    three_webhooks_one_at_a_time(user, keeping_receiver.url)
    assert [json.loads(got["body"])["type"] for got in keeping_receiver.received] == ["job.started", "job.completed", "job.completed"]
    assert len({got["port"] for got in keeping_receiver.received}) == 1  # no new connection after the first


@pytest.mark.parametrize("keeping_receiver", [True], indirect=True)
def test_a_kept_connection_the_receiver_closed_meanwhile_is_not_used_again(user, keeping_receiver):
    three_webhooks_one_at_a_time(user, keeping_receiver.url)  # each on a new connection, each at its first try
    assert len(keeping_receiver.received) == 3 and len({got["port"] for got in keeping_receiver.received}) == 3
    assert list(WebhookDelivery.objects.values_list("attempts", flat=True)) == [1, 1, 1]


def test_an_answer_whose_body_never_comes_is_still_the_answer_and_its_connection_is_not_kept(user, keeping_receiver):
    # The status line said 200; the body it announced never arrives (the receiver hangs up): each
    # delivery is delivered at its first try, not a failed one, and the next goes on a new connection.
    def hang_up_early(handler):
        handler.rfile.read(int(handler.headers["Content-Length"]))
        keeping_receiver.received.append({"port": handler.client_address[1]})
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b"{}")
        handler.close_connection = True

    keeping_receiver.server.RequestHandlerClass.do_POST = hang_up_early  # each connection's handler is made anew
    three_webhooks_one_at_a_time(user, keeping_receiver.url)
    assert list(WebhookDelivery.objects.values_list("attempts", flat=True)) == [1, 1, 1]
    assert len({got["port"] for got in keeping_receiver.received}) == 3


def test_a_later_event_behind_an_earlier_one_does_not_crowd_out_other_jobs(user, receiver):
    secret_get(user=user)
    stuck = submit(user, webhook_url=receiver.url, webhook_events_filter=["started", "completed"])
    job_complete(job_id=stuck.job_id, attempt=1, result={})
    other = submit(user, webhook_url=receiver.url)
    job_complete(job_id=other.job_id, attempt=1, result={})
    now = timezone.now()
    started = WebhookDelivery.objects.get(job=stuck, event_type="job.started")
    WebhookDelivery.objects.filter(pk=started.pk).update(next_attempt_at=now + timedelta(hours=1))  # backing off
    WebhookDelivery.objects.filter(job=stuck, event_type="job.completed").update(next_attempt_at=now - timedelta(days=1))

    assert deliver_due(now=now, limit=1) == 1

    assert [json.loads(d["body"])["data"]["job_id"] for d in receiver.received] == [str(other.job_id)]


def test_each_event_carries_the_job_as_it_was_right_after_it_even_when_sent_later(user, receiver):
    """The payload is rendered after commit, at the first send, from the state the event kept: a
    `started` event sent after the job completed still shows it running."""
    secret = secret_get(user=user).secret
    job = submit(user, webhook_url=receiver.url, webhook_events_filter=["started", "completed"])
    job_complete(job_id=job.job_id, attempt=1, result={"output": "done"})
    started, completed = WebhookDelivery.objects.filter(job=job).order_by("id")
    assert started.payload is None and started.event_state["status"] == "running"  # nothing rendered under the lock

    assert deliver_job(str(job.job_id)) == 2

    first, second = (Webhook(secret).verify(got["body"], got["headers"]) for got in receiver.received)
    assert first["data"]["status"] == "running" and first["data"]["completed_at"] is None and first["data"]["result"] is None
    assert second["data"]["status"] == "completed" and second["data"]["result"] == {"output": "done"}
    assert first["timestamp"] == started.created_at.isoformat()
    assert fresh_delivery(started).payload == first  # kept: a retry sends the same body


def test_a_change_made_by_hand_written_sql_gets_its_webhook_too(user, receiver):
    """The database writes the delivery with the change, whoever makes it (the coordinator, a repair,
    an operator's SQL): nothing that changed a job's status is left without its webhook."""
    secret = secret_get(user=user).secret
    job = submit(user, webhook_url=receiver.url)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE jobs SET status = 'failed', error = 'ended by hand', completed_at = %s WHERE job_id = %s",
                       [timezone.now(), Job._meta.pk.get_db_prep_value(job.job_id, connection)])
    [delivery] = WebhookDelivery.objects.filter(job=job)
    assert delivery.event_type == "job.failed" and delivery.url == receiver.url and delivery.webhook_id.startswith("msg_")

    assert deliver_due() == 1

    payload = Webhook(secret).verify(receiver.received[0]["body"], receiver.received[0]["headers"])
    assert payload["type"] == "job.failed" and payload["data"]["error"] == "ended by hand"


def test_a_change_asks_for_its_send_only_once_committed(user, receiver, monkeypatch, django_capture_on_commit_callbacks):
    """The transition only asks, after commit, for the deliveries to be sent: in a process without a
    sender of its own (the web server's), by a django-q2 task named for the sending."""
    sent = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda name, *args, **kwargs: sent.append((name, *args)))
    job = submit(user, webhook_url=receiver.url)
    with django_capture_on_commit_callbacks() as callbacks:
        job_complete(job_id=job.job_id, attempt=1, result={})
    assert sent == []
    for callback in callbacks:
        callback()
    assert sent == [("coordination.webhooks.deliver_due",)]


def test_only_a_change_that_made_a_delivery_wakes_the_sender(user, receiver, django_capture_on_commit_callbacks):
    # The default filter wants the terminal events: the start makes no delivery and wakes nothing; the
    # completion makes one and wakes the sender once, after commit.
    def wakes(callbacks) -> int:
        return sum(1 for callback in callbacks if callback is webhooks_wake)

    with django_capture_on_commit_callbacks() as started:
        job = submit(user, webhook_url=receiver.url)
    with django_capture_on_commit_callbacks() as ended:
        job_complete(job_id=job.job_id, attempt=1, result={})
    with django_capture_on_commit_callbacks() as every:
        submit(user, webhook_url=receiver.url, webhook_events_filter=["started", "completed"])

    assert fresh(job).status == "completed"
    assert wakes(started) == 0 and not WebhookDelivery.objects.filter(job=job, event_type="job.started").exists()
    assert wakes(ended) == 1
    assert wakes(every) == 1  # a job that asked for job.started is woken for it


def test_a_batch_of_deliveries_costs_the_same_few_statements_whatever_its_size(user, other_user, receiver):
    """Claimed, rendered, signed and recorded together: the statements do not grow with the batch
    (one job's or forty's), and each job's body and signature are its own."""
    secrets = {owner.pk: secret_get(user=owner).secret for owner in (user, other_user)}

    def statements_to_deliver(count: int) -> int:
        for n in range(count):
            job = submit(user if n % 2 else other_user, webhook_url=receiver.url)
            job_complete(job_id=job.job_id, attempt=1, result={"output": n})
        with CaptureQueriesContext(connection) as queries:
            assert deliver_due(limit=count) == count  # one batch
        return len(queries)

    assert statements_to_deliver(40) == statements_to_deliver(1)
    bodies = {}
    for got in receiver.received:
        owner = Job.objects.get(pk=json.loads(got["body"])["data"]["job_id"]).owner_id
        bodies[got["headers"]["webhook-id"]] = Webhook(secrets[owner]).verify(got["body"], got["headers"])
    assert len(bodies) == 41 and WebhookDelivery.objects.filter(state=WebhookDelivery.State.DELIVERED).count() == 41
    assert sorted(body["data"]["result"]["output"] for body in bodies.values()) == sorted([*range(40), 0])


def test_a_claim_reads_its_batch_not_the_whole_backlog(user):
    """After a receiver was away, hundreds of deliveries are due at once: each claim of a batch reads
    about that batch from the indexes (whatever statistics its plan was made with), not every pending
    delivery again, nor each against every other."""
    jobs = JobRowFactory.create_batch(300, owner=user, status=Job.Status.COMPLETED)
    due_since = timezone.now() - timedelta(minutes=5)
    WebhookDelivery.objects.bulk_create(
        WebhookDelivery(job=job, webhook_id=f"msg_backlog_{n}", event_type="job.completed", url="https://x.test/hook",
                        next_attempt_at=due_since + timedelta(milliseconds=n))
        for n, job in enumerate(jobs))
    # Ordered by when they fell due, so the first 8 claimed are the 8 first due.
    first_due = [job.job_id for job in jobs[:8]]
    index_entries_read = """SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index
                            WHERE indrelid IN ('webhook_deliveries'::regclass, 'jobs'::regclass)"""
    with connection.cursor() as cursor:  # this transaction's own counters
        cursor.execute(index_entries_read)
        before = cursor.fetchone()[0]
        now = timezone.now()
        cursor.execute("SELECT job_id FROM jq_webhooks_claim(%s, %s, 8, NULL, NULL)", [now, now + timedelta(minutes=1)])
        claimed = [row[0] for row in cursor.fetchall()]
        cursor.execute(index_entries_read)
        read = cursor.fetchone()[0] - before
    assert sorted(claimed) == sorted(first_due)
    assert read <= 8 * 6, f"one claim of 8 read {read} index entries with 300 due"  # 90,000 when it compared them all


def test_a_pass_leaves_what_arrived_for_other_jobs_while_it_sent_yet_sends_its_own_jobs_later_events(
        user, receiver, monkeypatch):
    """A sender woken while jobs end every few milliseconds must send full batches, not claim again
    at once for each delivery that arrived while it sent (that one's commit woke a sender of its
    own): after a batch short of its limit, only the batch's own jobs are looked at again, for their
    later events, due once the earlier ones went."""
    from coordination import webhooks

    secret_get(user=user)
    both = submit(user, webhook_url=receiver.url, webhook_events_filter=["started", "completed"])
    job_complete(job_id=both.job_id, attempt=1, result={})
    arrived = []

    def send_while_another_job_completes(batch, *, now):
        sent = send(batch, now=now)
        if not arrived:
            arrived.append(submit(user, webhook_url=receiver.url))
            job_complete(job_id=arrived[0].job_id, attempt=1, result={})
        return sent

    send = webhooks._send
    monkeypatch.setattr(webhooks, "_send", send_while_another_job_completes)
    assert deliver_due(limit=8) == 2
    assert [json.loads(d["body"])["type"] for d in receiver.received] == ["job.started", "job.completed"]
    assert WebhookDelivery.objects.get(job=arrived[0]).state == WebhookDelivery.State.PENDING  # for its own wake

    assert deliver_due(limit=8) == 1


@pytest.mark.django_db(transaction=True)
def test_a_change_wakes_the_sender_which_sends_its_deliveries_with_no_task(user, receiver, monkeypatch):
    """Where a sender runs (a qcluster's main process, woken by its workers; here this process's own),
    a change that made deliveries wakes it once it commits: the receiver has them without any
    django-q2 task enqueued."""
    from django_q.models import OrmQ

    from coordination import webhook_targets
    from coordination.webhooks import sender_start

    monkeypatch.setattr(webhook_targets, "_local_wake", [])  # restored after the test: its sender is never woken again
    sender_start()
    secret_get(user=user)
    jobs = [submit(user, webhook_url=receiver.url) for _ in range(3)]
    for job in jobs:
        job_complete(job_id=job.job_id, attempt=1, result={})

    deadline = time.monotonic() + 10
    while WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING).exists():
        assert time.monotonic() < deadline, "the sender did not send"
        time.sleep(0.01)
    assert sorted(json.loads(got["body"])["data"]["job_id"] for got in receiver.received) == sorted(str(job.job_id) for job in jobs)
    assert [task.func() for task in OrmQ.objects.all()] == ["coordination.tasks.run_job"] * 3  # the jobs' own, no other


def test_a_delivery_that_cannot_be_sent_is_a_failed_try_and_holds_up_no_other(user, receiver):
    """A URL made unparsable by hand-written SQL: its try is recorded as failed (and retried later, then
    given up), and the other jobs' deliveries of the same batch are sent."""
    secret_get(user=user)
    broken, fine = submit(user, webhook_url=receiver.url), submit(user, webhook_url=receiver.url)
    job_complete(job_id=broken.job_id, attempt=1, result={})
    job_complete(job_id=fine.job_id, attempt=1, result={})
    WebhookDelivery.objects.filter(job=broken).update(url="http://[not-a-host/hook")
    now = timezone.now()

    assert deliver_due(now=now) == 1

    assert [json.loads(got["body"])["data"]["job_id"] for got in receiver.received] == [str(fine.job_id)]
    failed = WebhookDelivery.objects.get(job=broken)
    assert failed.state == WebhookDelivery.State.PENDING and failed.attempts == 1 and failed.last_error
    assert failed.next_attempt_at == now + timedelta(seconds=5) and failed.payload is not None


def test_a_send_that_outlasted_its_claim_leaves_the_delivery_to_the_sender_that_claimed_it_since(user, receiver):
    """A batch whose sends took longer than its claim: another sender has claimed the delivery since,
    so this one records nothing over it (no second try counted, no outcome overwritten)."""
    from coordination.webhooks import IN_FLIGHT, _send

    secret_get(user=user)
    job = submit(user, webhook_url=receiver.url)
    job_complete(job_id=job.job_id, attempt=1, result={})
    now = timezone.now()
    batch = list(WebhookDelivery.objects.raw(
        "UPDATE webhook_deliveries SET next_attempt_at = %s RETURNING *, NULL AS owner_id, NULL AS first_try",
        [now + IN_FLIGHT]))
    later = now + IN_FLIGHT + timedelta(seconds=1)
    WebhookDelivery.objects.filter(job=job).update(next_attempt_at=later + IN_FLIGHT)  # claimed again since

    assert _send(batch, now=later) == 0

    delivery = WebhookDelivery.objects.get(job=job)
    assert delivery.state == WebhookDelivery.State.PENDING and delivery.attempts == 0
    assert delivery.next_attempt_at == later + IN_FLIGHT and not delivery.attempt_rows.exists()
