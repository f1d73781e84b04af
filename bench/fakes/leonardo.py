"""A fake of Leonardo.ai's REST API (v1), from its documentation (../shared/PROVIDERS.md, Leonardo):

- `POST /api/rest/v1/generations` (an image model's `modelId`, `num_images` 1-8: 4 when not given, as
  Leonardo's SDK defaults it) → `{"sdGenerationJob": {"generationId", "apiCreditCost"}}`;
  `POST /api/rest/v1/generations-text-to-video` and `/generations-image-to-video` (`imageId` and
  `imageType` GENERATED or UPLOADED) with `model` MOTION2 (the default), MOTION2FAST, VEO3, VEO3FAST,
  KLING2_1 or KLING2_5 → `{"motionVideoGenerationJob": {"generationId", "apiCreditCost"}}`.
- `GET /api/rest/v1/generations/{id}` → `{"generations_by_pk": {id, status, prompt, modelId, createdAt,
  generated_images: [{id, url, nsfw, likeCount, motionMP4URL}]}}`, status PENDING, COMPLETE or FAILED;
  `DELETE` the same path → `{"delete_generations_by_pk": {"id"}}`.
- `POST /api/rest/v1/init-image {"extension": png|jpg|jpeg|webp}` → `{"uploadInitImage": {"id", "url",
  "fields" (a JSON string), "key"}}`: a presigned S3 form. `POST /uploads` (its `url`; no key, as S3)
  takes the form, its `key` field naming the init image and its `file` last, and answers 204. A
  generation naming an init image (`init_image_id`, or `imageId` with `imageType` UPLOADED) that was
  never uploaded is refused (400); `init_images` holds each one's bytes.
- Every /api route wants `authorization: Bearer <api_key>`; without it, 401 and Leonardo's documented
  body. The generated files are served at `/files/{generation id}/{n}.jpg|mp4` with no key, as a CDN.
- A generation is PENDING while it waits for one of `concurrency` places (10, Leonardo's default) and
  for `seconds` once it has one; then COMPLETE, or FAILED when asked. A body's own `seconds` and `fail`
  (fields of the tests, not Leonardo's) set them per generation.
- `limit(n)` answers the next n requests 429; so does a submit beyond `concurrency` + `queue` (200)
  generations pending.
- With `webhook_url`, each COMPLETE generation is POSTed there as Leonardo's webhook
  (`image_generation.complete`, with `authorization: Bearer <webhook_key>` when one is set).

Where the sources are silent, this fake decides: 401 is the status of the unauthorized body; a 429 says
`{"error", "path": "$", "code": "rate-limited"}` and no Retry-After (unless `limit` is given one); a
validation error is 400 `{"error", "path", "code": "validation-failed"}`; an unknown or deleted
generation is `{"generations_by_pk": null}`; a video's `url` is a poster (.jpg) and its `motionMP4URL`
the video; DELETE removes the record and its files; the webhook is sent for video generations too,
and never for a FAILED one.
"""

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from bench.fakes.base import Answer, FakeServer, Request, post

API = "/api/rest/v1"
API_KEY = "leo-fake-api-key"
UNAUTHORIZED = {"error": "Authentication hook unauthorized this request", "path": "$", "code": "access-denied"}
VIDEO_MODELS = ("MOTION2", "MOTION2FAST", "VEO3", "VEO3FAST", "KLING2_1", "KLING2_5")
SUBMITS = {"/generations": "image", "/generations-text-to-video": "video", "/generations-image-to-video": "video"}
FILES = {"jpg": ("image/jpeg", b"\xff\xd8\xff\xe0fake-leonardo-image\xff\xd9"),
         "mp4": ("video/mp4", b"\x00\x00\x00\x18ftypmp42fake-leonardo-video")}


def _invalid(message: str, path: str = "$") -> Answer:
    return Answer(400, {"error": message, "path": path, "code": "validation-failed"})


@dataclass
class Generation:
    id: str
    kind: str  # image or video
    body: dict
    seconds: float
    fail: bool
    created_at: str
    started: float | None = None  # when it got one of the places (monotonic)
    status: str = "PENDING"
    images: list = field(default_factory=list)


