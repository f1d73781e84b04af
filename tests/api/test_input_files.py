"""A user's own input files (POST /files, coordination/outputs/inputs.py): kept streamed, capped,
typed by their bytes, served to their owner (and through a signed link), and named by jobs as
`file:<id>`: refused when not the submitter's, given to the runner as a signed public link."""

import hashlib
import uuid
from urllib.parse import urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from coordination.models import InputFile, Job
from coordination.runners.simulated import SIMULATED_BYTES
from coordination.tasks import run_job

pytestmark = pytest.mark.django_db

PNG = SIMULATED_BYTES["image/png"]


def upload(api, data: bytes = PNG, content_type: str = "image/png", name: str = "me.png"):
    return api.post("/files", {"file": SimpleUploadedFile(name, data, content_type=content_type)}, format="multipart")


def served_bytes(answer) -> bytes:
    return b"".join(answer.streaming_content)


def test_an_upload_is_kept_with_its_size_hash_and_type_and_served_back_with_ranges(api):
    answer = upload(api, name="../../etc/passwd")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body == {"file_id": body["file_id"], "url": f"/files/{body['file_id']}", "size": len(PNG),
                    "sha256": hashlib.sha256(PNG).hexdigest(), "content_type": "image/png"}
    row = InputFile.objects.get(id=body["file_id"])
    assert row.storage_name.startswith(f"inputs/{row.owner_id}/{body['file_id']}") and "passwd" not in row.storage_name
    whole = api.get(body["url"])
    assert whole.status_code == 200 and served_bytes(whole) == PNG and whole["Content-Type"] == "image/png"
    assert whole["ETag"] == f'"{body["sha256"]}"'
    part = api.get(body["url"], HTTP_RANGE="bytes=1-3")
    assert part.status_code == 206 and served_bytes(part) == PNG[1:4] and part["Content-Range"] == f"bytes 1-3/{len(PNG)}"


def test_an_unknown_type_is_kept_as_octet_stream_whatever_it_claims(api):
    assert upload(api, b"<svg onload=alert(1)>", "image/svg+xml", "x.svg").json()["content_type"] == "application/octet-stream"
    assert upload(api, b"hello", "text/html", "x.html").json()["content_type"] == "application/octet-stream"


def test_a_file_over_the_limit_is_413_and_nothing_is_kept(api, settings):
    settings.COORDINATOR_INPUT_MAX_BYTES = 1000
    answer = upload(api, b"\x89PNG\r\n\x1a\n" + b"x" * 5000)
    assert answer.status_code == 413 and "COORDINATOR_INPUT_MAX_BYTES" in answer.json()["error"]
    assert not InputFile.objects.exists()
    # Under the Content-Length check's slack: the upload handler stops it while it streams.
    answer = upload(api, b"\x89PNG\r\n\x1a\n" + b"x" * 20000)
    assert answer.status_code == 413 and not InputFile.objects.exists()
    # Far over it: refused by its Content-Length, before a byte of the body is read.
    answer = upload(api, b"\x89PNG\r\n\x1a\n" + b"x" * 200_000)
    assert answer.status_code == 413 and answer.json()["fields"].keys() == {"file"} and not InputFile.objects.exists()


def test_a_claimed_image_type_its_bytes_contradict_is_400_naming_it(api):
    answer = upload(api, b"GIF89a......", "image/png")
    assert answer.status_code == 400 and "image/png" in answer.json()["error"] and "image/gif" in answer.json()["error"]
    assert answer.json()["fields"].keys() == {"file"} and not InputFile.objects.exists()
    assert upload(api, b"not a video at all", "video/mp4").status_code == 400


def test_a_missing_file_field_is_400(api):
    assert api.post("/files", {"other": "x"}, format="multipart").status_code == 400


def test_another_users_file_is_404_staffs_is_served_and_anonymous_401(api, other_user, staff_api):
    url = upload(api).json()["url"]
    from rest_framework.test import APIClient

    other = APIClient()
    other.force_authenticate(other_user)
    assert other.get(url).status_code == 404
    assert other.get(f"/files/{uuid.uuid4()}").status_code == 404
    assert staff_api.get(url).status_code == 200
    assert Client().get(url).status_code == 401


def test_a_signed_link_serves_it_without_a_token_and_a_wrong_one_is_404(api):
    from coordination.outputs.links import input_signed_path

    file_id = upload(api).json()["file_id"]
    link = input_signed_path(file_id, seconds=600)
    answer = Client().get(link)
    assert answer.status_code == 200 and served_bytes(answer) == PNG
    assert Client().get(link[:-2] + "xx").status_code == 404
    assert Client().get(f"/files/{uuid.uuid4()}?sig={link.split('sig=')[1]}").status_code == 404  # another file's
    # The lifetime is signed: lengthening it breaks the signature.
    sig = link.split("sig=")[1]
    assert Client().get(f"/files/{file_id}?sig=zzzz{sig[sig.index(':'):]}").status_code == 404


def test_a_signed_link_expires(api, monkeypatch):
    import time

    from coordination.outputs.links import input_signed_path

    file_id = upload(api).json()["file_id"]
    link = input_signed_path(file_id, seconds=60)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 120)
    assert Client().get(link).status_code == 404


