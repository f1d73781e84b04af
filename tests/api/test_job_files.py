"""The files jobs produce, kept (coordination/outputs): written when a job completes, copied by a
copier into storage (MEDIA_ROOT here), and served at GET /jobs/{id}/files/{n} to the owner and staff,
with ranges and an ETag, or to whoever holds a signed link."""

import hashlib
import time
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.test import Client
from django.utils import timezone

from bench.fake_provider import FakeProvider
from coordination.models import CatalogModel, JobEvent, JobFile, WebhookDelivery
from coordination.outputs.copier import claim, copy_one
from coordination.outputs.store import files_prune
from coordination.runners.simulated import SIMULATED_BYTES
from coordination.tasks import run_job
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def completed(api, model: str = "flux-dev", **params) -> str:
    answer = api.post("/jobs", {"prompt": "A castle", "model": model, "params": {"simulate_seconds": 0, **params}},
                      format="json").json()
    run_job(answer["job_id"], 1)
    return answer["job_id"]


def copy_due() -> int:
    """What a qcluster's copier does at a tick, here in this thread: claim what is due and copy it."""
    due = claim(10)
    for one in due:
        copy_one(one)
    return len(due)


def test_a_completed_jobs_file_is_kept_and_served_to_its_owner_with_its_size_hash_and_type(api):
    job_id = completed(api)
    assert JobFile.objects.get(job_id=job_id).state == "copying"  # completed at once: the copy comes after

    assert copy_due() == 1
    listed = api.get(f"/jobs/{job_id}").json()["result"]["files"][0]
    png = SIMULATED_BYTES["image/png"]
    assert (listed["state"], listed["size"], listed["sha256"], listed["content_type"]) == (
        "stored", len(png), hashlib.sha256(png).hexdigest(), "image/png")
    served = api.get(listed["url"])
    assert served.status_code == 200 and b"".join(served.streaming_content) == png
    assert served["Content-Type"] == "image/png" and served["Content-Length"] == str(len(png))
    assert served["ETag"] == f'"{listed["sha256"]}"'
    assert api.get(listed["url"], HTTP_IF_NONE_MATCH=served["ETag"]).status_code == 304
    # The stream's last word: job.files, once every file settled.
    assert list(JobEvent.objects.filter(job_id=job_id).values_list("event", flat=True))[-2:] == ["completed", "files"]


def test_a_byte_range_is_answered_206_and_one_outside_the_file_416(api):
    job_id = completed(api, model="motion-2.0-fast")
    copy_due()
    mp4 = SIMULATED_BYTES["video/mp4"]
    part = api.get(f"/jobs/{job_id}/files/0", HTTP_RANGE="bytes=4-11")
    assert part.status_code == 206 and b"".join(part.streaming_content) == mp4[4:12] == b"ftypmp42"
    assert part["Content-Range"] == f"bytes 4-11/{len(mp4)}" and part["Content-Length"] == "8"
    tail = api.get(f"/jobs/{job_id}/files/0", HTTP_RANGE="bytes=-4")
    assert b"".join(tail.streaming_content) == mp4[-4:]
    assert api.get(f"/jobs/{job_id}/files/0", HTTP_RANGE=f"bytes={len(mp4)}-").status_code == 416


def assert_refused_to_all_but_its_owner_and_its_signature(listed: dict) -> None:
    """Who may not fetch a job's kept file (`listed`: its entry in result.files), wherever it is kept:
    another user (404), anyone without a token or signature (401), a signature altered (404)."""
    stranger = Client()
    stranger.force_login(UserFactory())
    assert stranger.get(listed["url"]).status_code == 404
    assert Client().get(listed["url"]).status_code == 401  # no token, no signature
    assert Client().get(listed["signed_url"].replace("sig=", "sig=x")).status_code == 404


def test_another_user_gets_404_and_a_signed_link_serves_without_a_token_until_it_expires(api, settings, monkeypatch):
    job_id = completed(api)
    copy_due()
    listed = api.get(f"/jobs/{job_id}").json()["result"]["files"][0]
    assert_refused_to_all_but_its_owner_and_its_signature(listed)
    assert Client().get(listed["signed_url"]).status_code == 200
    assert Client().get(listed["signed_url"].replace("/files/0", "/files/1")).status_code == 404  # signed for file 0
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + settings.COORDINATOR_FILE_LINK_SECONDS + 60)
    assert Client().get(listed["signed_url"]).status_code == 404  # expired


def test_a_file_still_being_copied_is_a_409_that_says_so(api):
    job_id = completed(api)
    answer = api.get(f"/jobs/{job_id}/files/0")
    assert answer.status_code == 409 and "still being copied" in answer.json()["error"]


def test_a_providers_file_is_copied_from_its_url_and_outlives_the_provider(api, settings):
    fake = FakeProvider(files="listed").start()
    try:
        CatalogModel.objects.filter(name="flux-dev").update(runner="http", provider="generic", provider_style="sync",
                                                            provider_url=f"{fake.url}/sync")
        job_id = completed(api)
        copy_due()  # the fake is on 127.0.0.1: the model's own provider host, so allowed
    finally:
        fake.stop()  # the provider is gone: the file is still served
    listed = api.get(f"/jobs/{job_id}").json()["result"]["files"][0]
    assert listed["state"] == "stored" and listed["content_type"] == "video/mp4"
    assert b"".join(api.get(listed["url"]).streaming_content).startswith(b"\x00\x00\x00\x18ftypmp42")


