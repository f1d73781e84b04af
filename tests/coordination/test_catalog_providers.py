"""A catalog model names its provider (issue 26 §1): which combinations are refused, and why; how
existing http models and the guide's models get theirs (migration 0024 and the seed)."""

import importlib

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from coordination.models import CatalogModel, JobQueueLog
from coordination.provider_catalog import PROVIDERS, base_url
from coordination.runners.adapters import ADAPTERS, adapter_of
from coordination.seed import GUIDE_PROVIDERS

pytestmark = pytest.mark.django_db

GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "10": {"class_type": "LoadImage", "inputs": {"image": ""}},
}
WORKFLOW = {"graph": GRAPH, "prompt": ["6", "text"], "seed": ["3", "seed"], "inputs": {"input_image": ["10", "image"]}}


def model(**fields) -> CatalogModel:
    return CatalogModel(**({"name": "m", "media_type": "image"} | fields))


def refusals(candidate: CatalogModel) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as refused:
        candidate.full_clean()
    return refused.value.message_dict


# --- What is refused, with what message -------------------------------------------------------------

@pytest.mark.parametrize("provider, field, words", [
    ("replicate", "provider_model", "A Replicate model needs provider_model: owner/name"),
    ("fal", "provider_model", "A fal model needs provider_model: an app id such as fal-ai/flux/dev"),
    ("runpod", "provider_model", "A RunPod model needs provider_model: the endpoint id"),
    ("leonardo", "provider_model", "A Leonardo model needs provider_model"),
    ("fal", "credential_env", "A fal model needs credential_env: the name of the variable holding your fal API key"),
    ("comfyui", "provider_base_url", "A ComfyUI model needs provider_base_url: the server's address"),
    ("comfyui", "provider_workflow", "A ComfyUI model needs provider_workflow"),
    ("generic", "provider_url", "A generic provider needs a provider URL"),
])
def test_an_http_model_without_what_its_provider_needs_is_refused_naming_it(provider, field, words):
    errors = refusals(model(runner="http", provider=provider))
    assert any(words in message for message in errors[field]), errors


@pytest.mark.parametrize("provider, name", [
    ("replicate", "flux-dev"), ("replicate", "black-forest-labs/flux-dev:abc/def"), ("replicate", "owner/name:"),
    ("fal", "flux-dev"), ("runpod", "abc/123"), ("leonardo", "motion-2.0-fast"), ("comfyui", "anything"),
])
def test_a_provider_model_not_in_the_providers_form_is_refused(provider, name):
    errors = refusals(model(provider=provider, provider_model=name))
    assert "provider_model" in errors, errors


@pytest.mark.parametrize("workflow, words", [
    ({"prompt": ["6", "text"]}, 'The workflow needs "graph"'),
    ({"graph": GRAPH}, 'The workflow needs "prompt"'),
    ({"graph": GRAPH, "prompt": ["7", "text"]}, "names node '7', which the graph does not have"),
    ({"graph": GRAPH, "prompt": ["6", "txt"]}, "names input 'txt' of node '6'"),
    ({"graph": GRAPH, "prompt": "6.text"}, "must be [node id, input name]"),
    ({"graph": {"1": {"inputs": {}}}, "prompt": ["1", "x"]}, "needs \"class_type\""),
    ({"graph": GRAPH, "prompt": ["6", "text"], "inputs": {"input_image": ["11", "image"]}}, "names node '11'"),
    ({"graph": GRAPH, "prompt": ["6", "text"], "nodes": {}}, "keys it does not know: nodes"),
])
def test_a_comfyui_workflow_of_the_wrong_shape_is_refused_saying_what_is_wrong(workflow, words):
    errors = refusals(model(provider="comfyui", provider_base_url="http://127.0.0.1:8188", provider_workflow=workflow))
    assert any(words in message for message in errors["provider_workflow"]), errors


@pytest.mark.parametrize("mapping, words", [
    ({"renames": {}}, "keys it does not know: renames"),
    ({"rename": {"prompt": 3}}, '"rename" must map'),
    ({"defaults": [1]}, '"defaults" must be an object'),
    ([], "must be an object"),
])
def test_a_provider_input_of_the_wrong_shape_is_refused(mapping, words):
    errors = refusals(model(provider="replicate", provider_model="owner/name", provider_input=mapping))
    assert any(words in message for message in errors["provider_input"]), errors


@pytest.mark.parametrize("fields, field", [
    ({"provider_model": "owner/name"}, "provider_model"),  # no provider named
    ({"provider": "replicate", "provider_model": "a/b", "provider_workflow": WORKFLOW}, "provider_workflow"),
    ({"provider": "generic", "runner": "http", "provider_url": "https://p.example/jobs",
      "provider_base_url": "https://p.example"}, "provider_base_url"),
])
def test_fields_that_belong_to_another_provider_are_refused(fields, field):
    assert field in refusals(model(**fields))


