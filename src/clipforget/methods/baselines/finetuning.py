"""Baselines that are one loss fine-tuned over both towers: GA, NegGrad+, FT, RL and SalUn.

Shared port (see :mod:`.common`): forget images are scored against ``[forget text | class heads]``,
retain images by cross-entropy over the class heads; every tower parameter is tuned in full (eval
mode, logit scale frozen); the kept weights are the best checkpoint by ``score_fn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clipforget.config import require
from clipforget.methods.base import UnlearnData, register_method
from clipforget.methods.baselines.common import (
    SMOKE_TRAIN,
    Baseline,
    BestWeights,
    TrainedConfig,
    clip_logits,
    forget_log_prob,
    forget_nll,
    gradients,
    retain_ce,
    text_heads,
    tower_params,
    train_keeping_best,
)
from clipforget.methods.training import BatchStream
from clipforget.models.base import DualEncoder


@dataclass(frozen=True)
class LossConfig(TrainedConfig):
    """A fine-tuning baseline: ``forget_weight * forget term + retain_weight * retain CE``.

    forget_weight: weight of the method's forget term.  retain_weight: weight of the retain CE on D_r.
    """

    forget_weight: float = 1.0
    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.forget_weight >= 0 and self.retain_weight >= 0, "forget_weight and retain_weight must be >= 0")


class LossBaseline(Baseline):
    """Fine-tune every tower parameter on :meth:`forget_term` and the retain CE."""

    config_class = LossConfig

    @classmethod
    def smoke_config(cls) -> LossConfig:
        return cls.config_class(train=SMOKE_TRAIN)

    def forget_term(self, logits: Tensor, data: UnlearnData, generator: torch.Generator) -> Tensor:
        """The loss on a batch of forget images, to minimise; here GA's: minimising log p(forget
        columns) is ascending their NLL."""
        return forget_log_prob(logits, data.forget_label).mean()

    def unlearn(self, student: DualEncoder, data: UnlearnData, config: LossConfig, best: BestWeights, generator) -> dict[str, Any]:
        return train_keeping_best(student, tower_params(student), self.loss_fn(student, data, config, generator), config.train, best, desc=self.name)

    def loss_fn(self, student: DualEncoder, data: UnlearnData, config: LossConfig, generator: torch.Generator):
        forget = BatchStream(len(data.forget_images), config.train.batch_size, generator)
        retain = BatchStream(len(data.retain_images), config.train.batch_size, generator)

        def loss_fn(step: int) -> dict[str, Tensor]:
            heads = text_heads(student, data)
            terms = {}
            if config.forget_weight > 0:
                terms["forget"] = self.forget_term(clip_logits(student, data.forget_images[forget.next()], heads), data, generator)
            if config.retain_weight > 0:
                i = retain.next()
                terms["retain"] = retain_ce(clip_logits(student, data.retain_images[i], heads), data.retain_labels[i])
            weights = {"forget": config.forget_weight, "retain": config.retain_weight}
            return {"loss": sum(weights[k] * v for k, v in terms.items()), **{k: v.detach() for k, v in terms.items()}}

        return loss_fn


@dataclass(frozen=True)
class GAConfig(LossConfig):
    """Gradient ascent: the forget term only (``retain_weight`` 0)."""

    retain_weight: float = 0.0


@register_method("ga")
class GradientAscent(LossBaseline):
    """GA (as in Thudi et al. 2022 / open-unlearning ``grad_ascent``): ascend the forget loss.

    Port: the forget loss is the NLL of the forget columns (forget text and forget class) among
    ``[forget text | class heads]``; both towers are tuned. Unbounded, so the kept weights are the
    best checkpoint by ``score_fn`` (gradient clipping at 1 keeps the steps bounded).
    """

    config_class = GAConfig


@register_method("neggrad+")
class NegGradPlus(LossBaseline):
    """NegGrad+ (Kurmanji et al. 2023, arXiv 2302.09880): GA on D_f plus cross-entropy on D_r.

    Port: the GA forget term plus the retain CE over the class heads (weights 1 and 1, as
    ``beta = 0.5`` up to scale); only the hand-built D_r is available, not the training set.
    """

    config_class = LossConfig


@dataclass(frozen=True)
class FTConfig(LossConfig):
    """Fine-tuning on D_r only (``forget_weight`` 0)."""

    forget_weight: float = 0.0


@register_method("ft")
class FineTune(LossBaseline):
    """FT (Warnecke et al. 2023; "catastrophic forgetting" baseline): fine-tune on the retain set only.

    Port: retain CE over the zero-shot class heads, both towers tuned; forgetting can only come from
    drift, so the checkpoint with the lowest forget accuracy usually wins.
    """

    config_class = FTConfig


@register_method("rl")
class RandomLabels(LossBaseline):
    """RL (Golatkar et al. 2020; Hayase et al.): train forget images toward random wrong labels, plus D_r.

    Port: each step draws, per forget image, a random class other than ``forget_label`` from the
    seed's generator and minimises the CE toward it among ``[forget text | class heads]``.
    """

    config_class = LossConfig

    def forget_term(self, logits: Tensor, data: UnlearnData, generator: torch.Generator) -> Tensor:
        require(len(data.classnames) >= 2, "random labels need at least two classes")
        wrong = torch.randint(len(data.classnames) - 1, (len(logits),), generator=generator)
        wrong = wrong + (wrong >= data.forget_label).long()  # skip the forget class
        return torch.nn.functional.cross_entropy(logits, (1 + wrong).to(logits.device))


@dataclass(frozen=True)
class SalUnConfig(LossConfig):
    """SalUn: random-label unlearning on the salient weights only.

    saliency_fraction: the fraction of tower weights (by |gradient of the forget loss|, over all
        weights at once) that may change; the rest keep their values exactly.
    saliency_samples: at most this many forget images for the saliency gradient.
    """

    saliency_fraction: float = 0.5
    saliency_samples: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.saliency_fraction <= 1, f"saliency_fraction must be in (0, 1], got {self.saliency_fraction}")
        require(self.saliency_samples >= 1, f"saliency_samples must be >= 1, got {self.saliency_samples}")


def saliency_masks(student: DualEncoder, data: UnlearnData, names: list[str], fraction: float, samples: int) -> dict[str, Tensor]:
    """Boolean masks of the top ``fraction`` of weights by |d forget NLL / dθ| (one global threshold;
    weights the gradient does not reach are never salient)."""
    grads = gradients(student, names, lambda: forget_nll(student, data, data.forget_images[:samples]))
    magnitude = [grads[n].abs() for n in names]
    flat = torch.cat([m.flatten() for m in magnitude]).float()
    k = max(1, round(fraction * len(flat)))
    threshold = flat.kthvalue(len(flat) - k + 1).values if k < len(flat) else flat.min()
    return {n: (m >= threshold) & (m > 0) for n, m in zip(names, magnitude)}  # a zero gradient is never salient


@register_method("salun")
class SalUn(RandomLabels):
    """SalUn (Fan et al. 2024, arXiv 2310.12508): weight saliency, then RL on the salient weights.

    Port: the saliency is |∇ forget NLL| (the GA loss above) over every tower weight, thresholded
    globally at the top ``saliency_fraction``; then RL (random wrong class among
    ``[forget text | class heads]``) plus retain CE, with gradients of the other weights zeroed by
    hooks (AdamW without weight decay then leaves them exactly unchanged).
    """

    config_class = SalUnConfig

    def unlearn(self, student: DualEncoder, data: UnlearnData, config: SalUnConfig, best: BestWeights, generator) -> dict[str, Any]:
        require(config.train.weight_decay == 0, "SalUn needs train.weight_decay 0 so masked weights stay fixed")
        names = tower_params(student)
        masks = saliency_masks(student, data, names, config.saliency_fraction, config.saliency_samples)
        own = dict(student.named_weights())
        hooks = [own[n].register_hook(lambda g, m=masks[n]: g * m) for n in names]
        try:
            info = super().unlearn(student, data, config, best, generator)
        finally:
            for h in hooks:
                h.remove()
        kept = sum(int(m.sum()) for m in masks.values())
        return {**info, "salient_fraction": kept / sum(m.numel() for m in masks.values())}
