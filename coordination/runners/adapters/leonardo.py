"""`leonardo`: Leonardo.ai's REST API, v1 (../shared/PROVIDERS.md, Leonardo; docs/providers.md).

- **Submit** (`authorization: Bearer <key>`, the variable `credential_env` names): a `provider_model`
  that is a UUID is an image model's modelId: `POST /api/rest/v1/generations` with the job's fields
  (mapped_input) plus `modelId`, and `num_images` 1 unless the job or `provider_input` gives it. Any
  other name is a video model (MOTION2, MOTION2FAST, VEO3, ...): `POST
  /api/rest/v1/generations-text-to-video` with the fields plus `model`, or `generations-image-to-video`
  when the fields name an `imageId` (`imageType` GENERATED unless given: an image Leonardo made). The
  answer's `sdGenerationJob` / `motionVideoGenerationJob` names the `generationId`; the rest of it (its
  `apiCreditCost`) is kept as the run's provider_data. Leonardo takes no webhook URL per request.
- **Files of ours** (an input file, a workflow step's kept file; a png, jpg or webp) are uploaded as
  init images first (`upload`: `POST /api/rest/v1/init-image`, then the presigned form); the field that
  named one gets the init image's id: an image model's `init_image_id`, a video model's `imageId`
  (`imageType` UPLOADED), by the model's provider_input rename.
- **Status**: `GET /api/rest/v1/generations/{id}` → `generations_by_pk.status`. PENDING is `running`:
  Leonardo says nothing between accepting a generation and finishing it (no queue position, no
  progress), and within the account's concurrency (10 by default) it is generating from the start;
  "queued" would claim, for the whole generation, that no work had begun. COMPLETE is `succeeded`:
  output `generated_images` as Leonardo gives them (their ids, urls, nsfw, motionMP4URL), files each
  one's `motionMP4URL` (a video), else its `url`. FAILED is `failed`. `generations_by_pk: null` (no
  such generation: deleted, or another key's) is `failed` too, rather than polled until the deadline.
- **Cancel**: Leonardo has none. Nothing is sent and `cancel` never confirms, so a cancelled job ends
  after COORDINATOR_PROVIDER_CANCEL_GRACE saying Leonardo may still finish, and charge for, the
  generation. Its record is not DELETEd, then or ever: a DELETE stops nothing that is documented, and
  it would take the finished images (the files listed in the job's result) away with it.
- **Webhook**, set once per production API key at Leonardo (`POST /providers/leonardo/webhook`, with
  the webhook API key as `authorization: Bearer`): its key is compared with the variable
  `callback_secret_env` names, in constant time; the generation it names (`data.object.id`) is then
  asked of Leonardo, whose answer ends the job. The key is a fixed secret, not a signature over the
  body, and only the image event's body is documented, so the body's own status is not trusted.
"""

import hmac
import json

from coordination.provider_catalog import LEONARDO_IMAGE_MODEL
from coordination.runners import client as http
from coordination.runners.adapters.base import Adapter, Callback, CallbackRefused, json_headers, mapped_input, secret, submitted
from coordination.runners.base import KeptFile, Provider, RunnerCall, RunnerError
from coordination.runners.client import Accepted, Status

API = "/api/rest/v1"
STATES = {"PENDING": "running", "COMPLETE": "succeeded", "FAILED": "failed"}
INIT_IMAGE_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}  # what /init-image takes


def _headers(provider: Provider) -> dict:
    return json_headers(Authorization=f"Bearer {secret(provider.credential_env)}")


def _route(provider: Provider, fields: dict, *, image_type: str) -> tuple[str, dict, str]:
    """Where the job is sent, its body, and the key of the job object Leonardo answers."""
    if LEONARDO_IMAGE_MODEL.fullmatch(provider.model):
        return "generations", {"num_images": 1, **fields, "modelId": provider.model}, "sdGenerationJob"
    body = {**fields, "model": provider.model}
    if fields.get("imageId"):
        return "generations-image-to-video", {"imageType": image_type, **body}, "motionVideoGenerationJob"
    return "generations-text-to-video", body, "motionVideoGenerationJob"


def _status_url(provider: Provider, generation_id: str) -> str:
    return f"{provider.url}{API}/generations/{generation_id}"


def _files(images: list) -> list[str]:
    found = [image.get("motionMP4URL") or image.get("url") for image in images if isinstance(image, dict)]
    return [url for url in found if isinstance(url, str) and url]


