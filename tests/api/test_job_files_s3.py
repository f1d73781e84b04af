"""The files jobs produce, kept in an S3-compatible bucket (COORDINATOR_OUTPUT_S3_BUCKET, docs/outputs.md):
moto's S3 server, on 127.0.0.1 in a thread of this process, is the bucket, and the storage is the one
jobqueue_site/settings.py makes of the environment. The copier uploads each file into it (in parts
when large), GET /jobs/{id}/files/{n} redirects to a URL presigned for it after the same checks as
ever, the bucket serves it (ranges too), and the prune deletes it. A user's input file (POST /files) goes
into the same bucket and is served the same way."""

import base64
import hashlib
import os
import runpy
import time
import urllib.parse
from datetime import timedelta
from pathlib import Path

import boto3
import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from moto.server import ThreadedMotoServer

import jobqueue_site.settings as site_settings
from coordination.models import InputFile, JobFile
from coordination.outputs.links import input_signed_path
from coordination.outputs.store import files_prune
from coordination.runners.simulated import SIMULATED_BYTES
from tests.api.test_job_files import assert_refused_to_all_but_its_owner_and_its_signature, completed, copy_due

pytestmark = pytest.mark.django_db
BUCKET = "coordinator-outputs"
S3_VARIABLES = ("COORDINATOR_OUTPUT_S3_BUCKET", "COORDINATOR_OUTPUT_S3_ENDPOINT_URL", "COORDINATOR_OUTPUT_S3_REGION",
                "COORDINATOR_OUTPUT_S3_ADDRESSING_STYLE", "COORDINATOR_OUTPUT_S3_PREFIX")


def storages_from(monkeypatch, **environment) -> dict:
    """STORAGES as jobqueue_site/settings.py makes them of this environment (the rest as it is)."""
    for name in S3_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(site_settings.__file__)["STORAGES"]


