"""Provider adapters: how the http runner speaks to each provider a catalog model may name
(CatalogModel.provider; coordination/provider_catalog.py has the catalog's facts of each). base.py
says what an adapter does; docs/providers.md says, per provider, what is sent and how its answers map.

Imported only where a provider is called (the HTTP stack comes with it), as client.py is."""

from coordination.runners.adapters.base import Adapter, Callback, CallbackRefused
from coordination.runners.adapters.comfyui import ComfyUI
from coordination.runners.adapters.fal import Fal
from coordination.runners.adapters.generic import Generic
from coordination.runners.adapters.leonardo import Leonardo
from coordination.runners.adapters.replicate import Replicate
from coordination.runners.adapters.runpod import RunPod

ADAPTERS: dict[str, Adapter] = {adapter.kind: adapter for adapter in (Generic(), Replicate(), Fal(), RunPod(), Leonardo(), ComfyUI())}


def adapter_of(kind: str) -> Adapter:
    return ADAPTERS[kind or "generic"]


__all__ = ["ADAPTERS", "Adapter", "Callback", "CallbackRefused", "adapter_of"]
