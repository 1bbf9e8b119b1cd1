"""Model backends behind one interface, and the factory that picks one from a model id."""

from __future__ import annotations

from collections.abc import Callable

import torch

from clipforget.models.base import (
    TOWERS,
    DualEncoder,
    ImageProjection,
    ModelSpec,
    TextBatch,
    Tower,
    projection_inputs,
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


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, refused (``ValueError``) when unknown or not present on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:<index> or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: torch sees no CUDA GPU on this machine "
                             "(torch.cuda.is_available() is False); use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(device)!r}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"device {str(device)!r}: clipforget runs on cpu, cuda or mps devices")
    return dev


def load_model(model_id: str, device: str = "cpu") -> DualEncoder:
    """Load a model from an id such as ``openclip:RN50@openai``, ``hf:/dir`` or ``testbed``."""
    check_device(device)
    spec = ModelSpec.parse(model_id)
    if spec.backend not in _BACKENDS:
        raise ValueError(f"unknown model backend {spec.backend!r} in {model_id!r}; known: {sorted(_BACKENDS)}")
    return _BACKENDS[spec.backend](spec).to(device).eval()


__all__ = ["DualEncoder", "ImageProjection", "ModelSpec", "TextBatch", "Tower", "TOWERS", "check_device", "load_model",
           "projection_inputs", "register_backend", "to_device"]
