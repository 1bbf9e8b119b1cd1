"""How every method chooses its weights: one hold-out of D_f, one scoring function, one rule.

``score_fn(state) -> (utility, forget_acc)``. utility: zero-shot accuracy on the calibration images
when they have labels; agreement with the original model's predictions when they have none;
retain-image accuracy when there are no calibration images. forget_acc: the zero-shot accuracy on
``forget_label`` of the forget images held out of training (:func:`split_forget`), or, when the
model carries earlier forgotten subgroups (:class:`Forgotten`, a sequence of requests), by how much
the worst of them rose above its accuracy under the model as received, whichever is larger.

The rule (:func:`best_candidate`): candidates whose forget accuracy is at most the forget target are
*feasible*; the feasible one with the highest utility wins; when none is feasible, the one that
forgets most. The method template (:class:`clipforget.methods.base.Method`) builds all of it once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from clipforget.data.loading import take
from clipforget.methods.core import (
    ScoreFn,
    UnlearnData,
    clone_model,
    stage_generator,
)
from clipforget.methods.losses import embed_images, encode_texts
from clipforget.models.base import DualEncoder
from clipforget.zeroshot import build_zero_shot_classifier


@torch.no_grad()
def predict(model: DualEncoder, images: Tensor, classnames, templates) -> Tensor:
    classifier = build_zero_shot_classifier(model, classnames, templates)
    return (embed_images(model, images).float() @ classifier).argmax(-1).cpu()


@torch.no_grad()
def forget_progress(model: DualEncoder, data: UnlearnData) -> dict[str, float]:
    """Mean forget similarity and the forget images' zero-shot accuracy (on ``data.forget_label``)."""
    text = encode_texts(model, [data.forget_text])[0]
    emb = embed_images(model, data.forget_images)
    classifier = build_zero_shot_classifier(model, data.classnames, data.templates)
    acc = ((emb.float() @ classifier).argmax(-1) == data.forget_label).float().mean()
    return {"forget_similarity": float((emb @ text).mean()), "forget_acc": float(acc)}


def split_forget(data: UnlearnData, holdout: float, seed: int) -> tuple[UnlearnData, UnlearnData]:
    """(data to tune on, data whose forget images check the forget accuracy): D_f split by ``holdout``.

    With no image to hold out (``holdout`` 0, or too few images), both are ``data``.
    """
    n = len(data.forget_images)
    k = int(round(holdout * n))
    if k == 0 or k == n:
        return data, data
    order = torch.randperm(n, generator=stage_generator(seed, "holdout"))
    fit = dataclasses.replace(data, forget_images=take(data.forget_images, order[k:]))
    return fit, dataclasses.replace(data, forget_images=take(data.forget_images, order[:k]))


@dataclass(frozen=True, eq=False)
class Forgotten:
    """A subgroup an earlier request already forgot: images of it (its D_f) and the label space that
    scores them (``label`` indexes ``classnames``). ``name`` says which request it came from."""

    name: str
    images: Tensor
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    label: int


@torch.no_grad()
def forgotten_accuracy(model: DualEncoder, forgotten: Forgotten) -> float:
    """The share of ``forgotten``'s images ``model`` classifies as its label (a fraction)."""
    return float((predict(model, forgotten.images, forgotten.classnames, forgotten.templates) == forgotten.label).float().mean())


def make_score_fn(original: DualEncoder, data: UnlearnData, forgotten: Sequence[Forgotten] = ()) -> ScoreFn:
    """A scoring function over backend state dicts of ``original``'s architecture; ``data.forget_images``
    are the images whose forget accuracy it reports (the held-out part of D_f).

    With ``forgotten`` (earlier requests' subgroups), the reported forget accuracy is the larger of
    that and the largest rise of an earlier subgroup's accuracy above ``original``'s: a candidate is
    then feasible only when it also keeps every earlier subgroup within the forget target of where
    the model as received had it.
    """
    scratch = clone_model(original).eval()
    received = [forgotten_accuracy(original, f) for f in forgotten]
    if data.calibration_images is not None:
        images = data.calibration_images
        classnames = data.calibration_classnames or data.classnames
        labels = data.calibration_labels if data.calibration_labels is not None else predict(original, images, classnames, data.templates)
    else:
        images, classnames, labels = data.retain_images, data.classnames, data.retain_labels
    labels = labels.cpu()

    def score(state: Mapping[str, Tensor]) -> tuple[float, float]:
        scratch.load_weights(state)
        utility = float((predict(scratch, images, classnames, data.templates) == labels).float().mean())
        forget_acc = forget_progress(scratch, data)["forget_acc"]
        rises = [forgotten_accuracy(scratch, f) - r for f, r in zip(forgotten, received)]
        return utility, max([forget_acc, *rises])

    return score


def feasible(entry: Mapping[str, float], forget_target: float) -> bool:
    return entry["forget_acc"] <= forget_target


def most_forgetting(curve: Sequence[Mapping[str, float]]) -> int:
    """The entry with the lowest forget accuracy (ties: higher utility, then the earlier one)."""
    return min(range(len(curve)), key=lambda i: (curve[i]["forget_acc"], -curve[i]["utility"], i))


def best_candidate(curve: Sequence[Mapping[str, float]], forget_target: float) -> int:
    """The rule: the feasible entry with the highest utility (ties: the earlier), else :func:`most_forgetting`."""
    ok = [i for i, c in enumerate(curve) if feasible(c, forget_target)]
    if ok:
        return max(ok, key=lambda i: (curve[i]["utility"], -i))
    return most_forgetting(curve)
