"""A ComfyUI server on 127.0.0.1, from its server.py and execution.py (../shared/PROVIDERS.md,
ComfyUI): the routes a client of its API uses, its answers and its one-at-a-time queue.

- `POST /prompt {"prompt", "client_id"?, "prompt_id"?, "number"?, "front"?}` validates the graph as
  ComfyUI does, in its words: 400 `no_prompt`; `invalid_prompt` for a node without `class_type` or of a
  class it does not know (NODES); `prompt_no_outputs` without an output node (OUTPUT_NODES);
  `prompt_outputs_failed_validation` with `node_errors` for a `ckpt_name` not in `checkpoints`. Else
  200 `{"prompt_id", "number", "node_errors": {}}` and the prompt is queued (the client's prompt_id
  kept, unless `legacy`: an older server, which makes its own).
- One prompt runs at a time, the lowest `number` first. It takes `step_seconds` x its KSampler's
  `steps` (else `seconds`), then goes to its history: success, with each output node's files; or, when
  its EmptyLatentImage is larger than `max_pixels`, an `execution_error` at its KSampler (out of memory).
- `GET /queue`, `GET /history/{id}` (`{}` until it ended), `POST /queue {"delete": [ids]}` (each id
  removes its first match) or `{"clear": true}`, `POST /interrupt {"prompt_id"?}` (only that prompt if
  it runs; `legacy`: whatever runs), `GET /view?filename&subfolder&type` (the bytes of a file it made),
  `GET /prompt` (`exec_info.queue_remaining`), `POST /upload/image` (multipart `image`, `type`,
  `subfolder`, `overwrite` → `{"name", "subfolder", "type"}`; a LoadImage node's `image` must name an
  input file it has, else `custom_validation_failed`). Every route also under `/api`.
- `GET /ws?clientId=` (a websocket; `websocket_enabled=False`: 404, as behind a proxy that passes none):
  `status` when it opens; then, as ComfyUI sends them to the client_id that queued the running prompt,
  `execution_start`, `executing` (its KSampler), `progress {value, max, prompt_id, node}` per step of its
  KSampler (`legacy`: no prompt_id), `executing {node: null}` and its end (`execution_success`,
  `execution_error`, `execution_interrupted`); a prompt queued without a client_id: its `progress` to
  every socket, nothing else (ComfyUI's add_message). A socket opened again under a clientId takes the
  old one's place, and the one that closes removes the clientId's socket, whichever it is (ComfyUI's).
- `graphs`: each graph it queued, by prompt id, as a test asserts what the job put in it.
"""

import heapq
import json
import time
import uuid
from dataclasses import dataclass, field

from bench.fakes.base import Answer, FakeServer, Request, WebSocket

NODES = {"CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "EmptyLatentImage", "VAEDecode", "SaveImage",
         "PreviewImage", "LoadImage", "VHS_VideoCombine"}
OUTPUT_NODES = {"SaveImage": ("images", ".png", "output"), "PreviewImage": ("images", ".png", "temp"),
                "VHS_VideoCombine": ("gifs", ".mp4", "output")}
PNG = b"\x89PNG\r\n\x1a\n" + b"fake ComfyUI image"
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"fake ComfyUI video"


