"""Stage 2b, remind: fine-tune the selected layers on (aligned) retain and calibration images.

With distillation, the frozen original model is the teacher: KL between teacher and student softmax
over the zero-shot class prompts (times the logit scale) plus ``1 - cos`` to the teacher's image
embeddings. Without it, cross-entropy on the retain labels. The forget loss stays active so the
subgroup does not come back; an EMA of the tuned weights is what remains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforget.config import Config, require
from clipforget.data.loading import Images, StreamedImages, join
from clipforget.methods.adapters import Tuning
from clipforget.methods.anchor import TextAnchor
from clipforget.methods.core import UnlearnData
from clipforget.methods.forget import ForgetConfig, ForgetObjective, forget_progress
from clipforget.methods.losses import (
    ClassHead,
    embed_images,
    embedding_distance,
    kd_kl,
)
from clipforget.methods.training import BatchStream, TrainConfig, train_loop
from clipforget.models.base import DualEncoder
from clipforget.zeroshot import build_zero_shot_classifier


@dataclass(frozen=True)
class RemindConfig(Config):
    """The remind stage: fine-tuning the selected layers on retain (and calibration) images.

    train: optimisation (EMA of the tuned weights via ``train.ema_decay``).
    kd_weight: weight of KL(teacher || student) over the class prompts.
    embed_weight: weight of ``1 - cos`` between student and teacher image embeddings (5 keeps the
        images forgetting does not concern where they were when image layers are tuned; docs/decisions.md).
    forget_weight: weight of the forget loss kept active during reminding (without it the remind stage
        pulls unseen subgroup images back to their label).
    use_calibration: also distil on the calibration images (when the data has them). They are also what
        the restore stage scores each alpha on, so a model distilled on them is scored on images it
        was trained on (docs/decisions.md, "the calibration leak").
    ce_weight: with distillation, also this weight of cross-entropy on the retain images' own labels
        (beyond the paper): distillation alone keeps the teacher's mistakes and cannot undo the forget
        term's pull on the subgroup's siblings (the CIFAR-10 dogs in springer-in-dog).
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, lr=5e-4, batch_size=32, ema_decay=0.9))
    kd_weight: float = 1.0
    embed_weight: float = 1.0
    forget_weight: float = 5.0
    use_calibration: bool = True
    ce_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("kd_weight", "embed_weight", "forget_weight", "ce_weight"):
            require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")


@torch.no_grad()
def teacher_logits(teacher: DualEncoder, images: Tensor, data: UnlearnData) -> Tensor:
    classifier = build_zero_shot_classifier(teacher, data.classnames, data.templates)
    return teacher.logit_scale * embed_images(teacher, images) @ classifier


def remind_stage(
    student: DualEncoder,
    teacher: DualEncoder,
    data: UnlearnData,
    retain_images: Tensor,
    tune: Tuning,
    config: RemindConfig,
    forget: ForgetConfig,
    *,
    use_distillation: bool = True,
    anchor: TextAnchor | None = None,
    forget_names: Sequence[str] = (),
) -> dict[str, Any]:
    """Fine-tune ``tune.names`` of ``student`` in place; ``retain_images`` are the (aligned) D_r.

    ``anchor``: a text-anchor term added to the loss (see :mod:`clipforget.methods.anchor`).
    """
    student.eval()
    teacher.eval()
    pool = retain_images
    if use_distillation and config.use_calibration and data.calibration_images is not None:
        pool = join(retain_images, data.calibration_images)
    pool = pool.to(student.device) if isinstance(pool, Tensor) else pool
    original = embed_images(teacher, data.forget_images) if forget.needs_original_embeddings else None
    loss_fn = _RemindLoss(
        student, config, use_distillation, anchor, pool, data.retain_labels.to(student.device),
        embed_images(teacher, pool), teacher_logits(teacher, pool, data), teacher.logit_scale.detach(),
        ClassHead(student, data.classnames, data.templates, tune.names),
        BatchStream(len(pool) if use_distillation else len(retain_images), config.train.batch_size, tune.generator),
        BatchStream(len(data.forget_images), config.train.batch_size, tune.generator),
        ForgetObjective(student, data, forget, tune.names, original, forget_names),
    )  # fmt: skip
    with tune(student) as params:
        train_log = train_loop(params, loss_fn, config.train, desc="remind")
    final = forget_progress(student, data)
    if anchor is not None:
        final["anchor_drift"] = anchor.drift(student)
    return {**train_log.to_dict(), "final": final}


@dataclass
class _RemindLoss:
    """The remind stage's loss at one step: distillation (or cross-entropy) on a batch of the pool, plus
    the forget term and the text anchor when they are on."""

    student: DualEncoder
    config: RemindConfig
    use_distillation: bool
    anchor: TextAnchor | None
    pool: Images  # the retain images first, then the calibration images
    labels: Tensor
    teacher_embeddings: Tensor
    teacher_logits: Tensor
    scale: Tensor
    head: ClassHead
    batches: BatchStream
    forget_batches: BatchStream
    forget_objective: ForgetObjective

    def __call__(self, step: int) -> dict[str, Tensor]:
        config = self.config
        idx = self.batches.next().to(self.labels.device)
        emb = self.student.encode_image(self.pool[idx.cpu() if isinstance(self.pool, StreamedImages) else idx].to(self.student.device))
        logits = self.scale * emb @ self.head()
        terms: dict[str, Tensor] = {}
        if self.use_distillation:
            terms["kd"] = config.kd_weight * kd_kl(logits, self.teacher_logits[idx])
            terms["embed"] = config.embed_weight * embedding_distance(emb, self.teacher_embeddings[idx])
            if config.ce_weight > 0:
                own = idx < len(self.labels)
                ce = F.cross_entropy(logits[own], self.labels[idx[own]]) if bool(own.any()) else logits.sum() * 0
                terms["ce"] = config.ce_weight * ce
        else:
            terms["ce"] = F.cross_entropy(logits, self.labels[idx])
        if config.forget_weight > 0:
            terms["forget"] = config.forget_weight * self.forget_objective(self.forget_batches.next())["loss"]
        if self.anchor is not None:
            terms["anchor"] = self.anchor.loss(self.student)
        return {"loss": sum(terms.values()), **{k: v.detach() for k, v in terms.items()}}


@torch.no_grad()
def distillation_gap(student: DualEncoder, teacher: DualEncoder, images: Tensor, data: UnlearnData) -> float:
    """KL(teacher || student) over the class prompts on ``images`` (how far the student drifted)."""
    t = teacher_logits(teacher, images, data)
    classifier = build_zero_shot_classifier(student, data.classnames, data.templates)
    s = teacher.logit_scale * embed_images(student, images) @ classifier
    return float(kd_kl(s, t))
