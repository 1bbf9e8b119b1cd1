"""Baselines that edit weights directly and pick a step size with ``score_fn``: SSD, task-vector negation, SLUG.

The edits are pure functions on state dicts (:func:`dampen`, :func:`negate`, :func:`layer_step`);
each method scores every point of its grid and keeps the best (see :mod:`.common`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from clipforget.config import require
from clipforget.methods.base import StateDict, UnlearnData, register_method
from clipforget.methods.baselines.common import (
    Baseline,
    BaselineConfig,
    BestWeights,
    TrainedConfig,
    forget_nll,
    gradients,
    retain_loss,
    tower_params,
    trainable,
)
from clipforget.methods.souping import interpolate
from clipforget.methods.training import BatchStream, TrainConfig, train_loop
from clipforget.models.base import DualEncoder


def _positive(name: str, grid: tuple[float, ...]) -> None:
    require(bool(grid) and all(v >= 0 for v in grid), f"{name} must be non-empty values >= 0, got {grid}")


# -- SSD --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SSDConfig(BaselineConfig):
    """Selective synaptic dampening; every (alpha, lambda) pair is tried.

    alpha_grid: selection thresholds: a weight is dampened when I_f > alpha * I_r.
    lambda_grid: dampening constants: a selected weight is multiplied by min(lambda * I_r / I_f, 1).
    batch_size: images per gradient of the importances (I = mean over batches of grad², per weight).
    """

    alpha_grid: tuple[float, ...] = (3.0, 10.0, 30.0)
    lambda_grid: tuple[float, ...] = (0.3, 1.0)
    batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("alpha_grid", self.alpha_grid)
        _positive("lambda_grid", self.lambda_grid)
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")


def importance(student: DualEncoder, names: list[str], loss_fn, n: int, batch_size: int) -> dict[str, Tensor]:
    """Diagonal empirical Fisher: the mean over consecutive batches of ``loss_fn(index)``'s squared gradient."""
    total = {k: torch.zeros(()) for k in names}
    starts = range(0, n, batch_size)
    for start in starts:
        index = torch.arange(start, min(start + batch_size, n))
        for k, g in gradients(student, names, lambda: loss_fn(index)).items():
            total[k] = total[k] + g.float().pow(2)
    return {k: v / len(starts) for k, v in total.items()}


def dampen(state: Mapping[str, Tensor], forget: Mapping[str, Tensor], retain: Mapping[str, Tensor], alpha: float, lam: float) -> tuple[StateDict, int]:
    """SSD's update: where ``forget > alpha * retain``, θ *= min(lam * retain / forget, 1). Returns the
    new state and how many weights were selected."""
    out, selected = dict(state), 0
    for k, i_f in forget.items():
        mask = i_f > alpha * retain[k]
        beta = (lam * retain[k] / i_f.clamp_min(torch.finfo(i_f.dtype).tiny)).clamp(max=1)
        out[k] = torch.where(mask, state[k] * beta.to(state[k].dtype), state[k])
        selected += int(mask.sum())
    return out, selected


@register_method("ssd")
class SSD(Baseline):
    """SSD (Foster et al. 2024, arXiv 2308.07707): training-free selective synaptic dampening.

    Port: per-weight importances are the squared gradients (mean over batches) of the forget NLL on
    D_f and of the retain CE on D_r (only the hand-built D_r stands in for SSD's full training set);
    every tower weight is a candidate; (alpha, lambda) is chosen on the grid with ``score_fn``.
    When no weight is selected the result is the original (recorded as ``chose_original``).
    """

    config_class = SSDConfig

    @classmethod
    def smoke_config(cls) -> SSDConfig:
        return SSDConfig(alpha_grid=(1.0, 3.0), lambda_grid=(0.5,), batch_size=4)

    def unlearn(self, student: DualEncoder, data: UnlearnData, config: SSDConfig, best: BestWeights, generator) -> dict[str, Any]:
        forget, retain = self.importances(student, data, config)
        state = student.weights()
        selected = {}
        for alpha in config.alpha_grid:
            for lam in config.lambda_grid:
                candidate, n = dampen(state, forget, retain, alpha, lam)
                selected[f"{alpha}/{lam}"] = n
                best.offer(candidate, alpha=alpha, lam=lam, selected=n)
        return {"selected": selected}

    @staticmethod
    def importances(student: DualEncoder, data: UnlearnData, config: SSDConfig) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(I_f, I_r) per tower weight."""
        names = tower_params(student)
        forget = importance(student, names, lambda i: forget_nll(student, data, data.forget_images[i]), len(data.forget_images), config.batch_size)
        retain = importance(
            student, names, lambda i: retain_loss(student, data, data.retain_images[i], data.retain_labels[i]), len(data.retain_images), config.batch_size
        )
        return forget, retain


# -- task-vector negation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskVectorConfig(TrainedConfig):
    """Fine-tune toward the forget pairs (``train``), then negate the task vector.

    towers: the towers fine-tuned (the paper fine-tunes the image encoder under a frozen zero-shot head).
    lambda_grid: negation scales tried for θ - lambda * τ (0 is the original model).
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=100, lr=1e-5, batch_size=32))
    towers: tuple[str, ...] = ("image",)
    lambda_grid: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.towers) and set(self.towers) <= {"image", "text"}, f"towers must be a non-empty subset of image, text; got {self.towers}")
        _positive("lambda_grid", self.lambda_grid)


