"""The queue console in a real browser (headless Debian Chromium driven by Playwright), while a real
worker runs jobs and others wait: log in, find the console from the admin index, see the slots, the
lines and the timeline, and repair the queue with "Clear stale queue" through its confirmation page.

A screenshot of the console is saved to test-artifacts/queue-console.png for a person to look at.
"""

import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from coordination.models import Job
from tests.e2e.harness import start_worker, wait_until
from tests.factories import UserFactory
from tests.guide_sql import CLEAR_STALE

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Headless, no sandbox (containers have no user namespaces), nothing fetched from the network.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
]
SCREENSHOT = Path(settings.BASE_DIR) / "test-artifacts" / "queue-console.png"
PASSWORD = "console-operator-pw"


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


def test_an_operator_watches_the_queue_and_clears_it_in_a_browser(browser, http, live_server, tmp_path):
    operator = UserFactory(is_staff=True, is_superuser=True, username="operator")
    operator.set_password(PASSWORD)
    operator.save()
    worker = start_worker(tmp_path / "qcluster.log")
    try:
        _, done = http.post("/jobs", {"prompt": "a quick one", "model": "flux-dev", "params": {"simulate_seconds": 0.2}})
        wait_until(lambda: Job.objects.get(pk=done["job_id"]).status == Job.Status.COMPLETED, timeout=30,
                   message="the first job to complete")
        _, running = http.post("/jobs", {"prompt": "a long one", "model": "flux-dev", "params": {"simulate_seconds": 60}})
        _, waiting = http.post("/jobs", {"prompt": "next", "model": "flux-dev", "params": {"simulate_seconds": 0.2}})
        _, other = http.post("/jobs", {"prompt": "a video", "model": "motion-2.0-fast", "params": {"simulate_seconds": 0.2}})
        assert (running["status"], waiting["status"], other["status"]) == ("running", "pending", "pending")
        wait_until(lambda: Job.objects.get(pk=running["job_id"]).heartbeat_at, timeout=30,
                   message="the worker to run the long job")

        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.click("text=Queue console")
        page.wait_for_selector("#timeline")

        slots = page.inner_text("#slots")
        assert running["job_id"] in slots and "flux-dev" in slots
        lines = page.inner_text("#lines")
        assert waiting["job_id"] in lines and other["job_id"] in lines
        timeline = page.locator("#timeline")
        assert timeline.locator(f'rect.running[data-job="{done["job_id"]}"]').count() == 1
        assert timeline.locator(f'rect.running[data-job="{running["job_id"]}"]').count() == 1
        assert timeline.locator(f'rect.waiting[data-job="{waiting["job_id"]}"]').count() == 1
        assert timeline.locator(f'rect.running[data-job="{waiting["job_id"]}"]').count() == 0
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # The guide's "clear stale queue" SQL, run by hand, leaves the waiting jobs pointing at nothing.
        with connection.cursor() as cursor:
            cursor.execute(CLEAR_STALE)
        page.click("#actions >> text=Clear stale queue")
        preview = page.inner_text("#preview")
        assert waiting["job_id"] in preview and other["job_id"] in preview and "no blocker recorded" in preview
        assert Job.objects.get(pk=waiting["job_id"]).blocked_by_job_id is None  # the preview changed nothing
        page.click("text=Yes, I'm sure")

        page.wait_for_selector("#timeline")  # back on the console
        assert "Repaired 2 waiting job(s); started 0." in page.inner_text("ul.messagelist")
        page.close()
        assert str(Job.objects.get(pk=waiting["job_id"]).blocked_by_job_id) == running["job_id"]
        assert str(Job.objects.get(pk=other["job_id"]).blocked_by_job_id) == waiting["job_id"]

        # Cancelled, the long job stops within a second; the repaired line then runs to its end.
        assert http.post(f"/jobs/{running['job_id']}/cancel", {})[0] == 202
        ids = [running["job_id"], waiting["job_id"], other["job_id"]]
        wait_until(lambda: list(Job.objects.filter(pk__in=ids).order_by("created_at").values_list("status", flat=True))
                   == ["cancelled", "completed", "completed"], timeout=30, message="the line to run to its end")
    finally:
        worker.stop()

    assert SCREENSHOT.stat().st_size > 10_000
