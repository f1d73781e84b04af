"""The usage guide's Tests 1-3, done as a user does them: HTTP to a live server, a real qcluster."""

import pytest

from coordination.models import Job, JobQueueLog
from tests.e2e.harness import wait_until
from tests.helpers import assert_in_order

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def finished(job_id) -> Job | None:
    job = Job.objects.get(pk=job_id)
    return job if job.status in Job.FINISHED else None


def events(job_id) -> list[str]:
    return list(JobQueueLog.objects.filter(job_id=job_id).order_by("id").values_list("event_type", flat=True))


def test_1_normal_job_coordination(http, worker, web_log):
    status, job1 = http.post(
        "/jobs",
        {"prompt": "A knight riding a horse", "model": "motion-2.0-fast", "job_type": "video",
         "params": {"simulate_seconds": 1.5}},
    )
    assert status == 201 and job1["status"] == "running"
    status, job2 = http.post(
        "/jobs",
        {"prompt": "A dragon flying", "model": "motion-2.0-fast", "job_type": "video",
         "params": {"simulate_seconds": 0.2}},
    )
    assert status == 201 and job2["status"] == "pending"
    id1, id2 = job1["job_id"], job2["job_id"]
    assert job2["blocked_by_job_id"] == id1
    assert job2["conflict_reason"] == f"Model conflict: motion-2.0-fast in use by normal job {id1}"

    first = wait_until(lambda: finished(id1), timeout=30, message="job 1 to finish")
    second = wait_until(lambda: finished(id2), timeout=30, message="job 2 to finish")
    assert first.status == second.status == Job.Status.COMPLETED
    assert second.started_at >= first.completed_at, "job 2 ran while job 1 still held the model"
    assert second.result["output"] == f"simulated://motion-2.0-fast/{id2}"

    assert_in_order(web_log, [
        f"[COORDINATOR] Checking if job {id1} can start - Models: ['motion-2.0-fast']",
        f"[COORDINATOR] No active job - {id1} can start immediately",
        f"[COORDINATOR] Set active job: {id1} (normal) - Models: ['motion-2.0-fast']",
        f"[COORDINATOR] Checking if job {id2} can start - Models: ['motion-2.0-fast']",
        "[COORDINATOR] Model conflict detected: {'motion-2.0-fast'}",
        f"[COORDINATOR] Job {id2} blocked: Model conflict: motion-2.0-fast in use by normal job {id1}",
        f"[COORDINATOR] Marked job {id2} as queued (blocked by {id1})",
    ])
    assert_in_order(worker.coordinator_lines(), [
        f"[COORDINATOR] Job {id1} completed, checking for next queued job...",
        "[COORDINATOR] Found 1 queued job(s), checking for next eligible job...",
        f"[COORDINATOR] Starting next queued job: {id2}",
        f"[COORDINATOR] Set active job: {id2} (normal) - Models: ['motion-2.0-fast']",
    ])
    assert events(id1) == ["submitted", "started", "claimed", "completed"]
    assert events(id2) == ["submitted", "blocked", "started", "claimed", "completed"]
    blocked = JobQueueLog.objects.get(job_id=id2, event_type="blocked")
    assert blocked.job_type == "normal" and blocked.conflict_reason == job2["conflict_reason"]


def test_2_workflow_vs_normal_job(http, worker, web_log):
    status, workflow = http.post(
        "/workflows/knight-style-img-to-video/execute",
        {"input_image": "https://example.com/user.jpg", "params": {"simulate_seconds": 0.6}},
    )
    assert status == 201 and workflow["status"] == "running"
    assert workflow["kind"] == "workflow"
    assert workflow["required_models"] == ["nano-banana-pro-leonardo", "motion-2.0-fast"]
    status, normal = http.post(
        "/jobs",
        {"prompt": "A cinematic video", "model": "motion-2.0-fast", "job_type": "video",
         "params": {"simulate_seconds": 0.2}},
    )
    wid, nid = workflow["job_id"], normal["job_id"]
    assert status == 201 and normal["status"] == "pending"
    assert normal["blocked_by_job_id"] == wid
    assert normal["conflict_reason"] == f"Model conflict: motion-2.0-fast in use by workflow job {wid}"

    done_workflow = wait_until(lambda: finished(wid), timeout=30, message="the workflow to finish")
    done_normal = wait_until(lambda: finished(nid), timeout=30, message="the normal job to finish")
    assert done_workflow.status == done_normal.status == Job.Status.COMPLETED
    assert done_normal.started_at >= done_workflow.completed_at

    status, body = http.get(f"/jobs/{wid}")
    assert status == 200
    assert body["workflow_id"] == "knight-style-img-to-video"
    assert body["current_step"] == 2 and body["current_step_model"] == "motion-2.0-fast"
    steps = body["result"]["steps"]
    assert [step["model"] for step in steps] == ["nano-banana-pro-leonardo", "motion-2.0-fast"]
    # Step 2 got step 1's output: the coordinator's kept copy of it (docs/outputs.md, a workflow's steps).
    first_file = body["result"]["files"][0]
    assert first_file["source_url"] == steps[0]["output"]["output"] and first_file["state"] == "stored"
    assert steps[1]["output"]["inputs"]["input"].startswith(f"/jobs/{wid}/files/0?sig="), "step 2 got step 1's output"

    assert_in_order(web_log, [
        f"[COORDINATOR] Set active job: {wid} (workflow) - Models: ['nano-banana-pro-leonardo', 'motion-2.0-fast']",
        f"[COORDINATOR] Job {nid} blocked: Model conflict: motion-2.0-fast in use by workflow job {wid}",
        f"[COORDINATOR] Marked job {nid} as queued (blocked by {wid})",
    ])
    assert_in_order(worker.coordinator_lines(), [
        f"[COORDINATOR] Job {wid} completed, checking for next queued job...",
        f"[COORDINATOR] Starting next queued job: {nid}",
    ])
    assert events(wid) == ["submitted", "started", "claimed", "step_started", "step_started", "completed"]


def test_3_serialized_execution(http, worker, web_log):
    status, job1 = http.post(
        "/jobs", {"prompt": "Generate image", "model": "flux-dev", "job_type": "image",
                  "params": {"simulate_seconds": 1.0}},
    )
    assert status == 201 and job1["status"] == "running"
    status, job2 = http.post(
        "/jobs", {"prompt": "Generate video", "model": "minimax/video-01", "job_type": "video",
                  "params": {"simulate_seconds": 0.2}},
    )
    assert status == 201 and job2["status"] == "pending", "a different model still waits: one job at a time"
    id1, id2 = job1["job_id"], job2["job_id"]
    assert job2["blocked_by_job_id"] == id1
    assert "one job at a time" in job2["conflict_reason"] and id1 in job2["conflict_reason"]

    status, queue = http.get("/queue/status")
    assert status == 200
    assert queue["active_job"] == {"job_id": id1, "job_type": "normal", "models": ["flux-dev"]}
    assert queue["queue_length"] == 1 and queue["queued_jobs"][0]["job_id"] == id2

    first = wait_until(lambda: finished(id1), timeout=30, message="job 1 to finish")
    second = wait_until(lambda: finished(id2), timeout=30, message="job 2 to finish")
    assert second.started_at >= first.completed_at, "FIFO, one job at a time"
    assert_in_order(worker.coordinator_lines(), [
        f"[COORDINATOR] Job {id1} completed, checking for next queued job...",
        f"[COORDINATOR] Starting next queued job: {id2}",
    ])
