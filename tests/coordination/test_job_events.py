"""job_events: what the database records of each change a client can see (coordination/events), and
the hub that hands those rows to the streams and waits of a web process."""

import asyncio
import json
import threading

import pytest
from django.db import connection, connections
from django.utils import timezone

from coordination.events import feed
from coordination.events.hub import Hub, encode
from coordination.models import Job, JobEvent
from coordination.recovery import job_heartbeat
from coordination.services import job_cancel, job_claim, job_complete
from coordination.services.operations import job_priority_set
from tests.helpers import execute_workflow, fresh, submit


def names(job: Job) -> list[str]:
    return list(JobEvent.objects.filter(job_id=job.job_id).order_by("id").values_list("event", flat=True))


@pytest.mark.django_db
def test_a_job_that_waits_then_runs_then_completes_leaves_each_change_in_order(user):
    first = submit(user, model="flux-dev")
    second = submit(user, model="flux-dev")
    job_claim(job_id=first.job_id, attempt=1)
    job_complete(job_id=first.job_id, attempt=1, result={"url": "a.png"})

    assert names(first)[-1] == "completed"
    assert "started" in names(first) or fresh(first).attempt == 1  # started at once: inserted running
    # The second waited behind the first, then took its place: its state at each event says so.
    rows = list(JobEvent.objects.filter(job_id=second.job_id).order_by("id"))
    assert [row.event for row in rows][-1] == "started"
    waiting = [row for row in rows if row.state["status"] == "pending"]
    assert waiting and waiting[-1].state["blocked_by_job_id"] is not None
    assert "flux-dev" in waiting[-1].state["conflict_reason"]
    assert rows[-1].state["status"] == "running" and rows[-1].state["attempt"] == 1


@pytest.mark.django_db
def test_a_heartbeat_or_a_claim_writes_no_event_but_a_cancel_request_and_a_priority_do(user, staff_user):
    running = submit(user, model="flux-dev", params={"simulate_seconds": 5})
    job_claim(job_id=running.job_id, attempt=1)
    waiting = submit(user, model="flux-dev")
    before = JobEvent.objects.count()

    assert job_heartbeat(job_id=running.job_id, attempt=1) == "ok"
    assert JobEvent.objects.count() == before

    job_priority_set(job_id=waiting.job_id, priority=5, actor="test")
    job_cancel(job_id=running.job_id, reason="Cancelled by its owner")
    assert names(waiting)[-1] == "priority"
    assert names(running)[-1] == "cancel_requested"
    assert JobEvent.objects.filter(job_id=waiting.job_id).last().state["priority"] == 5


@pytest.mark.django_db
def test_an_operators_own_sql_is_recorded_too(user):
    job = submit(user, model="flux-dev")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE jobs SET status = 'failed', error = 'fixed by hand' WHERE job_id = %s",
                       [Job._meta.pk.get_db_prep_value(job.job_id, connection)])
    row = JobEvent.objects.filter(job_id=job.job_id).last()
    assert row.event == "failed" and row.state["error"] == "fixed by hand"


@pytest.mark.django_db
def test_a_workflows_steps_are_events_with_the_step_and_its_model(user):
    from workflows.services import _step_begin

    job = execute_workflow(user)
    job_claim(job_id=job.job_id, attempt=1)
    _step_begin(job_id=job.job_id, attempt=1, index=1, step_name="style", model="nano-banana-pro-leonardo")
    _step_begin(job_id=job.job_id, attempt=1, index=2, step_name="animate", model="motion-2.0-fast")

    steps = [row.state for row in JobEvent.objects.filter(job_id=job.job_id, event="step").order_by("id")]
    assert [(s["current_step"], s["current_step_model"], s["status"]) for s in steps] == [
        (1, "nano-banana-pro-leonardo", "running"), (2, "motion-2.0-fast", "running"),
    ]


