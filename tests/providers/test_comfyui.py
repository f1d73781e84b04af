"""The ComfyUI adapter (coordination/runners/adapters/comfyui.py) against bench/fakes/comfyui.py, a
ComfyUI server on 127.0.0.1: one job through a real qcluster, the rest in this process."""

import asyncio
import copy
import re
import time
import urllib.request
from uuid import uuid4, uuid5

import pytest
from django.core.exceptions import ValidationError

from bench.fakes.comfyui import PNG, FakeComfyUI
from coordination.models import CatalogModel, Job, JobEvent
from coordination.runners import RunnerCall, RunnerError
from coordination.runners import client as http
from coordination.runners.adapters import adapter_of
from coordination.runners.adapters.comfyui import WS_REOPEN
from coordination.runners.base import KeptFile, Provider
from coordination.runners.http import HttpRunner
from coordination.services import job_submit
from tests.e2e.harness import start_worker, wait_until
from tests.factories import UserFactory
from tests.providers.conftest import files_kept, kept_bytes

COMFYUI = adapter_of("comfyui")
GIVE_UP = 60  # a bound for polling, not a claim

# ComfyUI's default txt2img workflow, as "Save (API)" exports it.
GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}
WORKFLOW = {"graph": GRAPH, "prompt": ["6", "text"], "seed": ["3", "seed"],
            "params": {"steps": ["3", "steps"], "cfg": ["3", "cfg"], "width": ["5", "width"], "height": ["5", "height"]},
            "inputs": {"negative_prompt": ["7", "text"]}}


@pytest.fixture
def fake():
    server = FakeComfyUI(seconds=0.2, step_seconds=0.1).start()
    yield server
    server.stop()


def a_call(fake, *, prompt: str = "A castle at dusk", params=None, inputs=None, **fields) -> RunnerCall:
    provider = Provider(kind="comfyui", url=fake.url, workflow=fields.pop("workflow", WORKFLOW), style="poll",
                        poll_interval_seconds=0.05, timeout_seconds=30, **fields)
    return RunnerCall(job_id=uuid4(), model="sdxl-comfyui", prompt=prompt, params=params or {}, inputs=inputs or {},
                      provider=provider, attempt=1)


def talk(work, *, pooled: bool = False):
    """`work(client)` on a client of ours: httpx's, as a worker's, or the poller's pooled one."""
    async def main():
        async with (http.new_pooled_client(max_connections=4) if pooled else http.new_client()) as client:
            return await work(client)

    return asyncio.run(main())


def submit(call: RunnerCall):
    return talk(lambda client: COMFYUI.submit(client, call, deadline=time.monotonic() + 30, callback_url=None))


def ask(call: RunnerCall, *accepted, pooled: bool = False):
    """What the adapter says of each prompt, asked together as the poller's due polls are."""
    provider = call.provider

    async def asked(client):
        return await asyncio.gather(*(COMFYUI.ask(client, provider, run, request=COMFYUI.status_request(client, provider, run),
                                                  timeout=10) for run in accepted))

    return talk(asked, pooled=pooled)


def cancel(call: RunnerCall, accepted) -> bool:
    return talk(lambda client: COMFYUI.cancel(client, call.provider, accepted))


def watch(call: RunnerCall, accepted, *, every: float = 0.05) -> list:
    """What the adapter says of one prompt, asked every `every` seconds in one event loop (as the poller
    asks) until it ends."""
    provider = call.provider

    async def watching(client):
        seen, request = [], COMFYUI.status_request(client, provider, accepted)
        async with asyncio.timeout(GIVE_UP):
            while not seen or not seen[-1].ended:
                seen.append(await COMFYUI.ask(client, provider, accepted, request=request, timeout=10))
                await asyncio.sleep(every)
        return seen

    return talk(watching, pooled=True)