@pytest.fixture(scope="module")
def s3_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_server, settings, monkeypatch):
    """An empty bucket at the S3 server, and the default storage in it, by the environment as an
    operator sets it (the keys are moto's: any will do)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=BUCKET)
    # Setting STORAGES resets default_storage (django.test.signals.storages_changed), here and after.
    settings.STORAGES = storages_from(monkeypatch, COORDINATOR_OUTPUT_S3_BUCKET=BUCKET,
                                      COORDINATOR_OUTPUT_S3_ENDPOINT_URL=s3_server)
    yield s3
    httpx.post(f"{s3_server}/moto-api/reset")  # every bucket gone: the next test starts empty


def expires(location: str) -> int:
    return int(urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["X-Amz-Expires"][0])


def test_nothing_set_keeps_files_under_media_root_and_an_endpoint_without_a_bucket_is_refused(monkeypatch):
    assert storages_from(monkeypatch)["default"] == {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    with pytest.raises(ImproperlyConfigured, match="COORDINATOR_OUTPUT_S3_BUCKET"):
        storages_from(monkeypatch, COORDINATOR_OUTPUT_S3_ENDPOINT_URL="http://127.0.0.1:9000")
    aws = storages_from(monkeypatch, COORDINATOR_OUTPUT_S3_BUCKET="outputs", COORDINATOR_OUTPUT_S3_REGION="eu-west-1")
    assert aws["default"]["BACKEND"] == "storages.backends.s3.S3Storage"
    options = aws["default"]["OPTIONS"]
    assert (options["bucket_name"], options["region_name"], options["endpoint_url"], options["addressing_style"]) == (
        "outputs", "eu-west-1", None, None)
    assert (options["querystring_auth"], options["file_overwrite"], options["default_acl"]) == (True, False, None)
    assert "access_key" not in options and "secret_key" not in options  # boto3 reads them from the environment


def test_a_completed_jobs_file_is_kept_in_the_bucket_with_its_size_hash_and_type(api, bucket, settings):
    job_id = completed(api)
    assert copy_due() == 1
    row = JobFile.objects.get(job_id=job_id)
    png = SIMULATED_BYTES["image/png"]
    assert row.state == "stored" and row.storage_name == f"outputs/{job_id}/{row.id}.png"
    stored = bucket.get_object(Bucket=BUCKET, Key=row.storage_name)
    body = stored["Body"].read()
    assert body == png and (len(body), hashlib.sha256(body).hexdigest()) == (row.size, row.sha256)
    assert stored["ContentType"] == "image/png" and stored["CacheControl"] == "private, max-age=3600"
    assert not (Path(settings.MEDIA_ROOT) / "outputs" / str(job_id)).exists()  # nothing kept locally
    listed = api.get(f"/jobs/{job_id}").json()["result"]["files"][0]
    assert (listed["state"], listed["size"], listed["sha256"]) == ("stored", len(png), row.sha256)


def test_a_large_file_goes_up_in_parts(api, bucket):
    """Past 8 MiB boto3 uploads the temporary file in parts (a multipart upload: its ETag says how many)."""
    job_id = completed(api)
    large = os.urandom(9 * 1024 * 1024)
    JobFile.objects.filter(job_id=job_id).update(
        source_url="data:application/octet-stream;base64," + base64.b64encode(large).decode())
    copy_due()
    row = JobFile.objects.get(job_id=job_id)
    assert (row.state, row.size, row.sha256) == ("stored", len(large), hashlib.sha256(large).hexdigest())
    head = bucket.head_object(Bucket=BUCKET, Key=row.storage_name)
    assert head["ContentLength"] == len(large) and head["ETag"].strip('"').endswith("-2")  # 8 MiB + 1 MiB


def test_the_owner_is_redirected_to_a_presigned_url_that_serves_the_file_and_its_ranges(api, bucket, s3_server):
    job_id = completed(api, model="motion-2.0-fast")
    copy_due()
    mp4 = SIMULATED_BYTES["video/mp4"]
    answer = api.get(f"/jobs/{job_id}/files/0")
    assert answer.status_code == 302 and answer["Cache-Control"] == "private, no-store"
    location = answer["Location"]
    assert location.startswith(f"{s3_server}/{BUCKET}/outputs/{job_id}/") and "X-Amz-Signature=" in location
    assert expires(location) == 3600  # COORDINATOR_FILE_LINK_SECONDS
    fetched = httpx.get(location)
    assert fetched.status_code == 200 and fetched.content == mp4 and fetched.headers["content-type"] == "video/mp4"
    part = httpx.get(location, headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == mp4[4:12] == b"ftypmp42"
    assert part.headers["content-range"] == f"bytes 4-11/{len(mp4)}"


def test_the_checks_come_before_the_redirect_and_a_signed_links_redirect_lasts_no_longer_than_it(api, bucket, monkeypatch):
    job_id = completed(api)
    copy_due()
    listed = api.get(f"/jobs/{job_id}").json()["result"]["files"][0]
    assert_refused_to_all_but_its_owner_and_its_signature(listed)
    signed = Client().get(listed["signed_url"])
    assert signed.status_code == 302 and 3590 <= expires(signed["Location"]) <= 3600
    assert httpx.get(signed["Location"]).content == SIMULATED_BYTES["image/png"]
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 1000)  # the link was read 1000 s ago
    older = Client().get(listed["signed_url"])
    assert older.status_code == 302 and 2590 <= expires(older["Location"]) <= 2600


def test_the_prune_deletes_the_object_from_the_bucket(api, bucket):
    job_id = completed(api)
    copy_due()
    row = JobFile.objects.get(job_id=job_id)
    assert bucket.head_object(Bucket=BUCKET, Key=row.storage_name)["ContentLength"] == row.size
    JobFile.objects.filter(pk=row.pk).update(stored_at=timezone.now() - timedelta(days=31))
    assert files_prune() == 1
    assert bucket.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    assert api.get(f"/jobs/{job_id}/files/0").status_code == 409


def test_a_users_input_file_goes_into_the_bucket_and_is_served_by_a_redirect_and_its_signed_link(api, bucket):
    png = SIMULATED_BYTES["image/png"]
    sent = api.post("/files", {"file": SimpleUploadedFile("me.png", png, content_type="image/png")}, format="multipart")
    assert sent.status_code == 201, sent.content
    row = InputFile.objects.get(pk=sent.json()["file_id"])
    stored = bucket.get_object(Bucket=BUCKET, Key=row.storage_name)
    assert stored["Body"].read() == png and stored["ContentType"] == "image/png"

    answer = api.get(sent.json()["url"])  # its owner
    assert answer.status_code == 302 and httpx.get(answer["Location"]).content == png
    assert Client().get(sent.json()["url"]).status_code == 401
    # As a job's run hands it to a provider: a signed link, redirected for no longer than it lasts.
    signed = Client().get(input_signed_path(row.id, seconds=600))
    assert signed.status_code == 302 and 590 <= expires(signed["Location"]) <= 600
    assert httpx.get(signed["Location"]).content == png
