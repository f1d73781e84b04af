"""The Leonardo adapter against bench/fakes/leonardo.py over real sockets: jobs submitted as a worker
submits them (run_job, in this process) and watched by a poller (one running on a thread here), one
job through a real qcluster, and Leonardo's per-key webhook through the live server."""

import hashlib
import json
import urllib.error
import urllib.request

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token

from bench.fakes.leonardo import API, API_KEY, FakeLeonardo
from coordination.models import CatalogModel, InputFile, Job, ProviderRun
from coordination.outputs.inputs import input_keep
from coordination.runners.simulated import SIMULATED_BYTES
from coordination.services import job_cancel, job_submit
from coordination.tasks import run_job
from tests.e2e.harness import HttpApi, start_worker, wait_until
from tests.factories import UserFactory
from tests.providers.conftest import files_kept, poller

pytestmark = pytest.mark.django_db(transaction=True)

KEY_ENV, WEBHOOK_ENV = "TEST_LEONARDO_API_KEY", "TEST_LEONARDO_WEBHOOK_KEY"
WEBHOOK_KEY = "leo-webhook-key-for-tests"
IMAGE, VIDEO = "nano-banana-pro-leonardo", "motion-2.0-fast"
MODEL_ID = "b24e16ff-06e3-43eb-8d33-4416c2d75876"  # an image model's modelId (the form Leonardo's docs show)
GIVE_UP = 60  # a bound for polling, not a claim
PNG = SIMULATED_BYTES["image/png"]


