"""Baselines built on input perturbations: EMMN (error-maximising noise) and LIP (Lipschitz smoothing)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from clipforget.config import require
from clipforget.methods.base import UnlearnData, register_method
from clipforget.methods.baselines.common import (
    SMOKE_TRAIN,
    Baseline,
    BestWeights,
    TrainedConfig,
    clip_logits,
    forget_log_prob,
    gradients,
    retain_ce,
    text_heads,
    tower_params,
    train_keeping_best,
    trainable,
)
from clipforget.methods.fisher import top_layers
from clipforget.methods.losses import encode_texts
from clipforget.methods.training import BatchStream, TrainConfig, train_loop
from clipforget.models.base import DualEncoder

# -- EMMN -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EMMNConfig(TrainedConfig):
    """Error-maximising noise, then impair (``train``) and repair.

    noise_count: how many noise images are learned (shaped like the forget images).
    noise: optimisation of the noise pixels (the model frozen).
    noise_reg: weight of the mean squared pixel value, which keeps the noise bounded.
    retain_weight: weight of the retain CE during the impair phase (``train``).
    repair: the repair phase, retain CE only (steps 0 skips it).
    """

    noise_count: int = 32
    noise: TrainConfig = field(default_factory=lambda: TrainConfig(steps=50, lr=0.1, batch_size=32, grad_clip=None))
    noise_reg: float = 0.1
    retain_weight: float = 1.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=50, lr=1e-5, batch_size=32, check_every=10))
    repair: TrainConfig = field(default_factory=lambda: TrainConfig(steps=50, lr=1e-5, batch_size=32, check_every=10))

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.noise_count >= 1, f"noise_count must be >= 1, got {self.noise_count}")
        require(self.noise_reg >= 0 and self.retain_weight >= 0, "noise_reg and retain_weight must be >= 0")


def error_maximising_noise(student: DualEncoder, data: UnlearnData, config: EMMNConfig, generator: torch.Generator) -> Tensor:
    """Noise images that minimise the model's forget-column probability (maximise its forget NLL)."""
    noise = nn.Parameter(torch.randn(config.noise_count, *data.forget_images.shape[1:], generator=generator).to(student.device))
    with trainable(student, []):
        with torch.no_grad():
            heads = text_heads(student, data)
        batches = BatchStream(config.noise_count, config.noise.batch_size, generator)

        def loss_fn(step: int) -> dict[str, Tensor]:
            x = noise[batches.next()]
            error = forget_log_prob(clip_logits(student, x, heads), data.forget_label).mean()
            return {"loss": error + config.noise_reg * x.pow(2).mean(), "log_prob": error.detach()}

        train_loop([noise], loss_fn, config.noise, desc="emmn-noise")
    return noise.detach()


@register_method("emmn")
class EMMN(Baseline):
    """EMMN (Tarun et al. 2023, arXiv 2201.05629, "Fast yet effective machine unlearning").

    Port: (1) learn ``noise_count`` noise images (from N(0, 1) in preprocessed pixel space) that
    maximise the forget NLL of the frozen model, i.e. minimise log p(forget text or forget class),
    with an L2 penalty; (2) impair: train both towers so the noise *is* classified as the forget
    columns (NLL of the forget columns on the noise) plus retain CE on D_r; (3) repair: retain CE on
    D_r. Checkpoints of both phases compete for the kept weights (``score_fn``).
    """

    config_class = EMMNConfig

    @classmethod
    def smoke_config(cls) -> EMMNConfig:
        return EMMNConfig(
            noise_count=4, noise=TrainConfig(steps=2, lr=0.1, batch_size=4, grad_clip=None), train=SMOKE_TRAIN,
            repair=TrainConfig(steps=2, lr=1e-3, batch_size=4, check_every=2),
        )  # fmt: skip

    def unlearn(self, student: DualEncoder, data: UnlearnData, config: EMMNConfig, best: BestWeights, generator) -> dict[str, Any]:
        noise = error_maximising_noise(student, data, config, generator)
        noise_batches = BatchStream(len(noise), config.train.batch_size, generator)
        retain = BatchStream(len(data.retain_images), config.train.batch_size, generator)

        def retain_term(heads: Tensor) -> Tensor:
            i = retain.next()
            return retain_ce(clip_logits(student, data.retain_images[i], heads), data.retain_labels[i])

        def impair(step: int) -> dict[str, Tensor]:
            heads = text_heads(student, data)
            impair = -forget_log_prob(clip_logits(student, noise[noise_batches.next()], heads), data.forget_label).mean()
            kept = retain_term(heads)
            return {"loss": impair + config.retain_weight * kept, "impair": impair.detach(), "retain": kept.detach()}

        def repair(step: int) -> dict[str, Tensor]:
            return {"loss": retain_term(text_heads(student, data))}

        names = tower_params(student)
        info = {"impair": train_keeping_best(student, names, impair, config.train, best, desc="emmn-impair")}
        if config.repair.steps > 0:
            info["repair"] = train_keeping_best(student, names, repair, config.repair, best, desc="emmn-repair", first_step=config.train.steps)
        return info