def negate(original: Mapping[str, Tensor], finetuned: Mapping[str, Tensor], lam: float) -> StateDict:
    """``θ - lam * (θ_ft - θ)``: task-vector negation (the interpolation at ``alpha = -lam``)."""
    return interpolate(original, finetuned, -lam)


@register_method("task-vector")
class TaskVector(Baseline):
    """Task-vector negation (Ilharco et al. 2023, arXiv 2212.04089, "Editing models with task arithmetic").

    Port: the "task" is the forget pairs: fine-tune the image tower to minimise the forget NLL
    (forget text and forget class among ``[forget text | class heads]``, heads from the frozen text
    tower); τ = θ_ft - θ; the scale lambda is chosen on the grid with ``score_fn``.
    """

    config_class = TaskVectorConfig

    @classmethod
    def smoke_config(cls) -> TaskVectorConfig:
        return TaskVectorConfig(train=TrainConfig(steps=3, lr=1e-3, batch_size=4), lambda_grid=(0.5, 1.0))

    def unlearn(self, student: DualEncoder, data: UnlearnData, config: TaskVectorConfig, best: BestWeights, generator) -> dict[str, Any]:
        original = {k: v.detach().clone() for k, v in student.weights().items()}
        names = [n for n in tower_params(student) if student.tower_of(n) in config.towers]
        batches = BatchStream(len(data.forget_images), config.train.batch_size, generator)

        def loss_fn(step: int) -> dict[str, Tensor]:  # learn the forget pairs
            return {"loss": forget_nll(student, data, data.forget_images[batches.next()])}

        with trainable(student, names) as params:
            log = train_loop(params, loss_fn, config.train, desc="task-vector")
        finetuned = student.weights()
        for lam in config.lambda_grid:
            best.offer(negate(original, finetuned, lam), lam=lam)
        return {"finetune": log.to_dict()}


# -- SLUG -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SLUGConfig(BaselineConfig):
    """Single-layer unlearning gradient.

    max_samples: forget and retain images for the one gradient of each loss (the first ones).
    step_grid: step sizes s tried along the chosen layer: θ_l - s * (||θ_l|| / ||g_l||) * g_l.
    """

    max_samples: int = 64
    step_grid: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_samples >= 1, f"max_samples must be >= 1, got {self.max_samples}")
        _positive("step_grid", self.step_grid)


def layer_step(state: Mapping[str, Tensor], grads: Mapping[str, Tensor], params: list[str], step: float) -> StateDict:
    """Move ``params`` (one layer) by ``-step`` times the gradient rescaled to the layer's norm."""
    theta = torch.sqrt(sum(state[p].float().pow(2).sum() for p in params))
    g = torch.sqrt(sum(grads[p].float().pow(2).sum() for p in params))
    scale = float(step * theta / g.clamp_min(1e-30))
    return {**state, **{p: state[p] - (scale * grads[p]).to(state[p].dtype) for p in params}}


@register_method("slug")
class SLUG(Baseline):
    """SLUG (Cai et al. 2024, arXiv 2407.11867): unlearning by one gradient step on a single layer.

    Port: one gradient of the forget log-probability (``-`` forget NLL) on D_f and of the retain CE
    on D_r; the layer with the largest ratio ||g_f,l|| / ||g_r,l|| (the importance ratio, forget vs
    retain; the paper's Pareto front reduced to this one score) among the layers of both towers with
    non-zero weights and forget gradient; then a line search over ``step_grid`` with ``score_fn``.
    """

    config_class = SLUGConfig

    @classmethod
    def smoke_config(cls) -> SLUGConfig:
        return SLUGConfig(max_samples=4, step_grid=(0.1, 0.5))

    def unlearn(self, student: DualEncoder, data: UnlearnData, config: SLUGConfig, best: BestWeights, generator) -> dict[str, Any]:
        names, k = tower_params(student), config.max_samples
        g_f = gradients(student, names, lambda: -forget_nll(student, data, data.forget_images[:k]))
        g_r = gradients(student, names, lambda: retain_loss(student, data, data.retain_images[:k], data.retain_labels[:k]))
        state = student.weights()

        def norm(t: Mapping[str, Tensor], ps: list[str]) -> float:
            return float(torch.sqrt(sum(t[p].float().pow(2).sum() for p in ps)))

        layers = {l: ps for l, ps in student.layers().items() if norm(state, ps) > 0 and norm(g_f, ps) > 0}
        require(bool(layers), "SLUG: the forget loss has no gradient on any layer with non-zero weights")
        retain_norm = {l: norm(g_r, ps) for l, ps in layers.items()}
        floor = 1e-6 * sum(retain_norm.values()) / len(retain_norm) + 1e-30
        ratio = {l: norm(g_f, ps) / (retain_norm[l] + floor) for l, ps in layers.items()}
        layer = max(sorted(ratio), key=ratio.get)
        for step in config.step_grid:
            best.offer(layer_step(state, g_f, layers[layer], step), step=step)
        return {"layer": layer, "ratio": ratio}
