"""open_clip backend: any architecture by name, weights from a pretrained tag or a local file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from torch import Tensor

from clipforget.io import atomic_save_safetensors
from clipforget.models.base import DualEncoder, ModelSpec, TextBatch, Tower, normalize

WEIGHTS_FILE = "open_clip_model.safetensors"


class OpenClipModel(DualEncoder):
    backend = "openclip"
    image_prefixes = ("visual.",)

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, preprocess, tokenizer):
        super().__init__(model, spec, preprocess)
        self._tokenizer = tokenizer

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> OpenClipModel:
        if spec.name not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip architecture {spec.name!r}; pick one of open_clip.list_models() "
                f"(e.g. RN50, ViT-B-32) or register a config with open_clip.add_model_config"
            )
        weights = spec.weights
        if weights is not None and ("/" in weights or weights.endswith((".safetensors", ".pt", ".pth", ".bin"))):
            if not Path(weights).is_file():
                raise FileNotFoundError(f"open_clip checkpoint {weights!r} does not exist; give a local file or a pretrained tag")
        model, _, preprocess = open_clip.create_model_and_transforms(spec.name, pretrained=weights)
        model.eval()
        return cls(model, spec, preprocess, open_clip.get_tokenizer(spec.name))

    def tower_of(self, param_name: str) -> Tower | None:
        if param_name.startswith("logit_"):
            return None
        return "image" if param_name.startswith(self.image_prefixes) else "text"

    def encode_image(self, images: Tensor) -> Tensor:
        return normalize(self.model.encode_image(images))

    def encode_text(self, text: TextBatch) -> Tensor:
        return normalize(self.model.encode_text(text["input_ids"]))

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        return {"input_ids": self._tokenizer(list(texts))}

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp()

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / WEIGHTS_FILE
        atomic_save_safetensors(self.model.state_dict(), path)
        return path
