"""The forgetting audit: can a user of the model still find the forgotten subgroup by any road?

The Target column asks one question (the subgroup's test images under the scenario's label prompts),
and a model can close that one door by moving one label's text embedding. The audit asks five more,
each on the original and the unlearned model side by side, on images no method saw:

- ``names``: the Target under other names of the subgroup (``ScenarioSplits.forget_aliases``) and a
  wider template set (the 80 OpenAI ImageNet prompts); ``target_worst`` is the largest of them. An
  alias that is one of the 1000 ImageNet names is also scored 1000-way ("fine-grained recognition").
- ``search``: text-to-image retrieval with the forget text and each alias over a gallery of the
  Target, Retain and held-out test images: the subgroup's share of the top n, against chance.
- ``image``: how far the subgroup's image embeddings moved (cosine to the original's), and a linear
  probe on frozen image embeddings (subgroup vs its siblings), as a downstream user could fit one.
- ``relearn``: a few steps of fine-tuning on k subgroup images from D_f under their label, on the
  parameters the run changed and on the whole towers they belong to; the same budget on the original.
- ``membership``: whether D_f (which the method saw) can be told from unseen subgroup images by
  their similarity to the forget text or their loss (AUC with a Hanley-McNeil 95% interval).

Pure library: models, splits and preprocessed images in, an :class:`AuditResult` out. The verdict
flags are evidence against stated thresholds, not a pass mark; every figure says what it cannot see.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from clipforget.audit.config import (
    NOTES,
    PARTS,
    SIDES,
    AuditConfig,
    AuditThresholds,
    template_set,
)
from clipforget.audit.measures import (
    auc_interval,
    label_target,
    linear_probe,
    relearn_curve,
    retrieval,
)
from clipforget.audit.roads import ROADS, Context, Side
from clipforget.data.types import ScenarioSplits
from clipforget.evaluation import ScenarioImages
from clipforget.models.base import DualEncoder
from clipforget.progress import progress

__all__ = [
    "NOTES",
    "PARTS",
    "AuditConfig",
    "AuditResult",
    "AuditThresholds",
    "auc_interval",
    "audit",
    "audit_summary",
    "changed_parameters",
    "label_target",
    "linear_probe",
    "relearn_curve",
    "retrieval",
    "template_set",
    "verdict",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditResult:
    """One audit: per part, the figures of both models; the verdict; seconds per part.

    ``parts[name]`` holds JSON-ready figures keyed by "original" / "unlearned" where a figure is per
    model (accuracies and shares in %, cosines and AUCs as fractions). :func:`audit_summary` picks
    the headline figures from :meth:`to_dict`'s output.
    """

    seed: int
    config: AuditConfig
    parts: Mapping[str, Mapping[str, Any]]
    verdict: Mapping[str, Any]
    seconds: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "config": self.config.to_dict(), "parts": dict(self.parts),
                "verdict": dict(self.verdict), "notes": {p: NOTES[p] for p in self.parts}, "seconds": dict(self.seconds)}


def audit_summary(audit: Mapping[str, Any]) -> dict[str, Any]:
    """Headline figures of an audit dict (:meth:`AuditResult.to_dict`), per model where per model:
    ``target_worst``, ``search_share`` (worst query) with ``search_chance``, ``relearn`` (Target after
    the smallest budget of the first relearning setting run) with ``relearn_steps`` and ``relearn_setting``."""
    parts, out = audit.get("parts", {}), {}
    if "names" in parts:
        out["target_worst"] = dict(parts["names"]["target_worst"])
    if "search" in parts:
        out["search_share"] = {s: parts["search"]["worst"][s]["share"] for s in SIDES}
        out["search_chance"] = parts["search"]["chance"]
    for setting, entry in parts.get("relearn", {}).get("settings", {}).items():
        if "unlearned" in entry:
            first = str(parts["relearn"]["steps"][0])
            out["relearn"] = {s: entry[s][first] for s in SIDES if s in entry}
            out["relearn_steps"], out["relearn_setting"] = int(first), setting
            break
    return out


def audit(original: DualEncoder, unlearned: DualEncoder, splits: ScenarioSplits, images: ScenarioImages,
          config: AuditConfig | None = None, *, seed: int, tuned: Sequence[str] | None = None,
          unlearned_images: ScenarioImages | None = None) -> AuditResult:
    """Audit ``unlearned`` against ``original`` on a scenario (see the module doc).

    ``images``: the scenario's preprocessed images (or a frozen-prefix view's activations, with view
    models); ``unlearned_images`` when the unlearned model preprocesses differently. ``tuned``: the
    parameters the run changed (default: those that differ between the two models). Deterministic
    under ``seed``; both models are left as they were.
    """
    config = config or AuditConfig()
    if tuned is None:
        tuned = changed_parameters(original, unlearned)
    sides = {"original": Side(original, images, config.batch_size),
             "unlearned": Side(unlearned, unlearned_images or images, config.batch_size)}
    ctx = Context(sides, splits, config, seed, tuple(tuned))
    modes = {k: s.model.training for k, s in sides.items()}
    results, seconds = {}, {}
    try:
        for s in sides.values():
            s.model.eval()
        for part in progress(config.parts, desc="audit", unit="parts"):
            start = time.perf_counter()
            results[part] = ROADS[part](ctx)
            seconds[part] = time.perf_counter() - start
            log.info("audit %s done in %.1f s", part, seconds[part])
    finally:
        for k, s in sides.items():
            s.model.train(modes[k])
    return AuditResult(seed, config, results, verdict(results, config.thresholds), seconds)


def changed_parameters(original: DualEncoder, unlearned: DualEncoder) -> tuple[str, ...]:
    """Names of the unlearned model's parameters that differ from the original's (or that it lacks)."""
    before = dict(original.named_weights())
    out = []
    for name, p in unlearned.named_weights():
        q = before.get(name)
        if q is None or q.shape != p.shape or not torch.equal(q.detach().cpu(), p.detach().cpu()):
            out.append(name)
    return tuple(sorted(out))


def verdict(parts: Mapping[str, Mapping[str, Any]], thresholds: AuditThresholds) -> dict[str, Any]:
    """Boolean flags per road (None where the part did not run or could not), with the thresholds used."""
    flags: dict[str, bool | None] = {}
    if "names" in parts:
        flags["names_closed"] = parts["names"]["target_worst"]["unlearned"] <= thresholds.max_target_worst
    if "search" in parts:
        s = parts["search"]
        flags["search_near_chance"] = s["worst"]["unlearned"]["share"] <= thresholds.max_search_ratio * s["chance"]
    if "image" in parts:
        flags["image_moved"] = parts["image"]["cosine_target"]["mean"] < thresholds.max_image_cosine
    if "relearn" in parts:
        summary = audit_summary({"parts": {"relearn": parts["relearn"]}})
        before = parts["relearn"]["before"].get("original")
        flags["relearn_resists"] = None if "relearn" not in summary or before is None else (
            summary["relearn"]["unlearned"] <= thresholds.max_relearn_recovery * before)
    if "membership" in parts:
        m = parts["membership"]
        flags["membership_hidden"] = all(abs(m[k]["unlearned"]["auc"] - m[k]["original"]["auc"]) <= thresholds.max_membership_shift
                                         for k in ("similarity", "loss"))
    known = [v for v in flags.values() if v is not None]
    return {"kind": "evidence, not a pass mark: each flag compares one figure with a chosen threshold",
            "thresholds": thresholds.to_dict(), "flags": flags,
            "every_road_closed": all(known) if known else None}
