"""Model backends behind one interface, and the factory that picks one from a model id."""

from __future__ import annotations

from collections.abc import Callable

from clipforget.models.base import (
    TOWERS,
    DualEncoder,
    ModelSpec,
    TextBatch,
    Tower,
    to_device,
)

# backend name -> loader(spec) -> DualEncoder. Explicit and duplicate-free: see register_backend.
_BACKENDS: dict[str, Callable[[ModelSpec], DualEncoder]] = {}


def register_backend(name: str, loader: Callable[[ModelSpec], DualEncoder]) -> None:
    if name in _BACKENDS:
        raise ValueError(f"model backend {name!r} is already registered")
    _BACKENDS[name] = loader


def _openclip(spec: ModelSpec) -> DualEncoder:
    from clipforget.models.openclip import OpenClipModel

    return OpenClipModel.from_spec(spec)


def _hf(spec: ModelSpec) -> DualEncoder:
    from clipforget.models.hf import HFClipModel

    return HFClipModel.from_spec(spec)


def _testbed(spec: ModelSpec) -> DualEncoder:
    from clipforget.models.testbed import TestbedModel

    return TestbedModel.from_spec(spec)


register_backend("openclip", _openclip)
register_backend("hf", _hf)
register_backend("testbed", _testbed)


def load_model(model_id: str, device: str = "cpu") -> DualEncoder:
    """Load a model from an id such as ``openclip:RN50@openai``, ``hf:/dir`` or ``testbed``."""
    spec = ModelSpec.parse(model_id)
    if spec.backend not in _BACKENDS:
        raise ValueError(f"unknown model backend {spec.backend!r} in {model_id!r}; known: {sorted(_BACKENDS)}")
    return _BACKENDS[spec.backend](spec).to(device).eval()


__all__ = ["DualEncoder", "ModelSpec", "TextBatch", "Tower", "TOWERS", "load_model", "register_backend", "to_device"]
