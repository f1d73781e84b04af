"""`manage.py prune_queue_log` (the guide's 7-day log cleanup) and the daily schedule that runs it."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import Schedule

from coordination.models import JobQueueLog
from coordination.tasks import prune_queue_log

pytestmark = pytest.mark.django_db


def _rows(*, days_old: float, count: int) -> list[JobQueueLog]:
    created_at = timezone.now() - timedelta(days=days_old)
    return [JobQueueLog.objects.create(event_type="submitted", created_at=created_at) for _ in range(count)]


def _prune(*args) -> str:
    out = StringIO()
    call_command("prune_queue_log", *args, stdout=out)
    return out.getvalue().strip()


def test_deletes_rows_older_than_seven_days_by_default_and_says_how_many():
    _rows(days_old=30, count=3)
    _rows(days_old=7.1, count=2)
    kept = _rows(days_old=6.9, count=2) + _rows(days_old=0, count=1)

    assert _prune() == "Deleted 5 job_queue_log row(s) older than 7 day(s)."
    assert set(JobQueueLog.objects.values_list("id", flat=True)) == {row.id for row in kept}


def test_days_sets_the_cutoff():
    _rows(days_old=3, count=2)
    _rows(days_old=1, count=1)

    assert _prune("--days", "2") == "Deleted 2 job_queue_log row(s) older than 2 day(s)."
    assert JobQueueLog.objects.count() == 1


def test_days_zero_deletes_everything_up_to_now():
    _rows(days_old=0.001, count=2)

    assert _prune("--days", "0") == "Deleted 2 job_queue_log row(s) older than 0 day(s)."


def test_dry_run_counts_and_deletes_nothing():
    _rows(days_old=10, count=4)
    _rows(days_old=1, count=1)

    assert _prune("--days", "7", "--dry-run") == "Would delete 4 job_queue_log row(s) older than 7 day(s)."
    assert JobQueueLog.objects.count() == 5


def test_nothing_to_delete_says_zero():
    _rows(days_old=1, count=2)

    assert _prune() == "Deleted 0 job_queue_log row(s) older than 7 day(s)."
    assert JobQueueLog.objects.count() == 2


def test_deletes_in_batches():
    _rows(days_old=10, count=5)
    _rows(days_old=1, count=1)

    with CaptureQueriesContext(connection) as queries:
        output = _prune("--batch-size", "2")

    deletes = [query["sql"] for query in queries.captured_queries if query["sql"].lstrip().upper().startswith("DELETE")]
    assert len(deletes) == 3  # 2 + 2 + 1
    assert output == "Deleted 5 job_queue_log row(s) older than 7 day(s)."
    assert JobQueueLog.objects.count() == 1


@pytest.mark.parametrize("args", [("--days", "-1"), ("--batch-size", "0")])
def test_bad_arguments_are_refused(args):
    _rows(days_old=10, count=1)

    with pytest.raises(CommandError):
        _prune(*args)
    assert JobQueueLog.objects.count() == 1


def test_the_scheduled_task_prunes_and_returns_the_count():
    _rows(days_old=8, count=2)
    _rows(days_old=1, count=1)

    assert prune_queue_log(days=7) == 2
    assert JobQueueLog.objects.count() == 1


def _prune_schedules():
    return Schedule.objects.filter(name="prune_queue_log")


def test_the_daily_schedule_exists_once_after_migrate():
    schedule = _prune_schedules().get()

    assert schedule.func == "coordination.tasks.prune_queue_log"
    assert schedule.kwargs == "days=7"
    assert schedule.schedule_type == Schedule.DAILY


def test_ensure_schedules_run_twice_keeps_exactly_one():
    out = StringIO()
    call_command("ensure_schedules", stdout=out)
    call_command("ensure_schedules", stdout=out)

    assert _prune_schedules().count() == 1
    assert Schedule.objects.filter(name="reaper", func="coordination.tasks.reaper_schedule", schedule_type=Schedule.MINUTES).count() == 1
    assert "Schedules in place: prune_queue_log, reaper." in out.getvalue()


def test_ensure_schedules_creates_a_missing_schedule_and_removes_duplicates():
    _prune_schedules().delete()
    call_command("ensure_schedules", stdout=StringIO())
    assert _prune_schedules().count() == 1

    Schedule.objects.create(name="prune_queue_log", func="coordination.tasks.prune_queue_log", schedule_type=Schedule.HOURLY)
    call_command("ensure_schedules", stdout=StringIO())

    schedule = _prune_schedules().get()
    assert schedule.schedule_type == Schedule.DAILY
    assert schedule.kwargs == "days=7"


def test_a_reaper_schedule_stored_under_its_old_path_still_runs_and_is_rewritten():
    from django.utils.module_loading import import_string

    from coordination.tasks import reaper_schedule

    Schedule.objects.filter(name="reaper").update(func="coordination.tasks.reap")  # as a deployed row has it
    assert import_string("coordination.tasks.reap") is reaper_schedule  # how django-q2 finds the function

    call_command("ensure_schedules", stdout=StringIO())

    assert Schedule.objects.get(name="reaper").func == "coordination.tasks.reaper_schedule"


def test_the_daily_task_also_removes_idempotency_keys_older_than_a_day(user):
    from datetime import timedelta

    from django.utils import timezone

    from coordination.models import IdempotencyKey
    from coordination.tasks import prune_queue_log
    from tests.helpers import submit

    job = submit(user)
    old = IdempotencyKey.objects.create(user=user, key="old", request_hash="x", job=job)
    IdempotencyKey.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=25))
    fresh_key = IdempotencyKey.objects.create(user=user, key="new", request_hash="y", job=job)

    prune_queue_log()

    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == [fresh_key.key]


def test_the_daily_schedule_also_drops_live_events_older_than_a_day(user):
    from coordination.models import JobEvent
    from tests.helpers import submit

    job = submit(user, model="flux-dev")
    JobEvent.objects.update(created_at=timezone.now() - timedelta(hours=25))
    submit(user, model="flux-dev")
    recent = set(JobEvent.objects.filter(created_at__gt=timezone.now() - timedelta(hours=1)).values_list("id", flat=True))
    assert recent and JobEvent.objects.filter(job_id=job.job_id).exists()

    prune_queue_log()

    assert set(JobEvent.objects.values_list("id", flat=True)) == recent
