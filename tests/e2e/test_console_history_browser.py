"""The console's history at a glance and the catalog's models list in a real browser (headless Debian
Chromium driven by Playwright), after a real worker ran jobs: each model's row has its charts, each
hour a bar that says its numbers; the timeline's lanes can be pointed at; the models list shows
enabled, paused, line policy and line limit. At a laptop's 1,280 px, neither page scrolls sideways.

Screenshots for a person to look at: test-artifacts/console-history.png and catalog-models.png.
"""

import pytest
from rest_framework.authtoken.models import Token

from coordination.models import CatalogModel, Job
from tests.e2e.browser import WIDTH, assert_no_sideways_scroll, logged_in, operator, screenshot
from tests.e2e.harness import HttpApi, start_worker, wait_until
from tests.factories import UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_reads_how_long_jobs_wait_on_each_model_and_the_whole_catalog(browser, web, tmp_path):
    operator()
    http = HttpApi(web.url, Token.objects.create(user=UserFactory()).key)
    worker = start_worker(tmp_path / "qcluster.log")
    try:
        quick = {"simulate_seconds": 0.3}
        submitted = [
            http.post("/jobs", {"prompt": f"image {n}", "model": "flux-dev", "params": quick})[1] for n in range(3)
        ] + [
            http.post("/jobs", {"prompt": "a video", "model": "motion-2.0-fast", "params": quick})[1],
            http.post("/jobs", {"prompt": "it fails", "model": "flux-dev",
                                "params": {"simulate_seconds": 0.3, "simulate_fail": True}})[1],
        ]
        ids = [job["job_id"] for job in submitted]
        wait_until(lambda: not Job.objects.filter(pk__in=ids).exclude(status__in=Job.FINISHED).exists(), timeout=60,
                   message="the jobs to finish")
    finally:
        worker.stop()
    assert Job.objects.filter(pk__in=ids, status=Job.Status.FAILED).count() == 1

    page = logged_in(browser, web)
    page.click("text=Queue console")
    page.wait_for_selector("#history")

    rows = page.locator("#history tbody tr")
    assert rows.count() == CatalogModel.objects.count()
    flux = page.locator('#history tr[data-model="flux-dev"]')
    assert flux.locator("svg").count() == 2
    assert flux.locator("svg g.hour").count() == 48
    assert flux.locator("rect.completed").count() >= 1 and flux.locator("rect.failed").count() == 1
    this_hour = flux.locator('svg[data-chart="finished"] g.hour').last.locator("title").text_content()
    assert this_hour.endswith("–now: 3 completed, 1 failed"), this_hour
    # How long jobs on each model wait, from the console alone: p50 and p95 beside the charts.
    assert flux.locator("td.wait-p50").inner_text() not in ("", "—")
    assert flux.locator("td.wait-p95").inner_text() not in ("", "—")
    assert page.locator('#history tr[data-model="minimax/video-01"] td.wait-p50').inner_text() == "—"
    # Each hour can be pointed at: hovering it anywhere in its column finds its group.
    box = flux.locator('svg[data-chart="finished"] g.hour rect').first.bounding_box()
    assert box["width"] >= 8 and box["height"] >= 30
    # The timeline's lanes are tall enough to point at a bar in them.
    lane_gap = page.evaluate("""(() => {
        const labels = [...document.querySelectorAll('#timeline .lane-label')].map(e => e.getBoundingClientRect().top);
        return labels[1] - labels[0];
    })()""")
    assert lane_gap >= 22, f"a lane is {lane_gap} px high"
    page.locator("#history").scroll_into_view_if_needed()
    shots = [screenshot(page, "console-history")]
    assert_no_sideways_scroll(page, "the console with its history")

    page.goto(f"{web.url}/admin/coordination/catalogmodel/")
    page.wait_for_selector("#result_list")
    headers = [text.strip() for text in page.locator("#result_list thead th").all_inner_texts()]
    for header in ("ENABLED", "PAUSED", "LINE POLICY", "LINE LIMIT"):
        assert header in [text.upper() for text in headers], headers
    shown = page.locator("#changelist-form .results").bounding_box()
    for column in ("enabled", "paused", "line_policy_short", "line_limit"):
        cell = page.locator(f"#result_list tbody td.field-{column}").first.bounding_box()
        right = cell["x"] + cell["width"]
        assert right <= min(shown["x"] + shown["width"], WIDTH), f"the {column} column ends at {right} px, out of sight"
    shots.append(screenshot(page, "catalog-models"))
    assert_no_sideways_scroll(page, "the catalog's models list")
    cut_off = page.evaluate("(e => e.scrollWidth - e.clientWidth)(document.querySelector('#changelist-form .results'))")
    assert cut_off <= 0, f"the models list's table is {cut_off} px wider than its box"
    page.close()

    for path in shots:
        assert path.stat().st_size > 10_000, path