@pytest.mark.django_db
def test_an_event_shows_the_job_as_it_was_then_in_the_apis_own_format(api, user):
    job = submit(user, model="flux-dev")
    job_claim(job_id=job.job_id, attempt=1)
    job_complete(job_id=job.job_id, attempt=1, result={"url": "a.png"})
    now = api.get(f"/jobs/{job.job_id}").json()
    running = JobEvent.objects.filter(job_id=job.job_id, state__status="running").first()

    then = feed.as_of(fresh(job), running.state, None)
    assert then["status"] == "running" and then["completed_at"] is None and then["result"] is None
    assert then["started_at"] == now["started_at"]  # the same time, written as the API writes it
    finished = feed.as_of(fresh(job), JobEvent.objects.filter(job_id=job.job_id).last().state, None)
    assert {key: finished[key] for key in ("status", "completed_at", "result")} == {
        key: now[key] for key in ("status", "completed_at", "result")
    }


# --- the hub -------------------------------------------------------------------------------------


def heard(subscription, *, until, timeout: float = 10.0) -> list:
    """Items the subscription receives until `until(items)` holds (or the timeout)."""

    async def listen():
        subscription.attach()
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not until(got) and loop.time() < deadline:
            got.extend(await subscription.get(deadline - loop.time()) or [])
        return got

    return asyncio.run(listen())


@pytest.fixture
def hub():
    hub = Hub()
    yield hub
    hub.stop()


@pytest.mark.django_db(transaction=True)
def test_the_hub_brings_a_jobs_events_committed_after_it_subscribed_rendered_as_the_api_shows_them(hub, user):
    job = submit(user, model="flux-dev", params={"simulate_seconds": 5})
    job_claim(job_id=job.job_id, attempt=1)
    subscription = hub.subscribe(job.job_id)

    def finish():
        job_complete(job_id=job.job_id, attempt=1, result={"url": "done.png"})
        connections.close_all()

    threading.Thread(target=finish).start()
    items = heard(subscription, until=lambda got: any(item.ends for item in got))
    assert [item.event for item in items] == ["job.completed"]
    assert items[0].fields["status"] == "completed" and items[0].fields["result"] == {"url": "done.png"}
    assert int(items[0].id) == JobEvent.objects.filter(job_id=job.job_id).last().id


@pytest.mark.django_db(transaction=True)
def test_a_waiting_job_hears_its_place_in_line_move_and_only_its_own_events(hub, user):
    running = submit(user, model="flux-dev", params={"simulate_seconds": 5})
    job_claim(job_id=running.job_id, attempt=1)
    ahead = submit(user, model="flux-dev")
    submit(user, model="flux-dev")  # the one it waits behind: it stays, so `mine` itself does not change
    mine = submit(user, model="flux-dev")
    subscription = hub.subscribe(mine.job_id)
    subscription.position, subscription.last_fields = 3, feed.current(fresh(mine), 3)

    def cancel_the_one_ahead():
        job_cancel(job_id=ahead.job_id, reason="Cancelled by its owner")
        connections.close_all()

    threading.Thread(target=cancel_the_one_ahead).start()
    items = heard(subscription, until=lambda got: any(item.event == "job.queue_position" for item in got))
    moved = [item for item in items if item.event == "job.queue_position"]
    assert moved and moved[0].fields["queue_position"] == 2 and moved[0].fields["job_id"] == str(mine.job_id)
    assert moved[0].id == f"{subscription.last_id}:2"  # a reconnect with it resumes from that place
    assert json.loads(moved[0].data) == moved[0].fields  # the JSON sent says the new place too
    assert all(item.fields["job_id"] == str(mine.job_id) for item in items)


@pytest.mark.django_db(transaction=True)
def test_the_hub_stops_with_its_last_subscriber_and_closes_its_connections(hub, user, monkeypatch):
    from coordination.events import hub as hub_module

    monkeypatch.setattr(hub_module, "LINGER_SECONDS", 0.1)
    subscription = hub.subscribe(None)
    thread = hub._thread
    assert thread.is_alive()
    hub.unsubscribe(subscription)
    thread.join(10)
    assert not thread.is_alive()


