"""Frozen-tower features, computed once and cached on disk under a content hash.

The cache key hashes the image tower's weights, the preprocessing and the pixels of every image
(not their names), so a changed image, tower or resolution can never reuse stale features.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from clipforget.data.locations import cache_dir
from clipforget.data.sources import ImageSource
from clipforget.io import atomic_save_safetensors
from clipforget.models.base import to_device
from clipforget.models.testbed import TestbedModel
from clipforget.zeroshot import state_dict_digest

log = logging.getLogger(__name__)


def default_cache() -> Path:
    return cache_dir() / "testbed-features"


def _images_digest(source: ImageSource, keys: Sequence[str]) -> str:
    h = hashlib.sha256()
    for key in tqdm(keys, desc="hashing images", leave=False, mininterval=2):
        img = source.load(key)
        h.update(f"{img.mode}:{img.size}".encode())
        h.update(img.tobytes())
    return h.hexdigest()


@torch.no_grad()
def image_features(
    model: TestbedModel,
    source: ImageSource,
    keys: Sequence[str],
    *,
    cache: Path | None = None,
    batch_size: int = 64,
    tower_digest: str | None = None,
) -> Tensor:
    """Pooled image-tower features (N, 1280) of ``source``'s images ``keys``, from the cache when there."""
    cache = Path(cache) if cache is not None else default_cache()
    tower_digest = tower_digest or state_dict_digest(model.model.image_tower.state_dict())
    h = hashlib.sha256(f"{tower_digest}|{model.preprocess!r}|{model.config.image_mean}|{model.config.image_std}".encode())
    h.update(_images_digest(source, keys).encode())
    path = cache / f"{h.hexdigest()[:32]}.safetensors"
    if path.is_file():
        from safetensors.torch import load_file

        feats = load_file(path)["features"]
        if feats.shape[0] == len(keys):
            log.info("image features from cache %s", path)
            return feats
    device = model.device
    out = []
    for i in tqdm(range(0, len(keys), batch_size), desc=f"image features ({len(keys)})", mininterval=5):
        batch = torch.stack([model.preprocess(source.load(k)) for k in keys[i : i + batch_size]]).to(device)
        out.append(model.model.image_features(batch).float().cpu())
    feats = torch.cat(out) if out else torch.zeros(0, model.config.image_dim)
    atomic_save_safetensors({"features": feats}, path, metadata={"source": source.identity(), "n": str(len(keys))})
    log.info("cached %d image features in %s", len(keys), path)
    return feats


@torch.no_grad()
def text_features(model: TestbedModel, texts: Sequence[str], batch_size: int = 128) -> Tensor:
    """Mean-pooled text-tower features (N, 384), before the head (cheap: not cached)."""
    out = []
    for i in range(0, len(texts), batch_size):
        batch = to_device(model.tokenize(texts[i : i + batch_size]), model.device)
        out.append(model.model.text_features(batch["input_ids"], batch["attention_mask"]).float().cpu())
    return torch.cat(out)
