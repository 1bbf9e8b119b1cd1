"""open_clip backend: any architecture by name, weights from a pretrained tag or a local file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import Tensor

from clipforget.io import atomic_save_safetensors, atomic_write_json
from clipforget.models.base import (
    DualEncoder,
    ImageStage,
    ModelSpec,
    TextBatch,
    Tower,
    normalize,
)

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"


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
        model_cfg = open_clip.get_model_config(spec.name)
        if spec.name.startswith("local-dir:"):
            folder = Path(spec.name.partition(":")[2])
            if not (folder / CONFIG_FILE).is_file():
                raise FileNotFoundError(f"{folder} holds no {CONFIG_FILE}; give a folder written by clipforget or open_clip")
            model_cfg = json.loads((folder / CONFIG_FILE).read_text())["model_cfg"]
        elif not spec.name.startswith("hf-hub:") and model_cfg is None:
            raise ValueError(
                f"unknown open_clip architecture {spec.name!r}; pick one of open_clip.list_models() "
                f"(e.g. RN50, ViT-B-32), a saved folder as local-dir:/path, or register a config with "
                f"open_clip.add_model_config"
            )
        weights = spec.weights
        if weights is not None and ("/" in weights or weights.endswith((".safetensors", ".pt", ".pth", ".bin"))):
            if not Path(weights).is_file():
                raise FileNotFoundError(f"open_clip checkpoint {weights!r} does not exist; give a local file or a pretrained tag")
        model, _, preprocess = open_clip.create_model_and_transforms(spec.name, pretrained=weights)
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
