"""Stage 1, forget: tune only the selected layers to push forget images away from the forget text.

Stops when the mean forget similarity falls below ``delta``, or the forget images' zero-shot
accuracy reaches ``target_acc``, else at the step budget. Training runs in eval mode so BatchNorm
running statistics never change; adapters are merged back before returning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from clipforget.config import Config, require
from clipforget.methods.adapters import AdapterConfig, tuning
from clipforget.methods.base import UnlearnData
from clipforget.methods.losses import (
    embed_images,
    encode_texts,
    forget_loss,
    forget_similarity,
)
from clipforget.methods.training import BatchStream, TrainConfig, train_loop
from clipforget.models.base import DualEncoder
from clipforget.zeroshot import build_zero_shot_classifier


@dataclass(frozen=True)
class ForgetConfig(Config):
    """The forget stage.

    train: optimisation (steps is the budget; check_every is how often the stop rule is checked).
    delta: stop once the mean forget similarity is below this (the paper's δ). Default -0.5, measured on
        springer-in-dog (testbed, seed 0): δ = 0 left Target 38%, δ = -0.5 12% (with the holdout),
        δ = -0.8 no better (12%).
    hinge: penalise only similarity above ``delta`` (else the plain mean similarity).
    target_acc: also stop once the forget images' zero-shot accuracy is at or below this; None: off.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, lr=1e-3, batch_size=32))
    delta: float = -0.5
    hinge: bool = False
    target_acc: float | None = None

    def __post_init__(self) -> None:
        require(-1 <= self.delta <= 1, f"delta is a cosine similarity in [-1, 1], got {self.delta}")
        require(self.target_acc is None or 0 <= self.target_acc <= 1, f"target_acc must be in [0, 1], got {self.target_acc}")


@torch.no_grad()
def forget_progress(model: DualEncoder, data: UnlearnData) -> dict[str, float]:
    """Mean forget similarity and the forget images' zero-shot accuracy (on ``data.forget_label``)."""
    text = encode_texts(model, [data.forget_text])[0]
    emb = embed_images(model, data.forget_images)
    classifier = build_zero_shot_classifier(model, data.classnames, data.templates)
    acc = ((emb.float() @ classifier).argmax(-1) == data.forget_label).float().mean()
    return {"forget_similarity": float((emb @ text).mean()), "forget_acc": float(acc)}


def forget_stage(
    model: DualEncoder,
    data: UnlearnData,
    param_names: Sequence[str],
    config: ForgetConfig,
    adapter: AdapterConfig,
    generator: torch.Generator,
    *,
    use_lora: bool = True,
) -> dict[str, Any]:
    """Tune ``param_names`` of ``model`` (in place) to forget; return the curves and checks."""
    model.eval()
    batches = BatchStream(len(data.forget_images), config.train.batch_size, generator)
    checks: dict[str, list[float]] = {"step": [], "forget_similarity": [], "forget_acc": []}

    def loss_fn(step: int) -> dict[str, torch.Tensor]:
        images = data.forget_images[batches.next()].to(model.device)
        sim = forget_similarity(model, images, encode_texts(model, [data.forget_text])[0])
        return {"loss": forget_loss(sim, config.delta, config.hinge), "similarity": sim.mean().detach()}

    def should_stop(step: int) -> bool:
        progress = forget_progress(model, data)
        checks["step"].append(step)
        for k, v in progress.items():
            checks[k].append(v)
        return progress["forget_similarity"] < config.delta or (
            config.target_acc is not None and progress["forget_acc"] <= config.target_acc
        )

    with tuning(model.model, param_names, adapter, generator, use_lora=use_lora) as params:
        train_log = train_loop(params, loss_fn, config.train, should_stop=should_stop, desc="forget")
    final = forget_progress(model, data)
    return {**train_log.to_dict(), "checks": checks, "final": final}
