import logging

import pytest
from rest_framework.authtoken.models import Token

from tests.e2e.harness import HttpApi, start_worker
from tests.factories import UserFactory
from tests.helpers import LineCollector


@pytest.fixture
def web_log():
    """[COORDINATOR] lines the web side (the live server, in this process) logs."""
    handler = LineCollector()
    logger = logging.getLogger("job_coordinator")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


@pytest.fixture
def worker(transactional_db, tmp_path):
    worker = start_worker(tmp_path / "qcluster.log")
    yield worker
    worker.stop()


@pytest.fixture
def http(live_server, transactional_db):
    user = UserFactory()
    token = Token.objects.create(user=user)
    return HttpApi(live_server.url, token.key)
