import logging
import os
import shutil

import pytest
from django.db import connections
from rest_framework.authtoken.models import Token

from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.harness import HttpApi, start_web, start_worker
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


@pytest.fixture
def chromium_path() -> str:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM}: install Debian's chromium (`apt-get install chromium`; "
                    ".ci/run does) or set CHROMIUM_PATH")
    return CHROMIUM


@pytest.fixture
def browser(chromium_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM reads between
    # browser steps are ordinary blocking calls, which Django would otherwise refuse there.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
        # The test's ORM reads ran in Playwright's context, where Django keeps a connection of their
        # own: closed here, or the test database could not be dropped at the end of the run.
        connections.close_all()


@pytest.fixture
def web(transactional_db, tmp_path):
    """The web server as `make run` serves it (ASGI): the console's live updates need its event streams.
    It serves the admin's static files from STATIC_ROOT, as after `make run`'s collectstatic."""
    from django.core.management import call_command

    call_command("collectstatic", interactive=False, verbosity=0)
    server = start_web(tmp_path / "web.log")
    yield server
    server.stop()
