"""With four slots, jobs on different models run at the same time; each model stays exclusive."""

import pytest

from coordination.models import Job
from tests.e2e.harness import start_worker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MODELS = [("flux-dev", "image"), ("motion-2.0-fast", "video"), ("minimax/video-01", "video"),
          ("nano-banana-pro-leonardo", "image")]


def test_four_slots_run_different_models_side_by_side(http, settings, tmp_path):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 4
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_MAX_ACTIVE_JOBS="4")
    try:
        jobs = []
        for model, media in MODELS:
            status, job = http.post("/jobs", {"prompt": f"on {model}", "model": model, "job_type": media,
                                              "params": {"simulate_seconds": 1.0}})
            assert status == 201 and job["status"] == "running", job
            jobs.append(job)
        status, second_flux = http.post("/jobs", {"prompt": "again", "model": "flux-dev", "job_type": "image",
                                                  "params": {"simulate_seconds": 0.1}})
        assert second_flux["status"] == "pending"
        assert second_flux["conflict_reason"] == f"Model conflict: flux-dev in use by normal job {jobs[0]['job_id']}"
        status, queue = http.get("/queue/status")
        assert len(queue["active_jobs"]) == 4

        ids = [job["job_id"] for job in jobs] + [second_flux["job_id"]]
        wait_until(lambda: Job.objects.filter(job_id__in=ids, status="completed").count() == 5, timeout=30,
                   message="all five jobs to complete")
    finally:
        worker.stop()

    runs = {str(job.job_id): job for job in Job.objects.filter(job_id__in=ids)}
    first_four = [runs[job["job_id"]] for job in jobs]
    # The four ran at the same time: each started before any of them completed.
    assert max(job.started_at for job in first_four) < min(job.completed_at for job in first_four)
    # flux-dev stayed exclusive: its second job started only after the first ended.
    assert runs[second_flux["job_id"]].started_at >= first_four[0].completed_at
