"""`result.files`: every runner lists the files a job produced (`source_url`, `content_type` where
known), a list, empty when none; `result.output` stays as the provider gave it. The generic protocol
against bench/fake_provider.py over real sockets (coordination/runners/results.py says the rule)."""

from uuid import uuid4

import pytest

from bench.fake_provider import FakeProvider
from coordination.models import CatalogModel
from coordination.runners import get_runner, runner_call
from coordination.runners.results import files_listed

pytestmark = pytest.mark.django_db


@pytest.fixture
def fake():
    provider = FakeProvider(seconds=0.2).start()
    yield provider
    provider.stop()


def result_at(fake, style: str, files: str = "", model: str = "flux-dev") -> dict:
    fake.files = files
    CatalogModel.objects.filter(name=model).update(runner="http", provider="generic", provider_url=f"{fake.url}/{style}", provider_style=style,
                                                   timeout_seconds=30)
    call = runner_call(CatalogModel.objects.get(name=model), job_id=uuid4(), prompt="A castle",
                       params={"poll_interval": 0.05})
    return get_runner("http").run(call)


def test_a_provider_that_lists_its_files_gives_them_with_its_content_types(fake):
    result = result_at(fake, "sync", files="listed")

    name = result["output"].removeprefix("video://").removesuffix(".mp4")
    assert result["files"] == [{"source_url": f"{fake.url}/files/{name}.mp4", "content_type": "video/mp4"}]
    assert result["output"] == f"video://{name}.mp4"  # as the provider gave it


def test_an_output_that_is_a_url_is_the_file_with_its_type_guessed_from_the_extension(fake):
    result = result_at(fake, "sync", files="in_output")

    assert result["files"] == [{"source_url": result["output"], "content_type": "video/mp4"}]


def test_an_output_that_names_no_file_gives_an_empty_list(fake):
    assert result_at(fake, "sync")["files"] == []


def test_a_polled_job_lists_the_files_of_its_provider_s_last_word(fake):
    result = result_at(fake, "poll", files="listed")

    assert result["files"] == [{"source_url": f"{fake.url}/files/{result['provider_job_id']}.mp4",
                                "content_type": "video/mp4"}]


def test_a_simulated_job_lists_one_file_of_its_model_s_media_type():
    for model, content_type in (("flux-dev", "image/png"), ("motion-2.0-fast", "video/mp4")):
        call = runner_call(CatalogModel.objects.get(name=model), job_id=uuid4(), prompt="A castle",
                           params={"simulate_seconds": 0})
        result = get_runner("simulated").run(call)
        assert result["files"] == [{"source_url": f"simulated://{model}/{call.job_id}", "content_type": content_type}]
        assert result["output"] == f"simulated://{model}/{call.job_id}"


@pytest.mark.parametrize("files, output, listed", [
    # The provider's own list wins, whatever the output; a URL string or {url | source_url, content_type?}.
    ([{"url": "https://cdn.example/a", "content_type": "image/webp"}, "https://cdn.example/b.jpg"], "https://x/c.png",
     [{"source_url": "https://cdn.example/a", "content_type": "image/webp"},
      {"source_url": "https://cdn.example/b.jpg", "content_type": "image/jpeg"}]),
    ([{"source_url": "https://cdn.example/v"}], None, [{"source_url": "https://cdn.example/v"}]),  # no type known
    ([], "https://cdn.example/a.png", []),  # "none", said explicitly
    ([{"content_type": "image/png"}, 7, None], None, []),  # items naming no URL are left out
    # Else the URLs in the output: a URL, or a list holding URLs (query strings do not hide the extension).
    (None, "https://cdn.example/a.png?sig=1", [{"source_url": "https://cdn.example/a.png?sig=1", "content_type": "image/png"}]),
    (None, ["https://cdn.example/1.mp4", "a caption", 3], [{"source_url": "https://cdn.example/1.mp4", "content_type": "video/mp4"}]),
    (None, {"image": "https://cdn.example/a.png"}, []),  # objects are not searched
    (None, "a caption", []),
    (None, "http://[not-a-host/a.png", [{"source_url": "http://[not-a-host/a.png"}]),  # listed, untyped, no error
    (None, None, []),
])
def test_files_are_taken_from_the_providers_list_else_from_urls_in_the_output(files, output, listed):
    assert files_listed(files, output) == listed