def test_a_row_the_hub_brought_before_the_stream_read_it_is_not_sent_twice():
    from coordination.events.hub import Item, Subscription

    subscription = Subscription(job_id=None)
    older = Item("5", "job.started", "{}", False, {"status": "running"})
    newer = Item("7", "job.completed", "{}", True, {"status": "completed"})
    subscription.put(older, 5)
    subscription.put(newer, 7)
    state = Item("6", "job.state", "{}", False, {"status": "running"})

    subscription.begin([state], read={5, 6})  # the stream read rows 5 and 6 itself

    assert [item.id for item in subscription._items] == ["7"]  # 5 dropped; 7 (newer) still to send
    assert subscription.last_id == "7"  # where the client will stand once 7 is sent


def test_a_subscription_opened_after_its_request_left_is_dropped_at_once(monkeypatch):
    import asyncio

    from coordination.events import streams

    dropped = []
    monkeypatch.setattr(streams.hub, "subscribe", lambda *args, **kwargs: "a subscription")
    monkeypatch.setattr(streams.hub, "unsubscribe", dropped.append)
    opening = streams._Opening()
    opening.close()  # the client left while the thread was still opening it

    with pytest.raises(asyncio.CancelledError):
        opening.subscribe("a job")
    assert dropped == ["a subscription"]


@pytest.mark.django_db
def test_a_submit_whose_wait_fails_is_still_answered_201_once(api, monkeypatch):
    from coordination.api import events as api_events

    async def broken(job_id, seconds):
        raise RuntimeError("the listener could not start")

    monkeypatch.setattr(api_events, "wait_until_ended", broken)
    response = api.post("/jobs", {"prompt": "A castle", "model": "flux-dev"}, format="json", HTTP_PREFER="wait=5")

    assert response.status_code == 201 and "Preference-Applied" not in response
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_what_a_provider_says_of_a_running_job_is_a_job_progress_event_on_its_stream(hub, user):
    """The poller stores a provider's status, progress and place in its line (store.runs_seen); the
    database turns each change into a job.progress event, its state carrying at_provider as it was."""
    from coordination.models import ProviderRun
    from coordination.providers import store

    job = submit(user, model="flux-dev", params={"simulate_seconds": 5})
    job_claim(job_id=job.job_id, attempt=1)
    run = ProviderRun.objects.create(job_id=job.job_id, attempt=1, model="flux-dev", style="poll", provider_job_id="p-1",
                                     provider_status="queued", submitted_at=timezone.now(), deadline_at=timezone.now())
    subscription = hub.subscribe(job.job_id)

    def said():
        store.runs_seen([store.Seen(run.pk, "queued", None, 3)])
        store.runs_seen([store.Seen(run.pk, "running", 0.25, None)])
        store.runs_seen([store.Seen(run.pk, "running", 0.25, None)])  # nothing new: no event
        connections.close_all()

    threading.Thread(target=said).start()
    items = heard(subscription, until=lambda got: len(got) >= 2)
    assert [item.event for item in items] == ["job.progress", "job.progress"]
    assert [item.fields["at_provider"]["queue_position"] for item in items] == [3, None]
    assert items[1].fields["at_provider"] | {"since": None} == {
        "provider_job_id": "p-1", "style": "poll", "status": "running", "since": None, "watched": False,
        "progress": 0.25, "queue_position": None}
    assert names(job).count("progress") == 2
    # A run whose job moved on says nothing more; its events still show it as it was then.
    job_complete(job_id=job.job_id, attempt=1, result={})
    store.runs_seen([store.Seen(run.pk, "running", 0.5, None)])
    assert names(job).count("progress") == 2
    then = feed.as_of(fresh(job), JobEvent.objects.filter(job_id=job.job_id, event="progress").last().state, None)
    assert (then["status"], then["at_provider"]["provider_job_id"], then["at_provider"]["progress"]) == ("running", "p-1", 0.25)
    assert then["at_provider"]["since"] == items[1].fields["at_provider"]["since"]  # as the API writes it