# -- LIP --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LIPConfig(TrainedConfig):
    """Lipschitz smoothing of the forget embeddings.

    image_sigma: std of the Gaussian perturbation of the forget images (preprocessed pixel units).
    text_sigma: std of the Gaussian perturbation of the forget text's token embeddings.
    text_weight: weight of the text term.
    n_layers: tune only this many layers, those with the largest mean |gradient| of the loss on
        one batch (the paper's selective update); 0 tunes every tower layer.
    """

    image_sigma: float = 0.1
    text_sigma: float = 0.1
    text_weight: float = 1.0
    n_layers: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.image_sigma > 0 and self.text_sigma > 0, "image_sigma and text_sigma must be > 0")
        require(self.text_weight >= 0, f"text_weight must be >= 0, got {self.text_weight}")
        require(self.n_layers >= 0, f"n_layers must be >= 0, got {self.n_layers}")


def token_embedding(model: DualEncoder) -> nn.Embedding:
    """The text tower's token embedding: its ``nn.Embedding`` with the most rows (the vocabulary)."""
    found = [m for n, m in model.named_submodules() if isinstance(m, nn.Embedding) and model.tower_of(f"{n}.weight") == "text"]
    require(bool(found), "LIP needs a text tower with a token embedding")
    return max(found, key=lambda m: m.num_embeddings)


@contextmanager
def perturbed_tokens(model: DualEncoder, sigma: float, generator: torch.Generator):
    """Within the block, Gaussian noise of std ``sigma`` is added to the token embeddings; yields the
    list the noises drawn are appended to."""
    drawn: list[Tensor] = []

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        noise = sigma * torch.randn(output.shape, generator=generator).to(output)
        drawn.append(noise)
        return output + noise

    handle = token_embedding(model).register_forward_hook(hook)
    try:
        yield drawn
    finally:
        handle.remove()


def lipschitz_loss(student: DualEncoder, images: Tensor, data: UnlearnData, config: LIPConfig, generator: torch.Generator) -> dict[str, Tensor]:
    """``||f(x) - f(x + δ)|| / ||δ||`` (mean over images) + ``text_weight * ||g(t) - g(t + ε)|| / ||ε||``."""
    images = images.to(student.device)
    delta = config.image_sigma * torch.randn(images.shape, generator=generator).to(images)
    image = ((student.encode_image(images) - student.encode_image(images + delta)).norm(dim=-1) / delta.flatten(1).norm(dim=-1)).mean()
    clean = encode_texts(student, [data.forget_text])
    with perturbed_tokens(student, config.text_sigma, generator) as eps:
        noisy = encode_texts(student, [data.forget_text])
    text = (clean - noisy).norm() / eps[0].norm()
    return {"loss": image + config.text_weight * text, "image": image.detach(), "text": text.detach()}


@register_method("lip")
class LIP(Baseline):
    """LIP (Kravets & Namboodiri 2024, arXiv 2407.07485): Lipschitz regularisation of CLIP on the forget class.

    Port: the real D_f replaces the paper's synthetic forget samples; the loss is the image
    embeddings' sensitivity to Gaussian input noise plus the forget text embedding's sensitivity to
    Gaussian noise on its token embeddings; no retain term (the paper has no retain data). Only the
    ``n_layers`` layers with the largest mean |gradient| are tuned. The paper's stop-at-threshold is
    the best-checkpoint rule (``forget_target``).
    """

    config_class = LIPConfig

    @classmethod
    def smoke_config(cls) -> LIPConfig:
        return LIPConfig(train=SMOKE_TRAIN, n_layers=4)

    def unlearn(self, student: DualEncoder, data: UnlearnData, config: LIPConfig, best: BestWeights, generator) -> dict[str, Any]:
        batches = BatchStream(len(data.forget_images), config.train.batch_size, generator)
        names = tower_params(student)
        layers = student.layers()
        if config.n_layers:
            x = data.forget_images[batches.next()]
            grads = gradients(student, names, lambda: lipschitz_loss(student, x, data, config, generator)["loss"])
            score = {layer: float(torch.cat([grads[p].abs().flatten() for p in ps]).mean()) for layer, ps in layers.items()}
            chosen = top_layers(score, config.n_layers)
            names = sorted(p for layer in chosen for p in layers[layer])
        else:
            chosen = sorted(layers)

        def loss_fn(step: int) -> dict[str, Tensor]:
            return lipschitz_loss(student, data.forget_images[batches.next()], data, config, generator)

        return {"layers": chosen, **train_keeping_best(student, names, loss_fn, config.train, best, desc="lip")}
