"""A client's webhook as it meets it: submit over HTTP, a real qcluster runs the job and sends the
signed event after commit; the receiver checks the signature with the standardwebhooks package."""

import pytest
from standardwebhooks.webhooks import Webhook

from coordination.models import WebhookDelivery
from tests.coordination.test_webhooks import Receiver
from tests.e2e.harness import start_worker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def receiver():
    made = Receiver()
    made.thread.start()
    yield made
    made.server.shutdown()


@pytest.fixture
def webhook_worker(settings, tmp_path):
    settings.COORDINATOR_WEBHOOK_ALLOW_HTTP = settings.COORDINATOR_WEBHOOK_ALLOW_PRIVATE = True
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_WEBHOOK_ALLOW_HTTP="1", COORDINATOR_WEBHOOK_ALLOW_PRIVATE="1",
                          COORDINATOR_REAPER_SECONDS="1")
    yield worker
    worker.stop()


def test_a_job_started_and_completed_is_delivered_signed_in_order(http, webhook_worker, receiver):
    _, answer = http.get("/webhooks/secret")
    secret = answer["secret"]
    receiver.answers = [500]  # the first try of the first event fails: it is tried again, in order
    status, job = http.post("/jobs", {
        "prompt": "A knight", "model": "flux-dev", "params": {"simulate_seconds": 0},
        "webhook_url": receiver.url, "webhook_events_filter": ["started", "completed"],
    })
    assert status == 201

    wait_until(lambda: WebhookDelivery.objects.filter(job_id=job["job_id"], state="delivered").count() == 2,
               timeout=60, message="both events to be delivered")

    payloads = [Webhook(secret).verify(got["body"], got["headers"]) for got in receiver.received]
    assert [payload["type"] for payload in payloads] == ["job.started", "job.started", "job.completed"]
    assert receiver.ids()[0] == receiver.ids()[1] != receiver.ids()[2]
    assert payloads[-1]["data"]["status"] == "completed" and payloads[-1]["data"]["job_id"] == job["job_id"]
    _, deliveries = http.get(f"/jobs/{job['job_id']}/webhooks")
    assert [len(delivery["attempts"]) for delivery in deliveries] == [2, 1]
