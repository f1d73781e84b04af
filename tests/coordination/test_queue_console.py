"""The operators' queue console: slots, lines, metrics, the last hour as an SVG timeline."""

import re

import pytest
from django.urls import reverse

from coordination.services import job_claim, job_complete
from tests.helpers import submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))
    return client


def test_the_console_shows_slots_lines_timeline_and_events(staff_client, user):
    done = submit(user, model="flux-dev")
    job_claim(job_id=done.job_id, attempt=1)
    job_complete(job_id=done.job_id, attempt=1)  # ran, and started the next one
    running = submit(user)
    waiting = submit(user)

    response = staff_client.get(reverse("admin:queue-console"))

    assert response.status_code == 200
    page = response.content.decode()
    slots = page[page.index('id="slots"'):page.index('id="lines"')]
    assert str(running.job_id) in slots
    lines = page[page.index('id="lines"'):page.index('id="timeline"')]
    assert "motion-2.0-fast" in lines and str(waiting.job_id) in lines
    start = page.index('id="timeline"')
    timeline = page[start:page.index("</svg>", start)]
    runs = set(re.findall(r'class="running [a-z]+" data-job="([0-9a-f-]+)"', timeline))
    waits = set(re.findall(r'class="waiting [a-z]+" data-job="([0-9a-f-]+)"', timeline))
    assert {str(done.job_id), str(running.job_id)} <= runs
    assert str(waiting.job_id) in waits and str(waiting.job_id) not in runs
    assert 'http-equiv="refresh"' in page
    assert "blocked" in page[page.index('id="events"'):]


def test_the_admin_index_links_to_the_console(staff_client):
    page = staff_client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:queue-console") in page


def test_only_staff_see_the_console(client, user):
    client.force_login(type(user).objects.get(pk=user.pk))
    response = client.get(reverse("admin:queue-console"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_failed_runs_are_drawn_apart_and_events_say_who_and_why(staff_client, user):
    from coordination.services import job_fail, model_pause

    failed = submit(user, model="flux-dev")
    job_fail(job_id=failed.job_id, attempt=1, error="provider said no")
    model_pause(name="flux-dev", paused=True, actor="admin:ops")

    page = staff_client.get(reverse("admin:queue-console")).content.decode()

    assert f'class="running failed" data-job="{failed.job_id}"' in page
    events = page[page.index('id="events"'):]
    assert "provider said no" in events and "by admin:ops · model flux-dev" in events