def test_a_file_at_a_private_address_that_is_not_the_models_provider_is_never_fetched(api, settings):
    settings.COORDINATOR_WEBHOOK_ALLOW_HTTP = True  # http allowed: the address alone refuses it
    fake = FakeProvider().start()
    try:
        job_id = completed(api)  # flux-dev, simulated: its model names no provider on 127.0.0.1
        JobFile.objects.filter(job_id=job_id).update(source_url=f"{fake.url}/files/secret.mp4")
        copy_due()
        assert fake.downloads == []
    finally:
        fake.stop()
    listed = api.get(f"/jobs/{job_id}").json()["result"]["files"][0]
    assert listed["state"] == "failed" and "a loopback address" in listed["error"]


def test_the_prune_expires_old_files_and_the_job_says_so(api):
    job_id = completed(api)
    copy_due()
    JobFile.objects.filter(job_id=job_id).update(stored_at=timezone.now() - timedelta(days=31))
    assert files_prune() == 1
    listed = api.get(f"/jobs/{job_id}").json()["result"]["files"][0]
    assert listed["state"] == "expired" and "30 days" in listed["error"]
    assert api.get(listed["url"]).status_code == 409


def test_an_operator_deletes_a_kept_file_in_the_admin_and_the_job_says_who(api, staff_user):
    from django.urls import reverse

    job_id = completed(api)
    copy_due()
    row = JobFile.objects.get(job_id=job_id)
    stored = row.storage_name
    console = Client()
    console.force_login(staff_user)
    changelist = reverse("admin:coordination_jobfile_changelist")
    assert str(job_id) in console.get(changelist).content.decode()
    console.post(changelist, {"action": "delete_kept", "_selected_action": [str(row.pk)]})
    row.refresh_from_db()
    assert row.state == "expired" and row.error == f"Deleted by {staff_user.username}."
    from django.core.files.storage import default_storage

    assert not default_storage.exists(stored)


def test_a_completed_jobs_stream_ends_with_its_files_event_and_a_wait_with_its_completion(api):
    from coordination.events import feed

    job_id = completed(api)
    done = JobEvent.objects.get(job_id=job_id, event="completed")
    assert done.state["files_copying"] == 1
    assert done.event in feed.ENDS and not feed.ends_stream(done.event, done.state)  # Prefer: wait is over; the stream goes on
    copy_due()
    files = JobEvent.objects.get(job_id=job_id, event="files")
    assert feed.ends_stream(files.event, files.state)
    assert feed.ends_stream("completed", {"files_copying": 0})  # a job that made no file: its completion ends it


