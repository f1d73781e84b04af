"""One place in line and one estimate, everywhere (issue 25, item 4).

GET /jobs/{id} is the definition: its `queue_position` and `estimated_start_at` are what the queue
console's line, the admin's job page, /queue/status and the job's event stream show. Bob's case from
the issue: in a fair line Bob's one job goes second, while six jobs came before it. Every read is
made with the clock held at one instant, so the same estimate is the same instant everywhere.
"""

import re
from datetime import datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from coordination.events.hub import Subscription
from coordination.events.streams import job_stream_open
from coordination.models import CatalogModel, Job
from coordination.services import catalog_model_save, job_claim, job_complete
from tests.factories import UserFactory
from tests.helpers import held_clock, submit

pytestmark = pytest.mark.django_db

VIDEO = "motion-2.0-fast"


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))
    return client


class _Opening:
    """What a stream subscribes through, without the hub's thread (its opening is what is tested)."""

    def subscribe(self, job_id=None, *, render: bool = True) -> Subscription:
        return Subscription(job_id=job_id, render=render)


def console_rows(page: str, model: str) -> list[dict]:
    """The rows of `model`'s line in the console as shown, by column: job, place, owner, expected start."""
    cards = page[page.index('id="lines"'):page.index('id="timeline"')].split('<div class="console-card">')
    card = next(card for card in cards if card.lstrip().startswith(f"<h3>{model}"))

    def text(cell: str) -> str:
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", cell)).strip()

    headers = [text(cell) for cell in re.findall(r"<th[^>]*>(.*?)</th>", card, re.S)]
    rows = []
    for job_id, row in re.findall(r'<tr data-job="([0-9a-f-]+)">(.*?)</tr>', card, re.S):
        cells = dict(zip(headers, (text(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S))))
        rows.append({"job_id": job_id, "place": cells.get("place", cells.get("#")), "owner": cells.get("owner"),
                     "eta": cells.get("expected start")})
    return rows


