"""`comfyui`: a team's own ComfyUI server (the model's provider_base_url), running the model's workflow
(provider_workflow, shape in provider_catalog.workflow_problems) with the job's values put in it.
ComfyUI has no credentials, no webhooks and no status of one prompt: what it says is read from its
history and its queue (facts: ../shared/PROVIDERS.md, ComfyUI's server.py and execution.py).

- **Submit**: `POST {url}/prompt` `{"prompt": <the graph, patched>, "client_id": <job id>, "prompt_id":
  <uuid5 of the job id and attempt>}` (a server too old to take a prompt_id makes its own: the one it
  answers is used). Patched: `prompt` takes the job's prompt; `seed` takes params.seed, else a seed of
  the job's own (from its id: a new one per job, the same for its retries); each name in `params` and
  `inputs` takes the job's field of that name, read as every adapter reads the job (mapped_input:
  after provider_input's rename and defaults); fields the workflow does not name are not sent. A file of
  ours among them (an input file, a workflow step's kept file) is first uploaded (`POST /upload/image`)
  and its node input takes the name ComfyUI gave it (a LoadImage node's `image`).
  200 `{"prompt_id", "number", "node_errors"}` → the prompt to watch; 400 `{"error", "node_errors"}`
  → the job fails in ComfyUI's words (its error's type and message, each node's errors).
- **Status**: `GET /history/{prompt_id}` is `{}` until the prompt ended; then `status.status_str`
  success → succeeded (output: the entry's `outputs`; files: each `images`/`gifs`/`videos`/`audio`
  item as `{url}/view?filename=&subfolder=&type=`), `execution_interrupted` among its messages →
  cancelled, else failed with the `execution_error`'s words. Until then `GET /queue` says queued (its
  place among the pending, 0 next) or running; in neither, it ended between the two questions (history
  is asked again) or was deleted from the queue (cancelled). One `/queue` answer, which lists every
  prompt's graph, serves all the polls of a server within QUEUE_SHARED_FOR seconds.
- **Progress**: ComfyUI sends a prompt's `progress {value, max, prompt_id, node}` (each step of the node
  sampling now) only over its websocket, to the socket of the client_id that queued it: the job's id.
  While `ask` sees a job's prompt running it keeps one websocket open as that client
  (`ws[s]://{url}/ws?clientId=<job id>`), read in the background of the asking event loop (the
  poller's, a worker thread's): ComfyUI runs one prompt at a time, so that is one socket per server.
  Its text frames (binary previews ignored) give each prompt's latest value/max (an older server's
  names no prompt: it is the running one's, as /queue said), which a running Status carries. The
  prompt's end or cancel closes it, as does WS_IDLE seconds without a question. Only progress depends
  on it: a socket that cannot open, or closes, leaves progress None (it is opened again at most every
  WS_REOPEN seconds) and `ask` never waits for it. One socket per job, not one fixed client_id for
  all: ComfyUI keeps one socket per clientId (a second takes the first one's place, and the first
  one's close then drops the second), so pollers and worker threads sharing one would silence one
  another; nor none: ComfyUI would then send its progress to every socket, people's browsers too.
- **Cancel**: pending → `POST /queue {"delete": [id]}`; running → `POST /interrupt {"prompt_id": id}`
  (an older server interrupts whatever runs: it is sent only while the queue shows this prompt
  running). Confirmed once the prompt is in neither list.
"""

import asyncio
import copy
import logging
import time
from urllib.parse import urlencode
from uuid import uuid5

from coordination.runners import client as http
from coordination.runners.adapters.base import Adapter, confirmed, json_headers, mapped_input, submitted
from coordination.runners.base import KeptFile, Provider, RunnerCall, RunnerError
from coordination.runners.client import Accepted, Status
from coordination.runners.adapters.comfyui_progress import WS_CLOSE_WAIT, WS_IDLE, WS_REOPEN, Listening, websocket_url
from coordination.runners.results import guessed_type

QUEUE_SHARED_FOR = 1.0  # seconds one /queue answer serves the polls of its server
FILE_KEYS = ("images", "gifs", "videos", "audio")  # where a node's outputs list files (SaveImage, VHS, ...)
SEED_RANGE = 2**32  # a job's own seed is below this: within what seed inputs take (KSampler's: below 2**64)

