"""Retry from the queue console in a real browser (issue 28, item 2): a job fails on a real worker,
the console's Failed section lists it with its error, the operator retries it through the retry's
preview, and the new job exists, linked to the old one, and runs. At 1,280 px the console does not
scroll sideways. Screenshot for a person to look at: test-artifacts/console-failed.png."""

import pytest
from rest_framework.authtoken.models import Token

from coordination.models import Job, JobQueueLog
from tests.e2e.browser import assert_no_sideways_scroll, logged_in, operator, screenshot, short
from tests.e2e.harness import HttpApi, start_worker, wait_until
from tests.factories import UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_retries_a_failed_job_from_the_consoles_failed_section(browser, web, tmp_path):
    operator()
    http = HttpApi(web.url, Token.objects.create(user=UserFactory()).key)
    worker = start_worker(tmp_path / "qcluster.log")
    try:
        _, doomed = http.post("/jobs", {"prompt": "a castle that will not come", "model": "flux-dev",
                                        "params": {"simulate_seconds": 0.2, "simulate_fail": True}})
        wait_until(lambda: Job.objects.get(pk=doomed["job_id"]).status == Job.Status.FAILED, timeout=30,
                   message="the job to fail on the worker")
        error = Job.objects.get(pk=doomed["job_id"]).error
        assert error

        page = logged_in(browser, web)
        page.click("text=Queue console")
        page.wait_for_selector("#failed")
        row = page.locator(f'#failed tr[data-failed="{doomed["job_id"]}"]')
        assert row.count() == 1
        card = page.locator("#failed .console-card", has=page.locator(f'tr[data-failed="{doomed["job_id"]}"]'))
        assert card.locator("h3").inner_text() == "flux-dev"
        assert short(doomed["job_id"]) in row.inner_text() and error[:40] in row.inner_text()
        assert row.locator(f'a[title="{doomed["job_id"]}"]').count() == 1  # its short id links to its page
        screenshot(page, "console-failed")
        assert_no_sideways_scroll(page, "the console with its Failed section")

        row.locator("a.retry").click()
        page.wait_for_selector("#preview")
        assert doomed["job_id"] in page.inner_text("#preview") and "a new job with its request" in page.inner_text("#preview")
        assert not Job.objects.filter(retry_of=doomed["job_id"]).exists()  # the preview changed nothing
        assert_no_sideways_scroll(page, "the retry's preview")
        page.click("text=Yes, I'm sure")

        page.wait_for_selector("#failed")  # back on the console
        new = Job.objects.get(retry_of=doomed["job_id"])
        assert f"Retried 1 job(s): new job(s) {new.job_id}." in page.inner_text("ul.messagelist")
        assert (new.prompt, new.model, new.params) == (
            "a castle that will not come", "flux-dev", {"simulate_seconds": 0.2, "simulate_fail": True})
        assert JobQueueLog.objects.get(event_type="resubmitted").details == {
            "new_job": str(new.job_id), "actor": "admin:operator"}
        page.close()
        # It ran as any new job does (and failed again, as its request says).
        wait_until(lambda: Job.objects.get(pk=new.job_id).status == Job.Status.FAILED, timeout=30,
                   message="the retry to run on the worker")
        assert http.get(f"/jobs/{doomed['job_id']}")[1]["retried_as"] == [str(new.job_id)]
    finally:
        worker.stop()
