"""A workflow's step files are kept before the next step runs (issue 27): the worker copies step 1's
file into storage, and step 2 gets a signed link to that copy, not the provider's URL."""

import httpx
import pytest
from django.test import Client

from bench.fake_provider import FakeProvider
from bench.fakes.comfyui import FakeComfyUI
from coordination.models import CatalogModel, Job, JobFile
from coordination.outputs.copier import claim, copy_one
from coordination.outputs.links import signature_left
from coordination.runners.simulated import SIMULATED_BYTES, SimulatedRunner
from coordination.tasks import run_job
from tests.helpers import fresh
from workflows.services import workflow_execute

pytestmark = pytest.mark.django_db

WORKFLOW = "knight-style-img-to-video"
PUBLIC = "https://coordinator.example.com"


@pytest.fixture
def fake():
    provider = FakeProvider(files="in_output").start()
    CatalogModel.objects.filter(name="nano-banana-pro-leonardo").update(
        runner="http", provider="generic", provider_style="sync", provider_url=f"{provider.url}/sync")
    yield provider
    provider.stop()


@pytest.fixture
def second_step(monkeypatch) -> list:
    """What step 2 (simulated) was handed, and the job's kept files at that moment."""
    seen = []
    run = SimulatedRunner.run

    def observing_run(self, call):
        seen.append({"inputs": dict(call.inputs), "files": list(JobFile.objects.filter(job_id=call.job_id).values(
            "n", "state", "source_url")), "status": Job.objects.get(pk=call.job_id).status})
        return run(self, call)

    monkeypatch.setattr(SimulatedRunner, "run", observing_run)
    return seen


def execute(user) -> Job:
    return workflow_execute(owner=user, workflow_id=WORKFLOW, inputs={"input_image": "https://example.com/user.jpg"},
                            params={"simulate_seconds": 0})


def test_the_second_step_gets_a_link_to_the_stored_copy_of_the_first_steps_file(settings, user, fake, second_step):
    settings.COORDINATOR_PUBLIC_URL = PUBLIC + "/"
    CatalogModel.objects.filter(name="motion-2.0-fast").update(timeout_seconds=900)
    job = execute(user)

    run_job(str(job.job_id), 1)

    job = fresh(job)
    assert job.status == Job.Status.COMPLETED, job.error
    (step2,) = second_step
    fake_url = job.result["steps"][0]["output"]["output"]
    assert fake_url.startswith(fake.url)
    # Step 1's file was stored before step 2 ran (the workflow still running), as result.files[0].
    assert step2["status"] == Job.Status.RUNNING
    assert step2["files"] == [{"n": 0, "state": "stored", "source_url": fake_url}]
    link = step2["inputs"]["input"]
    assert link.startswith(f"{PUBLIC}/jobs/{job.job_id}/files/0?sig=") and fake.url not in link
    # Good for as long as step 2 may run (its model's timeout), not a fixed hour.
    assert 900 - 60 <= signature_left(job.job_id, 0, link.split("sig=")[1]) <= 900
    assert step2["inputs"]["previous_step"] == "style"
    # The link serves step 1's bytes without a token, even once the provider is gone.
    assert len(fake.downloads) == 1  # copied once, by the worker
    step1_bytes = httpx.get(fake_url).content
    fake.stop()
    served = Client().get(link[len(PUBLIC):])
    assert served.status_code == 200 and served["Content-Type"] == "video/mp4"
    assert b"".join(served.streaming_content) == step1_bytes and step1_bytes.startswith(b"\x00\x00\x00\x18ftypmp42")

    # After completion: both steps' files kept, with their n (step 1's row as the worker left it).
    stored = JobFile.objects.get(job_id=job.job_id, n=0)
    assert [(f["step"], f["source_url"]) for f in job.result["files"]] == [
        (1, fake_url), (2, f"simulated://motion-2.0-fast/{job.job_id}")]
    for due in claim(10):
        copy_one(due)
    rows = list(JobFile.objects.filter(job_id=job.job_id).order_by("n").values_list("n", "state", "source_url", "id"))
    assert rows == [(0, "stored", fake_url, stored.id),
                    (1, "stored", f"simulated://motion-2.0-fast/{job.job_id}", rows[1][3])]


