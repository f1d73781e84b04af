"""The cluster's broker: django-q2's ORM broker, but an empty queue is seen with one plain statement.

While jobs wait at a provider the queue is empty, and the cluster's pusher asks it every Q_POLL
seconds (0.05: twenty times a second). django-q2 asks with an ORM query and closes old connections
first: 0.83 ms of CPU each on PostgreSQL, 2 % of a core. This asks `SELECT 1 ... LIMIT 1` (0.15 ms)
and closes old connections once a second; a task there, or a database that fails the question, goes
to django-q2's own dequeue as before, and so does every question while tasks keep coming.
"""

import time

from django import db
from django.db import Error, connections, transaction
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ

OLD_CONNECTIONS_EVERY = 1.0  # seconds


class Orm(ORM):
    def __init__(self, list_key: str | None = None):
        super().__init__(list_key=list_key)
        self._old_connections_closed_at = 0.0
        self._found_none = True  # the last question found nothing

    def dequeue(self):
        # While tasks come, django-q2's own question, as it is; once it found none, the cheap one until
        # something is there.
        if self._found_none and self._nothing_ready():
            time.sleep(Conf.POLL)
            return None
        tasks = super().dequeue()
        self._found_none = not tasks
        return tasks

    def _nothing_ready(self) -> bool:
        if time.monotonic() - self._old_connections_closed_at >= OLD_CONNECTIONS_EVERY:
            if transaction.get_autocommit(using=Conf.ORM):  # as django-q2's does: not inside a transaction
                db.close_old_connections()  # (CONN_MAX_AGE, broken ones)
            self._old_connections_closed_at = time.monotonic()
        connection = connections[Conf.ORM]
        quote = connection.ops.quote_name
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT 1 FROM {quote(OrmQ._meta.db_table)} WHERE {quote('key')} = %s AND {quote('lock')} < %s LIMIT 1",
                    [self.list_key, connection.ops.adapt_datetimefield_value(timezone.now())],
                )
                return cursor.fetchone() is None
        except Error:  # DatabaseError, InterfaceError (a connection already closed)
            self._old_connections_closed_at = 0.0
            return False  # django-q2's dequeue asks, and handles the error as it always has