logger = logging.getLogger(__name__)


def prompt_graph(call: RunnerCall, provider: Provider, fields: dict) -> tuple[dict, int | None]:
    """The workflow's graph with the job's values in it (`fields`: mapped_input, its files uploaded),
    and the seed it got (None: no seed input)."""
    workflow = provider.workflow
    if not isinstance(workflow, dict) or not isinstance(workflow.get("graph"), dict):
        raise RunnerError(f"Model {call.model} has no provider_workflow: the graph ComfyUI is to run")
    graph = copy.deepcopy(workflow["graph"])

    def put(ref, value) -> None:
        node, name = ref
        graph[node]["inputs"][name] = value

    put(workflow["prompt"], call.prompt)
    seed = None
    if "seed" in workflow:
        seed = fields.get(provider.input_map.get("rename", {}).get("seed", "seed"))
        if seed is None:
            seed = call.job_id.int % SEED_RANGE
        put(workflow["seed"], seed)
    for name, ref in {**workflow.get("params", {}), **workflow.get("inputs", {})}.items():
        if name in fields:
            put(ref, fields[name])
    return graph, seed


def refusal(body) -> str:
    """A 400 from /prompt in ComfyUI's words: its error's type and message, then each node's errors
    (a node's errors say more than the error's details, which repeat them)."""
    if not isinstance(body, dict) or "error" not in body:
        return http.message_of(body)
    error, nodes = body["error"], body.get("node_errors")
    nodes = nodes if isinstance(nodes, dict) else {}
    if isinstance(error, dict):
        said = f"{error.get('type')}: {error.get('message')}"
        if error.get("details") and not nodes:
            said += f" ({error['details']})"
    else:
        said = str(error)  # an older server's "no prompt"
    for node, problem in nodes.items():
        if isinstance(problem, dict):
            reasons = [f"{item.get('message')}: {item['details']}" if item.get("details") else str(item.get("message"))
                       for item in problem.get("errors") or [] if isinstance(item, dict)]
            said += f"; node {node} ({problem.get('class_type', '?')}): {', '.join(reasons)}"
    return said[:http.MESSAGE_LIMIT]


def queue_read(body) -> tuple[list[str], list[str]]:
    """GET /queue: the ids of the prompts running, and of those pending in the order they will run
    (ComfyUI lists its heap as it stands: the lowest number runs first)."""
    if not (isinstance(body, dict) and isinstance(body.get("queue_running"), list) and isinstance(body.get("queue_pending"), list)):
        raise RunnerError(f"ComfyUI's /queue answered what it should not: {http.message_of(body)}")
    items = [item for item in body["queue_pending"] if isinstance(item, list) and len(item) > 1]
    pending = [str(item[1]) for item in sorted(items, key=lambda item: item[0] if isinstance(item[0], (int, float)) else 0)]
    return [str(item[1]) for item in body["queue_running"] if isinstance(item, list) and len(item) > 1], pending


def files_of(outputs, server: str) -> list[dict]:
    """Every file the prompt's nodes listed, as the URL ComfyUI serves it at."""
    files = []
    for node_output in outputs.values() if isinstance(outputs, dict) else ():
        for key in FILE_KEYS:
            items = node_output.get(key) if isinstance(node_output, dict) else None
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    query = urlencode({"filename": item["filename"], "subfolder": item.get("subfolder") or "",
                                       "type": item.get("type") or "output"})
                    files.append({"url": f"{server}/view?{query}", "content_type": guessed_type(item["filename"])})
    return files


def _entry(history, run) -> dict | None:
    entry = history.get(run.provider_job_id) if isinstance(history, dict) else None
    return entry if isinstance(entry, dict) else None


def _client_id(run) -> str:
    data = run.data if isinstance(run.data, dict) else {}
    return str(data.get("client_id") or run.job_id)


def _said(data: dict, what: str) -> str:
    node = f" (node {data.get('node_id')}, {data.get('node_type')})" if data.get("node_id") is not None else ""
    return f"{what}{node}"