# --- Through the coordinator: a real qcluster -------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_job_runs_the_models_workflow_at_comfyui_and_completes_with_its_images(fake, tmp_path, settings):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 2
    model = CatalogModel.objects.get(name="flux-dev")
    model.runner, model.provider, model.provider_model = "http", "comfyui", ""
    model.provider_base_url, model.provider_workflow, model.poll_interval_seconds = fake.url, WORKFLOW, 0.2
    model.full_clean()  # the catalog takes it: the adapter is there
    model.save()
    worker = start_worker(tmp_path / "qcluster.log", COORDINATOR_MAX_ACTIVE_JOBS="2", COORDINATOR_WORKERS="1",
                          COORDINATOR_POLLER_TICK="0.2", COORDINATOR_LEASE_SECONDS="3")
    try:
        job = job_submit(owner=UserFactory(), model="flux-dev", prompt="A castle at dusk", params={"steps": 30, "seed": 7})
        wait_until(lambda: Job.objects.get(pk=job.job_id).status in Job.FINISHED, timeout=GIVE_UP, message="the job to end")
        wait_until(lambda: files_kept(job.job_id), timeout=GIVE_UP, message="the job's file to be kept")
    finally:
        worker.stop()

    job = Job.objects.get(pk=job.job_id)
    assert (job.status, job.error) == ("completed", None)
    assert kept_bytes(job.job_id, 0) == PNG  # the coordinator keeps a copy: the ComfyUI box may delete its own
    prompt_id = job.result["provider_job_id"]
    assert prompt_id == str(uuid5(job.job_id, "attempt:1"))
    assert job.result["output"] == {"9": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}}
    image = f"{fake.url}/view?filename=ComfyUI_00001_.png&subfolder=&type=output"
    assert job.result["files"] == [{"source_url": image, "content_type": "image/png"}]
    with urllib.request.urlopen(image, timeout=10) as answer:
        assert answer.read() == PNG
    queued = fake.graphs[prompt_id]
    assert (queued["6"]["inputs"]["text"], queued["3"]["inputs"]["seed"], queued["3"]["inputs"]["steps"]) == ("A castle at dusk", 7, 30)
    # Its progress, from ComfyUI's websocket, showed on the job while it ran (job.progress events).
    shown = [event.state["at_provider"] for event in JobEvent.objects.filter(job_id=job.job_id, event="progress").order_by("id")]
    assert any(at["status"] == "running" and (at["progress"] or 0) > 0 for at in shown), shown


# --- In this process --------------------------------------------------------------------------------

def test_the_job_is_put_into_the_workflows_node_inputs_and_the_rest_of_the_graph_is_sent_as_it_is(fake):
    call = a_call(fake, params={"seed": 42, "steps": 30, "width": 768, "seconds": 5},
                  inputs={"negative_prompt": "blurry"}, input_map={"defaults": {"cfg": 4.5, "height": 512}})
    accepted = submit(call)

    sent = fake.asked("POST", "/prompt")[0].json
    assert sent["client_id"] == str(call.job_id) and sent["prompt_id"] == accepted.provider_job_id
    expected = copy.deepcopy(GRAPH)
    expected["6"]["inputs"]["text"] = "A castle at dusk"
    expected["3"]["inputs"].update(seed=42, steps=30, cfg=4.5)  # cfg: provider_input's default
    expected["5"]["inputs"].update(width=768, height=512)
    expected["7"]["inputs"]["text"] = "blurry"  # a job input
    assert sent["prompt"] == expected == fake.graphs[accepted.provider_job_id]  # "seconds" is named nowhere: not sent
    assert WORKFLOW["graph"] == GRAPH and GRAPH["6"]["inputs"]["text"] == ""  # the model's own graph is untouched
    assert accepted.status_url == f"{fake.url}/history/{accepted.provider_job_id}"
    assert accepted.data == {"client_id": str(call.job_id), "seed": 42}


