import pytest
from django.db import connection

from workflows.seed import seed_catalog_now
from tests.factories import UserFactory
from tests.helpers import coordinator_log, fail_audit, runner_calls  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def _catalog(request):
    """Every database test starts with the usage guide's catalog and workflow.

    The data migration seeds them once, but transactional tests flush every table afterwards.
    """
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    request.getfixturevalue("transactional_db" if marker.kwargs.get("transaction") else "db")
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




def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def pytest_collection_modifyitems(config, items):
    """Tests marked `postgres` need PostgreSQL's row locks or its SQL: skip them, saying so, on SQLite."""
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: run with DATABASE_URL=postgres://root@127.0.0.1:5432/root")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)
