"""The default ``score_fn`` for the restore stage, built from the task's own images.

utility: zero-shot accuracy on the calibration images when they have labels; agreement with the
original model's predictions when they have none; retain-image accuracy when there are no
calibration images. forget_acc: the forget images' zero-shot accuracy on ``forget_label``.
The pipeline may pass its own scoring function instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from clipforget.methods.base import (
    ScoreFn,
    UnlearnData,
    clone_model,
    load_partial_state,
)
from clipforget.methods.forget import forget_progress
from clipforget.methods.losses import embed_images
from clipforget.models.base import DualEncoder
from clipforget.zeroshot import build_zero_shot_classifier


@torch.no_grad()
def predict(model: DualEncoder, images: Tensor, classnames, templates) -> Tensor:
    classifier = build_zero_shot_classifier(model, classnames, templates)
    return (embed_images(model, images).float() @ classifier).argmax(-1).cpu()


def make_score_fn(original: DualEncoder, data: UnlearnData) -> ScoreFn:
    """A scoring function over backend state dicts of ``original``'s architecture."""
    scratch = clone_model(original).eval()
    if data.calibration_images is not None:
        images = data.calibration_images
        classnames = data.calibration_classnames or data.classnames
        labels = data.calibration_labels if data.calibration_labels is not None else predict(original, images, classnames, data.templates)
    else:
        images, classnames, labels = data.retain_images, data.classnames, data.retain_labels
    labels = labels.cpu()

    def score(state: Mapping[str, Tensor]) -> tuple[float, float]:
        load_partial_state(scratch, state)
        utility = float((predict(scratch, images, classnames, data.templates) == labels).float().mean())
        return utility, forget_progress(scratch, data)["forget_acc"]

    return score
