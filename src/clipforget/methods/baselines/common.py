"""What the baselines share: their CLIP losses, one run template, and keeping the best weights.

**The CLIP port.** Every baseline scores an image against the text heads ``[t_f | W]``: the forget
text's embedding ``t_f`` followed by the zero-shot head of every class (``classnames`` x
``templates``), all with gradient, times the (frozen) logit scale. The *forget* columns are ``t_f``
and the head of ``forget_label``; ``forget_log_prob`` is the log of their joint softmax mass, so
lowering it pushes a forget image away from both its paired text and its class. Retain images use
cross-entropy over the class heads only. Models are trained in eval mode (BatchNorm statistics and
dropout untouched); the logit scale is never trained.

**Fair tuning.** :class:`BestWeights` scores candidate weights with the run's ``score_fn``
(calibration images and the held-out part of D_f) and keeps the best by the rule every method shares
(:func:`clipforget.methods.scoring.best_candidate`). Trained baselines
offer a checkpoint every ``train.check_every`` steps and at the end (the untrained start is not a
candidate); weight-space baselines offer each point of their grid.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforget.config import Config
from clipforget.methods.adapters import AdapterConfig, tuning
from clipforget.methods.base import (
    Method,
    MethodResult,
    MethodRun,
    ScoreFn,
    StateDict,
    UnlearnData,
    run_stage,
    stage_generator,
)
from clipforget.methods.losses import encode_texts
from clipforget.methods.scoring import best_candidate
from clipforget.methods.training import LossFn, TrainConfig, train_loop
from clipforget.models.base import DualEncoder
from clipforget.zeroshot import class_head

# -- losses ----------------------------------------------------------------------------------------

#: The training budget of every trained baseline's smoke_config (about a second on tiny models).
SMOKE_TRAIN = TrainConfig(steps=3, lr=1e-3, batch_size=4, check_every=2)


def text_heads(model: DualEncoder, data: UnlearnData) -> Tensor:
    """(D, 1 + C) with gradient: the forget text's embedding, then every class's zero-shot head."""
    return torch.cat([encode_texts(model, [data.forget_text]).T, class_head(model, data.classnames, data.templates)], 1)


def clip_logits(model: DualEncoder, images: Tensor, heads: Tensor) -> Tensor:
    """Zero-shot logits (B, 1 + C) of ``images`` against ``heads`` (the logit scale is not trained)."""
    return model.logit_scale.detach() * model.encode_image(images.to(model.device)) @ heads


def forget_log_prob(logits: Tensor, forget_label: int) -> Tensor:
    """(B,) log of the softmax mass on the forget columns (the forget text and the forget class)."""
    return torch.logsumexp(logits[:, [0, 1 + forget_label]], -1) - torch.logsumexp(logits, -1)


def retain_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of retain images over the class heads (the forget-text column left out)."""
    return F.cross_entropy(logits[:, 1:], labels.to(logits.device))


def forget_nll(model: DualEncoder, data: UnlearnData, images: Tensor) -> Tensor:
    """Mean NLL of the forget columns on ``images`` (what GA ascends)."""
    return -forget_log_prob(clip_logits(model, images, text_heads(model, data)), data.forget_label).mean()


def retain_loss(model: DualEncoder, data: UnlearnData, images: Tensor, labels: Tensor) -> Tensor:
    """Retain cross-entropy of ``images`` with their ``labels``."""
    return retain_ce(clip_logits(model, images, text_heads(model, data)), labels)


def tower_params(model: DualEncoder) -> list[str]:
    """Sorted names of every parameter of either tower (everything but the logit scale)."""
    return sorted(n for n, _ in model.named_weights() if model.tower_of(n) is not None)


def trainable(model: DualEncoder, names: list[str]):
    """Context: only ``names`` require grad (tuned in full); yields them in sorted-name order."""
    return tuning(model.network, names, AdapterConfig(), torch.Generator(), use_lora=False)


def gradients(model: DualEncoder, names: list[str], loss_fn: Callable[[], Tensor]) -> dict[str, Tensor]:
    """``d loss_fn() / dθ`` for each named parameter (zeros where it does not reach)."""
    names = sorted(names)
    with trainable(model, names) as params:
        grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g.detach() for n, p, g in zip(names, params, grads)}


# -- keeping the best weights ----------------------------------------------------------------------


class BestWeights:
    """Scores candidate weights with ``score_fn`` and keeps a copy of the best one (see module doc)."""

    def __init__(self, score_fn: ScoreFn, forget_target: float):
        self.score_fn, self.forget_target = score_fn, forget_target
        self.curve: list[dict[str, float]] = []
        self.state: StateDict | None = None
        self.choice: dict[str, float] = {}

    def offer(self, state: Mapping[str, Tensor], **tags: float) -> None:
        utility, forget_acc = map(float, self.score_fn(state))
        entry = {**{k: float(v) for k, v in tags.items()}, "utility": utility, "forget_acc": forget_acc}
        self.curve.append(entry)
        if best_candidate(self.curve, self.forget_target) == len(self.curve) - 1:  # ties keep the earlier one
            self.choice = entry
            self.state = {k: v.detach().clone() for k, v in state.items()}


def train_keeping_best(
    model: DualEncoder, names: list[str], loss_fn: LossFn, train: TrainConfig, best: BestWeights, *, desc: str, first_step: int = 0
) -> dict[str, Any]:
    """``train_loop`` over the named parameters, offering the weights to ``best`` at every check."""

    def checkpoint(step: int) -> bool:
        if step > 0:
            best.offer(model.weights(), step=first_step + step)
        return False

    with trainable(model, names) as params:
        log = train_loop(params, loss_fn, train, should_stop=checkpoint, desc=desc)
    best.offer(model.weights(), step=first_step + log.steps_run)
    return log.to_dict()


# -- the run template ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineConfig(Config):
    """What every baseline has (the weight choice is the run's, :class:`clipforget.methods.base.WeightChoice`)."""

    def __post_init__(self) -> None:  # subclasses validate their own fields and call this
        pass


@dataclass(frozen=True)
class TrainedConfig(BaselineConfig):
    """A baseline that trains.

    train: its optimisation; a checkpoint is scored every ``train.check_every`` steps and at the end.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=100, lr=1e-5, batch_size=32, check_every=10))


class Baseline(Method):
    """A baseline is its :meth:`unlearn`: it edits ``student`` and offers candidates to ``best``.

    :meth:`fit` runs ``unlearn`` as the one resumable stage "unlearn", loads the best candidate and records the curve, the choice and whether the choice is the original weights.
    """

    config_class = BaselineConfig

    @abc.abstractmethod
    def unlearn(
        self, student: DualEncoder, data: UnlearnData, config: Any, best: BestWeights, generator: torch.Generator
    ) -> dict[str, Any]: ...

    def fit(self, run: MethodRun, config: BaselineConfig) -> MethodResult:
        student, original, data = run.student, run.original, run.data

        def stage() -> tuple[dict[str, Any], StateDict]:
            best = BestWeights(run.score_fn, run.forget_target)
            info = self.unlearn(student, data, config, best, stage_generator(run.seed, self.name))
            student.load_weights(best.state)
            changed = {k: v.detach().clone() for k, v in student.weights().items() if not torch.equal(v, original[k])}
            return {**info, "curve": best.curve, "choice": best.choice, "chose_original": not changed}, changed

        return MethodResult(model=student, diagnostics={"unlearn": run_stage(run.store, "unlearn", student, stage)})
