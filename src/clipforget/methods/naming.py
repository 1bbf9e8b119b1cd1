"""The names the original model itself gives a subgroup, from a vocabulary (beyond the paper).

A forget request pairs the subgroup with one text ("a photo of a dog."), but the model knows the
subgroup by other names too ("English springer"), and pushing the images off one text leaves them
near the others. :func:`subgroup_names` reads those names off the original model: the vocabulary
entries with the largest zero-shot probability on the forget images, less their probability on the
retain images (so that names the siblings share are not taken). The forget objective then pushes the
forget images off each of them as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipforget.data.presets import label_space
from clipforget.methods.core import UnlearnData
from clipforget.methods.losses import embed_images
from clipforget.models.base import DualEncoder
from clipforget.zeroshot import build_zero_shot_classifier


def vocabulary(spec: str | Sequence[str]) -> tuple[str, ...]:
    """A named label space (e.g. ``imagenet1k``) or an explicit list of names."""
    return label_space(spec, "forget.vocabulary") if isinstance(spec, str) else tuple(spec)


@torch.no_grad()
def subgroup_names(teacher: DualEncoder, data: UnlearnData, names: Sequence[str], count: int,
                   template: str = "a photo of a {}.", min_probability: float = 0.0,
                   min_ratio: float = 0.0) -> list[dict[str, float]]:
    """Up to ``count`` names of ``names`` the original model gives ``data.forget_images`` more than the
    retain images, best first, each with its mean probability on both sets (only positive margins, and
    only names whose mean probability on the forget images is at least ``min_probability`` and at
    least ``min_ratio`` times that on the retain images)."""
    taken = {c.lower() for c in data.classnames}
    candidates = list(dict.fromkeys(n for n in names if n.lower() not in taken))
    if count == 0 or not candidates:
        return []
    classifier = build_zero_shot_classifier(teacher, candidates, [template])
    scale = teacher.logit_scale.float()

    def mean_probability(images):
        return torch.softmax(scale * embed_images(teacher, images).float() @ classifier, -1).mean(0).cpu()

    forget, retain = mean_probability(data.forget_images), mean_probability(data.retain_images)
    margin = forget - retain
    order = torch.argsort(margin, descending=True)[:count]
    return [{"name": candidates[i], "forget": float(forget[i]), "retain": float(retain[i])} for i in order.tolist()
            if margin[i] > 0 and forget[i] >= min_probability and forget[i] >= min_ratio * retain[i]]
