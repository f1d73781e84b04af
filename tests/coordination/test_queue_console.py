"""The operators' queue console: slots, lines, metrics, the last hour as an SVG timeline."""

import re
import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.urls import reverse
from django.utils import timezone

from coordination import console
from coordination.estimates import estimated_start, estimated_starts
from coordination.models import Job, JobLine, ProviderRun
from coordination.services import job_claim, job_complete
from tests.helpers import submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))
    return client


def test_the_console_shows_slots_lines_timeline_and_events(staff_client, user):
    done = submit(user, model="flux-dev")
    job_claim(job_id=done.job_id, attempt=1)
    job_complete(job_id=done.job_id, attempt=1)  # ran, and started the next one
    running = submit(user)
    waiting = submit(user)

    response = staff_client.get(reverse("admin:queue-console"))

    assert response.status_code == 200
    page = response.content.decode()
    slots = page[page.index('id="slots"'):page.index('id="lines"')]
    assert str(running.job_id) in slots
    lines = page[page.index('id="lines"'):page.index('id="timeline"')]
    assert "motion-2.0-fast" in lines and str(waiting.job_id) in lines
    start = page.index('id="timeline"')
    timeline = page[start:page.index("</svg>", start)]
    runs = set(re.findall(r'class="running [a-z]+" data-job="([0-9a-f-]+)"', timeline))
    waits = set(re.findall(r'class="waiting [a-z]+" data-job="([0-9a-f-]+)"', timeline))
    assert {str(done.job_id), str(running.job_id)} <= runs
    assert str(waiting.job_id) in waits and str(waiting.job_id) not in runs
    assert 'http-equiv="refresh"' in page
    assert "blocked" in page[page.index('id="events"'):]


def test_a_slots_job_at_its_provider_shows_what_the_provider_last_said_and_its_progress(staff_client, user):
    running = submit(user, model="flux-dev")
    job_claim(job_id=running.job_id, attempt=1)
    ProviderRun.objects.create(job_id=running.job_id, attempt=1, model="flux-dev", style="poll", provider_job_id="r-42",
                               provider_status="running", progress=0.45, submitted_at=timezone.now(),
                               deadline_at=timezone.now())

    page = staff_client.get(reverse("admin:queue-console")).content.decode()

    slots = page[page.index('id="slots"'):page.index('id="lines"')]
    assert "at the provider (r-42, running, 45 %)" in slots


def test_the_admin_index_links_to_the_console(staff_client):
    page = staff_client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:queue-console") in page