@pytest.fixture
def leonardo(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    fake = FakeLeonardo(seconds=0.5).start()
    yield fake
    fake.stop()


@pytest.fixture
def owner(settings):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 3
    settings.COORDINATOR_POLLER_TICK = 0.1
    settings.COORDINATOR_PROVIDER_CANCEL_GRACE = 1
    return UserFactory()


def use_leonardo(fake, model: str = VIDEO, provider_model: str = "MOTION2FAST", **fields) -> None:
    CatalogModel.objects.filter(name=model).update(**{
        "runner": "http", "provider": "leonardo", "provider_model": provider_model, "provider_base_url": fake.url,
        "credential_env": KEY_ENV, "poll_interval_seconds": 0.1, "timeout_seconds": 60, "capacity": 3, **fields})


def at_leonardo(owner, model: str = VIDEO, **params) -> Job:
    """A job submitted, and sent to Leonardo by a worker as a qcluster's would (here, in this thread)."""
    job = job_submit(owner=owner, model=model, prompt="A knight on a horse", params=params)
    run_job(str(job.job_id), 1)
    return job


def run_of(job) -> ProviderRun:
    return ProviderRun.objects.get(job_id=job.job_id)


def ended(job) -> Job | None:
    job = Job.objects.get(pk=job.job_id)
    return job if job.status in Job.FINISHED else None


# --- Submit, status, output ---------------------------------------------------------------------

def test_an_image_job_completes_with_leonardos_images_as_output_and_files(leonardo, owner):
    use_leonardo(leonardo, IMAGE, MODEL_ID, provider_input={"defaults": {"width": 1024, "height": 768}})
    job = at_leonardo(owner, IMAGE)
    run = run_of(job)
    assert (run.status_url, run.provider_data) == (f"{leonardo.url}{API}/generations/{run.provider_job_id}", {"apiCreditCost": 8})
    with poller():
        job = wait_until(lambda: ended(job), timeout=GIVE_UP, message="the image job to end")

    assert (job.status, job.attempt, job.error) == ("completed", 1, None)
    [submit] = leonardo.asked("POST")
    assert submit.path == f"{API}/generations" and submit.headers["authorization"] == f"Bearer {API_KEY}"
    # One image unless the job asks for more (Leonardo's SDK would ask four); the catalog's defaults fill the size.
    assert submit.json == {"prompt": "A knight on a horse", "num_images": 1, "width": 1024, "height": 768, "modelId": MODEL_ID}
    [image] = job.result["output"]
    assert set(image) == {"id", "url", "nsfw", "likeCount", "motionMP4URL"}
    assert job.result["files"] == [{"source_url": image["url"], "content_type": "image/jpeg"}]
    assert job.result["provider_job_id"] == run.provider_job_id
    with urllib.request.urlopen(image["url"], timeout=10) as served:  # Leonardo's CDN (the fake's) has it
        assert served.headers["Content-Type"] == "image/jpeg"


def test_a_video_job_goes_text_to_video_and_its_file_is_the_mp4(leonardo, owner):
    use_leonardo(leonardo)
    job = at_leonardo(owner, resolution="RESOLUTION_720", num_images=2)
    with poller():
        job = wait_until(lambda: ended(job), timeout=GIVE_UP, message="the video job to end")

    assert (job.status, job.error) == ("completed", None)
    [submit] = leonardo.asked("POST")
    assert submit.path == f"{API}/generations-text-to-video"
    # The job's own fields as given (num_images is an image model's default, not a video's), and the model.
    assert submit.json == {"prompt": "A knight on a horse", "resolution": "RESOLUTION_720", "num_images": 2, "model": "MOTION2FAST"}
    [video] = job.result["output"]
    assert video["motionMP4URL"].endswith(".mp4") and video["url"].endswith(".jpg")  # a poster, and the video
    assert job.result["files"] == [{"source_url": video["motionMP4URL"], "content_type": "video/mp4"}]


def test_a_job_that_names_an_image_id_goes_image_to_video(leonardo, owner):
    use_leonardo(leonardo, provider_input={"rename": {"image_id": "imageId"}})
    job = at_leonardo(owner, image_id="5c2a9d7e-0000-4000-8000-000000000001")
    with poller():
        job = wait_until(lambda: ended(job), timeout=GIVE_UP, message="the job to end")

    assert job.status == "completed", job.error
    [submit] = leonardo.asked("POST")
    assert submit.path == f"{API}/generations-image-to-video"
    assert submit.json == {"imageType": "GENERATED", "prompt": "A knight on a horse",
                           "imageId": "5c2a9d7e-0000-4000-8000-000000000001", "model": "MOTION2FAST"}


# --- Files of ours: uploaded as init images ---------------------------------------------------------

def users_file(owner, data: bytes = PNG, content_type: str = "image/png") -> InputFile:
    """A file the owner sent (POST /files), kept as that endpoint keeps it."""
    uploaded = SimpleUploadedFile("mine.bin", data, content_type=content_type)
    uploaded.sha256 = hashlib.sha256(data).hexdigest()
    return input_keep(owner=owner, uploaded=uploaded, content_type=content_type)


def test_a_users_file_goes_to_an_image_model_as_an_uploaded_init_image(leonardo, owner, settings):
    settings.COORDINATOR_PUBLIC_URL = ""  # uploaded, so no public address of ours is needed
    use_leonardo(leonardo, IMAGE, MODEL_ID, provider_input={"rename": {"input_image": "init_image_id"},
                                                            "defaults": {"init_strength": 0.4}})
    kept = users_file(owner)
    job = at_leonardo(owner, IMAGE, input_image=f"file:{kept.id}")
    with poller():
        job = wait_until(lambda: ended(job), timeout=GIVE_UP, message="the image job to end")

    assert (job.status, job.error) == ("completed", None)
    init_image, generation = leonardo.asked("POST", API)
    assert init_image.path == f"{API}/init-image" and init_image.json == {"extension": "png"}
    [upload] = leonardo.asked("POST", "/uploads")
    assert "authorization" not in upload.headers  # the presigned form is its own credential
    [(init_id, data)] = leonardo.init_images.items()
    assert data == PNG  # the bytes we keep reached Leonardo
    assert generation.json == {"num_images": 1, "prompt": "A knight on a horse", "init_image_id": init_id,
                               "init_strength": 0.4, "modelId": MODEL_ID}
    assert Job.objects.get(pk=job.job_id).params == {"input_image": f"file:{kept.id}"}  # the job keeps its reference


def test_a_users_file_goes_to_a_video_model_as_an_uploaded_image_to_video(leonardo, owner):
    use_leonardo(leonardo, provider_input={"rename": {"input_image": "imageId"}})
    kept = users_file(owner, SIMULATED_BYTES["image/png"])
    job = at_leonardo(owner, input_image=f"file:{kept.id}")
    with poller():
        job = wait_until(lambda: ended(job), timeout=GIVE_UP, message="the video job to end")

    assert (job.status, job.error) == ("completed", None)
    generation = leonardo.asked("POST", f"{API}/generations-image-to-video")[0]
    [init_id] = leonardo.init_images
    assert generation.json == {"imageType": "UPLOADED", "prompt": "A knight on a horse", "imageId": init_id,
                               "model": "MOTION2FAST"}


def test_a_file_leonardo_cannot_take_as_an_init_image_fails_the_job_saying_so(leonardo, owner):
    use_leonardo(leonardo, provider_input={"rename": {"input_image": "imageId"}}, max_attempts=1)
    kept = users_file(owner, SIMULATED_BYTES["video/mp4"], "video/mp4")
    job = at_leonardo(owner, input_image=f"file:{kept.id}")

    job = Job.objects.get(pk=job.job_id)
    assert (job.status, job.error) == ("failed", "Leonardo takes a png, jpg or webp init image, not video/mp4")
    assert leonardo.asked("POST") == []  # nothing was sent: no init image, no generation


def test_a_failed_generation_fails_the_job(leonardo, owner):
    use_leonardo(leonardo, max_attempts=1)
    job = at_leonardo(owner, fail=True)
    with poller():
        job = wait_until(lambda: ended(job), timeout=GIVE_UP, message="the job to fail")

    generation = run_of(job).provider_job_id
    assert (job.status, job.error) == ("failed", f"Provider job {generation} failed: status FAILED (Leonardo gives no reason)")


def test_a_refused_key_fails_the_job_in_leonardos_words(leonardo, owner, monkeypatch):
    use_leonardo(leonardo, max_attempts=1)
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    job = at_leonardo(owner)

    job = Job.objects.get(pk=job.job_id)
    assert job.status == "failed"
    assert job.error == "Provider refused the request (HTTP 401): Authentication hook unauthorized this request"
    assert not ProviderRun.objects.exists() and leonardo.generations == {}


# --- Limits ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("retry_after", ["1", None])
def test_429s_on_submit_and_on_polls_are_waited_out(leonardo, owner, retry_after):
    use_leonardo(leonardo)
    leonardo.limit(3, retry_after=retry_after)  # the submit is refused three times
    job = at_leonardo(owner, seconds=3)
    assert len(leonardo.asked("POST", f"{API}/generations-text-to-video")) == 4 and len(leonardo.generations) == 1
    with poller():
        leonardo.limit(2, retry_after=retry_after)  # and the next two polls
        job = wait_until(lambda: ended(job), timeout=GIVE_UP, message="the job to end")

    assert (job.status, job.attempt, job.error) == ("completed", 1, None)
    assert len(leonardo.asked("GET", f"{API}/generations/")) >= 3


# --- Cancel ---------------------------------------------------------------------------------------

def test_a_cancel_ends_the_job_after_the_grace_saying_leonardo_may_still_finish_it(leonardo, owner):
    use_leonardo(leonardo)
    leonardo.concurrency = 1  # the first generation takes Leonardo's one place; the second waits in its queue
    generating, waiting = at_leonardo(owner, seconds=3), at_leonardo(owner, seconds=3)
    with poller():
        wait_until(lambda: run_of(waiting).provider_status == "running" and run_of(generating).provider_status == "running",
                   timeout=GIVE_UP, message="both jobs to be polled")
        for job in (generating, waiting):
            job_cancel(job_id=job.job_id, reason="Cancelled by its owner")
        wait_until(lambda: ended(generating) and ended(waiting), timeout=GIVE_UP, message="the grace to end both jobs")

    for job in (generating, waiting):
        job = Job.objects.get(pk=job.job_id)
        assert job.status == "cancelled"
        assert job.error == ("Cancelled by its owner; Cancelled; Leonardo has no cancel, so it may still finish the "
                             "generation (and charge for it)")
    assert leonardo.asked("DELETE") == []  # nothing was sent: a DELETE stops nothing and takes the images away
    # And so it does: the first generation finishes at Leonardo all the same.
    wait_until(lambda: leonardo.status_of(run_of(generating).provider_job_id) == "COMPLETE", timeout=GIVE_UP,
               message="Leonardo to finish the cancelled generation")


# --- The webhook (set once per API key at Leonardo) --------------------------------------------------

@pytest.fixture
def webhooked(leonardo, owner, live_server, settings, monkeypatch):
    """Leonardo told (once, for its API key) to call the live server, with the webhook key; the models
    name that key's variable, and the coordinator has a public address: their jobs are callback jobs."""
    monkeypatch.setenv(WEBHOOK_ENV, WEBHOOK_KEY)
    settings.COORDINATOR_PUBLIC_URL = live_server.url
    leonardo.webhook_url, leonardo.webhook_key = f"{live_server.url}/providers/leonardo/webhook", WEBHOOK_KEY
    use_leonardo(leonardo, callback_secret_env=WEBHOOK_ENV, poll_interval_seconds=30)
    return leonardo


def post_webhook(base: str, body, *, key: str | None = WEBHOOK_KEY) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/providers/leonardo/webhook", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    if key is not None:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())["message"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]


def completed_event(generation_id: str, images: list | None = None) -> dict:
    return {"type": "image_generation.complete", "object": "generation", "timestamp": 1764000000000, "api_version": "v1",
            "data": {"object": {"id": generation_id, "status": "COMPLETE", "images": images or []}}}


def test_the_webhook_ends_the_job_once_and_a_repeat_changes_nothing(webhooked, owner, live_server):
    job = at_leonardo(owner)
    run = run_of(job)
    assert run.style == "callback"
    # No poller runs: only Leonardo's webhook can end it.
    job = wait_until(lambda: ended(job), timeout=GIVE_UP, message="the webhook to end the job")

    assert (job.status, job.error) == ("completed", None)
    # The job ends when our handler commits, a moment before the fake hears its answer.
    wait_until(lambda: webhooked.webhooks, timeout=GIVE_UP, message="Leonardo to hear the webhook's answer")
    assert webhooked.webhooks == [(run.provider_job_id, 200)]
    assert job.result["files"][0]["source_url"].endswith(".mp4")
    again = post_webhook(live_server.url, completed_event(run.provider_job_id))
    assert again == (200, "Already recorded: nothing changed.")
    assert Job.objects.get(pk=job.job_id).result == job.result


def test_a_webhook_without_the_key_or_not_for_our_generation_changes_nothing(webhooked, owner, live_server):
    job = at_leonardo(owner, seconds=600)
    generation = run_of(job).provider_job_id
    forged = completed_event(generation, [{"url": "https://evil.example/x.mp4"}])

    assert post_webhook(live_server.url, forged, key=None)[0] == 401
    assert post_webhook(live_server.url, forged, key="not-the-key")[0] == 401
    assert post_webhook(live_server.url, completed_event("11111111-2222-4333-8444-555555555555"))[0] == 401
    assert post_webhook(live_server.url, b"not json")[0] == 400
    # The right key, but Leonardo, asked, says the generation is still PENDING: the body's word is not taken.
    assert post_webhook(live_server.url, forged) == (202, "Noted: running.")

    assert Job.objects.get(pk=job.job_id).status == "running" and run_of(job).state == "in_flight"
    assert [r.path for r in webhooked.asked("GET")] == [f"{API}/generations/{generation}"]  # asked once, for the right key


# --- Through a real qcluster ------------------------------------------------------------------------

def ended_in_api(http: HttpApi, job_id: str) -> dict | None:
    job = http.get(f"/jobs/{job_id}")[1]
    return job if job["status"] in Job.FINISHED else None


@pytest.mark.e2e
def test_a_job_posted_to_the_api_completes_at_leonardo_through_a_qcluster(leonardo, live_server, tmp_path):
    http = HttpApi(live_server.url, Token.objects.create(user=UserFactory()).key)
    use_leonardo(leonardo, poll_interval_seconds=0.2)
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_POLLER_TICK="0.2")  # it inherits the API key's variable
    try:
        code, job = http.post("/jobs", {"model": VIDEO, "prompt": "A knight on a horse", "params": {"seconds": 1}})
        assert code == 201, job
        job = wait_until(lambda: ended_in_api(http, job["job_id"]), timeout=GIVE_UP, message="the job to end at Leonardo")
        wait_until(lambda: files_kept(job["job_id"]), timeout=GIVE_UP, message="the job's file to be kept")
    finally:
        worker.stop()

    assert (job["status"], job["error"]) == ("completed", None)
    [video] = job["result"]["output"]
    assert [{key: file[key] for key in ("source_url", "content_type")} for file in job["result"]["files"]] == [
        {"source_url": video["motionMP4URL"], "content_type": "video/mp4"}]
    [submit] = leonardo.asked("POST")
    assert submit.json == {"prompt": "A knight on a horse", "seconds": 1, "model": "MOTION2FAST"}
