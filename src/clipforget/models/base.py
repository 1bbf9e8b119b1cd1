"""The one model interface every backend meets.

A :class:`DualEncoder` wraps a backend's own ``nn.Module`` (``self.model``) and exposes what the
algorithms need: normalised embeddings, a tokenizer, the image preprocessing, the logit scale, the
tower of every parameter, the named weight-bearing layers, and saving in the backend's own layout.

Text always travels as a :data:`TextBatch` (``dict[str, Tensor]``), whatever the backend, so no
caller ever branches on the backend.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

Tower = Literal["image", "text"]
TOWERS: tuple[Tower, ...] = ("image", "text")
TextBatch = dict[str, Tensor]
Preprocess = Callable[[object], Tensor]  # PIL.Image -> float tensor (C, H, W)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model id ``backend:name[@weights]``.

    Examples: ``openclip:RN50@openai``, ``openclip:ViT-B-32@/ckpt.safetensors``,
    ``hf:openai/clip-vit-base-patch32``, ``hf:/local/dir``, ``testbed``, ``testbed@/run/dir``.
    """

    backend: str
    name: str
    weights: str | None = None

    @classmethod
    def parse(cls, model_id: str) -> ModelSpec:
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError("model id is empty; expected e.g. 'openclip:RN50@openai', 'hf:/local/dir' or 'testbed'")
        backend, sep, rest = model_id.strip().partition(":")
        if not sep:  # "testbed" or "testbed@/dir"
            backend, _, weights = backend.partition("@")
            return cls(backend=backend, name=backend, weights=weights or None)
        name, at, weights = rest.partition("@")
        if not name:
            raise ValueError(f"model id {model_id!r} names no model after '{backend}:'")
        return cls(backend=backend, name=name, weights=(weights or None) if at else None)

    def __str__(self) -> str:
        if self.backend == self.name:
            return self.backend + (f"@{self.weights}" if self.weights else "")
        return f"{self.backend}:{self.name}" + (f"@{self.weights}" if self.weights else "")


@dataclass(frozen=True)
class ImageStage:
    """One link of the image tower's chain: its name, its function, the module names it owns."""

    name: str
    fn: Callable[[Tensor], Tensor]
    modules: tuple[str, ...]

    def owns(self, param_name: str) -> bool:
        return any(param_name.startswith(m + ".") for m in self.modules)


@dataclass(frozen=True)
class ImageProjection:
    """The image tower's last linear map: ``image_outputs(x) = f(x) @ W.T + b``, ``f(x)`` its input.

    ``weight`` and ``bias`` name parameters of the backend model (``bias`` None when it has none);
    ``transposed``: the stored weight is ``W.T``, shape (in, out) (open_clip's ``visual.proj``).
    """

    weight: str
    bias: str | None = None
    transposed: bool = False