def test_without_a_public_url_a_simulated_next_step_gets_the_path_as_it_is(settings, user, second_step):
    settings.COORDINATOR_PUBLIC_URL = ""
    job = execute(user)  # both steps simulated

    run_job(str(job.job_id), 1)

    assert fresh(job).status == Job.Status.COMPLETED
    link = second_step[-1]["inputs"]["input"]
    assert link.startswith(f"/jobs/{job.job_id}/files/0?sig=")
    served = Client().get(link)
    assert served.status_code == 200 and b"".join(served.streaming_content) == SIMULATED_BYTES["image/png"]


def test_without_a_public_url_a_provider_next_step_fails_the_workflow_saying_so(settings, user, second_step):
    settings.COORDINATOR_PUBLIC_URL = ""
    CatalogModel.objects.filter(name="motion-2.0-fast").update(runner="http", provider="generic",
                                                               provider_style="sync", provider_url="https://x.invalid/sync")
    job = execute(user)

    run_job(str(job.job_id), 1)

    job = fresh(job)
    assert job.status == Job.Status.FAILED and "COORDINATOR_PUBLIC_URL" in job.error
    assert len(second_step) == 1 and not JobFile.objects.filter(job_id=job.job_id, state="stored").exists()


def test_a_copy_that_fails_fails_the_step_with_a_clear_error(settings, user, fake, second_step):
    settings.COORDINATOR_PUBLIC_URL = PUBLIC
    settings.COORDINATOR_OUTPUT_MAX_BYTES = 4  # the fake's file is larger
    job = execute(user)

    run_job(str(job.job_id), 1)

    job = fresh(job)
    assert job.status == Job.Status.FAILED
    assert "Step 1's file 0 could not be kept for the next step" in job.error and "COORDINATOR_OUTPUT_MAX_BYTES" in job.error
    assert not second_step


def test_a_copy_that_may_pass_is_tried_again_before_it_fails_the_step(settings, user, second_step, monkeypatch):
    from coordination.outputs import steps
    from coordination.outputs.copy import CopyFailed

    settings.COORDINATOR_PUBLIC_URL = PUBLIC
    monkeypatch.setattr(steps, "AGAIN", (0, 0))
    tries = []
    real = steps.copy_file

    def flaky(**kwargs):
        tries.append(kwargs["source_url"])
        if len(tries) == 1:
            raise CopyFailed("HTTP 503 from the provider", again=True)
        return real(**kwargs)

    monkeypatch.setattr(steps, "copy_file", flaky)
    job = execute(user)  # both steps simulated
    run_job(str(job.job_id), 1)
    assert fresh(job).status == Job.Status.COMPLETED and len(tries) == 2
    assert second_step[-1]["inputs"]["input"].startswith(f"{PUBLIC}/jobs/{job.job_id}/files/0?sig=")

    monkeypatch.setattr(steps, "copy_file", lambda **kwargs: (_ for _ in ()).throw(CopyFailed("HTTP 502", again=True)))
    job = execute(user)
    run_job(str(job.job_id), 1)
    job = fresh(job)
    assert job.status == Job.Status.FAILED and "Step 1's file 0 could not be kept for the next step: HTTP 502" in job.error


def test_a_next_step_at_comfyui_gets_the_first_steps_file_uploaded_into_its_load_image(settings, user):
    settings.COORDINATOR_PUBLIC_URL = ""  # uploaded, so no public address of ours is needed
    comfyui = FakeComfyUI(seconds=0.1).start()
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["10", 0]}},
    }
    CatalogModel.objects.filter(name="motion-2.0-fast").update(
        runner="http", provider="comfyui", provider_base_url=comfyui.url, poll_interval_seconds=0.05,
        provider_workflow={"graph": graph, "prompt": ["6", "text"], "inputs": {"input": ["10", "image"]}})
    try:
        job = execute(user)  # step 1 simulated: its file is a png
        run_job(str(job.job_id), 1)
    finally:
        comfyui.stop()

    job = fresh(job)
    assert job.status == Job.Status.COMPLETED, job.error
    [(subfolder, name, kind)] = [key for key in comfyui.files if key[2] == "input"]
    assert (subfolder, kind) == ("", "input") and comfyui.files[(subfolder, name, kind)] == SIMULATED_BYTES["image/png"]
    stored = JobFile.objects.get(job_id=job.job_id, n=0)
    assert name == f"{stored.id}.png"  # named from our id, never from a provider's file name
    [queued] = comfyui.graphs.values()
    assert queued["10"]["inputs"]["image"] == name
