"""A hundred slots with default settings: a few worker processes run every started job at once, the
qcluster's database connections stay within a small bound, and other clients keep being answered
(issue 25, §1; docs/operating.md, sizing a deployment).

A real qcluster (default COORDINATOR_WORKERS, COORDINATOR_WORKER_CONNECTIONS) against the test's
PostgreSQL, with 50 simulated jobs and 50 jobs at the local fake provider (poll style) at once. Its
connections are counted in pg_stat_activity by their application_name (PGAPPNAME, which psycopg
sends), while another client opens a connection and queries throughout.
"""

import os
import threading

import psycopg
import pytest

from bench.fake_provider import FakeProvider
from coordination.models import CatalogModel, Job, ProviderRun
from coordination.services import job_submit
from tests.e2e.harness import start_worker, wait_until
from tests.e2e.harness import test_database_url as database_url
from tests.factories import UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SLOTS = 100
BOUND = 20  # the issue's: a qcluster's connections at 1,000 slots with default settings
APP_NAME = "jobqueue-test-many-slots"
GIVE_UP = 90  # a bound for polling, not a claim
RUN_SECONDS = 12.0  # long enough that every job is seen running before the first of them ends


class Watch:
    """In a thread: the cluster's connections (the most seen) and another client's queries, each on a
    fresh connection as a new psql session would open one (failures kept)."""

    def __init__(self, url: str):
        self.url = url
        self.most = 0
        self.queries = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                with psycopg.connect(self.url, connect_timeout=5, autocommit=True) as client:
                    count = client.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                           [APP_NAME]).fetchone()[0]
                self.most = max(self.most, count)
                self.queries += 1
            except psycopg.Error as error:
                self.failures.append(str(error).strip())


@pytest.fixture
def fake():
    provider = FakeProvider(seconds=RUN_SECONDS).start()
    yield provider
    provider.stop()


def test_a_hundred_slots_run_side_by_side_on_a_few_connections_and_other_clients_are_answered(fake, settings, tmp_path):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = SLOTS
    CatalogModel.objects.filter(name="motion-2.0-fast").update(capacity=50)
    CatalogModel.objects.filter(name="flux-dev").update(
        runner="http", provider="generic", provider_url=f"{fake.url}/poll", provider_style="poll", capacity=50,
        poll_interval_seconds=0.5, timeout_seconds=120,
    )
    owner = UserFactory(is_staff=True)  # staff: no per-user limit on waiting jobs
    assert "COORDINATOR_WORKERS" not in os.environ  # the defaults are what is tested
    with Watch(database_url()) as watch:
        worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_MAX_ACTIVE_JOBS=str(SLOTS), PGAPPNAME=APP_NAME)
        try:
            simulated = [job_submit(owner=owner, model="motion-2.0-fast", prompt="a knight",
                                    params={"simulate_seconds": RUN_SECONDS}) for _ in range(50)]
            at_provider = [job_submit(owner=owner, model="flux-dev", prompt="a castle",
                                      params={"seconds": RUN_SECONDS}) for _ in range(50)]
            ids = [job.job_id for job in simulated + at_provider]
            assert Job.objects.filter(job_id__in=ids, status="running").count() == SLOTS  # a slot each

            def all_at_work() -> bool:
                # Every simulated job's runner taken up by a worker, every provider job there, none ended.
                return (Job.objects.filter(job_id__in=[job.job_id for job in simulated], claimed_attempt=1,
                                           status="running").count() == 50
                        and ProviderRun.objects.filter(job_id__in=[job.job_id for job in at_provider],
                                                       state="in_flight").count() == 50)

            wait_until(all_at_work, timeout=GIVE_UP, interval=0.2,
                       message="the 100 jobs to be at work at the same time (50 runners, 50 at the provider)")
            assert not Job.objects.filter(job_id__in=ids, status__in=Job.FINISHED).exists()
            wait_until(lambda: Job.objects.filter(job_id__in=ids, status__in=Job.FINISHED).count() == SLOTS,
                       timeout=GIVE_UP, interval=0.2, message="the 100 jobs to end")
        finally:
            worker.stop()

    outcomes = set(Job.objects.filter(job_id__in=ids).values_list("status", "attempt", "error"))
    assert outcomes == {("completed", 1, None)}
    assert watch.queries > 0 and watch.failures == [], watch.failures[:3]
    assert 0 < watch.most <= BOUND, f"the qcluster held up to {watch.most} connections"