# --- What is accepted -------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {},  # simulated, no provider
    {"provider": "replicate"},  # simulated: only where it would run, nothing required
    {"provider": "replicate", "provider_model": "black-forest-labs/flux-dev"},
    {"provider": "replicate", "provider_model": "stability-ai/sdxl:39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"},
    {"provider": "replicate", "provider_model": "deployments/acme/my-flux", "provider_base_url": "http://127.0.0.1:9000"},
    {"provider": "fal", "provider_model": "fal-ai/flux/dev", "provider_input": {"rename": {"prompt": "text"}, "defaults": {"num_images": 1}}},
    {"provider": "runpod", "provider_model": "ab12cd34ef56gh"},
    {"runner": "http", "provider": "runpod", "provider_model": "ab12cd34ef56gh", "credential_env": "RUNPOD_API_KEY"},
    {"provider": "leonardo", "provider_model": "MOTION2FAST"},
    {"provider": "leonardo", "provider_model": "b24e16ff-06e3-43eb-8d33-4416c2d75876"},
    {"runner": "http", "provider": "leonardo", "provider_model": "MOTION2FAST", "credential_env": "LEONARDO_API_KEY"},
    {"provider": "comfyui", "provider_base_url": "http://127.0.0.1:8188", "provider_workflow": WORKFLOW},
    {"runner": "http", "provider": "generic", "provider_url": "https://p.example/jobs"},
])
def test_a_valid_combination_is_accepted(fields):
    model(**fields).full_clean()


def test_an_http_model_that_names_no_provider_is_generic_as_before():
    candidate = model(runner="http", provider_url="https://p.example/jobs", provider_style="poll")
    candidate.full_clean()
    assert candidate.provider == "generic"


def test_the_form_s_empty_input_mapping_is_no_mapping():
    candidate = model(provider_input=None)
    candidate.full_clean()
    assert candidate.provider_input == {}


def test_each_provider_s_public_api_and_its_replacement():
    assert [base_url(name) for name in ("replicate", "fal", "runpod", "leonardo")] == [
        "https://api.replicate.com", "https://queue.fal.run", "https://api.runpod.ai", "https://cloud.leonardo.ai",
    ]
    assert base_url("replicate", "http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
    assert set(PROVIDERS) == set(ADAPTERS)  # every provider the catalog names has its adapter
    assert all(adapter_of(kind).kind == kind for kind in PROVIDERS)


# --- The admin ------------------------------------------------------------------------------------

def test_the_admin_refuses_a_provider_it_cannot_run_and_changes_nothing(staff_user):
    console = Client()
    console.force_login(staff_user)
    flux = CatalogModel.objects.get(name="flux-dev")
    url = reverse("admin:coordination_catalogmodel_change", args=[flux.pk])
    page = console.get(url).content.decode()
    assert "Provider" in page and 'name="provider_workflow"' in page and 'name="provider_model"' in page
    data = {
        "name": "flux-dev", "media_type": "image", "runner": "http", "provider": "replicate", "provider_model": "",
        "capacity": 1, "enabled": "on", "default_simulate_seconds": 5, "max_attempts": 1, "provider_style": "sync",
        "max_connect_retries": 3, "poll_interval_seconds": 5, "line_policy": "fifo", "provider_input": "{}",
    }

    response = console.post(url, data)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "A Replicate model needs provider_model" in errors["provider_model"][0]
    assert "A Replicate model needs credential_env" in errors["credential_env"][0]
    assert sorted(errors) == ["credential_env", "provider_model"]
    flux.refresh_from_db()
    assert (flux.runner, flux.provider, flux.provider_model) == ("simulated", "replicate", "black-forest-labs/flux-dev")
    assert not JobQueueLog.objects.filter(event_type="model_changed").exists()


# --- Existing rows and the seed ---------------------------------------------------------------------

def test_the_migration_makes_existing_http_models_generic_and_leaves_the_rest():
    forwards = importlib.import_module("coordination.migrations.0024_catalog_model_provider").forwards
    CatalogModel.objects.create(name="ours", media_type="image", runner="http", provider_url="https://p.example/jobs")
    CatalogModel.objects.create(name="sim", media_type="image")
    CatalogModel.objects.filter(name__in=GUIDE_PROVIDERS).update(provider="", provider_model="")
    CatalogModel.objects.filter(name="flux-dev").update(provider="fal", provider_model="fal-ai/flux/dev")  # an operator's

    forwards(apps, None)

    rows = dict(CatalogModel.objects.values_list("name", "provider"))
    assert (rows["ours"], rows["sim"]) == ("generic", "")
    assert CatalogModel.objects.get(name="flux-dev").provider_model == "fal-ai/flux/dev"
    assert rows["motion-2.0-fast"] == "leonardo"


@pytest.mark.migration_data
def test_the_seed_names_the_guide_models_providers_and_keeps_them_simulated():
    rows = {row["name"]: row for row in CatalogModel.objects.values("name", "runner", "provider", "provider_model")}
    assert {name: (row["runner"], row["provider"], row["provider_model"]) for name, row in rows.items()} == {
        "nano-banana-pro-leonardo": ("simulated", "leonardo", ""),
        "motion-2.0-fast": ("simulated", "leonardo", "MOTION2FAST"),
        "flux-dev": ("simulated", "replicate", "black-forest-labs/flux-dev"),
        "minimax/video-01": ("simulated", "replicate", "minimax/video-01"),
    }
    for name in rows:
        CatalogModel.objects.get(name=name).full_clean()  # the seeded rows are valid as they stand