def test_a_file_of_ours_is_uploaded_to_comfyui_and_its_load_image_node_takes_the_name_it_got(fake, tmp_path):
    image = tmp_path / "kept.png"
    image.write_bytes(PNG)
    kept = KeptFile(name="0d6f5c4e-kept.png", content_type="image/png", open=lambda: image.open("rb"))
    graph = {**GRAPH, "10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}}}
    call = a_call(fake, inputs={"input_image": kept},
                  workflow={**WORKFLOW, "graph": graph, "inputs": {"input_image": ["10", "image"]}})
    submit(call)
    submit(call)  # the same job's submit again (a retry): the same file, overwritten, not a second copy

    [upload, _] = fake.asked("POST", "/upload/image")
    assert upload.form()[0] == {"type": "input", "overwrite": "true"}
    assert fake.files == {("", "0d6f5c4e-kept.png", "input"): PNG}
    assert [graph["10"]["inputs"]["image"] for graph in fake.graphs.values()] == ["0d6f5c4e-kept.png"]


def test_a_load_image_naming_a_file_comfyui_does_not_have_is_refused_in_its_words(fake):
    graph = {**GRAPH, "10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}}}
    with pytest.raises(RunnerError) as refused:
        submit(a_call(fake, workflow={**WORKFLOW, "graph": graph}))
    assert "node 10 (LoadImage): Custom validation failed for node: image - Invalid image file: example.png" in str(refused.value)


def test_a_job_without_a_seed_gets_its_own_the_same_at_each_attempt(fake):
    first, second = a_call(fake), a_call(fake)
    seeds = [submit(call).data["seed"] for call in (first, second, first)]
    assert seeds[0] == first.job_id.int % 2**32 and seeds[0] == seeds[2] != seeds[1]
    assert [graph["3"]["inputs"]["seed"] for graph in fake.graphs.values()] == seeds[:2]  # first's twice: one id


def test_an_older_server_that_makes_its_own_prompt_id_is_followed_by_that_id(fake):
    fake.legacy = True
    call = a_call(fake)
    accepted = submit(call)
    assert accepted.provider_job_id != fake.asked("POST", "/prompt")[0].json["prompt_id"]
    assert list(fake.graphs) == [accepted.provider_job_id]
    assert ask(call, accepted)[0].state == "running"


@pytest.mark.parametrize("change, words", [
    ({"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_turbo.safetensors"}}},
     "prompt_outputs_failed_validation: Prompt outputs failed validation; node 4 (CheckpointLoaderSimple): "
     "Value not in list: ckpt_name: 'sd_xl_turbo.safetensors' not in "
     "['sd_xl_base_1.0.safetensors', 'v1-5-pruned-emaonly.safetensors']"),
    ({"9": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}}},
     "invalid_prompt: Cannot execute because node SaveImageWebsocket does not exist. (Node ID '#9')"),
])
def test_a_prompt_comfyui_refuses_fails_the_job_in_its_words(fake, change, words):
    call = a_call(fake, workflow={**WORKFLOW, "graph": {**GRAPH, **change}})
    with pytest.raises(RunnerError) as refused:
        submit(call)
    assert str(refused.value) == f"Provider refused the request (HTTP 400): {words}"
    assert fake.graphs == {}


def test_a_prompt_that_fails_while_running_fails_the_job_with_comfyuis_execution_error(fake):
    call = a_call(fake, params={"width": 4096, "height": 4096, "steps": 1})  # more than the fake's GPU holds
    with pytest.raises(RunnerError) as failed:
        HttpRunner().run(call)
    prompt_id = str(uuid5(call.job_id, "attempt:1"))
    assert str(failed.value) == (f"Provider job {prompt_id} failed: torch.OutOfMemoryError: Allocation on device 0 would "
                                 "exceed allowed memory. (out of memory) (node 3, KSampler)")


def test_waiting_prompts_are_queued_with_their_place_then_running_and_one_queue_answer_serves_them_all(fake):
    calls = [a_call(fake, params={"steps": 10}) for _ in range(3)]  # a second each
    first, second, third = (submit(call) for call in calls)

    states = ask(calls[0], third, second, first, pooled=True)
    assert [(status.state, status.queue_position) for status in states] == [("queued", 1), ("queued", 0), ("running", None)]
    assert len(fake.asked("GET", "/queue")) == 1  # three polls due together, one question of the queue

    wait_until(lambda: ask(calls[0], second)[0].state == "running", timeout=10, message="the second prompt to run")
    assert ask(calls[0], first)[0].state == "succeeded"
    assert [(status.state, status.queue_position) for status in ask(calls[0], third)] == [("queued", 0)]


@pytest.mark.parametrize("legacy", [False, True], ids=["progress-names-its-prompt", "older-server-names-none"])
def test_a_running_prompts_progress_grows_from_comfyuis_websocket_and_shows_in_its_status(fake, legacy):
    fake.legacy = legacy  # an older server's progress names no prompt: the one /queue shows running is meant
    blocker, call = a_call(fake, params={"steps": 5}), a_call(fake, params={"steps": 20})  # 0.5 s, then 2 s
    submit(blocker)
    accepted = submit(call)

    seen = watch(call, accepted)
    assert seen[0].state == "queued" and seen[-1].state == "succeeded"
    assert all(status.progress is None for status in seen if status.state != "running")
    progress = [status.progress for status in seen if status.state == "running"]
    shown = [value for value in progress if value is not None]
    assert len(shown) >= 3 and shown == sorted(shown) and 0 < shown[0] < shown[-1] <= 1, progress
    assert all(round(value * 20, 6) == round(value * 20) for value in shown)  # value/max of its KSampler's 20 steps
    # One socket, as the client that queued the prompt (the job), opened once it ran, closed at its end.
    assert [request.query for request in fake.asked("GET", "/ws")] == [{"clientId": str(call.job_id)}]
    assert not [key for key in COMFYUI._sockets if key[2] == str(call.job_id)]
    wait_until(lambda: fake.sockets == {}, timeout=5, message="the websocket to close")


