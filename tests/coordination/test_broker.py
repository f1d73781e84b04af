"""The cluster's broker (coordination/broker.py): django-q2's ORM broker, asking an empty queue with
one plain statement. What the pusher gets from it must be what django-q2's own would give it."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ

from coordination.broker import Orm

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker(monkeypatch):
    monkeypatch.setattr(Conf, "POLL", 0)  # no pause between questions in a test
    return get_broker()


def test_the_cluster_uses_it(broker):
    assert isinstance(broker, Orm)


def test_an_empty_queue_costs_one_statement_and_gives_nothing(broker):
    broker.dequeue()  # its first look also closes old connections
    with CaptureQueriesContext(connection) as queries:
        assert broker.dequeue() is None
    assert len(queries) == 1 and queries[0]["sql"].startswith("SELECT 1 FROM")


def test_a_task_is_delivered_once_and_then_the_queue_is_empty_again(broker):
    broker.dequeue()
    task_id = broker.enqueue("signed-package")
    assert broker.dequeue() == [(task_id, "signed-package")]
    assert broker.dequeue() is None  # locked for Q_CLUSTER retry seconds: not delivered twice
    assert OrmQ.objects.get(pk=task_id).lock > timezone.now()


def test_a_queue_of_tasks_taken_and_not_yet_acknowledged_costs_one_statement_too(broker):
    broker.enqueue("signed-package")
    assert broker.dequeue()  # taken: locked for `retry` seconds
    assert broker.dequeue() is None  # django-q2's own question found nothing: the cheap one from here
    with CaptureQueriesContext(connection) as queries:
        assert broker.dequeue() is None
    assert len(queries) == 1 and queries[0]["sql"].startswith("SELECT 1 FROM")


def test_a_task_whose_lock_lapsed_is_delivered_again(broker):
    """django-q2's at-least-once delivery: a task taken but never acknowledged comes back after `retry`."""
    task_id = broker.enqueue("signed-package")
    assert broker.dequeue() == [(task_id, "signed-package")]
    assert broker.dequeue() is None
    OrmQ.objects.filter(pk=task_id).update(lock=timezone.now() - timedelta(seconds=1))
    assert broker.dequeue() == [(task_id, "signed-package")]


def test_another_clusters_queue_is_not_ours(broker):
    other = Orm(list_key="another-cluster")
    other.enqueue("theirs")
    assert broker.dequeue() is None
    assert [payload for _, payload in other.dequeue()] == ["theirs"]
