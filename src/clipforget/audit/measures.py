"""The audit's measures, each a pure function of embeddings or of one model: top-1 shares, renamed
classifiers, retrieval, a linear probe, a relearning curve, an AUC with its interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforget.data.types import ScenarioSplits
from clipforget.methods.adapters import AdapterConfig, tuning
from clipforget.methods.base import clone_model
from clipforget.methods.losses import ClassHead
from clipforget.methods.training import TrainConfig, train_loop
from clipforget.models.base import DualEncoder
from clipforget.zeroshot import build_zero_shot_classifier, compute_image_embeddings


def top1_share(emb: Tensor, classifier: Tensor, index: int) -> float:
    """Share (%) of ``emb`` whose top-1 class under ``classifier`` (D, C) is ``index``."""
    return 100.0 * float(((emb @ classifier.cpu()).argmax(-1) == index).float().mean())



@torch.no_grad()
def renamed_classifiers(model: DualEncoder, classnames: Sequence[str], label: int, names: Sequence[str],
                         templates: Sequence[str], batch_size: int) -> dict[str, Tensor]:
    """A zero-shot classifier (D, C) per name: the scenario's, with class ``label`` called that name."""
    others = build_zero_shot_classifier(model, [c for i, c in enumerate(classnames) if i != label], templates,
                                        batch_size=batch_size).cpu()
    named = build_zero_shot_classifier(model, names, templates, batch_size=batch_size).cpu()
    return {n: torch.cat([others[:, :label], named[:, j : j + 1], others[:, label:]], 1) for j, n in enumerate(names)}



@torch.no_grad()
def label_target(model: DualEncoder, target_images: Tensor, splits: ScenarioSplits, batch_size: int) -> float:
    """The Target (%): the subgroup's test images classified as the label under the scenario's prompts."""
    classifier = build_zero_shot_classifier(model, splits.classnames, splits.templates, batch_size=batch_size)
    emb = compute_image_embeddings(model, target_images, batch_size=batch_size, progress=False)
    return top1_share(emb, classifier, splits.classnames.index(splits.forget_label))


def retrieval(gallery: Tensor, subgroup: Tensor, query: Tensor) -> dict[str, float]:
    """The subgroup's share (%) of the top n (n = subgroup size) and its mean rank (1 = first) for one query."""
    order = torch.argsort(gallery @ query, descending=True, stable=True)
    hit = subgroup[order]
    n = int(subgroup.sum())
    ranks = torch.nonzero(hit).squeeze(1).double() + 1
    return {"share": 100.0 * float(hit[:n].double().mean()), "mean_rank": float(ranks.mean())}


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, steps: int = 100,
                 l2: float = 1e-2) -> float:
    """Balanced accuracy (%) on the test set of a class-balanced logistic regression (L-BFGS from zero,
    deterministic) fitted on standardised ``train_x`` with labels ``train_y`` in {0, 1}."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, xt = ((train_x - mean) / std).double(), ((test_x - mean) / std).double()
    y = train_y.double()
    weight = torch.where(y > 0, 0.5 / y.sum(), 0.5 / (1 - y).sum())
    w = torch.zeros(xs.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = (weight * F.binary_cross_entropy_with_logits(xs @ w + b, y, reduction="none")).sum() + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        pred = (xt @ w + b) > 0
    truth = test_y.bool()
    recalls = [float((pred[truth == c] == c).double().mean()) for c in (True, False)]
    return 100.0 * sum(recalls) / 2


def relearn_curve(model: DualEncoder, shots: Tensor, target_images: Tensor, splits: ScenarioSplits,
                  param_names: Sequence[str], *, steps: Sequence[int], lr: float, batch_size: int = 64,
                  desc: str = "relearn") -> dict[str, float]:
    """Fine-tune a copy of ``model`` (eval mode, logit scale fixed) on ``shots`` (subgroup images) under
    the forget label, cross-entropy over the scenario's class prompts, Adam; the Target (%) after each
    of ``steps``. ``model`` is left unchanged."""
    tuned = clone_model(model).eval()
    shots = shots.to(tuned.device)
    labels = torch.full((len(shots),), splits.classnames.index(splits.forget_label), device=tuned.device)
    head = ClassHead(tuned, splits.classnames, splits.templates, param_names)
    curve: dict[str, float] = {}

    def loss_fn(step: int) -> dict[str, Tensor]:
        logits = tuned.logit_scale.detach() * tuned.encode_image(shots) @ head().to(shots.dtype)
        return {"loss": F.cross_entropy(logits.float(), labels)}

    def read(step: int) -> bool:
        if step in steps:
            curve[str(step)] = label_target(tuned, target_images, splits, batch_size)
        return False

    train = TrainConfig(steps=max(steps), lr=lr, batch_size=len(shots), weight_decay=0.0, grad_clip=None, check_every=1)
    with tuning(tuned.network, param_names, AdapterConfig(), torch.Generator(), use_lora=False) as params:
        train_loop(params, loss_fn, train, should_stop=read, desc=desc)
        curve[str(max(steps))] = label_target(tuned, target_images, splits, batch_size)
    return curve


def auc_interval(members: Tensor, others: Tensor, z: float = 1.96) -> dict[str, float]:
    """AUC = P(member score > other score) (ties count half) with the Hanley-McNeil interval."""
    diff = members.double()[:, None] - others.double()[None, :]
    auc = float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
    n1, n2 = len(members), len(others)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se = math.sqrt(max(0.0, auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n2 - 1) * (q2 - auc**2)) / (n1 * n2))
    return {"auc": auc, "low": max(0.0, auc - z * se), "high": min(1.0, auc + z * se)}


def quantise(scores: Tensor) -> Tensor:
    """Scores to 6 decimals: equal embeddings scored in batches of different shapes differ by float32
    rounding, which must not rank them."""
    return torch.round(scores.double(), decimals=6)
