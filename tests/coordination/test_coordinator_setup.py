"""`manage.py coordinator_setup`, which `make run` runs before it serves: it says how many jobs may run
at once and how to change that."""

from io import StringIO

import pytest
from django.core.management import call_command

from coordination.models import JobQueueState

pytestmark = pytest.mark.django_db


def setup_says(settings, slots: int) -> list[str]:
    settings.COORDINATOR_MAX_ACTIVE_JOBS = slots
    out = StringIO()
    call_command("coordinator_setup", stdout=out)
    return out.getvalue().splitlines()


def test_in_serialized_mode_it_says_so_and_how_to_run_jobs_side_by_side(settings):
    said = setup_says(settings, 1)

    assert said[-1].startswith("Serialized mode (COORDINATOR_MAX_ACTIVE_JOBS=1): one job at a time over all models")
    assert "COORDINATOR_MAX_ACTIVE_JOBS=4 make run" in said[-1]
    assert JobQueueState.objects.count() == 1


def test_with_more_slots_it_says_how_many_and_how_to_go_back(settings):
    said = setup_says(settings, 4)

    assert said[-1].startswith("4 slots (COORDINATOR_MAX_ACTIVE_JOBS=4): up to 4 jobs at once")
    assert "COORDINATOR_MAX_ACTIVE_JOBS=1 make run runs serialized" in said[-1]
    assert "Serialized mode" not in "\n".join(said)
    assert JobQueueState.objects.count() == 4