class ComfyUI(Adapter):
    kind = "comfyui"

    def __init__(self):
        # (event loop id, server) -> (when asked, the answer's task): one /queue question per server
        # for every poll within QUEUE_SHARED_FOR, in each event loop (the poller's, a worker thread's).
        self._queues: dict[tuple[int, str], tuple[float, asyncio.Task]] = {}
        # (event loop id, server, client id) -> its websocket: the progress of the prompt running there.
        self._sockets: dict[tuple[int, str, str], Listening] = {}

    async def submit(self, client, call: RunnerCall, *, deadline: float, callback_url: str | None):
        provider = call.provider
        fields = await self.uploaded(client, provider, mapped_input(call, provider), deadline=deadline)
        graph, seed = prompt_graph(call, provider, fields)
        client_id = str(call.job_id)
        body = {"prompt": graph, "client_id": client_id, "prompt_id": str(uuid5(call.job_id, f"attempt:{call.attempt}"))}
        answer = await submitted(client, f"{provider.url}/prompt", provider=provider, deadline=deadline,
                                 headers=json_headers(), json=body, words=refusal)
        if not isinstance(answer, dict) or not answer.get("prompt_id"):
            raise RunnerError(f"ComfyUI answered no prompt_id: {http.message_of(answer)}")
        prompt_id = str(answer["prompt_id"])
        data = {"client_id": client_id, **({"seed": seed} if seed is not None else {}),
                **({"node_errors": answer["node_errors"]} if answer.get("node_errors") else {})}
        return Accepted(prompt_id, f"{provider.url}/history/{prompt_id}", Status("queued"), data=data, job_id=call.job_id)

    async def upload(self, client, provider: Provider, kept: KeptFile, *, deadline: float) -> str:
        """`POST /upload/image` (multipart: `image`, type input, overwrite, so a retried upload is the
        same file) → `{"name", "subfolder", "type"}`; what a LoadImage node's `image` takes: the name,
        after its subfolder if any."""
        with kept.open() as data:
            answer = await http.request(client, "POST", f"{provider.url}/upload/image", provider=provider,
                                        deadline=deadline, headers=json_headers(),
                                        data={"type": "input", "overwrite": "true"},
                                        files={"image": (kept.name, data, kept.content_type)})
        if not isinstance(answer, dict) or not isinstance(answer.get("name"), str) or not answer["name"]:
            raise RunnerError(f"ComfyUI's /upload/image answered no file name: {http.message_of(answer)}")
        subfolder = answer.get("subfolder") or ""
        return f"{subfolder}/{answer['name']}" if subfolder else answer["name"]

    def status_request(self, client, provider: Provider, run):
        return client.build_request("GET", run.status_url, headers=json_headers())

    def status_from(self, body, run) -> Status:
        """What its history says of an ended prompt (ask reads the queue while there is none)."""
        entry = _entry(body, run)
        if entry is None:
            return Status("queued")
        status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
        events = {message[0]: message[1] if isinstance(message[1], dict) else {}
                  for message in status.get("messages") or [] if isinstance(message, list) and len(message) == 2}
        if "execution_interrupted" in events:
            return Status("cancelled", error=_said(events["execution_interrupted"], "Interrupted in ComfyUI"))
        if status.get("status_str") == "error" or "execution_error" in events:
            data = events.get("execution_error", {})
            words = ": ".join(str(data[key]) for key in ("exception_type", "exception_message") if data.get(key))
            return Status("failed", error=_said(data, words or "ComfyUI ended the prompt with an error")[:http.MESSAGE_LIMIT])
        server = run.status_url.rsplit("/history/", 1)[0]
        outputs = entry.get("outputs") or {}
        return Status("succeeded", outputs, files=files_of(outputs, server))

    async def ask(self, client, provider: Provider, run, *, request, timeout: float) -> Status:
        history = await http.send(client, request, timeout=timeout)
        if _entry(history, run) is not None:
            await self._let_go(provider.url, run)
            return self.status_from(history, run)
        prompt_id = run.provider_job_id
        running, pending = await self._queue(client, provider.url, timeout=timeout, shared=True)
        if prompt_id not in running and prompt_id not in pending:
            # In neither list: it ended after the history answered (asked again, after a queue read
            # of our own: a shared one may predate the submit), or it was deleted from the queue.
            running, pending = await self._queue(client, provider.url, timeout=timeout, shared=False)
            if prompt_id not in running and prompt_id not in pending:
                history = await http.send(client, request, timeout=timeout)
                await self._let_go(provider.url, run)
                if _entry(history, run) is not None:
                    return self.status_from(history, run)
                return Status("cancelled", error="Deleted from ComfyUI's queue: it is neither queued, running nor in its history")
        if prompt_id in running:
            return Status("running", progress=self._progress(provider.url, run, prompt_id))
        return Status("queued", queue_position=pending.index(prompt_id))

    def _progress(self, server: str, run, prompt_id: str) -> float | None:
        """The running prompt's progress as its websocket last said it (None: not yet, or no websocket).
        The websocket is opened here when it is not open, in the background: this never waits for it."""
        loop, now = asyncio.get_running_loop(), time.monotonic()
        key = (id(loop), server, _client_id(run))
        listening = self._sockets.get(key)
        if listening is None or listening.loop is not loop:
            for stale, other in list(self._sockets.items()):
                if (other.task is None or other.task.done()) and now - other.asked_at > WS_IDLE:
                    self._sockets.pop(stale, None)
            listening = self._sockets[key] = Listening(loop)
        listening.asked_at = now
        if (listening.task is None or listening.task.done()) and now - listening.opened_at >= WS_REOPEN:
            listening.opened_at = now
            ssl = http._tls_context() if server.startswith("https:") else True
            listening.task = loop.create_task(listening.listen(websocket_url(server, key[2]), ssl))
        return listening.of(prompt_id)

    async def _let_go(self, server: str, run) -> None:
        """The job's prompt ended (or is being cancelled): its websocket in this loop is closed."""
        loop = asyncio.get_running_loop()
        listening = self._sockets.pop((id(loop), server, _client_id(run)), None)
        if listening is not None and listening.loop is loop and listening.task is not None and not listening.task.done():
            listening.task.cancel()
            await asyncio.wait({listening.task}, timeout=WS_CLOSE_WAIT)

    async def _queue(self, client, server: str, *, timeout: float, shared: bool) -> tuple[list[str], list[str]]:
        async def asked():
            request = client.build_request("GET", f"{server}/queue", headers=json_headers())
            return queue_read(await http.send(client, request, timeout=timeout))

        if not shared:
            return await asked()
        loop, now = asyncio.get_running_loop(), time.monotonic()
        key = (id(loop), server)
        held = self._queues.get(key)
        if held is None or now - held[0] > QUEUE_SHARED_FOR or held[1].get_loop() is not loop:
            for stale, (at, _) in list(self._queues.items()):
                if now - at > QUEUE_SHARED_FOR:
                    self._queues.pop(stale, None)
            task = loop.create_task(asked())
            task.add_done_callback(lambda done: done.cancelled() or done.exception())  # read, whoever waits
            held = self._queues[key] = (now, task)
        return await asyncio.shield(held[1])  # one poll stopped does not stop the others' answer

    async def cancel(self, client, provider: Provider, run) -> bool:
        prompt_id = run.provider_job_id
        await self._let_go(provider.url, run)  # its progress is no longer wanted
        where = await self._queue_now(client, provider)
        if where is not None and prompt_id in where[1]:
            # Every copy under this id (queued twice, from ComfyUI's own UI say).
            await confirmed(client, "POST", f"{provider.url}/queue", headers=json_headers(),
                            json={"delete": [prompt_id] * where[1].count(prompt_id)})
            where = await self._queue_now(client, provider)  # it may have started meanwhile
        if where is not None and prompt_id in where[0]:
            await confirmed(client, "POST", f"{provider.url}/interrupt", headers=json_headers(), json={"prompt_id": prompt_id})
            return False  # confirmed at a later cancel, once it is in neither list
        return where is not None and prompt_id not in where[1]

    async def _queue_now(self, client, provider: Provider) -> tuple[list[str], list[str]] | None:
        """The queue as it stands, for a cancel (None: no answer, or not one it understood)."""
        answer = await confirmed(client, "GET", f"{provider.url}/queue", headers=json_headers())
        try:
            return queue_read(answer.json()) if answer is not None and answer.is_success else None
        except (ValueError, RunnerError):
            return None