def test_a_workflow_naming_another_users_file_is_400_and_nothing_is_submitted(api, other_user):
    from rest_framework.test import APIClient

    other = APIClient()
    other.force_authenticate(other_user)
    theirs = upload(other).json()["file_id"]
    answer = api.post("/workflows/knight-style-img-to-video/execute", {"input_image": f"file:{theirs}"}, format="json")
    assert answer.status_code == 400 and "input_image" in answer.json()["error"], answer.content
    assert api.post("/workflows/knight-style-img-to-video/execute", {"input_image": f"file:{uuid.uuid4()}"},
                    format="json").status_code == 400
    assert api.post("/workflows/knight-style-img-to-video/execute", {"input_image": "file:nope"},
                    format="json").status_code == 400
    assert not Job.objects.exists()


def test_a_job_naming_another_users_file_in_its_params_is_400(api, other_user):
    from rest_framework.test import APIClient

    other = APIClient()
    other.force_authenticate(other_user)
    theirs = upload(other).json()["file_id"]
    answer = api.post("/jobs", {"prompt": "A castle", "model": "flux-dev", "params": {"init_image": f"file:{theirs}"}},
                      format="json")
    assert answer.status_code == 400 and answer.json()["fields"] == {"params.init_image": [answer.json()["error"].split(": ", 1)[1]]}
    answer = api.post("/jobs/batch", {"jobs": [{"prompt": "A castle", "model": "flux-dev",
                                                 "params": {"init_image": f"file:{theirs}"}}]}, format="json")
    assert answer.status_code == 400 and "jobs[0].params.init_image" in answer.json()["error"]
    assert not Job.objects.exists()


def test_a_workflow_naming_its_own_file_runs_with_a_signed_public_link_that_serves_the_bytes(api, settings, runner_calls):
    settings.COORDINATOR_PUBLIC_URL = "https://coordinator.example.com/"
    file_id = upload(api).json()["file_id"]
    job_id = api.post("/workflows/knight-style-img-to-video/execute",
                      {"input_image": f"file:{file_id}", "params": {"simulate_seconds": 0}}, format="json").json()["job_id"]
    run_job(job_id, 1)
    job = api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "completed", job
    link = runner_calls[0].inputs["input_image"]
    assert link.startswith(f"https://coordinator.example.com/files/{file_id}?sig=")
    assert job["result"]["steps"][0]["output"]["inputs"]["input_image"] == link  # what the runner got
    from workflows.models import WorkflowExecution

    assert WorkflowExecution.objects.get(job_id=job_id).inputs == {"input_image": f"file:{file_id}"}  # never stored
    answer = Client().get(urlsplit(link).path + "?" + urlsplit(link).query)
    assert answer.status_code == 200 and served_bytes(answer) == PNG


def test_a_normal_job_naming_its_own_file_in_params_gets_the_link(api, settings, runner_calls):
    settings.COORDINATOR_PUBLIC_URL = "https://coordinator.example.com"
    file_id = upload(api).json()["file_id"]
    job_id = api.post("/jobs", {"prompt": "A castle", "model": "flux-dev",
                                "params": {"simulate_seconds": 0, "init_image": f"file:{file_id}"}}, format="json").json()["job_id"]
    run_job(job_id, 1)
    assert Job.objects.get(pk=job_id).status == "completed"
    link = runner_calls[0].params["init_image"]
    assert link.startswith(f"https://coordinator.example.com/files/{file_id}?sig=")
    assert Job.objects.get(pk=job_id).params["init_image"] == f"file:{file_id}"
    assert served_bytes(Client().get(link.removeprefix("https://coordinator.example.com"))) == PNG


def test_without_a_public_address_a_provider_job_naming_a_file_fails_saying_why(api, settings):
    from coordination.models import CatalogModel

    settings.COORDINATOR_PUBLIC_URL = ""
    CatalogModel.objects.filter(name="flux-dev").update(runner="http", provider="generic", provider_style="sync",
                                                        provider_url="https://provider.example.com/sync")
    file_id = upload(api).json()["file_id"]
    job_id = api.post("/jobs", {"prompt": "A castle", "model": "flux-dev", "params": {"init_image": f"file:{file_id}"}},
                      format="json").json()["job_id"]
    run_job(job_id, 1)
    job = Job.objects.get(pk=job_id)
    assert job.status == "failed" and "COORDINATOR_PUBLIC_URL" in job.error and "public address" in job.error


def test_the_prune_deletes_input_files_past_the_retention_and_an_operator_can_delete_one(api, staff_user, settings):
    from datetime import timedelta

    from django.core.files.storage import default_storage
    from django.urls import reverse
    from django.utils import timezone

    from coordination.outputs.store import input_files_prune

    old, new = upload(api).json(), upload(api).json()
    InputFile.objects.filter(pk=old["file_id"]).update(created_at=timezone.now() - timedelta(days=31))
    old_name = InputFile.objects.get(pk=old["file_id"]).storage_name
    assert input_files_prune() == 1
    assert not InputFile.objects.filter(pk=old["file_id"]).exists() and not default_storage.exists(old_name)
    assert api.get(new["url"]).status_code == 200  # a newer one stays
    console = Client()
    console.force_login(staff_user)
    changelist = reverse("admin:coordination_inputfile_changelist")
    assert new["file_id"] in console.get(changelist).content.decode()
    console.post(changelist, {"action": "delete_input", "_selected_action": [new["file_id"]]})
    assert not InputFile.objects.filter(pk=new["file_id"]).exists()
