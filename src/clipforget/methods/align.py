"""Stage 2a, align: perturb retain images so the image tower sees pretraining-like statistics.

BatchNorm towers: the targets are the running mean/variance stored in each BatchNorm layer
(DeepInversion). LayerNorm towers: the targets are the original model's per-layer feature
mean/variance (over batch and tokens) measured on the calibration images. The perturbation is
``epsilon * tanh(p)``, so it stays within ``±epsilon`` of the input (in preprocessed units).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from clipforget.config import Config, ConfigError, require
from clipforget.data.loading import Images, StreamedImages
from clipforget.methods.training import BatchStream, TrainConfig, train_loop
from clipforget.models.base import DualEncoder

Stats = dict[str, tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class AlignConfig(Config):
    """The alignment of retain images.

    train: optimisation of the perturbation (grad_clip null is usual here).
    epsilon: largest change of any input value, in preprocessed (normalised) units.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=100, lr=0.05, batch_size=64, grad_clip=None))
    epsilon: float = 0.5

    def __post_init__(self) -> None:
        require(self.epsilon > 0, f"epsilon must be > 0, got {self.epsilon}")


def norm_layers(model: DualEncoder) -> tuple[str, dict[str, nn.Module]]:
    """The image tower's BatchNorm layers ("batchnorm"), or else its LayerNorms ("layernorm")."""
    image = {n: m for n, m in model.named_submodules() if n and model.tower_of(n + ".weight") == "image"}
    bn = {n: m for n, m in image.items() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None}
    if bn:
        return "batchnorm", bn
    return "layernorm", {n: m for n, m in image.items() if isinstance(m, nn.LayerNorm)}


def _stats(x: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    x = x.float()
    flat = x.transpose(0, 1).flatten(1) if kind == "batchnorm" else x.reshape(-1, x.shape[-1]).T
    return flat.mean(1), flat.var(1, unbiased=False)


@contextmanager
def record_stats(model: DualEncoder) -> Iterator[Stats]:
    """Within the block, every forward fills the dict with each norm layer's input mean/variance."""
    kind, layers = norm_layers(model)
    out: Stats = {}
    handles = [
        m.register_forward_hook(lambda mod, inp, _o, name=name: out.__setitem__(name, _stats(inp[0], kind)))
        for name, m in layers.items()
    ]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def norm_targets(model: DualEncoder, calibration_images: Tensor | None) -> Stats | None:
    """The statistics to match; None for a LayerNorm tower without calibration images."""
    kind, layers = norm_layers(model)
    if kind == "batchnorm":
        return {n: (m.running_mean.float(), m.running_var.float()) for n, m in layers.items()}
    if calibration_images is None or not layers:
        return None
    _in_memory(calibration_images, "the calibration set")
    with record_stats(model) as stats:
        model.encode_image(calibration_images.to(model.device))
    return dict(stats)


def _in_memory(images: Images, what: str) -> None:
    if isinstance(images, StreamedImages):
        raise ConfigError(f"alignment perturbs every image of {what} (and reads the calibration statistics in one "
                          f"pass), so it needs the set in memory, but {what} is streamed from its files; raise "
                          "--stream-above (Streaming.above_mib) above its size, or turn alignment off "
                          "(use_alignment: false)")


def stats_distance(stats: Stats, targets: Stats) -> Tensor:
    """Mean over layers of ``||mean - mean*||₂ + ||var - var*||₂``."""
    terms = [torch.linalg.vector_norm(stats[k][0] - m) + torch.linalg.vector_norm(stats[k][1] - v) for k, (m, v) in targets.items()]
    return torch.stack(terms).mean()


def align_images(
    model: DualEncoder, images: Tensor, targets: Stats, config: AlignConfig, generator: torch.Generator
) -> tuple[Tensor, dict[str, Any]]:
    """Return ``images`` plus a bounded perturbation minimising the statistics distance."""
    _in_memory(images, "the retain set")
    model.eval()
    images = images.to(model.device)
    p = nn.Parameter(torch.zeros_like(images))
    batches = BatchStream(len(images), config.train.batch_size, generator)
    flags = [q.requires_grad for q in model.parameters()]
    for q in model.parameters():
        q.requires_grad_(False)
    try:
        with record_stats(model) as stats:

            def loss_fn(step: int) -> dict[str, Tensor]:
                idx = batches.next().to(images.device)
                model.encode_image(images[idx] + config.epsilon * torch.tanh(p[idx]))
                return {"loss": stats_distance(stats, targets)}

            log = train_loop([p], loss_fn, config.train, desc="align")
    finally:
        for q, f in zip(model.parameters(), flags):
            q.requires_grad_(f)
    return (images + config.epsilon * torch.tanh(p)).detach(), log.to_dict()