def _job_files_rows_read() -> int:
    """Rows of job_files this transaction read so far (its own counts, not yet in the statistics views)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
                       " WHERE relname = 'job_files'")
        return cursor.fetchone()[0]


def test_a_completion_and_its_files_copy_read_its_own_files_however_many_others_wait_for_theirs(api):
    # The completion's event counts the job's files still being copied, and the copy settles its
    # file: both by the job's own rows, not by walking every file of every job waiting for the
    # copier (a backlog a slow copier lets grow).
    from coordination.outputs.store import Due

    other = completed(api)
    JobFile.objects.bulk_create([
        JobFile(job_id=other, n=n, source_url=f"https://files.example/{n}.png", state="copying",
                next_try_at=timezone.now(), created_at=timezone.now()) for n in range(1, 301)
    ])

    before = _job_files_rows_read()
    job_id = completed(api)
    assert _job_files_rows_read() - before < 10
    assert JobEvent.objects.get(job_id=job_id, event="completed").state["files_copying"] == 1

    mine = JobFile.objects.get(job_id=job_id)
    before = _job_files_rows_read()
    copy_one(Due(mine.id, mine.job_id, mine.n, mine.source_url, mine.content_type, "flux-dev", tries=mine.tries))
    assert _job_files_rows_read() - before < 10
    assert JobFile.objects.get(pk=mine.pk).state == "stored"
    assert JobEvent.objects.filter(job_id=job_id, event="files").exists()


def test_a_stopping_copier_gives_up_a_copy_under_way_and_the_file_is_tried_again_later(api):
    job_id = completed(api)
    [due] = claim(10)
    copy_one(due, should_stop=lambda: True)  # the qcluster stops during the copy
    row = JobFile.objects.get(job_id=job_id)
    assert (row.state, row.held_until) == ("copying", None) and row.next_try_at > timezone.now()
    assert "stopped" in row.error


def test_a_copy_that_outlasted_its_hold_records_nothing_over_the_copier_that_claimed_the_file_since(api):
    job_id = completed(api)
    [first] = claim(10)
    # Its copier stalled past its hold (paused, or a slow download): the file is due again, and another takes it.
    JobFile.objects.filter(pk=first.id).update(held_until=timezone.now() - timedelta(seconds=1))
    [second] = claim(10)
    assert (second.id, second.tries) == (first.id, 2)

    copy_one(first)  # the first copier comes back and records what its copy came to

    row = JobFile.objects.get(pk=first.id)
    assert (row.state, row.storage_name, row.tries) == ("copying", "", 2) and row.held_until is not None
    assert default_storage.listdir(f"outputs/{job_id}")[1] == []  # its copy is not left in storage, unnamed

    copy_one(second)

    row = JobFile.objects.get(pk=first.id)
    assert row.state == "stored" and row.held_until is None
    assert default_storage.listdir(f"outputs/{job_id}")[1] == [row.storage_name.rsplit("/", 1)[1]]


def copier_connections_until(done) -> int:
    """Run a qcluster's copier on a thread of its own until `done()` (polled, 30 s at most), stop it,
    and answer how many database connections were made meanwhile."""
    import asyncio
    import threading

    from django.db.backends.signals import connection_created

    from coordination.outputs import copier

    connected = []

    def count(sender, connection, **kwargs):
        connected.append(connection)

    connection_created.connect(count, weak=False)
    loop, stop = asyncio.new_event_loop(), asyncio.Event()
    running = threading.Thread(target=loop.run_until_complete, args=(copier.Copier().run(stop),))
    running.start()
    try:
        deadline = time.monotonic() + 30
        while not done() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        loop.call_soon_threadsafe(stop.set)
        running.join(timeout=30)
        loop.close()
        connection_created.disconnect(count)
    return len(connected)


@pytest.mark.django_db(transaction=True)
def test_a_copier_with_files_waiting_claims_again_as_soon_as_a_copy_ends_on_one_connection(api, settings, monkeypatch):
    """While files wait, the copier does not wait for its next look to claim the next: with one
    thread and its looks an hour apart here, five files waiting are all kept, one after another. Its
    claims and records share one database connection; the copies open none."""
    from coordination.outputs import copier

    settings.COORDINATOR_COPY_THREADS = 1
    monkeypatch.setattr(copier, "TICK", 3600)
    jobs = [completed(api) for _ in range(5)]

    def stored() -> int:
        return JobFile.objects.filter(job_id__in=jobs, state="stored").count()

    assert copier_connections_until(lambda: stored() == 5) == 1
    assert stored() == 5


def test_copies_that_ended_together_are_recorded_in_one_statement_and_a_job_with_two_ends_once(api):
    """The copier records the copies that ended meanwhile together: files of different jobs in one
    statement; two files of one job one after the other, so that its job.files event comes once,
    with the last."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from coordination.outputs.copier import fetch
    from coordination.outputs.store import files_settle

    jobs = [completed(api) for _ in range(3)]
    first = JobFile.objects.get(job_id=jobs[0])
    JobFile.objects.create(job_id=jobs[0], n=1, source_url=first.source_url, state="copying", created_at=first.created_at,
                           next_try_at=first.next_try_at)
    due = claim(10)
    assert len(due) == 4
    copies = [(one, fetch(one)) for one in due]

    with CaptureQueriesContext(connection) as statements:
        files_settle(copies)

    settles = [query for query in statements.captured_queries if "jq_files_settle(" in query["sql"]]
    assert len(settles) == 2  # three jobs' files, then the second of the first job's
    assert JobFile.objects.filter(job_id__in=jobs, state="stored").count() == 4
    assert [JobEvent.objects.filter(job_id=job_id, event="files").count() for job_id in jobs] == [1, 1, 1]


def test_a_copy_that_makes_a_job_files_webhook_wakes_its_sender_once_recorded(api, settings, django_capture_on_commit_callbacks):
    from coordination.webhook_targets import webhooks_wake

    settings.COORDINATOR_WEBHOOK_ALLOW_HTTP = settings.COORDINATOR_WEBHOOK_ALLOW_PRIVATE = True
    hooked = api.post("/jobs", {"prompt": "A castle", "model": "flux-dev", "params": {"simulate_seconds": 0},
                                "webhook_url": "http://127.0.0.1:9/hook", "webhook_events_filter": ["files"]},
                      format="json").json()
    run_job(hooked["job_id"], 1)
    plain = completed(api)

    with django_capture_on_commit_callbacks() as copied:
        assert copy_due() == 2
    assert [callback for callback in copied if callback is webhooks_wake] == [webhooks_wake]
    assert WebhookDelivery.objects.filter(job_id=hooked["job_id"], event_type="job.files").count() == 1
    assert not WebhookDelivery.objects.filter(job_id=plain).exists()


@pytest.mark.django_db(transaction=True)
def test_an_idle_copier_looks_for_files_on_the_one_connection_it_keeps(monkeypatch):
    """A look a second that connected each time would start a database backend a second, all day."""
    from coordination.outputs import copier

    monkeypatch.setattr(copier, "TICK", 0.01)
    looks = []
    monkeypatch.setattr(copier, "claim", lambda limit: looks.append(limit) or claim(limit))
    assert copier_connections_until(lambda: len(looks) >= 5) == 1
    assert len(looks) >= 5
