import os
import tempfile

import pytest

# The files jobs produce are kept under MEDIA_ROOT (coordination/outputs): one folder for this test
# session, shared by the qclusters and web servers its tests start (they inherit the environment).
os.environ.setdefault("MEDIA_ROOT", tempfile.mkdtemp(prefix="jobqueue-media-"))

from workflows.seed import seed_catalog_now
from tests.factories import UserFactory
from tests.helpers import coordinator_log, fail_audit, runner_calls  # noqa: F401 (fixtures)


class _Flushed:
    """Whether a transactional test has run in this session: its tables are flushed after it, the
    data migrations' rows with them."""

    seen = False


@pytest.fixture(autouse=True)
def _media_root(settings):
    settings.MEDIA_ROOT = os.environ["MEDIA_ROOT"]


@pytest.fixture(autouse=True)
def _catalog(request):
    """Every database test starts with the usage guide's catalog and workflow.

    The data migration seeds them once, but transactional tests flush every table afterwards.
    Tests marked `migration_data` check that migration, so they get only what it wrote: no seeding
    here. They must not be transactional, and they run before any transactional test has flushed
    the tables (pytest-django runs the non-transactional tests first).
    """
    marker = request.node.get_closest_marker("django_db")
    transactional = bool(marker and marker.kwargs.get("transaction")) or bool(
        {"transactional_db", "live_server"} & set(request.fixturenames)
    )
    if request.node.get_closest_marker("migration_data"):
        if marker is None or transactional:
            pytest.fail("a migration_data test needs @pytest.mark.django_db without transaction=True")
        if _Flushed.seen:
            pytest.fail("a migration_data test ran after a transactional test flushed the migrated rows")
        request.getfixturevalue("db")
        return
    if transactional:
        _Flushed.seen = True
    if marker is None:
        return
    request.getfixturevalue("transactional_db" if transactional else "db")
    seed_catalog_now()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The default hasher takes ~0.2 s a user by design; tests need no such cost.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def staff_user(db):
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def api(user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def staff_api(staff_user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(staff_user)
    return client


def pytest_unconfigure(config):
    """The embedded PostgreSQL stops with the test session that started it (none was up, no DATABASE_URL)."""
    from jobqueue_site import embedded_postgres

    if embedded_postgres.started_here:
        embedded_postgres.stop()
