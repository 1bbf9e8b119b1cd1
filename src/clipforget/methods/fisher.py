"""Stage 1, select: which layers carry the subgroup (relative diagonal empirical Fisher).

``F_l(D) = mean_x ||ds(x, t)/dθ_l||² / |θ_l|`` with ``s`` the image-text cosine similarity (forget
images against the forget text; retain images against their class prompt), and
``I_l = F_l(D_f) / (F_l(D_r) + ε·mean_l F_l(D_r))``. Per-sample gradients come from a loop over
samples (the text embeddings are computed once and their graph kept).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from clipforget import parallel
from clipforget.config import Config, ConfigError, require
from clipforget.methods.core import UnlearnData
from clipforget.methods.losses import encode_texts
from clipforget.models.base import TOWERS, DualEncoder
from clipforget.progress import progress


@dataclass(frozen=True)
class SelectConfig(Config):
    """Which layers the forget stage may tune.

    top_k: how many layers to select.
    towers: candidate towers ("image", "text"). Default the text tower, which keeps every held-out set
        but lets the forget terms be met by moving a few text embeddings while the subgroup's images
        stay where they were (the audit shows it). ``[image]`` makes forgetting move the images
        (docs/decisions.md has what it costs); ``[image, text]``
        is the paper's candidate set.
    include: regexes (``re.search`` on layer names); when non-empty a candidate must match one.
    exclude: regexes; a layer matching any is never a candidate.
    max_samples: at most this many images per set for the Fisher (a seeded subset).
    eps: relative floor on the retain Fisher in the ratio (times its mean over candidates).
    fallback: how to select without the relative Fisher: by the plain forget Fisher, or all candidates.
    """

    top_k: int = 8
    towers: tuple[str, ...] = ("text",)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_samples: int = 64
    eps: float = 1e-3
    fallback: Literal["forget_fisher", "all"] = "forget_fisher"

    def __post_init__(self) -> None:
        require(self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")
        require(bool(self.towers) and set(self.towers) <= set(TOWERS), f"towers must be a non-empty subset of {TOWERS}")
        require(self.max_samples >= 1, f"max_samples must be >= 1, got {self.max_samples}")
        require(self.eps >= 0, f"eps must be >= 0, got {self.eps}")
        for pattern in (*self.include, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"bad layer pattern {pattern!r}: {e}") from e


@dataclass(frozen=True)
class FisherScores:
    """Per-layer Fisher on the forget and retain sets and their ratio (layer name -> value)."""

    forget: dict[str, float]
    retain: dict[str, float]
    relative: dict[str, float]

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"forget": self.forget, "retain": self.retain, "relative": self.relative}


def candidate_layers(model: DualEncoder, config: SelectConfig) -> dict[str, list[str]]:
    """Layer name -> its parameter names, for the configured towers and name filters."""
    layers = model.layers(config.towers)
    keep = {}
    for name, params in layers.items():
        if config.include and not any(re.search(p, name) for p in config.include):
            continue
        if any(re.search(p, name) for p in config.exclude):
            continue
        keep[name] = params
    if not keep:
        raise ValueError(f"no candidate layers left after the filters include={config.include} exclude={config.exclude}")
    return keep


@contextmanager
def _grads_only_for(model: DualEncoder, names: set[str]):
    flags = {n: p.requires_grad for n, p in model.named_weights()}
    try:
        for n, p in model.named_weights():
            p.requires_grad_(n in names)
        yield
    finally:
        for n, p in model.named_weights():
            p.requires_grad_(flags[n])


def layer_fisher(model: DualEncoder, images: Tensor, texts: Sequence[str], layers: dict[str, list[str]],
                 desc: str = "Fisher") -> dict[str, float]:
    """``F_l`` for each layer over the pairs ``(images[i], texts[i])`` (one backward per sample)."""
    require(len(images) == len(texts), "one text per image is needed for the Fisher")
    names = sorted({p for ps in layers.values() for p in ps})
    own = dict(model.named_weights())
    params = [own[n] for n in names]
    sq = {n: 0.0 for n in names}
    unique = sorted(set(texts))
    mine = parallel.share(len(images))  # each process its share of the samples, summed below
    with _grads_only_for(model, set(names)):
        text_emb = encode_texts(model, unique)
        for i in progress(range(mine.start, mine.stop), desc=desc, unit="images"):
            s = (model.encode_image(images[i : i + 1].to(model.device))[0] * text_emb[unique.index(texts[i])]).sum()
            grads = torch.autograd.grad(s, params, retain_graph=True, allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    sq[n] += float(g.detach().float().pow(2).sum())
    totals = parallel.sum_all(torch.tensor([sq[n] for n in names], dtype=torch.float64)).tolist()
    sq = dict(zip(names, totals))
    return {
        layer: sum(sq[p] for p in ps) / len(images) / sum(own[p].numel() for p in ps) for layer, ps in layers.items()
    }


def _subset(n: int, k: int, generator: torch.Generator) -> Tensor:
    return torch.randperm(n, generator=generator)[:k].sort().values


def fisher_scores(
    model: DualEncoder, data: UnlearnData, layers: dict[str, list[str]], config: SelectConfig, generator: torch.Generator
) -> FisherScores:
    """Forget, retain and relative Fisher for every candidate layer."""
    fi = _subset(len(data.forget_images), config.max_samples, generator)
    ri = _subset(len(data.retain_images), config.max_samples, generator)
    prompts = data.retain_prompts()
    forget = layer_fisher(model, data.forget_images[fi], [data.forget_text] * len(fi), layers, "Fisher, forget set")
    retain = layer_fisher(model, data.retain_images[ri], [prompts[int(i)] for i in ri], layers, "Fisher, retain set")
    floor = config.eps * sum(retain.values()) / len(retain) + 1e-30
    relative = {k: forget[k] / (retain[k] + floor) for k in layers}
    return FisherScores(forget=forget, retain=retain, relative=relative)


def top_layers(scores: dict[str, float], k: int) -> list[str]:
    """The ``k`` highest-scoring layers (ties broken by name, so the choice is deterministic)."""
    return [name for name, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


@dataclass(frozen=True)
class Selection:
    """What the select stage chose: the tuned ``layers`` and their parameter names (``params``), the
    per-layer Fisher ``scores`` (``{"forget"|"retain"|"relative": {layer: score}}``; empty when no
    selection ran) and the ``forget_names`` the original model gives the subgroup (``[{name, p}]``)."""

    layers: list[str]
    params: list[str]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    forget_names: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        return cls(list(data["layers"]), list(data["params"]), dict(data.get("scores", {})), list(data.get("forget_names", [])))
