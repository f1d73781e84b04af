"""The queue console's policies and idle capacity in a real browser (headless Debian Chromium driven by
Playwright), as an operator tries them (issue 28, items 3 and 4): four slots, a fair line with a line
limit and a capacity group in use, a real worker running jobs while others wait. At a laptop's
1,280 px the console says each line's policy, use and limit, shows the group's card, and says what is
free and why it is not used; it changes as the queue does, without a reload.

Screenshot for a person to look at: test-artifacts/console-policies.png.
"""

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from coordination.models import CapacityGroup, CatalogModel, Job
from coordination.services import capacity_group_save, catalog_model_save
from tests.e2e.browser import assert_no_sideways_scroll, logged_in, operator, screenshot, short
from tests.e2e.harness import HttpApi, start_web, start_worker, wait_until
from tests.factories import UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SLOTS = "4"
IMAGE, VIDEO, OTHER_VIDEO, NANO = "flux-dev", "motion-2.0-fast", "minimax/video-01", "nano-banana-pro-leonardo"


def test_an_operator_sees_policies_groups_and_why_free_capacity_waits(browser, settings, tmp_path):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = int(SLOTS)  # this process's own decisions (the catalog's saves)
    video = CatalogModel.objects.get(name=VIDEO)
    video.line_policy, video.max_waiting = CatalogModel.LinePolicy.FAIR, 5
    catalog_model_save(model=video, actor="test")
    capacity_group_save(group=CapacityGroup(name="acme-key", capacity=1),
                        models=list(CatalogModel.objects.filter(name__in=[OTHER_VIDEO, IMAGE])), actor="test")
    operator()
    call_command("collectstatic", interactive=False, verbosity=0)
    web = start_web(tmp_path / "web.log", COORDINATOR_MAX_ACTIVE_JOBS=SLOTS)
    # Stopping at the end hands the long jobs back at once instead of waiting for them.
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_MAX_ACTIVE_JOBS=SLOTS, COORDINATOR_STOP_GRACE="0")
    ann = HttpApi(web.url, Token.objects.create(user=UserFactory()).key)
    bob = HttpApi(web.url, Token.objects.create(user=UserFactory()).key)
    try:
        long = {"params": {"simulate_seconds": 120}}
        _, running = ann.post("/jobs", {"prompt": "a long video", "model": VIDEO, **long})
        _, holder = bob.post("/jobs", {"prompt": "a long one on the key", "model": OTHER_VIDEO, **long})
        _, second = ann.post("/jobs", {"prompt": "ann's next video", "model": VIDEO, **long})
        _, workflow = ann.post("/workflows/knight-style-img-to-video/execute",
                               {"input_image": "https://example.com/user.jpg", **long})
        _, turn = bob.post("/jobs", {"prompt": "bob's video", "model": VIDEO, **long})
        _, image = ann.post("/jobs", {"prompt": "an image on the key", "model": IMAGE, **long})
        assert (running["status"], holder["status"]) == ("running", "running")
        assert {job["status"] for job in (second, workflow, turn, image)} == {"pending"}
        wait_until(lambda: Job.objects.filter(pk__in=[running["job_id"], holder["job_id"]], heartbeat_at__isnull=False).count() == 2,
                   timeout=30, message="the worker to run the two long jobs")

        page = logged_in(browser, web)
        page.click("text=Queue console")
        page.wait_for_selector("#idle")

        # Each line's heading: its policy, its use, its line limit (3 wait of the 5 it may hold).
        facts = page.locator(f'.line-facts[data-model="{VIDEO}"]').inner_text()
        assert facts.startswith("fair") and "running 1 of 1" in facts and "line limit 3 of 5" in facts
        assert page.locator(f'.line-facts[data-model="{IMAGE}"]').inner_text().startswith("FIFO")
        # The group's card: its members, its use and the job holding it (short, linking to its page).
        card = page.locator('[data-group="acme-key"]')
        assert "running 1 of 1" in card.inner_text() and f"members: {IMAGE}, {OTHER_VIDEO}" in card.inner_text()
        assert card.locator(f'a[href$="/job/{holder["job_id"]}/change/"]').inner_text() == short(holder["job_id"])
        # What is free, and why it is not used.
        assert page.locator("#idle li").all_inner_texts() == [
            f"Slots 3 and 4 are free while jobs wait: none of them may start — {VIDEO} is in use by job "
            f"{short(running['job_id'])}; {IMAGE} and {NANO} as said below",
            f"{IMAGE} is free but held: job {short(image['job_id'])} at the head of its line waits for room in "
            "capacity group acme-key (1 of 1 running)",
            f"{NANO} is free but held: workflow {short(workflow['job_id'])} at the head of its line waits for {VIDEO} "
            f"(in use by job {short(running['job_id'])}; job {short(second['job_id'])} goes first in its line)",
        ]
        assert page.locator(f'#idle a[href$="/job/{workflow["job_id"]}/change/"]').count() == 1
        shot = screenshot(page, "console-policies")
        assert_no_sideways_scroll(page, "the console with policies and capacity groups")

        # Live: the group's job ends, the image takes its room, and the console says so without a reload.
        page.wait_for_function("document.getElementById('live-status').textContent === 'Live'", timeout=5000)
        page.evaluate("window.stillTheSamePage = true")
        assert bob.post(f"/jobs/{holder['job_id']}/cancel", {})[0] == 202
        page.wait_for_function(f"!document.getElementById('idle').innerText.includes('{IMAGE} is free')", timeout=15000)
        assert card.locator(f'a[href$="/job/{image["job_id"]}/change/"]').count() == 1
        assert page.evaluate("window.stillTheSamePage") is True
        page.close()
    finally:
        worker.stop()
        web.stop()

    assert shot.stat().st_size > 10_000, shot