def test_without_comfyuis_websocket_a_prompt_shows_no_progress_and_still_completes(fake):
    fake.websocket_enabled = False  # a proxy in front that passes no websockets: /ws is 404
    call = a_call(fake, params={"steps": 30})  # 3 s, polled every 0.05 s
    seen = watch(call, submit(call))
    assert [status.state for status in seen if status.state != "running"] == ["succeeded"]
    assert {status.progress for status in seen} == {None}
    running = [status for status in seen if status.state == "running"]
    assert WS_REOPEN > 3 and len(fake.asked("GET", "/ws")) == 1 < len(running)  # not tried at each poll

    call = a_call(fake, params={"steps": 5})  # a worker's step, waiting here: it completes as ever
    assert HttpRunner().run(call)["output"]["9"]["images"][0]["filename"].endswith(".png")


def test_a_step_waiting_in_its_worker_reads_progress_and_closes_its_socket_when_the_prompt_ends(fake, caplog):
    call = a_call(fake, params={"steps": 10})
    with caplog.at_level("INFO", logger="coordination.runners.http"):
        assert HttpRunner().run(call)["provider_job_id"] == str(uuid5(call.job_id, "attempt:1"))
    assert any(re.search(r" at [1-9][0-9]*%$", record.getMessage()) for record in caplog.records)  # its progress, logged
    assert [request.query for request in fake.asked("GET", "/ws")] == [{"clientId": str(call.job_id)}]
    wait_until(lambda: fake.sockets == {}, timeout=5, message="the worker's websocket to close")


def test_a_prompt_that_ends_between_the_history_and_the_queue_answers_is_read_from_its_history(fake):
    class Racing(FakeComfyUI):
        """Its prompt ends the moment its queue is asked for (the history has just said {})."""
        clock = 0.0

        def now(self):
            return self.clock

        def answer(self, request):
            if request.path == "/queue" and request.method == "GET" and self.clock == 0.0:
                self.clock = 100.0
            return super().answer(request)

    racing = Racing(seconds=10).start()
    try:
        call = a_call(racing)
        status = ask(call, submit(call))[0]
    finally:
        racing.stop()
    assert status.state == "succeeded"
    assert [(r.method, r.path.split("/")[1]) for r in racing.requests[1:]] == [
        ("GET", "history"), ("GET", "queue"), ("GET", "queue"), ("GET", "history")]


def test_cancelling_a_pending_prompt_deletes_it_from_the_queue_and_leaves_the_running_one_alone(fake):
    call = a_call(fake, params={"steps": 600})
    running, pending = submit(call), submit(a_call(fake))

    assert cancel(call, pending) is True
    assert fake.asked("POST", "/queue")[0].json == {"delete": [pending.provider_job_id]}
    assert fake.interrupts == [] and not fake.pending
    assert [(status.state, status.error) for status in ask(call, pending, running)] == [
        ("cancelled", "Deleted from ComfyUI's queue: it is neither queued, running nor in its history"), ("running", None)]


def test_a_prompt_queued_twice_under_its_id_by_a_resent_submit_is_deleted_in_both_copies(fake):
    blocker, call = a_call(fake, params={"steps": 600}), a_call(fake)
    submit(blocker)
    accepted, again = submit(call), submit(call)  # the same attempt sent twice: one prompt id
    assert again.provider_job_id == accepted.provider_job_id and len(fake.pending) == 2

    assert cancel(call, accepted) is True
    assert fake.asked("POST", "/queue")[0].json == {"delete": [accepted.provider_job_id] * 2}
    assert not fake.pending


def test_cancelling_a_running_prompt_interrupts_it_and_is_confirmed_once_it_has_left_the_queue(fake):
    call = a_call(fake, params={"steps": 600})
    running, pending = submit(call), submit(a_call(fake))

    assert cancel(call, running) is False  # interrupted, not yet seen gone
    assert fake.interrupts == [running.provider_job_id]
    assert cancel(call, running) is True
    assert fake.interrupts == [running.provider_job_id]  # not sent again: it no longer runs
    ended, next_one = ask(call, running, pending)
    assert (ended.state, ended.error) == ("cancelled", "Interrupted in ComfyUI (node 3, KSampler)")
    assert next_one.state == "running"


@pytest.mark.django_db
def test_the_catalog_takes_a_comfyui_model_with_a_server_and_a_workflow_and_refuses_one_without_a_server():
    model = CatalogModel(name="sdxl-comfyui", media_type="image", runner="http", provider="comfyui", provider_workflow=WORKFLOW)
    with pytest.raises(ValidationError) as refused:
        model.full_clean()
    assert refused.value.message_dict == {"provider_base_url": [
        "A ComfyUI model needs provider_base_url: the server's address, e.g. http://127.0.0.1:8188."]}
    model.provider_base_url = "http://127.0.0.1:8188"
    model.full_clean()

