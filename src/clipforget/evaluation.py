"""Honest evaluation: one function scores any model on a scenario's Target, Retain and held-out sets.

Images arrive already preprocessed (:class:`ScenarioImages`, built once per preprocessing by
:func:`clipforget.app.prepare.load_scenario_images`), so evaluating the original, the unlearned and every
souping candidate costs forward passes only; a held-out set too large for memory is streamed
(:class:`~clipforget.data.StreamedImages`) and costs a read of its files at each pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from clipforget.data.loading import StreamedImages
from clipforget.data.types import EvalSet, ScenarioSplits
from clipforget.metrics import ScenarioMetrics
from clipforget.models.base import DualEncoder
from clipforget.zeroshot import (
    ZeroShotAccuracy,
    build_zero_shot_classifier,
    compute_image_embeddings,
    zero_shot_accuracy,
)


@dataclass(frozen=True)
class LabelledImages:
    """Preprocessed images (N, C, H, W), in memory or streamed, and their class indices into ``classnames``."""

    images: Tensor | StreamedImages
    labels: Tensor
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")


def label_indices(eval_set: EvalSet) -> Tensor:
    index = {c: i for i, c in enumerate(eval_set.classnames)}
    unknown = sorted({r.label for r in eval_set.records} - set(index))
    if unknown:
        raise ValueError(f"eval set {eval_set.name!r}: labels {unknown} are not among its class names")
    return torch.tensor([index[r.label] for r in eval_set.records], dtype=torch.long)


@dataclass(frozen=True)
class ScenarioImages:
    """Every split of a scenario preprocessed for one model: tensors, or sets streamed from their files."""

    forget_train: Tensor | StreamedImages
    retain_train: LabelledImages
    calibration: LabelledImages
    target: LabelledImages
    retain: LabelledImages
    heldout: Mapping[str, LabelledImages]


@torch.no_grad()
def image_logits(model: DualEncoder, data: LabelledImages, *, batch_size: int = 64, classifier: Tensor | None = None,
                 desc: str | None = None) -> Tensor:
    """Zero-shot logits (N, C) of ``data`` on the CPU (classifier built from its class names x templates);
    with ``desc``, a progress bar of that name."""
    device = model.device
    if classifier is None:
        classifier = build_zero_shot_classifier(model, data.classnames, data.templates, device=device, batch_size=batch_size)
    emb = compute_image_embeddings(model, data.images, device=device, batch_size=batch_size, progress=desc is not None,
                                   desc=desc or "")
    return (emb.to(classifier.device) @ classifier).cpu()


@torch.no_grad()
def evaluate_images(model: DualEncoder, data: LabelledImages, *, batch_size: int = 64,
                    classifier: Tensor | None = None) -> ZeroShotAccuracy:
    """Zero-shot accuracy of ``model`` on ``data`` (classifier built from its class names x templates)."""
    return zero_shot_accuracy(image_logits(model, data, batch_size=batch_size, classifier=classifier), data.labels,
                              len(data.classnames))


@torch.no_grad()
def evaluate_scenario(model: DualEncoder, splits: ScenarioSplits, images: ScenarioImages, *, batch_size: int = 64) -> ScenarioMetrics:
    """Target, Retain (the scenario's label space) and each held-out set: zero-shot top-1 in %.

    ``details`` holds, per set, :class:`ZeroShotAccuracy`'s figures and ``predicted``: the top-1
    class index of every image, in the set's record order (what the report's confusion row and
    examples show).
    """
    was_training = model.training
    model.eval()
    try:
        classifier = build_zero_shot_classifier(model, splits.classnames, splits.templates, batch_size=batch_size)
        sets = {"target": (images.target, classifier), "retain": (images.retain, classifier),
                **{f"heldout/{k}": (v, None) for k, v in images.heldout.items()}}
        details = {}
        for name, (data, head) in sets.items():
            logits = image_logits(model, data, batch_size=batch_size, classifier=head, desc=f"scoring {name}")
            accuracy = zero_shot_accuracy(logits, data.labels, len(data.classnames))
            details[name] = {**accuracy.to_dict(), "predicted": logits.argmax(dim=1).tolist()}
    finally:
        model.train(was_training)
    heldout = {k: details[f"heldout/{k}"]["top1"] for k in images.heldout}
    return ScenarioMetrics(details["target"]["top1"], details["retain"]["top1"], heldout, details)
