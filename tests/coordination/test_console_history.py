"""The queue console's history at a glance: per model over the last 24 hours, the jobs finished each
hour with failures apart, and how long jobs waited to start (p50, p95)."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from coordination.console_history import history_hours, model_history
from coordination.models import CatalogModel, Job
from tests.factories import JobRowFactory
from tests.helpers import held_clock

pytestmark = pytest.mark.django_db


def ended(at, *, model: str = "flux-dev", status: str = Job.Status.COMPLETED, waited: float | None = None,
          ran: float = 20, **fields) -> Job:
    """A job on `model` that ended `at`, having run `ran` seconds after waiting `waited` (None: it never
    waited, so it has no queued_at)."""
    started = at - timedelta(seconds=ran)
    queued = None if waited is None else started - timedelta(seconds=waited)
    return JobRowFactory(model=model, status=status, created_at=queued or started, queued_at=queued,
                         started_at=started, completed_at=at, **fields)


def history_of(model: str, now) -> object:
    catalog = list(CatalogModel.objects.order_by("name"))
    return next(row for row in model_history(catalog, now)["models"] if row.model == model)


def label(hour) -> str:
    return f"{timezone.localtime(hour):%H:%M}–{timezone.localtime(hour + timedelta(hours=1)):%H:%M}"


def test_each_hour_counts_the_jobs_that_finished_in_it_with_failures_apart():
    now = timezone.now()
    hours = history_hours(now)
    busy, quiet = hours[5], hours[20]
    for _ in range(3):
        ended(busy + timedelta(minutes=10))
    ended(busy + timedelta(minutes=50), status=Job.Status.FAILED)
    ended(quiet + timedelta(minutes=1), status=Job.Status.CANCELLED)
    ended(quiet + timedelta(minutes=2))
    ended(busy + timedelta(minutes=10), model="motion-2.0-fast")  # another model's
    ended(hours[0] - timedelta(minutes=1))  # before the 24 hours
    JobRowFactory(model="flux-dev", status=Job.Status.RUNNING, created_at=now, started_at=now)  # not finished

    history = history_of("flux-dev", now)

    assert (history.counts.completed, history.counts.failed, history.counts.ended_otherwise) == (4, 1, 1)
    titles = [bar.title for bar in history.finished_bars]
    assert len(titles) == 24
    assert titles[5] == f"{label(busy)}: 3 completed, 1 failed"
    assert titles[20] == f"{label(quiet)}: 1 completed, 0 failed, 1 cancelled or expired"
    assert titles[6] == f"{label(hours[6])}: none finished" and not history.finished_bars[6].segments
    assert titles[-1].endswith("–now: none finished")
    # The busy hour is the row's tallest: the completed part fills most of it, the failure sits on top.
    completed, failed = history.finished_bars[5].segments
    assert (completed.css, failed.css) == ("running completed", "running failed")
    assert completed.height > failed.height > 0 and failed.y + failed.height == completed.y


def test_a_workflow_counts_under_each_of_its_models():
    now = timezone.now()
    hour = history_hours(now)[10]
    ended(hour + timedelta(minutes=5), model=None, kind=Job.Kind.WORKFLOW,
          required_models=["nano-banana-pro-leonardo", "motion-2.0-fast"], waited=30)

    for model in ("nano-banana-pro-leonardo", "motion-2.0-fast"):
        history = history_of(model, now)
        assert history.counts.completed == 1 and history.waits.started == 1 and history.p50 == "30 s"
    assert history_of("flux-dev", now).counts.completed == 0


def test_waits_are_read_as_p50_and_p95_over_the_jobs_that_started():
    now = timezone.now()
    hour = history_hours(now)[12]
    # Waits of 0 (never in line), 10, 20, ... 80 and 100 s: p50 45 s, p95 91 s (interpolated, as percentile_cont does).
    for waited in (None, 10, 20, 30, 40, 50, 60, 70, 80, 100):
        ended(hour + timedelta(minutes=30), waited=waited)
    JobRowFactory(model="flux-dev", status=Job.Status.PENDING, created_at=now - timedelta(hours=2),
                  queued_at=now - timedelta(hours=2))  # still waiting: no wait to count yet

    history = history_of("flux-dev", now)

    assert history.waits.started == 10
    assert history.waits.p50 == pytest.approx(45) and history.waits.p95 == pytest.approx(91)
    assert (history.p50, history.p95) == ("45 s", "1 min 31 s")
    assert history.wait_bars[12].title == f"{label(hour)}: 10 started, waited p50 45 s, p95 1 min 31 s"
    p95, p50 = history.wait_bars[12].segments
    assert p95.height > p50.height > 0  # the p50 drawn over the p95, from the same baseline
    assert history.wait_bars[11].title == f"{label(history_hours(now)[11])}: none started"


def test_a_model_no_job_used_is_shown_empty():
    history = history_of("minimax/video-01", timezone.now())

    assert (history.counts.finished, history.waits.started, history.p50, history.p95) == (0, 0, "—", "—")
    assert len(history.finished_bars) == len(history.wait_bars) == 24
    assert not any(bar.segments for bar in history.finished_bars + history.wait_bars)


def test_the_console_draws_a_chart_per_model_each_hour_named_by_its_title(client, staff_user):
    # Half an hour into the current clock hour, held there: both jobs end in the hour the page draws last.
    now = history_hours(timezone.now())[-1] + timedelta(minutes=30)
    ended(now - timedelta(minutes=1), waited=12)
    ended(now - timedelta(minutes=2), status=Job.Status.FAILED)
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))

    with held_clock(now):
        page = client.get(reverse("admin:queue-console")).content.decode()

    table = page[page.index('id="history"'):page.index("</table>", page.index('id="history"'))]
    rows = dict(re.findall(r'<tr data-model="([^"]+)">(.*?)</tr>', table, re.S))
    assert set(rows) == set(CatalogModel.objects.values_list("name", flat=True))
    for row in rows.values():
        assert len(re.findall(r"<svg ", row)) == 2
        assert len(re.findall(r'<g class="hour" role="img"><title>[^<]+</title>', row)) == 48
    flux = rows["flux-dev"]
    assert re.search(r"<title>\d\d:\d\d–now: 1 completed, 1 failed</title>", flux)
    assert '<rect class="running failed"' in flux
    assert '<td class="wait-p50 nowrap" title="over 2 started">6 s</td>' in flux  # 0 and 12 s


@pytest.mark.parametrize("jobs", [10, 300])
def test_the_history_is_one_query_however_many_jobs_finished(django_assert_num_queries, jobs):
    now = timezone.now()
    models = ["flux-dev", "motion-2.0-fast", "minimax/video-01"]
    Job.objects.bulk_create([
        Job(model=models[n % 3], job_type="image", required_models=[models[n % 3]],
            status=Job.Status.FAILED if n % 7 == 0 else Job.Status.COMPLETED,
            queued_at=now - timedelta(minutes=n * 4 + 1), started_at=now - timedelta(minutes=n * 4),
            completed_at=now - timedelta(minutes=n * 4 - 1), created_at=now - timedelta(minutes=n * 4 + 1))
        for n in range(jobs)
    ])
    catalog = list(CatalogModel.objects.order_by("name"))

    with django_assert_num_queries(1):
        history = model_history(catalog, now)

    assert sum(row.counts.finished for row in history["models"]) == Job.objects.filter(
        completed_at__gte=history_hours(now)[0]).count()