def clock(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%H:%M:%S")


@pytest.fixture
def bobs_case(settings):
    """4 slots; motion-2.0-fast's line is fair. Ann's first job runs and five of hers wait, then two of
    Carol's, then Bob's one: by acceptance Bob is 8th, by the owners' turns 2nd (Carol, Bob, Ann, ...)."""
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 4
    catalog = CatalogModel.objects.get(name=VIDEO)
    catalog.line_policy = CatalogModel.LinePolicy.FAIR
    catalog_model_save(model=catalog, actor="test")
    ann, carol, bob = UserFactory(username="ann"), UserFactory(username="carol"), UserFactory(username="bob")
    running = submit(ann, prompt="a0")
    anns = [submit(ann, prompt=f"a{n}") for n in range(1, 6)]
    carols = [submit(carol, prompt=f"c{n}") for n in range(2)]
    bobs = submit(bob, prompt="b0")
    now = timezone.now() + timedelta(seconds=1)
    Job.objects.filter(pk=running.pk).update(started_at=now - timedelta(seconds=3))
    return {"now": now, "bob": bobs, "ann": anns, "carol": carols, "users": (ann, carol, bob)}


def test_bobs_place_and_estimate_are_the_same_in_the_api_console_admin_status_and_stream(bobs_case, staff_client, staff_api):
    bob, now = bobs_case["bob"], bobs_case["now"]
    assert Job.objects.get(pk=bob.pk).queue_position == 8  # the stored column: its place when it joined

    with held_clock(now):
        body = staff_api.get(f"/jobs/{bob.job_id}").json()
        console = staff_client.get(reverse("admin:queue-console")).content.decode()
        page = staff_client.get(reverse("admin:coordination_job_change", args=[bob.job_id])).content.decode()
        status = staff_api.get("/queue/status").json()
        _, first = job_stream_open(_Opening(), bob.job_id, None)

    place, expected = body["queue_position"], datetime.fromisoformat(body["estimated_start_at"])
    assert place == 2 and expected > now
    row = next(row for row in console_rows(console, VIDEO) if row["job_id"] == str(bob.job_id))
    assert (row["place"], row["owner"], row["eta"]) == ("2", "bob", clock(expected))
    # The admin's job page: the live place and the expected start, not the stored column's 8.
    assert '<td id="job-place">2</td>' in page
    assert '<td id="job-expected-start">' + timezone.localtime(expected).strftime("%Y-%m-%d %H:%M:%S") + "</td>" in page
    assert "Queue position" not in page  # the stored column (8) is not shown
    assert next(job for job in status["queued_jobs"] if job["job_id"] == str(bob.job_id))["queue_position"] == place
    assert first[0].event == "job.state" and first[0].fields["queue_position"] == place
    assert body["start_overdue"] is False


def test_the_console_lists_a_fair_line_in_its_turns_with_each_jobs_owner(bobs_case, staff_client, staff_api):
    with held_clock(bobs_case["now"]):
        rows = console_rows(staff_client.get(reverse("admin:queue-console")).content.decode(), VIDEO)
        api = {row["job_id"]: staff_api.get(f"/jobs/{row['job_id']}").json() for row in rows}

    ann, carol, bob = bobs_case["ann"], bobs_case["carol"], bobs_case["bob"]
    turns = [carol[0], bob, ann[0], carol[1], ann[1], ann[2], ann[3], ann[4]]
    assert [row["job_id"] for row in rows] == [str(job.job_id) for job in turns]
    assert [row["owner"] for row in rows] == ["carol", "bob", "ann", "carol", "ann", "ann", "ann", "ann"]
    assert [row["place"] for row in rows] == [str(n) for n in range(1, 9)]
    assert [row["place"] for row in rows] == [str(api[row["job_id"]]["queue_position"]) for row in rows]
    # Listed in the order they will start: no job is expected before one listed above it.
    starts = [datetime.fromisoformat(api[row["job_id"]]["estimated_start_at"]) for row in rows]
    assert starts == sorted(starts)
    assert [row["eta"] for row in rows] == [clock(start) for start in starts]


def test_a_start_that_has_passed_while_the_job_waits_is_marked_overdue(user, staff_client, staff_api):
    done = submit(user)
    job_claim(job_id=done.job_id, attempt=1)
    job_complete(job_id=done.job_id, attempt=1)
    now = timezone.now() + timedelta(seconds=1)
    Job.objects.filter(pk=done.pk).update(started_at=now - timedelta(minutes=10, seconds=10), completed_at=now - timedelta(minutes=10))
    running = submit(user)  # recent runs on the model took 10 s; this one has run 60 s
    waiting = submit(user)
    Job.objects.filter(pk=running.pk).update(started_at=now - timedelta(seconds=60))
    expected = now - timedelta(seconds=50)  # when its usual 10 s were up

    with held_clock(now):
        body = staff_api.get(f"/jobs/{waiting.job_id}").json()
        rows = console_rows(staff_client.get(reverse("admin:queue-console")).content.decode(), VIDEO)
        page = staff_client.get(reverse("admin:coordination_job_change", args=[waiting.job_id])).content.decode()

    assert rows[0]["job_id"] == str(waiting.job_id) and rows[0]["eta"] == f"overdue since {clock(expected)}"
    assert "overdue since " + timezone.localtime(expected).strftime("%Y-%m-%d %H:%M:%S") in page
    assert datetime.fromisoformat(body["estimated_start_at"]) == expected and body["start_overdue"] is True


def test_a_start_still_ahead_is_not_overdue(user, staff_api):
    submit(user)
    waiting = submit(user)
    body = staff_api.get(f"/jobs/{waiting.job_id}").json()
    assert body.get("start_overdue") is False and datetime.fromisoformat(body["estimated_start_at"]) >= timezone.now() - timedelta(seconds=5)
    running_body = staff_api.get(f"/jobs/{Job.objects.get(status=Job.Status.RUNNING).job_id}").json()
    assert running_body["estimated_start_at"] is None and running_body["start_overdue"] is None
