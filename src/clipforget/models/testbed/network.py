"""The testbed's network: its config (``testbed.json``), the two towers joined by linear heads, and
the image preprocessing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

IMAGE_ARCH = "tf_efficientnet_lite0"
IMAGE_DIM = 1280
TEXT_DIM = 384


@dataclass(frozen=True)
class TestbedConfig:
    """What ``testbed.json`` records.

    - ``image_size``: square input resolution (pixels) of the image tower.
    - ``image_mean`` / ``image_std``: per-channel normalisation of [0, 1] images; the converted
      EfficientNet-Lite0 weights expect 0.498 / 0.502, i.e. ``(x/255 - 0.498) / 0.502``.
    - ``embed_dim``: dimension of the shared embedding space the heads project into.
    - ``image_dim`` / ``text_dim``: pooled tower output dimensions (1280, 384).
    - ``max_text_tokens``: tokenizer truncation length.
    - ``logit_scale``: exp of the learned log logit scale (for reading; the tensor in
      ``heads.safetensors`` is the source of truth).
    - ``heads_sha256``: checksum of ``heads.safetensors`` (checked at load when present).
    """

    __test__ = False  # not a pytest class despite the name

    image_size: int = 160
    image_mean: tuple[float, float, float] = (0.498, 0.498, 0.498)
    image_std: tuple[float, float, float] = (0.502, 0.502, 0.502)
    embed_dim: int = 384
    image_dim: int = IMAGE_DIM
    text_dim: int = TEXT_DIM
    max_text_tokens: int = 64
    image_arch: str = IMAGE_ARCH
    logit_scale: float = 100.0
    heads_sha256: str | None = None

    @classmethod
    def from_json(cls, path: Path) -> TestbedConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown testbed config field(s) {unknown}; known: {sorted(known)}")
        for k in ("image_mean", "image_std"):
            if k in data:
                data[k] = tuple(data[k])
        return cls(**data)




# -- the network ---------------------------------------------------------------------------------
def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the token states over real (unpadded) tokens: sentence-transformers pooling."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class TestbedNet(nn.Module):
    """Image tower + image head, text tower + text head, log logit scale."""

    __test__ = False

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, config: TestbedConfig):
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.image_head = nn.Linear(config.image_dim, config.embed_dim)
        self.text_head = nn.Linear(config.text_dim, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(config.logit_scale)))))

    def image_features(self, images: Tensor) -> Tensor:
        """Pooled image-tower features (B, 1280), before the head."""
        return self.image_tower(images)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Mean-pooled text-tower features (B, 384), before the head."""
        hidden = self.text_tower(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def heads_state_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(("image_head.", "text_head.", "logit_scale"))}


class ImagePreprocess:
    """PIL image -> normalised float tensor (3, S, S): RGB, bicubic resize of the short side, centre crop."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        from torchvision import transforms as T

        self.size = size
        self._t = T.Compose(
            [
                T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(size),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )

    def __call__(self, image) -> Tensor:
        return self._t(image.convert("RGB"))

    def __repr__(self) -> str:
        return f"ImagePreprocess(size={self.size})"