class FakeLeonardo(FakeServer):
    limit_answer = Answer(429, {"error": "Too many requests: rate limit exceeded", "path": "$", "code": "rate-limited"})

    def __init__(self, *, api_key: str = API_KEY, seconds: float = 1.0, concurrency: int = 10, queue: int = 200,
                 webhook_url: str | None = None, webhook_key: str | None = None):
        super().__init__()
        self.api_key, self.seconds, self.concurrency, self.queue = api_key, seconds, concurrency, queue
        self.webhook_url, self.webhook_key = webhook_url, webhook_key
        self.generations: dict[str, Generation] = {}
        self.webhooks: list[tuple[str, int]] = []  # (generation id, the receiver's HTTP status) per webhook sent
        self.init_images: dict[str, bytes | None] = {}  # init image id -> its bytes (None until uploaded)


    def status_of(self, generation_id: str) -> str | None:
        with self.lock:
            generation = self.generations.get(generation_id)
            return generation.status if generation else None

    # --- its clock ------------------------------------------------------------------------------

    def tick(self) -> None:
        self._advance()

    def _advance(self) -> None:
        """Generations whose time is up end; waiting ones take the places that frees."""
        now, completed = self.now(), []
        with self.lock:
            for generation in self.generations.values():
                started = generation.started
                if generation.status == "PENDING" and started is not None and now - started >= generation.seconds:
                    generation.status = "FAILED" if generation.fail else "COMPLETE"
                    if not generation.fail:
                        generation.images = self._images(generation)
                        completed.append(generation)
            busy = sum(1 for g in self.generations.values() if g.status == "PENDING" and g.started is not None)
            for generation in self.generations.values():
                if busy >= self.concurrency:
                    break
                if generation.status == "PENDING" and generation.started is None:
                    generation.started, busy = now, busy + 1
        if self.webhook_url:
            for generation in completed:
                threading.Thread(target=self._send_webhook, args=(generation,), daemon=True).start()

    def _images(self, generation: Generation) -> list[dict]:
        count = 1 if generation.kind == "video" else int(generation.body.get("num_images", 4))
        images = []
        for n in range(count):
            image = {"id": str(uuid.uuid4()), "url": f"{self.url}/files/{generation.id}/{n}.jpg", "nsfw": False,
                     "likeCount": 0, "motionMP4URL": None}
            if generation.kind == "video":
                image["motionMP4URL"] = f"{self.url}/files/{generation.id}/{n}.mp4"
            images.append(image)
        return images

    def _object(self, generation: Generation) -> dict:
        body = generation.body
        return {"id": generation.id, "status": generation.status, "prompt": body.get("prompt"),
                "negativePrompt": body.get("negative_prompt") or body.get("negativePrompt"),
                "modelId": body.get("modelId"), "motionModel": body.get("model"), "createdAt": generation.created_at,
                "imageWidth": body.get("width"), "imageHeight": body.get("height"), "public": False,
                "generated_images": list(generation.images)}

    def _send_webhook(self, generation: Generation) -> None:
        with self.lock:
            thing = self._object(generation)
        thing["images"] = thing.pop("generated_images")
        payload = {"type": "image_generation.complete", "object": "generation", "timestamp": int(time.time() * 1000),
                   "api_version": "v1", "data": {"object": thing}}
        code = post(self.webhook_url, json.dumps(payload).encode(),
                    {"authorization": f"Bearer {self.webhook_key}"} if self.webhook_key else {}, timeout=30)
        with self.lock:
            self.webhooks.append((generation.id, code))

    # --- answering ------------------------------------------------------------------------------

    def answer(self, request: Request) -> Answer:
        if request.method == "GET" and request.path.startswith("/files/"):
            return self._file(request.path)
        if (request.method, request.path) == ("POST", "/uploads"):
            return self._upload(request)
        if not request.path.startswith(API):
            return Answer(404, {"error": "not found", "path": "$", "code": "not-found"})
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Answer(401, UNAUTHORIZED)
        self._advance()
        route = request.path[len(API):]
        if request.method == "POST" and route in SUBMITS:
            return self._submit(route, request)
        if (request.method, route) == ("POST", "/init-image"):
            return self._init_image(request)
        match = re.fullmatch(r"/generations/([^/]+)", route)
        if match and request.method == "GET":
            with self.lock:
                generation = self.generations.get(match[1])
                return Answer(200, {"generations_by_pk": self._object(generation) if generation else None})
        if match and request.method == "DELETE":
            with self.lock:
                generation = self.generations.pop(match[1], None)
            return Answer(200, {"delete_generations_by_pk": {"id": generation.id} if generation else None})
        return Answer(404, {"error": "not found", "path": "$", "code": "not-found"})

    def _submit(self, route: str, request: Request) -> Answer:
        try:
            body = request.json
        except ValueError:
            return _invalid("invalid JSON body")
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            return _invalid("expected a prompt", "$.prompt")
        kind = SUBMITS[route]
        if kind == "image" and not (isinstance(body.get("num_images", 4), int) and 1 <= body.get("num_images", 4) <= 8):
            return _invalid("num_images must be between 1 and 8", "$.num_images")
        if kind == "video" and body.get("model", "MOTION2") not in VIDEO_MODELS:
            return _invalid(f"model must be one of {', '.join(VIDEO_MODELS)}", "$.model")
        if route.endswith("image-to-video") and not (body.get("imageId") and body.get("imageType") in ("GENERATED", "UPLOADED")):
            return _invalid("imageId and imageType (GENERATED or UPLOADED) are required", "$.imageId")
        init_image = body.get("init_image_id") if kind == "image" else (
            body.get("imageId") if body.get("imageType") == "UPLOADED" else None)
        with self.lock:
            if init_image is not None and self.init_images.get(init_image) is None:
                return _invalid(f"init image {init_image} was not uploaded", "$.init_image_id" if kind == "image" else "$.imageId")
            pending = sum(1 for g in self.generations.values() if g.status == "PENDING")
            if pending >= self.concurrency + self.queue:
                return Answer(429, {"error": "Concurrency queue is full: too many pending generations", "path": "$",
                                    "code": "rate-limited"})
            generation = Generation(str(uuid.uuid4()), kind, body, float(body.get("seconds", self.seconds)),
                                    bool(body.get("fail")), datetime.now(timezone.utc).isoformat())
            self.generations[generation.id] = generation
        self._advance()
        job = "sdGenerationJob" if kind == "image" else "motionVideoGenerationJob"
        return Answer(200, {job: {"generationId": generation.id, "apiCreditCost": 8 if kind == "image" else 100}})

    def _init_image(self, request: Request) -> Answer:
        body = request.json if request.raw else None
        extension = body.get("extension") if isinstance(body, dict) else None
        if extension not in ("png", "jpg", "jpeg", "webp"):
            return _invalid("Invalid file extension: has to be png, jpg, jpeg, or webp", "$.extension")
        init_id = str(uuid.uuid4())
        key = f"init-images/{init_id}.{extension}"
        with self.lock:
            self.init_images[init_id] = None
        fields = {"key": key, "Content-Type": f"image/{extension}", "policy": "ZmFrZS1wb2xpY3k=",
                  "x-amz-signature": "fake-signature"}
        return Answer(200, {"uploadInitImage": {"id": init_id, "url": f"{self.url}/uploads", "fields": json.dumps(fields),
                                                "key": key}})

    def _upload(self, request: Request) -> Answer:
        """The presigned form, as S3 takes a POST policy: every field signed, the file last."""
        form = request.form()
        if form is None or "file" not in form[1]:
            return Answer(400, raw=b"<Error><Code>InvalidArgument</Code></Error>", headers={"Content-Type": "application/xml"})
        fields, files = form
        match = re.fullmatch(r"init-images/([^/.]+)\.\w+", fields.get("key", ""))
        with self.lock:
            if match is None or match[1] not in self.init_images or fields.get("x-amz-signature") != "fake-signature":
                return Answer(403, raw=b"<Error><Code>AccessDenied</Code></Error>", headers={"Content-Type": "application/xml"})
            self.init_images[match[1]] = files["file"][2]
        return Answer(204, raw=b"", headers={"Content-Type": "text/plain"})

    def _file(self, path: str) -> Answer:
        match = re.fullmatch(r"/files/([^/]+)/(\d+)\.(jpg|mp4)", path)
        with self.lock:
            known = match is not None and match[1] in self.generations
        if not known:
            return Answer(404, raw=b"Not Found", headers={"Content-Type": "text/plain"})
        content_type, data = FILES[match[3]]
        return Answer(200, raw=data, headers={"Content-Type": content_type})
