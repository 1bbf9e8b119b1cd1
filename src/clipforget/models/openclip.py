"""open_clip backend: any architecture by name, weights from a pretrained tag or a local file."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import Tensor

from clipforget.io import atomic_save_safetensors, atomic_write_json
from clipforget.models.checkpoint import PICKLE_SUFFIXES, check_checkpoint, describe_checkpoint
from clipforget.models.base import (
    DualEncoder,
    ImageProjection,
    ImageStage,
    ModelSpec,
    TextBatch,
    Tower,
    normalize,
)

log = logging.getLogger(__name__)

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
# Unpickle nothing but tensors, also where open_clip's own default differs (older versions lack the flag).
_WEIGHTS_ONLY = {"weights_only": True} if "weights_only" in inspect.signature(open_clip.create_model_and_transforms).parameters else {}


@contextlib.contextmanager
def _quiet_open_clip_errors():
    """open_clip logs an error itself before raising; the exception, reworded, is the one message."""

    def to_debug(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "open_clip" in record.pathname:
            log.debug("open_clip: %s", record.getMessage())
            return False
        return True

    root = logging.getLogger()
    root.addFilter(to_debug)
    try:
        yield
    finally:
        root.removeFilter(to_debug)


def tag_uses_quick_gelu(name: str, tag: str | None) -> bool:
    """Whether open_clip's table says the weights of ``name@tag`` were trained with QuickGELU.

    open_clip builds ``RN50``, ``RN101``, ``ViT-B-32``, ... with exact GELU and only warns when the
    tag (``openai``, ``yfcc15m``, ...) was trained with QuickGELU; those weights are meant for the
    ``-quickgelu`` model.
    """
    if tag is None or name.startswith(("hf-hub:", "local-dir:")):
        return False
    return bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))


class OpenClipModel(DualEncoder):
    backend = "openclip"
    image_prefixes = ("visual.",)

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, preprocess, tokenizer):
        super().__init__(model, spec, preprocess)
        self._tokenizer = tokenizer
        self._model_cfg: dict | None = None

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> OpenClipModel:
        """``name@tag``, ``name@/file``, or a folder saved by :meth:`save`: ``local-dir:/folder``."""
        if spec.name.startswith("local-dir:"):
            folder = Path(spec.name.partition(":")[2])
            if not (folder / CONFIG_FILE).is_file():
                raise FileNotFoundError(f"{folder} holds no {CONFIG_FILE}; give a folder written by clipforget or open_clip")
            model_cfg = json.loads((folder / CONFIG_FILE).read_text())["model_cfg"]
        else:
            model_cfg = open_clip.get_model_config(spec.name)
        if not spec.name.startswith(("hf-hub:", "local-dir:")) and model_cfg is None:
            raise ValueError(
                f"unknown open_clip architecture {spec.name!r}; pick one of open_clip.list_models() "
                f"(e.g. RN50, ViT-B-32), a saved folder as local-dir:/path, or register a config with "
                f"open_clip.add_model_config"
            )
        weights = spec.weights
        is_file = weights is not None and ("/" in weights or weights.endswith((".safetensors", *PICKLE_SUFFIXES)))
        checkpoint = Path(weights) if is_file else None
        if spec.name.startswith("local-dir:"):
            checkpoint = Path(spec.name.partition(":")[2]) / WEIGHTS_FILE
        if is_file and not checkpoint.is_file():
            raise FileNotFoundError(f"open_clip checkpoint {weights!r} does not exist; give a local file or a pretrained tag")
        shapes = check_checkpoint(checkpoint) if checkpoint is not None and checkpoint.is_file() else None
        quick_gelu = not is_file and tag_uses_quick_gelu(spec.name, weights) and not model_cfg.get("quick_gelu", False)
        if quick_gelu:
            log.info("open_clip tag %s@%s was trained with QuickGELU: building %s with QuickGELU", spec.name, weights,
                     spec.name)
            model_cfg = {**model_cfg, "quick_gelu": True}  # the saved config says so, for plain open_clip
        try:
            with _quiet_open_clip_errors():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.name, pretrained=weights, force_quick_gelu=quick_gelu, **_WEIGHTS_ONLY)
        except (AssertionError, RuntimeError, KeyError, ValueError) as e:
            if shapes is not None:
                arch = (f"the architecture in its {CONFIG_FILE}" if spec.name.startswith("local-dir:")
                        else f"the open_clip architecture {spec.name}")
                raise ValueError(f"checkpoint {checkpoint} does not fit {arch}: it looks like "
                                 f"{describe_checkpoint(shapes)}; give the architecture it was saved from "
                                 f"(openclip:<arch>@{checkpoint})") from None
            if weights is not None and "download" in str(e).lower():
                raise ValueError(f"the open_clip weights {weights!r} of {spec.name} could not be downloaded (no connection, "
                                 f"and they are not in the Hugging Face cache): download them once where there is a "
                                 f"connection, or pass a local file as openclip:{spec.name}@/path/to/weights.safetensors") from None
            if weights is not None and isinstance(e, RuntimeError):
                raise ValueError(str(e)) from None  # open_clip's own message names the known tags
            raise
        model.eval()
        out = cls(model, spec, preprocess, open_clip.get_tokenizer(spec.name))
        out._model_cfg = model_cfg
        return out

    def tower_of(self, param_name: str) -> Tower | None:
        if param_name.startswith("logit_"):
            return None
        return "image" if param_name.startswith(self.image_prefixes) else "text"

    def image_stages(self) -> list[ImageStage] | None:
        """The ModifiedResNet (RN50-style) chain: stem, layer1..4, attention pool; None for other towers."""
        visual = self.model.visual
        if not isinstance(visual, ModifiedResNet):
            return None
        stem = tuple(f"visual.{n}" for n, _ in visual.named_children() if n.startswith(("conv", "bn")))
        stages = [ImageStage("visual.stem", visual.stem, stem)]
        stages += [ImageStage(f"visual.{n}", getattr(visual, n), (f"visual.{n}",))
                   for n in ("layer1", "layer2", "layer3", "layer4", "attnpool")]
        return stages

    def encode_image(self, images: Tensor) -> Tensor:
        return normalize(self.model.encode_image(images))

    def image_projection(self) -> ImageProjection | None:
        """The attention pool's output projection (ResNet) or ``visual.proj`` (ViT)."""
        visual = self.model.visual
        if isinstance(visual, ModifiedResNet):
            return ImageProjection("visual.attnpool.c_proj.weight", "visual.attnpool.c_proj.bias")
        if isinstance(getattr(visual, "proj", None), torch.nn.Parameter):
            return ImageProjection("visual.proj", None, transposed=True)
        return None

    def image_outputs(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images)

    def encode_text(self, text: TextBatch) -> Tensor:
        return normalize(self.model.encode_text(text["input_ids"]))

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        return {"input_ids": self._tokenizer(list(texts))}

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp()

    def saved_id(self, directory: str | Path) -> str:
        return f"openclip:local-dir:{directory}"

    def save(self, directory: str | Path) -> Path:
        """``open_clip_model.safetensors`` (+ ``open_clip_config.json`` when the architecture is known).

        Loads back with ``open_clip.create_model(name, pretrained=<file>)`` or
        ``open_clip.create_model("local-dir:<directory>")``.
        """
        path = Path(directory) / WEIGHTS_FILE
        atomic_save_safetensors(self.model.state_dict(), path)
        if self._model_cfg is not None:
            config = {"model_cfg": self._model_cfg, "preprocess_cfg": open_clip.get_model_preprocess_cfg(self.model)}
            atomic_write_json(Path(directory) / CONFIG_FILE, config)
        return path
