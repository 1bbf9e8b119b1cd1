"""Shared fixtures: one tiny random model per backend, created once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test downloads: a hub id fails at once instead of retrying

import copy  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny import make_tiny_hf, make_tiny_testbed, register_tiny_openclip  # noqa: E402

from clipforget.models import DualEncoder, load_model  # noqa: E402


def _openclip(name: str) -> Callable[[Path], str]:
    def make(tmp_dir: Path) -> str:
        register_tiny_openclip(tmp_dir)
        return f"openclip:{name}"

    return make


def pytest_configure(config) -> None:
    # Tiny models run fastest on one thread (measured ~15x faster than the default on 2 shared cores).
    torch.set_num_threads(1)


# Test id -> builder(session tmp dir) -> model id. A new backend is tested by adding one line here.
TINY_MODELS: dict[str, Callable[[Path], str]] = {
    "openclip-RN": _openclip("tiny-RN"),  # ModifiedResNet with BatchNorm
    "openclip-ViT": _openclip("tiny-ViT"),
    "hf": make_tiny_hf,
    "testbed": make_tiny_testbed,  # EfficientNet (BatchNorm) + BERT, the offline testbed's architecture
}


@pytest.fixture(scope="session", params=list(TINY_MODELS))
def tiny_model_id(request, tmp_path_factory) -> str:
    """The model id of one tiny model, built (written to disk, registered) once per session."""
    return TINY_MODELS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def _tiny_model_original(tiny_model_id) -> DualEncoder:
    torch.manual_seed(0)  # open_clip models without weights are random-initialised
    return load_model(tiny_model_id)


@pytest.fixture
def tiny_models(_tiny_model_original) -> DualEncoder:
    """A fresh copy of one tiny model in eval mode, the same weights every time (tests may change them)."""
    return copy.deepcopy(_tiny_model_original)
