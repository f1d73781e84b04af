"""What a transition costs under the coordinator lock, with every policy in play: one read that takes
the lock and reads what its decisions need (queue/snapshot.py) and one write of what they decided
(coordination/writes.py) — within the usage guide's "3-4 database queries" per start or completion,
however many policies a job has.
And the same decisions when the read holds less than they need (the rest is asked of the database)."""

from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from coordination.exceptions import DuplicateJob
from coordination.models import CapacityGroup, CatalogModel, Job, JobQueueLog
from coordination.services import (
    capacity_group_save, job_cancel, job_complete, job_report_and_take_next, job_submit,
)
from coordination.writes import Writes, install as install_apply
from tests.helpers import fresh

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = ["nano-banana-pro-leonardo", "motion-2.0-fast", "flux-dev", "minimax/video-01"]


def under_the_lock(captured: CaptureQueriesContext) -> int:
    """Statements between BEGIN and COMMIT (those two not counted)."""
    sql = [query["sql"] for query in captured.captured_queries]
    begin, commit = sql.index("BEGIN"), len(sql) - 1 - sql[::-1].index("COMMIT")
    return commit - begin - 1


@pytest.fixture
def every_policy(settings):
    """Two slots; a capacity group over the four models; a line limit; webhooks to a local address."""
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
    settings.COORDINATOR_WEBHOOK_ALLOW_HTTP = settings.COORDINATOR_WEBHOOK_ALLOW_PRIVATE = True
    settings.COORDINATOR_MAX_PENDING_PER_USER = 50
    group = CapacityGroup(name="one-key", capacity=2)
    capacity_group_save(group=group, models=list(CatalogModel.objects.filter(name__in=MODELS)), actor="test")
    CatalogModel.objects.filter(name="flux-dev").update(max_waiting=20)


def test_a_transition_under_every_policy_is_one_read_under_the_lock_and_one_write(user, every_policy):
    def submit(name):
        return job_submit(owner=user, model="flux-dev", prompt=name, params={"simulate_seconds": 0},
                          webhook_url="http://127.0.0.1:9/hook", max_wait_seconds=600, dedupe_key=name)

    counted = {}
    with CaptureQueriesContext(connection) as captured:
        first = submit("first")
    counted["submit that starts"] = under_the_lock(captured)
    with CaptureQueriesContext(connection) as captured:
        second = submit("second")
    counted["submit that waits"] = under_the_lock(captured)
    third = submit("third")
    with CaptureQueriesContext(connection) as captured:
        taken = job_report_and_take_next(job_id=first.job_id, attempt=1, status="completed", result={})
    counted["completion that starts the next and hands it over"] = under_the_lock(captured)
    with CaptureQueriesContext(connection) as captured:
        job_cancel(job_id=third.job_id, user=user)
    counted["cancel of a waiting job"] = under_the_lock(captured)
    with CaptureQueriesContext(connection) as captured:
        job_complete(job_id=second.job_id, attempt=1, result={})
    counted["completion, nothing waiting"] = under_the_lock(captured)

    assert counted == dict.fromkeys(counted, 2)
    # And they did what the rules say: the second started when the first completed, handed over.
    assert taken.job_id == second.job_id
    assert [fresh(job).status for job in (first, second, third)] == ["completed", "completed", "cancelled"]
    assert list(JobQueueLog.objects.filter(job_id=second.job_id).order_by("id").values_list("event_type", flat=True)) == [
        "submitted", "blocked", "started", "claimed", "completed",
    ]


def test_a_job_without_an_owner_keeps_its_dedupe_key_to_itself(every_policy):
    first = job_submit(owner=None, model="flux-dev", prompt="a", dedupe_key="nightly")

    with pytest.raises(DuplicateJob, match=str(first.job_id)):
        job_submit(owner=None, model="flux-dev", prompt="b", dedupe_key="nightly")
    assert Job.objects.count() == 1


def test_a_line_read_only_in_part_is_read_on_as_the_decisions_need(user, settings, monkeypatch):
    # The read holds one row of each line: every start after the first asks the database for the
    # next head, and decides as it would with the whole line read.
    monkeypatch.setattr("coordination.queue.locked.WINDOW", 1)
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 3
    CatalogModel.objects.filter(name="flux-dev").update(capacity=3)
    blocker = job_submit(owner=user, model="motion-2.0-fast", prompt="blocker")
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 1
    waiting = [job_submit(owner=user, model="flux-dev", prompt=f"w{n}") for n in range(4)]
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 3

    job_complete(job_id=blocker.job_id, attempt=1)

    # Three slots, flux-dev's capacity 3: the first three in line start, the fourth waits behind them.
    assert [fresh(job).status for job in waiting] == ["running", "running", "running", "pending"]
    assert fresh(waiting[3]).blocked_by_job_id in {job.job_id for job in waiting[:3]}



def prepared_statements() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements WHERE name LIKE 'jq_apply_%%'")
        return {name for (name,) in cursor.fetchall()}


