"""Numeric precision of a run: fp32, or mixed precision by autocast (bf16, fp16).

Weights stay in fp32 throughout and are saved in fp32; under ``bf16`` / ``fp16`` the forward passes
(training, evaluation, the audit) run their matrix products in the lower precision by
:func:`torch.autocast`, without its cast cache (weights change inside the region). The training loop scales the loss (:class:`torch.amp.GradScaler`) when it
runs under fp16 autocast, whose gradients would otherwise underflow. Chosen once at the edge, like
the device: ``auto`` is bf16 on a CUDA device that supports it, else fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str | None, device: str | torch.device) -> str:
    """``precision`` checked, with ``auto`` / None resolved for ``device``."""
    dev = torch.device(device)
    if precision in (None, "auto"):
        return "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and dev.type == "mps":
        raise ValueError("precision fp16 is not supported on mps here; use fp32")
    return precision


@contextlib.contextmanager
def autocast(precision: str, device: str | torch.device) -> Iterator[None]:
    """Run the enclosed forward passes at ``precision`` on ``device`` (fp32: no change)."""
    if precision == "fp32":
        yield
        return
    # No cast cache: a run spans many optimiser steps and in-place weight edits, and a cached cast
    # would keep serving the weights as they were when first cast.
    with torch.autocast(torch.device(device).type, dtype=DTYPES[precision], cache_enabled=False):
        yield


def grad_scaler(device_type: str) -> torch.amp.GradScaler | None:
    """A loss scaler when fp16 autocast is active on ``device_type``, else None."""
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
        return torch.amp.GradScaler(device_type)
    return None
