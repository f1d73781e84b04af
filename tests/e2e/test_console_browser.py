"""The queue console in a real browser (headless Debian Chromium driven by Playwright), while a real
worker runs jobs and others wait: log in, find the console from the admin index, see the slots, the
lines with why each job waits, and the timeline over two ranges; read the jobs list; and repair the
queue with "Clear stale queue" through its confirmation page. At a laptop's 1,280 px, neither the
console nor the jobs list may scroll sideways.

Screenshots for a person to look at: test-artifacts/queue-console.png, queue-console-10min.png and
jobs-list.png.
"""

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token

from coordination.models import Job
from tests.e2e.browser import assert_no_sideways_scroll, logged_in, operator, screenshot, short
from tests.e2e.harness import HttpApi, start_worker, wait_until
from tests.factories import UserFactory
from tests.guide_sql import CLEAR_STALE

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_watches_the_queue_and_clears_it_in_a_browser(browser, web, tmp_path):
    operator()
    http = HttpApi(web.url, Token.objects.create(user=UserFactory()).key)
    worker = start_worker(tmp_path / "qcluster.log")
    try:
        _, done = http.post("/jobs", {"prompt": "a quick one", "model": "flux-dev", "params": {"simulate_seconds": 0.2}})
        wait_until(lambda: Job.objects.get(pk=done["job_id"]).status == Job.Status.COMPLETED, timeout=30,
                   message="the first job to complete")
        _, running = http.post("/jobs", {"prompt": "a long one", "model": "flux-dev", "params": {"simulate_seconds": 60}})
        _, waiting = http.post("/jobs", {"prompt": "next", "model": "flux-dev", "params": {"simulate_seconds": 0.2}})
        _, other = http.post("/jobs", {"prompt": "a video", "model": "motion-2.0-fast", "params": {"simulate_seconds": 0.2}})
        _, workflow = http.post("/workflows/knight-style-img-to-video/execute",
                                {"input_image": "https://example.com/user.jpg", "params": {"simulate_seconds": 0.2}})
        _, last = http.post("/jobs", {"prompt": "another video", "model": "minimax/video-01", "params": {"simulate_seconds": 0.2}})
        assert (running["status"], waiting["status"], other["status"]) == ("running", "pending", "pending")
        assert (workflow["status"], last["status"]) == ("pending", "pending")
        wait_until(lambda: Job.objects.get(pk=running["job_id"]).heartbeat_at, timeout=30,
                   message="the worker to run the long job")

        page = logged_in(browser, web)
        page.click("text=Queue console")
        page.wait_for_selector("#timeline")

        # Its own place in the sidebar, not "Slots" (its pages live under the slots' URL).
        assert page.inner_text("#nav-sidebar .current-model").strip() == "Queue console"
        assert "Serialized" in page.inner_text("#mode")
        slots = page.inner_text("#slots")
        assert short(running["job_id"]) in slots and running["job_id"] not in slots and "flux-dev" in slots
        # Why each job waits, in its line, naming the job it waits for (short id, linking to it).
        lines = page.locator("#lines")
        row = lines.locator(f'tr[data-job="{waiting["job_id"]}"]').first
        assert f"flux-dev in use by normal job {short(running['job_id'])}" in row.inner_text()
        assert row.locator(f'a[title="{running["job_id"]}"]').count() == 1
        assert "Serialized mode: one job at a time" in lines.locator(f'tr[data-job="{other["job_id"]}"]').inner_text()
        assert workflow["job_id"] not in lines.inner_text()  # ids are shown short

        timeline = page.locator("#timeline")
        assert timeline.get_attribute("data-range") == "1h"
        assert timeline.locator(f'rect.running[data-job="{done["job_id"]}"]').count() == 1
        assert timeline.locator(f'rect.running[data-job="{running["job_id"]}"]').count() == 1
        assert timeline.locator(f'rect.waiting[data-job="{waiting["job_id"]}"]').count() == 1
        assert timeline.locator(f'rect.running[data-job="{waiting["job_id"]}"]').count() == 0
        tooltip = timeline.locator(f'rect.running[data-job="{done["job_id"]}"] title').text_content()
        assert done["job_id"] in tooltip and "flux-dev" in tooltip and "→" in tooltip and "completed" in tooltip
        shots = [screenshot(page, "queue-console")]
        assert_no_sideways_scroll(page, "the console")

        # Live: a job submitted now appears in its line without the page reloading (a reload would
        # forget the mark set here), well before the 5 s reload that is only the fallback.
        page.wait_for_function("document.getElementById('live-status').textContent === 'Live'", timeout=5000)
        page.evaluate("window.stillTheSamePage = true")
        _, arrived = http.post("/jobs", {"prompt": "just now", "model": "flux-dev", "params": {"simulate_seconds": 0.2}})
        page.wait_for_selector(f'#lines tr[data-job="{arrived["job_id"]}"]', timeout=4000)
        assert page.evaluate("window.stillTheSamePage") is True

        page.click("#timeline-ranges >> text=10 min")
        page.wait_for_selector('#timeline[data-range="10m"]')
        assert page.inner_text("#timeline-heading") == "The last 10 minutes"
        assert page.locator(f'#timeline rect.running[data-job="{running["job_id"]}"]').count() == 1
        shots.append(screenshot(page, "queue-console-10min"))
        assert_no_sideways_scroll(page, "the console over 10 minutes")

        page.click("#nav-sidebar >> text=Jobs")
        page.wait_for_selector("#result_list")
        shots.append(screenshot(page, "jobs-list"))
        assert page.inner_text("#nav-sidebar .current-model").strip() == "Jobs"
        waiting_row = page.locator("#result_list tr", has=page.locator(f'span[title="{waiting["job_id"]}"]'))
        assert short(waiting["job_id"]) in waiting_row.inner_text()
        assert waiting_row.locator("td.field-place").inner_text().strip() == "1"
        assert f"in use by normal job {short(running['job_id'])}" in waiting_row.locator("td.field-reason").inner_text()
        assert_no_sideways_scroll(page, "the jobs list")
        cut_off = page.evaluate("(e => e.scrollWidth - e.clientWidth)(document.querySelector('#changelist-form .results'))")
        assert cut_off <= 0, f"the jobs list's table is {cut_off} px wider than its box"

        # The guide's "clear stale queue" SQL, run by hand, leaves the waiting jobs pointing at nothing.
        page.goto(f"{web.url}/admin/")
        page.click("text=Queue console")
        page.wait_for_selector("#timeline")
        with connection.cursor() as cursor:
            cursor.execute(CLEAR_STALE)
        page.click("#actions >> text=Clear stale queue")
        preview = page.inner_text("#preview")
        assert waiting["job_id"] in preview and other["job_id"] in preview and "no blocker recorded" in preview
        assert Job.objects.get(pk=waiting["job_id"]).blocked_by_job_id is None  # the preview changed nothing
        page.click("text=Yes, I'm sure")

        page.wait_for_selector("#timeline")  # back on the console
        assert "Repaired 5 waiting job(s); started 0." in page.inner_text("ul.messagelist")  # the four, and the one that arrived live
        page.close()
        assert str(Job.objects.get(pk=waiting["job_id"]).blocked_by_job_id) == running["job_id"]
        assert str(Job.objects.get(pk=other["job_id"]).blocked_by_job_id) == waiting["job_id"]

        # Cancelled, the long job stops within a second; the repaired line then runs to its end.
        assert http.post(f"/jobs/{running['job_id']}/cancel", {})[0] == 202
        ids = [running["job_id"], waiting["job_id"], other["job_id"], workflow["job_id"], last["job_id"], arrived["job_id"]]
        wait_until(lambda: list(Job.objects.filter(pk__in=ids).order_by("created_at").values_list("status", flat=True))
                   == ["cancelled", "completed", "completed", "completed", "completed", "completed"], timeout=30,
                   message="the line to run to its end")
    finally:
        worker.stop()

    for path in shots:
        assert path.stat().st_size > 10_000, path
