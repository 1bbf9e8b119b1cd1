"""The testbed behind the :class:`~clipforget.models.base.DualEncoder` protocol: loading (package
towers, shipped or saved heads), encoding, and saving in its own plain layout."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from clipforget.io import atomic_replace_dir, atomic_save_safetensors
from clipforget.models.base import (
    DualEncoder,
    ImageProjection,
    ImageStage,
    ModelSpec,
    TextBatch,
    normalize,
)
from clipforget.models.checkpoint import check_checkpoint_dir, describe_checkpoint
from clipforget.models.testbed.network import ImagePreprocess, TestbedConfig, TestbedNet
from clipforget.models.testbed.weights import (
    ASSETS_DIR,
    CONFIG_FILE,
    IMAGE_TOWER_FILE,
    TEXT_TOWER_DIR,
    _load_text,
    load_heads,
    load_package_image_tower,
    package_text_dir,
    save_heads,
)

log = logging.getLogger(__name__)


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

        def write_text_tower(tmp: Path) -> None:
            net.text_tower.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)

        atomic_replace_dir(directory / TEXT_TOWER_DIR, write_text_tower)
        return save_heads(net, self.config, directory)

