"""The one training loop every method uses: optimiser, step budget, seeded batches, NaN check, EMA.

A method supplies ``loss_fn(step) -> {"loss": scalar, other named terms...}`` (drawing its batches
from a :class:`BatchStream`) and, optionally, ``should_stop(step) -> bool``; the loop does the rest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from clipforget import parallel
from clipforget.config import Config, require
from clipforget.precision import grad_scaler
from clipforget.progress import progress

log = logging.getLogger(__name__)

LossFn = Callable[[int], dict[str, Tensor]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run cannot continue meaningfully."""


@dataclass(frozen=True)
class TrainConfig(Config):
    """Optimisation settings shared by every training stage.

    steps: the step budget (the loop may stop earlier when the method says so).
    lr: learning rate.  weight_decay: decoupled weight decay (AdamW) or L2 (SGD).
    batch_size: images per step (a batch never exceeds the set it is drawn from).
    optimizer: "adamw" or "sgd" (momentum 0.9).
    grad_clip: clip the global gradient norm to this value; None for no clipping.
    ema_decay: keep an exponential moving average of the trained parameters with this decay and
        end with it; None for no EMA.
    check_every: call ``should_stop`` every this many steps (and before the first step).
    """

    steps: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    optimizer: Literal["adamw", "sgd"] = "adamw"
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    check_every: int = 5

    def __post_init__(self) -> None:
        require(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or null, got {self.grad_clip}")
        require(self.ema_decay is None or 0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1) or null, got {self.ema_decay}")
        require(self.check_every >= 1, f"check_every must be >= 1, got {self.check_every}")


@dataclass
class TrainLog:
    """Per-step values of every named loss term, and why the loop ended."""

    curves: dict[str, list[float]] = field(default_factory=dict)
    steps_run: int = 0
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return {"curves": self.curves, "steps_run": self.steps_run, "stopped_early": self.stopped_early}


class BatchStream:
    """Index batches drawn without replacement, epoch after epoch, from one generator."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        if n < 1:
            raise ValueError("cannot draw batches from an empty set")
        self.n, self.batch_size, self.generator = n, min(batch_size, n), generator
        self._order = torch.empty(0, dtype=torch.long)

    def next(self) -> Tensor:
        """The next batch; across the processes of a launch, this process's share of it (the draw is the same on each)."""
        if len(self._order) < self.batch_size:
            self._order = torch.cat([self._order, torch.randperm(self.n, generator=self.generator)])
        batch, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return batch[parallel.share(len(batch))]


def make_optimizer(params: Sequence[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def train_loop(
    params: Iterable[nn.Parameter],
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    should_stop: Callable[[int], bool] | None = None,
    desc: str = "train",
) -> TrainLog:
    """Minimise ``loss_fn(step)["loss"]`` over ``params`` for at most ``config.steps`` steps.

    Raises :class:`NonFiniteLossError` as soon as the loss is NaN or infinite.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: nothing to train (no parameter requires grad)")
    optimizer = make_optimizer(params, config)
    scaler = grad_scaler(params[0].device.type)  # under fp16 autocast only
    ema = [p.detach().clone() for p in params] if config.ema_decay is not None else None
    result = TrainLog()
    for step in progress(range(config.steps), desc=desc, unit="steps"):
        if should_stop is not None and step % config.check_every == 0 and should_stop(step):
            result.stopped_early = True
            break
        terms = loss_fn(step)
        _check_finite(terms, step, desc, config)
        _optimizer_step(terms["loss"], params, optimizer, scaler, config)
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - config.ema_decay)
        for k, v in terms.items():
            result.curves.setdefault(k, []).append(float(v.detach()))
        result.steps_run = step + 1
    if ema is not None and result.steps_run > 0:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    final = result.curves.get("loss", [None])[-1]
    log.info("%s: %d steps%s, final loss %s", desc, result.steps_run, " (stopped at its target)" if result.stopped_early else "",
             "–" if final is None else f"{final:.4g}")
    return result


def _check_finite(terms: Mapping[str, Tensor], step: int, desc: str, config: TrainConfig) -> None:
    """Raise :class:`NonFiniteLossError` when the loss is NaN or infinite on any process (all stop together)."""
    loss = terms["loss"]
    if not math.isfinite(float(parallel.sum_all(loss.detach().reshape(1).float()))):
        raise NonFiniteLossError(
            f"{desc}: the loss became {loss.item()} at step {step} "
            f"(terms: { {k: float(v.detach()) for k, v in terms.items()} }); lower the learning rate "
            f"(now {config.lr}) or check the inputs for NaN"
        )


def _optimizer_step(loss: Tensor, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, config: TrainConfig) -> None:
    """Backward, gradient all-reduce across processes, clipping and the optimizer step (scaled under fp16)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    parallel.mean_gradients(params)  # each process's share of the batch: the gradient of the whole batch
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
