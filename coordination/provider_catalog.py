"""What the catalog knows of each provider a model may name (CatalogModel.provider), in one place:
its public API, which catalog fields it needs, the form of its own model name, and how it calls
back. The model's clean() checks a row against this table; the runners read their public base URL,
their webhooks and their submits' idempotency from it (each provider's adapter, which speaks its API,
is in coordination/runners/adapters). Data only: it imports nothing of ours (the data layer, tests/test_structure.py).

Sources for the facts: ../shared/PROVIDERS.md (its endpoints and model names).
"""

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    label: str
    # The scheme and host its own paths follow; provider_base_url replaces it (empty: none, the
    # model must give one).
    public_base_url: str
    # Catalog fields a model on runner http must fill for this provider.
    requires: tuple[str, ...]
    # The form of provider_model, and how the message describes it (None: it takes none).
    model_pattern: re.Pattern | None = None
    model_form: str = ""
    # How it calls back when a job ends: "job" (the URL is sent with each submit), "key" (set once at
    # the provider for an API key: Leonardo), "" (never: polled only).
    webhooks: str = ""
    # Whether its callbacks are checked with the secret the model's callback_secret_env names (without
    # one, its jobs are polled only): Replicate's whsec_..., Leonardo's webhook key, generic's.
    # fal signs with its published keys; RunPod's carry a token of ours in their URL.
    callback_secret: bool = False
    # Whether a submit sent again is the same job to it (an idempotency key). Without one, a submit
    # whose answer was lost is not sent again: at most once (adapters/base.py `submitted`).
    idempotent_submit: bool = False
    # Whether a file we keep (file:<id>, a workflow step's file) is uploaded to it, its adapter sending
    # what it then calls the file (Leonardo's init image id, ComfyUI's input file name); the others
    # fetch a signed link to it under COORDINATOR_PUBLIC_URL.
    uploads_files: bool = False


_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
# A Leonardo image model's modelId (a UUID); any other Leonardo model name is a video model's.
LEONARDO_IMAGE_MODEL = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")

PROVIDERS: dict[str, Provider] = {
    # Replicate: an official model or a community model (POST /v1/models/{owner}/{name}/predictions),
    # a version of one (POST /v1/predictions with "owner/name:<id>"), or a deployment (POST
    # /v1/deployments/{owner}/{name}/predictions), named here "deployments/owner/name".
    "replicate": Provider(
        label="Replicate", public_base_url="https://api.replicate.com", requires=("provider_model", "credential_env"),
        model_pattern=re.compile(rf"(deployments/)?{_NAME}/{_NAME}(:[A-Za-z0-9]+)?"),
        model_form="owner/name, owner/name:version or deployments/owner/name, e.g. black-forest-labs/flux-dev",
        webhooks="job",
        callback_secret=True,
    ),
    # fal: the app id, the path after https://queue.fal.run/, such as fal-ai/flux/dev.
    "fal": Provider(
        label="fal", public_base_url="https://queue.fal.run", requires=("provider_model", "credential_env"),
        model_pattern=re.compile(rf"{_NAME}(/{_NAME})+"),
        model_form="an app id such as fal-ai/flux/dev",
        webhooks="job",
    ),
    # RunPod: the serverless endpoint's id (POST /v2/{endpoint_id}/run).
    "runpod": Provider(
        label="RunPod", public_base_url="https://api.runpod.ai", requires=("provider_model", "credential_env"),
        model_pattern=re.compile(r"[A-Za-z0-9_-]+"),
        model_form="the endpoint id, letters, digits, - and _ (no /)",
        webhooks="job",
    ),
    # Leonardo: an image model's modelId (a UUID: POST /api/rest/v1/generations) or a video model
    # (POST /api/rest/v1/generations-text-to-video or -image-to-video).
    "leonardo": Provider(
        label="Leonardo", public_base_url="https://cloud.leonardo.ai", requires=("provider_model", "credential_env"),
        model_pattern=re.compile(rf"{LEONARDO_IMAGE_MODEL.pattern}|[A-Z0-9_]+"),
        model_form="an image model's modelId (a UUID) or a video model: MOTION2, MOTION2FAST, VEO3, VEO3FAST, "
                   "KLING2_1 or KLING2_5",
        webhooks="key",
        callback_secret=True,
        uploads_files=True,
    ),
    # ComfyUI: your own server, so no public API; the job is a workflow graph, not a model name.
    "comfyui": Provider(
        label="ComfyUI", public_base_url="", requires=("provider_base_url", "provider_workflow"),
        uploads_files=True,
    ),
    # Our own protocol (coordination/runners/adapters/generic.py): provider_url and provider_style.
    # provider_model is kept but unused (the protocol sends the catalog's name): a guide model switched
    # to generic keeps the record of its real provider's name for it.
    "generic": Provider(
        label="generic", public_base_url="", requires=("provider_url",),
        model_pattern=re.compile(r".+", re.S), model_form="any text (unused: the protocol sends the catalog name)",
        webhooks="job",
        callback_secret=True,
        idempotent_submit=True,
    ),
}