@dataclass
class Prompt:
    number: float
    id: str
    graph: dict
    extra_data: dict
    outputs: list
    started: float | None = None
    steps_said: int = 0  # the KSampler steps whose progress was sent

    def item(self) -> list:
        """As ComfyUI lists a queue item: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
        return [self.number, self.id, self.graph, self.extra_data, self.outputs]

    def __lt__(self, other: "Prompt") -> bool:
        return self.number < other.number


@dataclass
class FakeComfyUI(FakeServer):
    seconds: float = 1.0
    step_seconds: float | None = None  # a KSampler's steps times this, when set
    max_pixels: int = 2048 * 2048
    checkpoints: tuple = ("sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors")
    legacy: bool = False
    graphs: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    pending: list = field(default_factory=list)  # a heap of Prompt, as ComfyUI's
    running: Prompt | None = None
    files: dict = field(default_factory=dict)  # (subfolder, filename, type) -> bytes
    interrupts: list = field(default_factory=list)  # the prompt ids an interrupt named (None: global)
    number: int = 0
    websocket_enabled: bool = True
    sockets: dict = field(default_factory=dict)  # clientId -> its WebSocket, as ComfyUI's self.sockets
    said: list = field(default_factory=list)  # (clientId or None: to all, message) of each message sent

    def __post_init__(self):
        FakeServer.__init__(self)

    # --- answering ------------------------------------------------------------------------------

    def answer(self, request: Request) -> Answer:
        path = request.path.removeprefix("/api")
        with self.lock:
            self._advance()
            if (request.method, path) == ("POST", "/prompt"):
                return self._prompt(request.json or {})
            if (request.method, path) == ("GET", "/prompt"):
                return Answer(200, {"exec_info": {"queue_remaining": len(self.pending) + (self.running is not None)}})
            if (request.method, path) == ("GET", "/queue"):
                return Answer(200, {"queue_running": [self.running.item()] if self.running else [],
                                    "queue_pending": [prompt.item() for prompt in self.pending]})
            if request.method == "GET" and path.startswith("/history/"):
                prompt_id = path.removeprefix("/history/")
                return Answer(200, {prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})
            if (request.method, path) == ("POST", "/queue"):
                return self._queue_change(request.json or {})
            if (request.method, path) == ("POST", "/interrupt"):
                return self._interrupt(request.json if request.raw else {})
            if (request.method, path) == ("GET", "/view"):
                return self._view(request.query)
            if (request.method, path) == ("POST", "/upload/image"):
                return self._upload(request)
        return Answer(404, raw=b"404: Not Found", headers={"Content-Type": "text/plain"})

    def takes_websocket(self, request: Request) -> bool:
        return self.websocket_enabled and request.path.removeprefix("/api") == "/ws"

    def websocket(self, request: Request, socket: WebSocket) -> None:
        sid = request.query.get("clientId") or uuid.uuid4().hex
        with self.lock:
            self.sockets[sid] = socket  # a socket under this clientId before no longer hears a thing
            queued = len(self.pending) + (self.running is not None)
        self._say("status", {"status": {"exec_info": {"queue_remaining": queued}}, "sid": sid}, sid)
        try:
            socket.serve()
        finally:
            with self.lock:
                self.sockets.pop(sid, None)

    def _say(self, event: str, data: dict, sid: str | None) -> None:
        """A message to the socket of `sid` (None: to every socket)."""
        message = json.dumps({"type": event, "data": data})
        with self.lock:
            self.said.append((sid, {"type": event, "data": data}))
            sockets = list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        for socket in sockets:
            socket.send(message)

    def _tell(self, prompt: Prompt, event: str, data: dict) -> None:
        """What ComfyUI's executor says of a prompt: to its client only, and only when it has one."""
        if prompt.extra_data.get("client_id") is not None:
            self._say(event, data, prompt.extra_data["client_id"])

    def _prompt(self, body: dict) -> Answer:
        if "prompt" not in body:
            return Answer(400, {"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                                          "extra_info": {}}, "node_errors": {}})
        graph = body["prompt"]
        error, node_errors, outputs = self._validate(graph)
        if error:
            return Answer(400, {"error": error, "node_errors": node_errors})
        number = float(body["number"]) if "number" in body else (-self.number if body.get("front") else self.number)
        if "number" not in body:
            self.number += 1
        prompt_id = str(body["prompt_id"]) if "prompt_id" in body and not self.legacy else str(uuid.uuid4())
        extra_data = {**body.get("extra_data", {}), **({"client_id": body["client_id"]} if "client_id" in body else {})}
        heapq.heappush(self.pending, Prompt(number, prompt_id, graph, extra_data, outputs))
        self.graphs[prompt_id] = graph
        self._advance()
        return Answer(200, {"prompt_id": prompt_id, "number": number, "node_errors": {}})

    def _validate(self, graph) -> tuple[dict | None, dict, list]:
        """ComfyUI's validate_prompt, for the nodes it knows: (error, node_errors, output node ids)."""
        def invalid(message: str, details: str = "") -> tuple[dict, dict, list]:
            return {"type": "invalid_prompt", "message": message, "details": details, "extra_info": {}}, {}, []

        if not isinstance(graph, dict):
            return invalid("Cannot execute because the prompt is not an object.")
        for node, spec in graph.items():
            if not isinstance(spec, dict) or "class_type" not in spec:
                return invalid("Cannot execute because a node is missing the class_type property.", f"Node ID '#{node}'")
            if spec["class_type"] not in NODES:
                return invalid(f"Cannot execute because node {spec['class_type']} does not exist.", f"Node ID '#{node}'")
        outputs = [node for node, spec in graph.items() if spec["class_type"] in OUTPUT_NODES]
        if not outputs:
            return {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}, {}, []
        node_errors = {}
        for node, spec in graph.items():
            image = spec.get("inputs", {}).get("image")
            subfolder, _, filename = str(image).rpartition("/")
            if spec["class_type"] == "LoadImage" and (subfolder, filename, "input") not in self.files:
                node_errors[node] = {"errors": [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
                                                 "details": f"image - Invalid image file: {image}", "extra_info": {}}],
                                     "dependent_outputs": outputs, "class_type": spec["class_type"]}
            name = spec.get("inputs", {}).get("ckpt_name")
            if spec["class_type"] == "CheckpointLoaderSimple" and name not in self.checkpoints:
                node_errors[node] = {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                                 "details": f"ckpt_name: '{name}' not in {list(self.checkpoints)}",
                                                 "extra_info": {"input_name": "ckpt_name", "received_value": name}}],
                                     "dependent_outputs": outputs, "class_type": spec["class_type"]}
        if node_errors:
            return ({"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                     "details": "", "extra_info": {}}, node_errors, [])
        return None, {}, outputs

    def _upload(self, request: Request) -> Answer:
        """server.py's image_upload: the `image` file into `type`'s folder (input by default) under
        `subfolder`; a name taken gets " (1)", " (2)", ... unless `overwrite` is "true" or "1"."""
        form = request.form()
        if form is None or "image" not in form[1] or not form[1]["image"][0]:
            return Answer(400, raw=b"", headers={"Content-Type": "text/plain"})
        fields, files = form
        filename, data = files["image"][0], files["image"][2]
        kind, subfolder = fields.get("type") or "input", fields.get("subfolder", "")
        if ".." in subfolder.split("/") or "/" in filename:
            return Answer(400, raw=b"", headers={"Content-Type": "text/plain"})
        if fields.get("overwrite") not in ("true", "1"):
            stem, dot, extension = filename.rpartition(".")
            stem, dot = (stem, dot) if dot else (extension, "")
            extension = extension if dot else ""
            number = 1
            while (subfolder, filename, kind) in self.files:
                filename, number = f"{stem} ({number}){dot}{extension}", number + 1
        self.files[(subfolder, filename, kind)] = data
        return Answer(200, {"name": filename, "subfolder": subfolder, "type": kind})

    def _queue_change(self, body: dict) -> Answer:
        if body.get("clear"):
            self.pending.clear()
        for prompt_id in body.get("delete", []):
            match = next((prompt for prompt in self.pending if prompt.id == prompt_id), None)
            if match is not None:
                self.pending.remove(match)
                heapq.heapify(self.pending)
        return Answer(200, raw=b"", headers={"Content-Type": "application/octet-stream"})

    def _interrupt(self, body) -> Answer:
        prompt_id = body.get("prompt_id") if isinstance(body, dict) and not self.legacy else None
        self.interrupts.append(prompt_id)
        if self.running is not None and prompt_id in (None, self.running.id):
            self._end(self.running, self.now(), interrupted=True)
            self._advance()
        return Answer(200, raw=b"", headers={"Content-Type": "application/octet-stream"})

    def _view(self, query: dict) -> Answer:
        key = (query.get("subfolder", ""), query.get("filename", ""), query.get("type", "output"))
        if key not in self.files:
            return Answer(404, raw=b"404: Not Found", headers={"Content-Type": "text/plain"})
        content_type = "video/mp4" if key[1].endswith(".mp4") else "image/png"
        return Answer(200, raw=self.files[key], headers={"Content-Type": content_type,
                                                         "Content-Disposition": f'filename="{key[1]}"'})

    # --- the prompt worker -------------------------------------------------------------------------

    def tick(self) -> None:
        with self.lock:
            if self.sockets:
                self._advance()
                if self.running is not None:
                    self._steps(self.running, self.now())

    def _steps(self, prompt: Prompt, at: float) -> None:
        """`progress` for each step of its KSampler done by `at` (to every socket: the hook sends it to
        the client_id, None or not)."""
        sampler, steps = self._sampler(prompt)
        if sampler is None:
            return
        done = min(steps, int((at - prompt.started) / max(self.duration(prompt) / steps, 1e-9) + 1e-9))
        for value in range(prompt.steps_said + 1, done + 1):
            data = {"value": value, "max": steps, **({} if self.legacy else {"prompt_id": prompt.id}), "node": sampler}
            self._say("progress", data, prompt.extra_data.get("client_id"))
        prompt.steps_said = max(prompt.steps_said, done)

    @staticmethod
    def _sampler(prompt: Prompt) -> tuple[str | None, int]:
        """Its KSampler's node id and steps."""
        node = next((node for node, spec in prompt.graph.items() if spec["class_type"] == "KSampler"), None)
        steps = prompt.graph[node]["inputs"].get("steps") if node is not None else None
        return node, steps if isinstance(steps, int) and steps > 0 else 1

    def duration(self, prompt: Prompt) -> float:
        steps = [spec["inputs"].get("steps") for spec in prompt.graph.values() if spec["class_type"] == "KSampler"]
        if self.step_seconds is not None and steps and isinstance(steps[0], (int, float)):
            return steps[0] * self.step_seconds
        return self.seconds

    def _advance(self) -> None:
        """Run the queue up to now: each prompt ends `duration` after it started, the next starts then."""
        now = free_since = self.now()
        while True:
            if self.running is not None:
                ends = self.running.started + self.duration(self.running)
                if ends > now:
                    return
                self._end(self.running, ends)
                free_since = ends
            if not self.pending:
                return
            self.running = heapq.heappop(self.pending)
            self.running.started = free_since
            sampler, _ = self._sampler(self.running)
            self._tell(self.running, "execution_start", {"prompt_id": self.running.id, "timestamp": int(time.time() * 1000)})
            if sampler is not None:
                self._tell(self.running, "executing", {"node": sampler, "display_node": sampler, "prompt_id": self.running.id})

    def _end(self, prompt: Prompt, at: float, *, interrupted: bool = False) -> None:
        self.running = None
        graph = prompt.graph
        started = {"prompt_id": prompt.id, "timestamp": int(prompt.started * 1000)}
        messages = [["execution_start", started], ["execution_cached", {"nodes": [], **started}]]
        sampler = next((node for node, spec in graph.items() if spec["class_type"] == "KSampler"), None)
        latent = next((spec["inputs"] for spec in graph.values() if spec["class_type"] == "EmptyLatentImage"), {})
        pixels = int(latent.get("width", 512)) * int(latent.get("height", 512))
        outputs, node_of = {}, {"prompt_id": prompt.id, "executed": [], "timestamp": int(at * 1000)}
        if interrupted:
            messages.append(["execution_interrupted", {**node_of, "node_id": sampler, "node_type": "KSampler"}])
        elif sampler is not None and pixels > self.max_pixels:
            messages.append(["execution_error", {
                **node_of, "node_id": sampler, "node_type": "KSampler", "exception_type": "torch.OutOfMemoryError",
                "exception_message": "Allocation on device 0 would exceed allowed memory. (out of memory)",
                "traceback": ["..."], "current_inputs": {}, "current_outputs": {}}])
        else:
            outputs = self._outputs(prompt, int(latent.get("batch_size", 1)))
            messages.append(["execution_success", {"prompt_id": prompt.id, "timestamp": int(at * 1000)}])
        ok = not interrupted and messages[-1][0] == "execution_success"
        if ok:
            self._steps(prompt, at)
            self._tell(prompt, "executing", {"node": None, "prompt_id": prompt.id})
        self._tell(prompt, *messages[-1])
        self._say("status", {"status": {"exec_info": {"queue_remaining": len(self.pending)}}}, None)
        self.history[prompt.id] = {
            "prompt": prompt.item(), "outputs": outputs, "meta": {},
            "status": {"status_str": "success" if ok else "error", "completed": ok, "messages": messages},
        }

    def _outputs(self, prompt: Prompt, batch: int) -> dict:
        outputs = {}
        for node in prompt.outputs:
            key, suffix, kind = OUTPUT_NODES[prompt.graph[node]["class_type"]]
            prefix = prompt.graph[node]["inputs"].get("filename_prefix", "ComfyUI")
            items = []
            for _ in range(batch if key == "images" else 1):
                name = f"{prefix}_{len(self.files) + 1:05}_{suffix}"
                self.files[("", name, kind)] = MP4 if suffix == ".mp4" else PNG
                items.append({"filename": name, "subfolder": "", "type": kind})
            outputs[node] = {key: items}
        return outputs
