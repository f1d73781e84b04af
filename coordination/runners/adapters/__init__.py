"""Provider adapters: how the http runner speaks to each provider a catalog model may name
(CatalogModel.provider; coordination/provider_catalog.py has the catalog's facts of each). base.py
says what an adapter does; docs/providers.md says, per provider, what is sent and how its answers map.

Imported only where a provider is called (the HTTP stack comes with it), as client.py is; and each
adapter's module only once a model names its provider, so that a worker carries only the providers
it calls (fal's brings an ED25519 library, for one)."""

import importlib

from coordination.runners.adapters.base import Adapter, Callback, CallbackRefused

# Each provider's adapter: its module and class.
ADAPTERS: dict[str, str] = {
    "generic": "generic.Generic", "replicate": "replicate.Replicate", "fal": "fal.Fal", "runpod": "runpod.RunPod",
    "leonardo": "leonardo.Leonardo", "comfyui": "comfyui.ComfyUI",
}
_made: dict[str, Adapter] = {}


def adapter_of(kind: str) -> Adapter:
    kind = kind or "generic"
    adapter = _made.get(kind)
    if adapter is None:
        module, name = ADAPTERS[kind].split(".")
        adapter = _made[kind] = getattr(importlib.import_module(f"{__name__}.{module}"), name)()
    return adapter


__all__ = ["ADAPTERS", "Adapter", "Callback", "CallbackRefused", "adapter_of"]