def test_only_staff_see_the_console(client, user):
    client.force_login(type(user).objects.get(pk=user.pk))
    response = client.get(reverse("admin:queue-console"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_failed_runs_are_drawn_apart_and_events_say_who_and_why(staff_client, user):
    from coordination.services import job_fail, model_pause

    failed = submit(user, model="flux-dev")
    job_fail(job_id=failed.job_id, attempt=1, error="provider said no")
    model_pause(name="flux-dev", paused=True, actor="admin:ops")

    page = staff_client.get(reverse("admin:queue-console")).content.decode()

    assert f'class="running failed" data-job="{failed.job_id}"' in page
    events = page[page.index('id="events"'):]
    assert "provider said no" in events and "by admin:ops · model flux-dev" in events


def test_the_console_shows_the_latest_ten_events_and_pages_back_through_older_ones(staff_client):
    from coordination.models import JobQueueLog

    for n in range(1, 26):
        JobQueueLog.objects.record(event_type=JobQueueLog.Event.DISPATCHED, details={"reason": f"event {n}"})

    def shown(page: str) -> list[str]:
        return re.findall(r"event (\d+)", section(page, 'id="events"', "</table>"))

    latest = console_page(staff_client, range="10m")
    assert shown(latest) == [str(n) for n in range(25, 15, -1)]
    pages = section(latest, 'id="events-pages"', "</p>")
    assert "Latest events" not in pages
    older = re.search(r'href="(\?range=10m&amp;events_before=\d+)">Older events', pages)[1].replace("&amp;", "&")

    JobQueueLog.objects.record(event_type=JobQueueLog.Event.DISPATCHED, details={"reason": "event 26"})  # arrives meanwhile
    second = staff_client.get(reverse("admin:queue-console") + older).content.decode()
    assert shown(second) == [str(n) for n in range(15, 5, -1)]  # the page stays where it was
    assert "Older events</h2>" in second and 'href="?range=10m">Latest events' in second
    third = staff_client.get(reverse("admin:queue-console") + re.search(
        r'href="(\?range=10m&amp;events_before=\d+)">Older', second)[1].replace("&amp;", "&")).content.decode()
    assert shown(third) == [str(n) for n in range(5, 0, -1)]
    assert "Older events →" not in third
    assert shown(console_page(staff_client, events_before="not a number"))[0] == "26"


# --- read as an operator reads it ----------------------------------------------------------------


def console_page(client, **params) -> str:
    response = client.get(reverse("admin:queue-console"), params)
    assert response.status_code == 200
    return response.content.decode()


def section(page: str, start: str, end: str) -> str:
    return page[page.index(start):page.index(end, page.index(start))]


def test_each_waiting_job_says_in_its_line_why_it_waits_and_for_whom(staff_client, user):
    running = submit(user)
    waiting = submit(user)
    other = submit(user, model="flux-dev")

    lines = section(console_page(staff_client), 'id="lines"', 'id="timeline"')

    row = section(lines, f'<tr data-job="{waiting.job_id}"', "</tr>")
    blocker = f'<a class="job-id" href="{reverse("admin:coordination_job_change", args=[running.job_id])}" title="{running.job_id}">{str(running.job_id)[:8]}</a>'
    assert f"Model conflict: motion-2.0-fast in use by normal job {blocker}" in row
    assert f'title="Model conflict: motion-2.0-fast in use by normal job {running.job_id}"' in row
    assert "Serialized mode: one job at a time" in section(lines, f'<tr data-job="{other.job_id}"', "</tr>")


def test_job_ids_are_shown_short_with_the_whole_id_on_hover_and_in_links(staff_client, user):
    running = submit(user)
    waiting = submit(user)

    page = console_page(staff_client)

    for job in (running, waiting):
        full, short = str(job.job_id), str(job.job_id)[:8]
        assert f'title="{full}">{short}</a>' in page
        assert f">{full}<" not in page  # never spelled out as text (tooltips in the timeline aside)


@pytest.mark.parametrize("slots, says", [(1, "Serialized"), (3, "3 slots")])
def test_the_console_says_how_many_jobs_may_run_at_once(staff_client, settings, slots, says):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = slots
    mode = section(console_page(staff_client), 'id="mode"', "</div></div>")
    assert says in mode and f"COORDINATOR_MAX_ACTIVE_JOBS = {slots}" in mode


def ran_for(user, seconds: float, *, ago: timedelta, model: str = "flux-dev", fail: bool = False) -> Job:
    from coordination.services import job_fail

    job = submit(user, model=model)
    job_claim(job_id=job.job_id, attempt=1)
    if fail:
        job_fail(job_id=job.job_id, attempt=1, error="provider said no")
    else:
        job_complete(job_id=job.job_id, attempt=1)
    ended = timezone.now() - ago
    Job.objects.filter(pk=job.pk).update(started_at=ended - timedelta(seconds=seconds), completed_at=ended)
    return Job.objects.get(pk=job.pk)


def bar(page: str, job: Job, state: str = "running") -> str:
    timeline = section(page, 'id="timeline"', "</svg>")
    start = timeline.index(f'class="{state} ', timeline.index(f'data-job="{job.job_id}"') - 40)
    return timeline[start:timeline.index("</rect>", start)]


def bar_width(page: str, job: Job) -> float:
    return float(re.search(r'width="([0-9.]+)"', bar(page, job))[1])


def test_the_timeline_offers_ten_minutes_an_hour_and_a_day(staff_client, user):
    recent = ran_for(user, 15, ago=timedelta(minutes=3))
    older = ran_for(user, 15, ago=timedelta(minutes=40), fail=True)
    yesterday = ran_for(user, 15, ago=timedelta(hours=20))

    hour = console_page(staff_client)
    ten = console_page(staff_client, range="10m")
    day = console_page(staff_client, range="24h")

    assert 'data-range="1h"' in hour and "The last hour" in hour
    assert 'data-range="10m"' in ten and "The last 10 minutes" in ten
    assert 'data-range="24h"' in day and "The last 24 hours" in day
    ranges = section(hour, 'id="timeline-ranges"', "</p>")
    assert 'href="?range=10m"' in ranges and 'href="?range=24h"' in ranges and "<strong>1 h</strong>" in ranges
    # A 15 s run is a sliver in an hour (800 units), and six times as wide over 10 minutes.
    assert bar_width(hour, recent) == pytest.approx(800 * 15 / 3600, abs=0.1)
    assert bar_width(ten, recent) == pytest.approx(800 * 15 / 600, abs=0.1)
    assert str(older.job_id) not in section(ten, 'id="timeline"', "</svg>")
    assert str(yesterday.job_id) not in section(hour, 'id="timeline"', "</svg>")
    assert f'data-job="{yesterday.job_id}"' in day


def test_the_hour_and_the_day_zoom_to_recent_activity(staff_client, user):
    recent = ran_for(user, 60, ago=timedelta(minutes=20))  # started 21 minutes ago: in the hour's later half

    hour = console_page(staff_client)
    day = console_page(staff_client, range="24h")

    # The hour is drawn from shortly before that run: it starts a twentieth in, a minute is 1/22 of the width.
    assert float(re.search(r' x="([0-9.]+)"', bar(hour, recent))[1]) == pytest.approx(800 * 0.05, abs=1)
    assert bar_width(hour, recent) == pytest.approx(800 * 0.95 / 21, abs=1)
    assert "Nothing ran or waited earlier in the last hour: drawn from" in section(hour, 'id="timeline-heading"', "<svg")
    # The day zooms as far as its narrowest, the last hour.
    assert bar_width(day, recent) == pytest.approx(800 * 60 / 3600, abs=0.1)
    assert "earlier in the last 24 hours" in day


def test_a_lane_is_tall_enough_to_point_at_a_bar_in_it(staff_client, user):
    done = ran_for(user, 60, ago=timedelta(minutes=5))
    page = console_page(staff_client)
    svg = section(page, 'id="timeline"', ">")
    view_width, view_height = map(int, re.search(r'viewBox="0 0 (\d+) (\d+)"', svg).groups())
    lanes = page.count('class="lane-label"')
    # Drawn 1,000 px wide or so at a laptop's width (beside the admin's sidebar): a lane is still 22 px high or more.
    assert (view_height - 24) / lanes * 1000 / view_width >= 22
    assert int(re.search(r'height="(\d+)"', bar(page, done))[1]) >= 12


@pytest.mark.parametrize("value", ["", "2h", "10M", "1h;drop", "../../etc"])
def test_a_bad_range_shows_the_last_hour(staff_client, value):
    assert 'data-range="1h"' in console_page(staff_client, range=value)


def test_the_timeline_scales_to_the_page_and_every_bar_says_what_it_was(staff_client, user):
    done = ran_for(user, 12, ago=timedelta(minutes=5))
    failed = ran_for(user, 4, ago=timedelta(minutes=2), fail=True)
    running = submit(user)
    waiting = submit(user)

    page = console_page(staff_client)

    svg = section(page, 'id="timeline"', ">")
    assert re.search(r'viewBox="0 0 \d+ \d+"', svg) and 'width="100%"' in svg and "height=" not in svg
    clock = r"\d\d:\d\d:\d\d"
    assert re.search(rf"<title>normal job {done.job_id} on flux-dev: ran {clock} → {clock} \(12 s\), completed</title>", bar(page, done))
    assert re.search(rf"ran {clock} → {clock} \(4 s\), failed</title>", bar(page, failed))
    assert re.search(rf"job {running.job_id} on motion-2.0-fast: ran {clock} → now \(.* s\), still running", bar(page, running))
    assert re.search(rf"job {waiting.job_id} on motion-2.0-fast: waited {clock} → now .*still waiting", bar(page, waiting, "waiting"))
    assert f'<a href="{reverse("admin:coordination_job_change", args=[done.job_id])}"><rect class="running completed"' in page


def test_the_sidebar_highlights_the_console_not_the_slots(staff_client, user):
    waiting = submit(user) and submit(user)
    for url in (reverse("admin:queue-console"), reverse("admin:queue-console-priority", args=[waiting.job_id])):
        page = staff_client.get(url).content.decode()
        sidebar = section(page, 'id="nav-sidebar"', "</nav>")
        assert re.findall(r'<tr class="model-(\w+) current-model">', sidebar) == ["queueconsole"], url

    slots = staff_client.get(reverse("admin:coordination_jobqueuestate_changelist")).content.decode()
    assert re.findall(r'<tr class="model-(\w+) current-model">', section(slots, 'id="nav-sidebar"', "</nav>")) == ["jobqueuestate"]


def test_the_jobs_list_shows_each_waiting_jobs_place_and_a_short_reason(staff_client, user):
    running = submit(user)
    first = submit(user)
    second = submit(user, model="flux-dev")
    from coordination.selectors import job_queue_position

    response = staff_client.get(reverse("admin:coordination_job_changelist"))

    rows = {str(job.job_id): job for job in response.context["cl"].result_list}
    assert rows[str(first.job_id)].queue_place == job_queue_position(first) == 1
    assert rows[str(second.job_id)].queue_place == job_queue_position(second) == 2
    assert rows[str(running.job_id)].queue_place is None
    page = response.content.decode()
    row = section(page, f'title="{second.job_id}">{str(second.job_id)[:8]}</span>', "</tr>")
    assert '<td class="field-place">2</td>' in row
    reason = Job.objects.get(pk=second.pk).conflict_reason
    assert len(reason) > 60 and f'<span title="{reason}">Serialized mode: one job at a time; normal job <a class="job-id"' in row
    assert f'title="{first.job_id}">{str(first.job_id)[:8]}</a>' in row  # what it waits for, linked


@pytest.mark.parametrize("seconds, reads", [(0.2, "< 1 s"), (12.4, "12 s"), (120, "2 min"), (185, "3 min 5 s"), (3600, "1 h"), (7830, "2 h 10 min")])
def test_durations_read_as_an_operator_says_them(seconds, reads):
    from coordination.durations import span

    assert span(seconds) == reads


def test_a_cut_reason_keeps_every_job_id():
    from coordination.templatetags.job_ids import linked_ids

    first, second = "3d25f178-1111-2222-3333-444455556666", "12ebff71-1111-2222-3333-444455556666"
    reason = f"Model conflict: nano-banana-pro-leonardo in use by normal job {first}; motion-2.0-fast in use by workflow job {second}"

    shown = re.sub(r"<a [^>]*>([0-9a-f]{8})</a>", r"[\1]", linked_ids(reason, 60))

    assert shown == "Model conflict: nano-banana-pro-leonardo in use by normal… [3d25f178], [12ebff71]"
    assert re.sub(r"<a [^>]*>([0-9a-f]{8})</a>", r"[\1]", linked_ids("Paused: <b>x</b> " * 3, 17)) == "Paused: &lt;b&gt;x&lt;/b&gt;…"


# --- a fixed number of queries, however many jobs are shown ------------------------------------

MODELS = ("flux-dev", "motion-2.0-fast", "minimax/video-01", "nano-banana-pro-leonardo")


def busy_queue(user, *, waiting: int = 50, pause: str | None = "minimax/video-01") -> None:
    """Finished runs of different lengths (completed, failed), then `waiting` jobs spread over every
    model at three priorities, every fifth a workflow: whatever may start runs, the rest wait; then
    one model is paused, so some jobs are held."""
    from coordination.services import job_fail, model_pause
    from tests.helpers import execute_workflow

    for n in range(6):
        done = submit(user, model=MODELS[n % len(MODELS)])
        job_claim(job_id=done.job_id, attempt=1)
        job_complete(job_id=done.job_id, attempt=1)
        ended = timezone.now() - timedelta(minutes=30)
        Job.objects.filter(pk=done.pk).update(started_at=ended - timedelta(seconds=10 + 7 * n), completed_at=ended)
    failed = submit(user, model="flux-dev")
    job_fail(job_id=failed.job_id, attempt=1, error="provider said no")
    for n in range(waiting):
        if n % 5 == 0:
            execute_workflow(user, priority=-(n % 3))
        else:
            submit(user, model=MODELS[n % len(MODELS)], prompt=f"waiting {n}", priority=-(n % 3))
    if pause:
        model_pause(name=pause, paused=True, actor="test")


@pytest.mark.parametrize("slots", [1, 2])
def test_the_console_makes_a_fixed_number_of_queries(staff_client, user, settings, django_assert_max_num_queries, slots):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = slots
    settings.COORDINATOR_MAX_PENDING_PER_USER = 1000
    busy_queue(user, waiting=50)
    assert Job.objects.filter(status=Job.Status.PENDING).count() >= 45
    assert Job.objects.filter(status=Job.Status.RUNNING).count() == slots

    # 20 (the 24 hours of history one of them), and 5 for capacity (coordination/console_capacity.py):
    # the running jobs, the capacity groups, the heads of the free models' lines (heads_of: two; two
    # more while a pause holds jobs back), and the waiting jobs those heads name. None grows with the
    # number of jobs (test_console_capacity.py compares 5 and 200 waiting).
    with django_assert_max_num_queries(25):
        response = staff_client.get(reverse("admin:queue-console"))

    assert response.status_code == 200
    shown = re.findall(r'<tr data-job="([0-9a-f-]+)"', response.content.decode())
    # The first ten of every model's line (a waiting workflow is in two lines).
    assert len(shown) == sum(min(10, JobLine.objects.filter(model=model).count()) for model in MODELS) > 30


def test_the_jobs_list_makes_a_fixed_number_of_queries(staff_client, user, settings, django_assert_max_num_queries):
    settings.COORDINATOR_MAX_PENDING_PER_USER = 1000
    busy_queue(user, waiting=60)

    with django_assert_max_num_queries(12):
        response = staff_client.get(reverse("admin:coordination_job_changelist"))

    assert response.status_code == 200 and len(response.context["cl"].result_list) >= 60


@pytest.mark.parametrize("slots", [1, 2])
def test_the_consoles_expected_starts_are_the_apis(user, settings, slots):
    """The console estimates its lines in one go (estimated_starts); the API one job at a time
    (estimated_start): the same rule, the same instants."""
    settings.COORDINATOR_MAX_ACTIVE_JOBS = slots
    settings.COORDINATOR_MAX_PENDING_PER_USER = 1000
    busy_queue(user, waiting=40)
    jobs = list(Job.objects.all())
    now = timezone.now()

    batch = estimated_starts(jobs, now=now)

    assert batch == {job.job_id: estimated_start(job, now=now) for job in jobs}
    assert sum(eta is not None for eta in batch.values()) > 20
    assert any(job.held for job in jobs) and len({eta for eta in batch.values() if eta}) > 5


def test_a_resubmitted_event_names_the_retry_it_made():
    note = console.event_note({"new_job": "3b000791-df05-4a05-a3aa-b29a23e16fc4", "actor": "admin:operator"})
    assert note == "by admin:operator · retried as 3b000791"


@pytest.mark.django_db(transaction=True)
def test_the_console_reads_one_snapshot_so_its_sections_agree_while_the_queue_moves(user, monkeypatch):
    """A job ends, and the next starts, while the console is half read: what it read before (the slot
    holding the first job) and after (the line) still describe the same instant."""
    first, second = submit(user, model="flux-dev"), submit(user, model="flux-dev")
    read_lines = console.console_lines

    def lines_after_a_change(*args, **kwargs):
        moved = threading.Thread(target=lambda: (job_complete(job_id=first.job_id, attempt=1), connections.close_all()))
        moved.start()
        moved.join(30)
        return read_lines(*args, **kwargs)

    monkeypatch.setattr(console, "console_lines", lines_after_a_change)
    shown = console.console_context()

    assert Job.objects.get(pk=second.pk).status == Job.Status.RUNNING  # it moved meanwhile
    assert [slot["job_id"] for slot in shown["slots"]] == [first.job_id]
    assert [job["job_id"] for line in shown["lines"] for job in line["jobs"]] == [second.job_id]
