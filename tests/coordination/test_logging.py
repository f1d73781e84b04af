"""How the coordinator's lines look where an operator reads them (the console, worker.log)."""

import logging
import re

import pytest

from coordination.tasks import run_job
from tests.helpers import submit

pytestmark = pytest.mark.django_db


def test_coordinator_lines_carry_the_time_then_the_guides_words_exactly(user):
    # Its own handlers, from settings.LOGGING (pytest's capture may add one of its own).
    handlers = [h for h in logging.getLogger("job_coordinator").handlers if (h.name or "").startswith("coordinator")]
    assert handlers, "job_coordinator has its own handler (it does not propagate)"
    record = logging.makeLogRecord(
        {"name": "job_coordinator", "levelno": logging.INFO, "levelname": "INFO",
         "msg": "[COORDINATOR] No active job - %s can start immediately", "args": ("4c1e",)}
    )

    for handler in handlers:
        line = handler.format(record)
        # The time as every other line has it (logging's asctime), then the guide's line untouched.
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[COORDINATOR\] No active job - 4c1e can start immediately", line), line


def test_a_handed_over_job_gets_a_line_saying_a_worker_is_processing_it(caplog, user, runner_calls):
    first = submit(user, params={"simulate_seconds": 0})
    second = submit(user, params={"simulate_seconds": 0})
    caplog.set_level(logging.INFO, logger="coordination.tasks")

    run_job(str(first.job_id), 1)

    lines = [record.getMessage() for record in caplog.records if record.name == "coordination.tasks"]
    assert any(line.endswith(f"processing job {first.job_id} attempt 1") for line in lines), lines
    assert any(
        line.endswith(f"processing job {second.job_id} attempt 1 (handed over when job {first.job_id} ended)")
        for line in lines
    ), lines