CHOICES = [(key, provider.label) for key, provider in PROVIDERS.items()]


def base_url(provider: str, provider_base_url: str = "") -> str:
    """Where a provider's own paths start for a model: its provider_base_url, else the public API."""
    return (provider_base_url or PROVIDERS[provider].public_base_url).rstrip("/")


# --- The shapes of the JSON fields (docs/providers.md, "A model names its provider") ---------------

# A node input in a ComfyUI graph: [node_id, input_name].
def _node_input(graph: dict, ref, where: str) -> list[str]:
    if not (isinstance(ref, list) and len(ref) == 2 and all(isinstance(part, str) for part in ref)):
        return [f"{where} must be [node id, input name], e.g. [\"6\", \"text\"]."]
    node, name = ref
    if node not in graph:
        return [f"{where} names node {node!r}, which the graph does not have."]
    if name not in graph[node].get("inputs", {}):
        return [f"{where} names input {name!r} of node {node!r}, which that node does not have."]
    return []


def workflow_problems(workflow) -> list[str]:
    """What is wrong with a provider_workflow, as messages (empty: nothing). Its shape:
    {"graph": {node_id: {"class_type": str, "inputs": {...}}, ...},   # ComfyUI's API format
     "prompt": [node_id, input_name],                                  # takes the job's prompt
     "seed": [node_id, input_name],                                    # optional: takes params.seed
     "inputs": {job_input_name: [node_id, input_name], ...},           # optional: the job's inputs
     "params": {param_name: [node_id, input_name], ...}}               # optional: other params"""
    if not isinstance(workflow, dict):
        return ["The workflow must be an object with \"graph\" and \"prompt\"."]
    unknown = sorted(set(workflow) - {"graph", "prompt", "seed", "inputs", "params"})
    if unknown:
        return [f"The workflow has keys it does not know: {', '.join(unknown)} (graph, prompt, seed, inputs, params)."]
    graph = workflow.get("graph")
    if not isinstance(graph, dict) or not graph:
        return ["The workflow needs \"graph\": ComfyUI's API-format graph {node id: {class_type, inputs}}."]
    for node, spec in graph.items():
        if not (isinstance(spec, dict) and isinstance(spec.get("class_type"), str) and isinstance(spec.get("inputs"), dict)):
            return [f"Node {node!r} of the graph needs \"class_type\" (text) and \"inputs\" (an object)."]
    if "prompt" not in workflow:
        return ["The workflow needs \"prompt\": the [node id, input name] that takes the job's prompt."]
    problems = _node_input(graph, workflow["prompt"], "\"prompt\"")
    if "seed" in workflow:
        problems += _node_input(graph, workflow["seed"], "\"seed\"")
    for key in ("inputs", "params"):
        mapping = workflow.get(key, {})
        if not isinstance(mapping, dict):
            problems.append(f"\"{key}\" must be an object {{name: [node id, input name]}}.")
            continue
        for name, ref in mapping.items():
            problems += _node_input(graph, ref, f"\"{key}\".{name}")
    return problems


def input_problems(mapping) -> list[str]:
    """What is wrong with a provider_input, as messages (empty: nothing). Its shape:
    {"rename": {our_name: their_name, ...},   # a prompt/param/input name as the provider calls it
     "defaults": {their_name: value, ...}}     # sent unless the job gives that field"""
    if not isinstance(mapping, dict):
        return ["The input mapping must be an object with \"rename\" and/or \"defaults\"."]
    unknown = sorted(set(mapping) - {"rename", "defaults"})
    if unknown:
        return [f"The input mapping has keys it does not know: {', '.join(unknown)} (rename, defaults)."]
    problems = []
    rename = mapping.get("rename", {})
    if not (isinstance(rename, dict) and all(isinstance(v, str) and v for v in rename.values())):
        problems.append("\"rename\" must map our field names to the provider's, as text: {\"prompt\": \"text\"}.")
    if not isinstance(mapping.get("defaults", {}), dict):
        problems.append("\"defaults\" must be an object {field: value}.")
    return problems
