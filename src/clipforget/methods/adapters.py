"""Make a chosen set of parameters trainable, by LoRA or fully, and merge back to plain weights.

LoRA is a low-rank additive parametrisation of a weight, ``W + (alpha / rank) * B @ A`` reshaped to
``W``'s shape (via ``torch.nn.utils.parametrize``), so one mechanism covers every module type:
Linear, Conv (``W`` viewed as ``out x (in*kh*kw)``), Embedding, ``nn.MultiheadAttention``'s packed
``in_proj_weight``, and bare matrices such as open_clip's ``text_projection``. peft is not used
because it does not reach ``nn.MultiheadAttention``'s packed projection and bare parameters in one
consistent way. Merging removes the parametrisation and leaves the merged tensor under the
parameter's original name, so the model ends with exactly its original names and shapes.

Vectors (biases, norm scales, class embeddings) of the chosen layers are tuned in full.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from clipforget.config import Config, require

if TYPE_CHECKING:
    from clipforget.models.base import DualEncoder


@dataclass(frozen=True)
class AdapterConfig(Config):
    """How the selected layers are tuned (LoRA settings; whether LoRA is used is the caller's switch).

    rank: LoRA rank (capped at the matrix's smaller side).  alpha: LoRA scale numerator (scale = alpha / rank).
    tune_vectors: also tune the selected layers' 1-D parameters in full (biases, norm weights).
    """

    rank: int = 8
    alpha: float = 16.0
    tune_vectors: bool = True

    def __post_init__(self) -> None:
        require(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        require(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")


class LoRADelta(nn.Module):
    """Parametrisation ``W -> W + scale * (B @ A).view_as(W)``; B starts at zero, so the start is W."""

    def __init__(self, weight: Tensor, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        rows, cols = weight.shape[0], weight[0].numel()
        rank = min(rank, rows, cols)
        a = torch.randn(rank, cols, generator=generator, dtype=torch.float32) / math.sqrt(cols)
        self.lora_A = nn.Parameter(a.to(device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(rows, rank, device=weight.device, dtype=weight.dtype))
        self.scale = alpha / rank

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.scale * (self.lora_B @ self.lora_A).view_as(weight)


def _owner(model: nn.Module, param_name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = param_name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def attach(
    model: nn.Module, param_names: Sequence[str], config: AdapterConfig, generator: torch.Generator, *, use_lora: bool = True
) -> list[nn.Parameter]:
    """Freeze ``model`` except the named parameters; return the trainable tensors.

    With ``use_lora`` matrices get LoRA deltas (``generator`` draws their initial ``A``); without, they
    are tuned in full."""
    own = dict(model.named_parameters())
    missing = sorted(set(param_names) - set(own))
    if missing:
        raise KeyError(f"parameters to tune are not in the model: {missing[:5]}")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    for name in sorted(param_names):  # sorted: the generator is consumed in a fixed order
        p = own[name]
        if p.ndim >= 2 and use_lora:
            module, attr = _owner(model, name)
            delta = LoRADelta(p.detach(), config.rank, config.alpha, generator)
            parametrize.register_parametrization(module, attr, delta)
            trainable += [delta.lora_A, delta.lora_B]
        elif p.ndim >= 2 or config.tune_vectors:
            p.requires_grad_(True)
            trainable.append(p)
    return trainable


def merge(model: nn.Module) -> None:
    """Fold every LoRA delta into its weight and remove the parametrisations (names restored)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)


@dataclass(frozen=True, eq=False)
class Tuning:
    """What a training stage tunes and how: the parameter ``names``, the LoRA ``adapter``, whether LoRA
    is used at all (``use_lora``; else the parameters train in full) and the stage's ``generator``."""

    names: tuple[str, ...]
    adapter: AdapterConfig
    generator: torch.Generator
    use_lora: bool = True

    def __call__(self, model: DualEncoder) -> AbstractContextManager[list[nn.Parameter]]:
        """:func:`tuning` of ``model``'s network under these settings."""
        return tuning(model.network, self.names, self.adapter, self.generator, use_lora=self.use_lora)


@contextmanager
def tuning(
    model: nn.Module, param_names: Sequence[str], config: AdapterConfig, generator: torch.Generator, *, use_lora: bool = True
) -> Iterator[list[nn.Parameter]]:
    """Within the block, only the named parameters train; on exit (even on error) adapters are merged
    and every parameter's ``requires_grad`` is as before."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    order = {m: list(m._parameters) for m in model.modules()}
    try:
        yield attach(model, param_names, config, generator, use_lora=use_lora)
    finally:
        merge(model)
        for m, names in order.items():  # removing a parametrisation re-registers the tensor last
            m._parameters = {k: m._parameters[k] for k in names}
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