def written(instance, fields) -> None:
    """`instance`'s `fields` written as the coordinator writes them (jq_apply)."""
    writes = Writes()
    writes.update(instance, fields)
    with connection.cursor() as cursor:
        writes.flush(cursor)


def test_a_transition_prepares_no_statement_its_tables_statements_are_written_out(user, every_policy):
    first = job_submit(owner=user, model="flux-dev", prompt="first", webhook_url="http://127.0.0.1:9/hook")
    second = job_submit(owner=user, model="flux-dev", prompt="second", dedupe_key="k", start_by=timezone.now() + timedelta(hours=1))
    third = job_submit(owner=user, model="flux-dev", prompt="third")
    job_report_and_take_next(job_id=first.job_id, attempt=1, status="completed", result={})
    job_cancel(job_id=third.job_id, user=user)

    assert prepared_statements() == set()
    assert [fresh(job).status for job in (first, second, third)] == ["completed", "running", "cancelled"]


def test_a_write_to_another_table_prepares_its_statement_once_per_connection_and_a_rollback_does_not_undo_that():
    # A PREPARE outlives a rolled-back transaction, so the write must find it there rather than
    # prepare it again (which PostgreSQL would refuse).
    model = CatalogModel.objects.get(name="flux-dev")
    model.max_attempts = 2
    with transaction.atomic():
        written(model, ["max_attempts"])
    prepared = prepared_statements()
    assert len(prepared) == 1, "the write prepared its statement"
    with pytest.raises(RuntimeError), transaction.atomic():
        model.max_attempts = 3
        written(model, ["max_attempts"])
        raise RuntimeError("the caller gives up")
    model.max_attempts = 4

    with transaction.atomic():
        written(model, ["max_attempts"])

    assert prepared_statements() == prepared, "the same statement again, none prepared anew"
    assert CatalogModel.objects.get(name="flux-dev").max_attempts == 4


def test_a_column_the_installed_write_does_not_know_is_still_written(user, monkeypatch):
    """As after a migration that added a column and did not install jq_apply again: its writes take the
    general way, never the written-out statement that would leave the column as it was."""
    job = job_submit(owner=user, model="flux-dev", prompt="first")
    with monkeypatch.context() as patched:
        patched.setattr(Job._meta, "concrete_fields",
                        tuple(field for field in Job._meta.concrete_fields if field.column != "priority"))
        install_apply()
    job = fresh(job)
    job.priority, job.conflict_reason = 7, "told"

    with transaction.atomic():
        written(job, ["priority"])
        written(job, ["conflict_reason"])

    assert (fresh(job).priority, fresh(job).conflict_reason) == (7, "told")
    assert len(prepared_statements()) == 1, "only the write of the unknown column took the general way"
    install_apply()


def test_a_report_lets_go_of_the_lock_with_its_write(user, every_policy):
    # The report's transaction ends with its write: the COMMIT travels with it, so the lock is free
    # as soon as that one statement returns, with the report and the hand-over committed. A submit's too.
    first = job_submit(owner=user, model="flux-dev", prompt="first")
    with CaptureQueriesContext(connection) as submitted:
        second = job_submit(owner=user, model="flux-dev", prompt="second")
    assert [query["sql"].endswith("; COMMIT") for query in submitted.captured_queries
            if query["sql"].startswith("SELECT jq_apply(")] == [True]
    other = connections.create_connection("default")
    seen = []

    def look_from_another_connection(execute, sql, params, many, context):
        answer = execute(sql, params, many, context)
        if sql.startswith("SELECT jq_apply("):
            with other.cursor() as cursor:
                cursor.execute("SELECT id FROM job_queue_state FOR UPDATE NOWAIT")  # raises if still locked
                cursor.execute("SELECT status FROM jobs WHERE job_id = %s", [second.job_id])
                seen.append((sql, cursor.fetchone()[0]))
        return answer

    try:
        with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(look_from_another_connection):
            taken = job_report_and_take_next(job_id=first.job_id, attempt=1, status="completed", result={})
    finally:
        other.close()

    assert [(sql.endswith("; COMMIT"), status) for sql, status in seen] == [(True, "running")]
    assert under_the_lock(captured) == 2
    assert taken.job_id == second.job_id and fresh(taken).claimed_attempt == 1
    assert fresh(first).status == "completed"


def test_a_report_inside_a_larger_transaction_leaves_the_commit_to_it(user):
    first = job_submit(owner=user, model="flux-dev", prompt="first")
    second = job_submit(owner=user, model="flux-dev", prompt="second")

    with pytest.raises(RuntimeError), transaction.atomic():
        with CaptureQueriesContext(connection) as captured:
            job_report_and_take_next(job_id=first.job_id, attempt=1, status="completed", result={})
        raise RuntimeError("the larger transaction fails after the report")

    assert not any(query["sql"].endswith("COMMIT") for query in captured.captured_queries)
    assert [fresh(job).status for job in (first, second)] == ["running", "pending"]
