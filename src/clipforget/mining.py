"""Mining a forget request from a description: which pool images are the subgroup, which are safe to retain.

Pure library: embeddings in, index sets out. Under the original model, every pool image has a
similarity to each class of the label space (zero-shot classifier columns) and to the query (the
request's description and the prompts of its aliases; the largest counts). Then:

- **forget set**: the images whose nearest text, over the label space, a contrast vocabulary (by
  default the 1000 ImageNet names, less the aliases) and the query, is the query (query margin
  ``q - max s`` above :data:`MARGIN_EPS`); or, with ``forget_count`` N, the N images of largest margin.
  The vocabulary competes for the forget set only: an image nearer "Welsh springer spaniel" or "cat"
  than the query is not mined, whatever class of the label space it falls in.
  With ``forget_rule: label`` (a subgroup that is its whole class, as "sneaker" in Fashion-MNIST):
  the images classified as the label, most confident first, and the label keeps no retain group.
- **retain set of the label**: images classified as the label and not mined, ordered from farthest to
  nearest the query (by ``q - s_label``); the ``guard`` share nearest the query is left out of every
  set (the images the mining is least sure of), the first ``retain_per_class`` are retained, the next
  ``calibration_per_class`` calibrate.
- **other classes**: images classified as each other class, most confident first (top-1 minus
  top-2 similarity), split the same way into retain and calibration.

No image is in two sets; ties break by pool order, so the result is a function of the embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from clipforget.config import Config, require

#: A query margin at or below this is float noise, not "nearer the query" (a query equal to a class
#: prompt gives margins of about 1e-7).
MARGIN_EPS = 1e-5


@dataclass(frozen=True)
class MineConfig(Config):
    """How a scenario is mined from a pool (``clipforget mine``).

    forget_rule: "query": the forget set is read from the query margin (module doc); "label": the subgroup
        is its whole class, so the forget set is every image classified as the label (the label then
        keeps no retain group). Measured on the testbed's Fashion-MNIST pool (docs/decisions.md): the
        query rule mines no sneaker (the 1000 names are nearer every 28-pixel shoe than the query).
    forget_count: 0: the forget set is every image the rule takes; N: the N it ranks first (largest
        query margin, or most confidently the label).
    retain_per_class: at most this many retain images per class (the label's own and each other class).
    calibration_per_class: at most this many calibration images (D_m) per class.
    guard: the share of the label's not-mined images nearest the query that no set takes.
    test_fraction: the share of the forget set and of each retain group kept as test images (Target,
        Retain); the rest train.
    contrast: the names that compete with the query besides the label space (a named label space of
        :mod:`clipforget.data.presets` or a list; empty: none). Names equal to an alias or a class are
        left out. Measured on the testbed (docs/decisions.md): without it, low-resolution CIFAR-10 dogs
        and cats near no class were mined as springers (precision 61%); with the 1000 ImageNet names, 96%.
    """

    forget_rule: Literal["query", "label"] = "query"
    forget_count: int = 0
    retain_per_class: int = 60
    calibration_per_class: int = 30
    guard: float = 0.5
    test_fraction: float = 0.3
    contrast: str | tuple[str, ...] = "imagenet1k"

    def __post_init__(self) -> None:
        require(self.forget_rule in ("query", "label"), f"forget_rule must be 'query' or 'label', got {self.forget_rule!r}")
        require(self.forget_count >= 0, f"forget_count must be >= 0 (0: the query's rule), got {self.forget_count}")
        require(self.retain_per_class >= 2, f"retain_per_class must be >= 2 (one train, one test), got {self.retain_per_class}")
        require(self.calibration_per_class >= 0, f"calibration_per_class must be >= 0, got {self.calibration_per_class}")
        require(0 <= self.guard < 1, f"guard is a share in [0, 1), got {self.guard}")
        require(0 < self.test_fraction < 1, f"test_fraction is a share in (0, 1), got {self.test_fraction}")


@dataclass(frozen=True)
class MinedSets:
    """Indices into the pool: the forget set (largest query margin first), and per class of the label
    space its retain and calibration images (most reliable first); ``margin`` is every image's query margin."""

    forget: tuple[int, ...]
    retain: dict[int, tuple[int, ...]]
    calibration: dict[int, tuple[int, ...]]
    margin: Tensor = field(repr=False)

    def retained(self) -> set[int]:
        return {i for v in self.retain.values() for i in v}

    def calibrating(self) -> set[int]:
        return {i for v in self.calibration.values() for i in v}


def _order(values: Tensor, indices: Tensor, descending: bool) -> list[int]:
    """``indices`` sorted by ``values[indices]`` (ties: pool order)."""
    keys = values[indices].tolist()
    return [int(i) for _, i in sorted(zip(keys, indices.tolist()), key=lambda t: ((-t[0] if descending else t[0]), t[1]))]


def mine_sets(image_emb: Tensor, query_emb: Tensor, class_emb: Tensor, label: int, config: MineConfig,
              contrast_emb: Tensor | None = None) -> MinedSets:
    """Mine the sets (module doc) from normalised pool image embeddings (N, D), query text embeddings
    (Q, D), the label space's classifier columns (C, D) and the contrast vocabulary's (K, D);
    ``label`` indexes the classes."""
    sims = image_emb.float() @ class_emb.float().T  # (N, C)
    query = (image_emb.float() @ query_emb.float().T).max(dim=1).values  # (N,)
    top2 = sims.topk(min(2, sims.shape[1]), dim=1)
    pred, best = top2.indices[:, 0], top2.values[:, 0]
    rival = best
    if contrast_emb is not None and len(contrast_emb):
        rival = torch.maximum(best, (image_emb.float() @ contrast_emb.float().T).max(dim=1).values)
    margin = query - rival
    everything = torch.arange(len(image_emb))
    confidence = best - (top2.values[:, 1] if sims.shape[1] > 1 else 0)
    if config.forget_rule == "label":
        forget = _order(confidence, everything[pred == label], descending=True)
    elif config.forget_count:
        forget = _order(margin, everything, descending=True)
    else:
        forget = _order(margin, everything[margin > MARGIN_EPS], descending=True)
    if config.forget_count:
        forget = forget[: config.forget_count]
    taken = torch.zeros(len(image_emb), dtype=torch.bool)
    taken[forget] = True
    retain, calibration = {}, {}
    for c in range(sims.shape[1]):
        members = everything[(pred == c) & ~taken]
        if c == label and config.forget_rule == "label":
            continue  # the whole class is the subgroup: none of it is retained
        if c == label:
            ordered = _order(query - sims[:, c], members, descending=False)  # farthest from the query first
            ordered = ordered[: len(ordered) - int(round(config.guard * len(ordered)))]
        else:
            ordered = _order(confidence, members, descending=True)
        r, m = config.retain_per_class, config.calibration_per_class
        if ordered[:r]:
            retain[c] = tuple(ordered[:r])
        if ordered[r : r + m]:
            calibration[c] = tuple(ordered[r : r + m])
    return MinedSets(tuple(forget), retain, calibration, margin)


def held_for_test(count: int, test_fraction: float) -> set[int]:
    """Which positions of an ordered set of ``count`` become test images: spread evenly over the
    order, at least one and at least one train image left (for ``count`` >= 2)."""
    k = min(max(1, int(round(test_fraction * count))), count - 1)
    return {int((j + 0.5) * count / k) for j in range(k)} if k > 0 else set()


def compare_with_truth(sets: MinedSets, truth: Sequence[bool]) -> dict[str, float | int]:
    """How the mined sets match the pool's own labels (``truth[i]``: image i is of the subgroup).

    precision / recall of the forget set (%); ``leaked_retain`` / ``leaked_calibration``: the share (%)
    of the true subgroup that went into the retain / calibration sets.
    """
    true = {i for i, t in enumerate(truth) if t}
    forget = set(sets.forget)
    hit = len(forget & true)

    def share(part: int, whole: int) -> float:
        return 100.0 * part / whole if whole else float("nan")

    return {"subgroup_images": len(true), "mined": len(forget), "true_positives": hit,
            "precision": share(hit, len(forget)), "recall": share(hit, len(true)),
            "leaked_retain": share(len(sets.retained() & true), len(true)),
            "leaked_calibration": share(len(sets.calibrating() & true), len(true))}