class DualEncoder(nn.Module, abc.ABC):
    """A CLIP-style dual encoder behind one small protocol.

    Subclasses set :attr:`backend`, implement the abstract methods, and say which parameter-name
    prefixes (of ``self.model``) belong to which tower. Parameters outside both towers (the logit
    scale) are never candidates for forgetting.
    """

    backend: str = ""
    image_prefixes: tuple[str, ...] = ()
    text_prefixes: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, spec: ModelSpec, preprocess: Preprocess):
        super().__init__()
        self.model = model
        self.spec = spec
        self.preprocess = preprocess

    # -- embeddings -------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings, shape (B, D)."""

    @abc.abstractmethod
    def encode_text(self, text: TextBatch) -> Tensor:
        """L2-normalised text embeddings, shape (B, D)."""

    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        """Tokenise on the CPU; move with :func:`to_device`."""

    @property
    @abc.abstractmethod
    def logit_scale(self) -> Tensor:
        """The (already exponentiated) temperature multiplying cosine similarities."""

    # -- weights ----------------------------------------------------------------------------
    @abc.abstractmethod
    def save(self, directory: str | Path) -> Path:
        """Write the weights in the backend's own layout under ``directory``; return the main file.

        The result loads without clipforget (open_clip ``create_model(name, pretrained=file)``,
        ``CLIPModel.from_pretrained(directory)``, the testbed's documented loader).
        """

    @abc.abstractmethod
    def saved_id(self, directory: str | Path) -> str:
        """The model id that loads what :meth:`save` wrote into ``directory``."""

    def weights(self) -> dict[str, Tensor]:
        """The weights as the backend names them (its state dict; the tensors are the model's own)."""
        return self.model.state_dict()

    def named_weights(self, tower: Tower | None = None) -> Iterator[tuple[str, nn.Parameter]]:
        """The trainable parameters under the backend's names, of one ``tower`` or (None) all."""
        for name, p in self.model.named_parameters():
            if tower is None or self.tower_of(name) == tower:
                yield name, p

    def named_submodules(self) -> Iterator[tuple[str, nn.Module]]:
        """The backend's modules under the names :meth:`layers` and :meth:`tower_of` use."""
        return self.model.named_modules()

    def load_weights(self, state: Mapping[str, Tensor]) -> None:
        """Copy ``state`` (some or all weights, backend names) into the model in place; an unknown key
        or a shape that differs is refused by name before anything is copied."""
        own = self.model.state_dict()
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise KeyError(f"stored state has keys the model lacks: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if own[k].shape != v.shape]
        if wrong:
            k, theirs, ours = wrong[0]
            raise ValueError(f"stored state {k!r} has shape {theirs}, the model {ours}")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)

    @property
    def network(self) -> nn.Module:
        """The backend module the weight names refer to, for code that reparametrises it in place
        (LoRA adapters, gradient hooks); everything else reads and writes weights through
        :meth:`weights`, :meth:`named_weights` and :meth:`load_weights`."""
        return self.model

    # -- structure --------------------------------------------------------------------------
    def tower_of(self, param_name: str) -> Tower | None:
        """Which tower a parameter of ``self.model`` belongs to (None for shared ones)."""
        if param_name.startswith(self.image_prefixes):
            return "image"
        if param_name.startswith(self.text_prefixes):
            return "text"
        return None

    def layers(self, towers: Sequence[Tower] = TOWERS) -> dict[str, list[str]]:
        """Weight-bearing layers: layer name -> names of the parameters it owns directly.

        A layer is a module of ``self.model`` owning at least one parameter directly (Linear, Conv,
        Embedding, attention, norms); parameters held by the root module (open_clip's
        ``text_projection``) are each a layer of their own. Keys are module names in ``self.model``.
        """
        out: dict[str, list[str]] = {}
        for module_name, module in self.model.named_modules():
            for pname, _ in module.named_parameters(recurse=False):
                full = f"{module_name}.{pname}" if module_name else pname
                if self.tower_of(full) not in towers:
                    continue
                key = module_name if module_name else pname
                out.setdefault(key, []).append(full)
        return out

    #: The image stage from which methods may train by default (None: whole images). A backend sets it
    #: where the image tower is too slow to run at every step on a CPU (the testbed).
    default_image_prefix: str | None = None

    def image_stages(self) -> list[ImageStage] | None:
        """Optional: the image tower as an ordered chain of stages such that
        ``encode_image(x) == normalize(stage_n.fn(...stage_1.fn(x)))``, every image parameter in exactly
        one stage. Backends that expose it allow :class:`clipforget.models.prefix.FrozenImagePrefix`.
        """
        return None

    def image_projection(self) -> ImageProjection | None:
        """Optional: the image tower's last linear map, with :meth:`image_outputs` (None: not exposed)."""
        return None

    def image_outputs(self, images: Tensor) -> Tensor:
        """The image embeddings before L2 normalisation (backends that expose :meth:`image_projection`)."""
        raise ValueError(f"the {self.backend} backend does not expose its image projection")

    def similarity(self, images: Tensor, text: TextBatch) -> Tensor:
        """Cosine similarity matrix (B_img, B_txt) between images and texts."""
        return self.encode_image(images) @ self.encode_text(text).T

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@torch.no_grad()
def projection_inputs(model: DualEncoder, images: Tensor, batch_size: int = 64) -> Tensor:
    """The input ``f(x)`` of ``model``'s image projection for each image (on the CPU): the tower run with
    the projection set to the identity (bias zero) for the length of the call."""
    proj = model.image_projection()
    if proj is None:
        raise ValueError(f"the {model.backend} backend does not expose its image projection")
    params = dict(model.model.named_parameters())
    weight = params[proj.weight]
    saved = {proj.weight: weight.data}
    width = weight.shape[0] if proj.transposed else weight.shape[1]
    weight.data = torch.eye(width, dtype=weight.dtype, device=weight.device)
    if proj.bias is not None:
        saved[proj.bias] = params[proj.bias].data
        params[proj.bias].data = torch.zeros(width, dtype=weight.dtype, device=weight.device)
    try:
        return torch.cat([model.image_outputs(images[i : i + batch_size].to(model.device)).float().cpu()
                          for i in range(0, len(images), batch_size)])
    finally:
        for name, data in saved.items():
            params[name].data = data


def to_device(batch: TextBatch, device: torch.device | str) -> TextBatch:
    return {k: v.to(device) for k, v in batch.items()}


def normalize(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x, dim=-1)