def status_of(body, generation_id: str) -> Status:
    """Leonardo's answer about a generation, in our terms."""
    if not isinstance(body, dict) or "generations_by_pk" not in body:
        return Status("unknown", error=http.message_of(body))
    generation = body["generations_by_pk"]
    if not isinstance(generation, dict):
        return Status("failed", error=f"Leonardo has no generation {generation_id} (generations_by_pk is null): "
                                      "deleted, or made with another API key")
    said = generation.get("status")
    state = STATES.get(said, str(said or "unknown"))
    if state == "succeeded":
        images = generation.get("generated_images") or []
        return Status("succeeded", images, files=_files(images if isinstance(images, list) else []))
    if state == "failed":
        reason = any(generation.get(key) for key in ("error", "message", "detail"))
        return Status("failed", error=http.message_of(generation) if reason else "status FAILED (Leonardo gives no reason)")
    return Status(state)


def _webhook_generation(body: bytes) -> str | None:
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        return None
    data = payload.get("data") if isinstance(payload, dict) else None
    generation = data.get("object") if isinstance(data, dict) else None
    generation_id = generation.get("id") if isinstance(generation, dict) else None
    return generation_id if isinstance(generation_id, str) and generation_id else None


class Leonardo(Adapter):
    kind = "leonardo"

    async def submit(self, client, call: RunnerCall, *, deadline: float, callback_url: str | None):
        provider = call.provider
        fields = mapped_input(call, provider)
        image_type = "UPLOADED" if isinstance(fields.get("imageId"), KeptFile) else "GENERATED"
        fields = await self.uploaded(client, provider, fields, deadline=deadline)
        path, body, job_key = _route(provider, fields, image_type=image_type)
        answer = await submitted(client, f"{provider.url}{API}/{path}", provider=provider, deadline=deadline,
                                 json=body, headers=_headers(provider))
        job = answer.get(job_key) if isinstance(answer, dict) else None
        if not isinstance(job, dict) or job.get("generationId") in (None, ""):
            raise RunnerError(f"Leonardo answered no generationId: {http.message_of(answer)}")
        generation_id = str(job["generationId"])
        return Accepted(generation_id, _status_url(provider, generation_id), Status("running"),
                        data={key: value for key, value in job.items() if key != "generationId"}, job_id=call.job_id)

    async def upload(self, client, provider: Provider, kept: KeptFile, *, deadline: float) -> str:
        """An init image: `POST /init-image {"extension"}` names an id and a presigned upload (its
        `url`, and `fields`, a JSON string); the file is POSTed there as a form, its fields then the
        file (no credentials: the form is its own). The id is what a generation names."""
        extension = INIT_IMAGE_EXTENSIONS.get(kept.content_type)
        if extension is None:
            raise RunnerError(f"Leonardo takes a png, jpg or webp init image, not {kept.content_type or 'this file'}")
        answer = await http.request(client, "POST", f"{provider.url}{API}/init-image", provider=provider,
                                    deadline=deadline, json={"extension": extension}, headers=_headers(provider))
        target = answer.get("uploadInitImage") if isinstance(answer, dict) else None
        if not isinstance(target, dict) or not target.get("id") or not target.get("url"):
            raise RunnerError(f"Leonardo answered no init image to upload to: {http.message_of(answer)}")
        form = target.get("fields") or {}
        try:
            form = json.loads(form) if isinstance(form, str) else form
        except ValueError:
            form = None
        if not isinstance(form, dict):
            raise RunnerError(f"Leonardo's init image upload names fields that are not a JSON object: {target.get('fields')!r}")
        with kept.open() as data:
            await http.request(client, "POST", target["url"], provider=provider, deadline=deadline,
                               data={key: str(value) for key, value in form.items()},
                               files={"file": (kept.name, data, kept.content_type)})
        return str(target["id"])

    def status_request(self, client, provider: Provider, run):
        return client.build_request("GET", run.status_url or _status_url(provider, run.provider_job_id),
                                    headers=_headers(provider))

    def status_from(self, body, run) -> Status:
        return status_of(body, run.provider_job_id)

    async def cancel(self, client, provider: Provider, run) -> bool:
        return False  # Leonardo has no cancel (see the module's docstring)

    def cancel_unconfirmed_words(self, grace: float) -> str:
        return "Leonardo has no cancel, so it may still finish the generation (and charge for it)"

    def callback_job_id(self, body: bytes) -> str | None:
        return _webhook_generation(body)

    def callback_read(self, provider: Provider, *, body: bytes, headers, query) -> Callback:
        refused = "This model takes no Leonardo webhooks (no webhook key is set for it: callback_secret_env)."
        if not provider.callback_secret_env:
            raise CallbackRefused(refused)
        try:
            key = secret(provider.callback_secret_env, what="Webhook key")
        except RunnerError:
            raise CallbackRefused(refused) from None
        scheme, _, given = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise CallbackRefused("The webhook's Authorization is not Bearer <this model's Leonardo webhook key>.")
        generation_id = _webhook_generation(body)
        if generation_id is None:
            raise ValueError("The body names no generation: {\"data\": {\"object\": {\"id\": <generationId>}}}.")
        return Callback(generation_id, None)  # confirmed by asking Leonardo
