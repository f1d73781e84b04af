"""A job's page in a real browser (headless Debian Chromium driven by Playwright), while a real worker
runs the job it waits for: an operator opens a waiting job from the jobs list, reads why it waits (a
link to the job it waits for), its place in line and its timeline, and follows the link. At a
laptop's 1,280 px the page may not scroll sideways.

Screenshot for a person to look at: test-artifacts/job-page.png.
"""

import pytest
from rest_framework.authtoken.models import Token

from coordination.models import Job
from tests.e2e.browser import assert_no_sideways_scroll, logged_in, operator, screenshot, short
from tests.e2e.harness import HttpApi, start_worker, wait_until
from tests.factories import UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_reads_a_waiting_jobs_page_in_a_browser(browser, web, tmp_path):
    operator()
    http = HttpApi(web.url, Token.objects.create(user=UserFactory()).key)
    worker = start_worker(tmp_path / "qcluster.log")
    try:
        _, running = http.post("/jobs", {"prompt": "a long one", "model": "flux-dev", "params": {"simulate_seconds": 60}})
        _, waiting = http.post("/jobs", {"prompt": "next", "model": "flux-dev", "params": {"simulate_seconds": 0.2}})
        assert (running["status"], waiting["status"]) == ("running", "pending")
        wait_until(lambda: Job.objects.get(pk=running["job_id"]).heartbeat_at, timeout=30,
                   message="the worker to run the long job")
        _, answer = http.get(f"/jobs/{waiting['job_id']}")

        page = logged_in(browser, web)
        page.click('#content-main a:text-is("Jobs")')  # from the admin index
        page.wait_for_selector("#result_list")
        page.click(f'#result_list a:has(span[title="{waiting["job_id"]}"])')
        page.wait_for_selector("#job-page")

        assert page.inner_text("#job-status") == "pending"
        reason = page.locator("#job-reason")
        assert f"flux-dev in use by normal job {short(running['job_id'])}" in reason.inner_text()
        assert page.inner_text("#job-place") == str(answer["queue_position"]) == "1"
        moments = page.locator("#timeline li")
        assert [moments.nth(n).locator(".what").inner_text() for n in range(moments.count())] == ["submitted", "blocked"]
        assert short(running["job_id"]) in moments.nth(1).inner_text()  # what it was blocked by
        assert page.locator("#job-actions >> text=Cancel").count() == 1
        assert page.locator("#job-actions >> text=Priority").count() == 1
        assert_no_sideways_scroll(page, "the job page")
        shot = screenshot(page, "job-page")

        reason.locator(f'a[title="{running["job_id"]}"]').click()  # to the job it waits for
        page.wait_for_selector(f'#job-page[data-job="{running["job_id"]}"]')
        assert page.inner_text("#job-status") == "running" and page.inner_text("#job-slot") == "slot 1"
        assert_no_sideways_scroll(page, "a running job's page")
        page.close()
    finally:
        worker.stop()

    assert shot.stat().st_size > 10_000, shot
