"""Hugging Face backend: a transformers ``CLIPModel`` from a hub id or a local ``save_pretrained`` folder.

``hf:openai/clip-vit-base-patch32`` loads from the hub (``@revision`` picks a revision);
``hf:/local/dir`` loads a folder holding ``config.json``, the weights, the tokenizer and the image
processor settings. Images are preprocessed by a torchvision transform built from those settings,
the same shape of pipeline open_clip uses, so both backends feed the data loaders alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchvision import transforms as T

from clipforget.io import apply_umask, atomic_write_dir
from clipforget.models.base import DualEncoder, ImageProjection, ModelSpec, TextBatch, normalize
from clipforget.models.checkpoint import check_checkpoint, check_checkpoint_dir, describe_checkpoint

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# PIL resampling codes (what image processor configs store) -> torchvision interpolation.
_INTERPOLATION = {
    0: T.InterpolationMode.NEAREST,
    1: T.InterpolationMode.LANCZOS,
    2: T.InterpolationMode.BILINEAR,
    3: T.InterpolationMode.BICUBIC,
    4: T.InterpolationMode.BOX,
    5: T.InterpolationMode.HAMMING,
}


class HFClipModel(DualEncoder):
    backend = "hf"
    image_prefixes = ("vision_model.", "visual_projection.")
    text_prefixes = ("text_model.", "text_projection.")

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, preprocess, tokenizer, image_processor):
        super().__init__(model, spec, preprocess)
        self._tokenizer = tokenizer
        self._image_processor = image_processor
        self.context_length = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> HFClipModel:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        source, revision = _resolve_source(spec)
        local = revision is None and Path(source).is_dir()
        if local:
            check_checkpoint_dir(source)
        try:
            model, info = CLIPModel.from_pretrained(source, revision=revision, output_loading_info=True)
            _check_loading_info(info, source)
        except OSError as e:
            if local:
                raise ValueError(f"Hugging Face model folder {source} cannot be loaded: {e}") from None
            raise ValueError(f"the Hugging Face model {source!r} could not be downloaded (no connection, and it is not in "
                             "the Hugging Face cache): download it once where there is a connection, or pass a local "
                             "folder written by save_pretrained as hf:/path/to/folder") from None
        except (RuntimeError, ValueError) as e:
            if not local:
                raise
            raise ValueError(f"the weights in {source} do not fit its {CONFIG_FILE} (CLIPModel): they look like "
                             f"{_describe_folder(Path(source))} ({str(e).splitlines()[0][:200]})") from None
        model = model.float().eval()  # some hub checkpoints are stored in half precision
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        image_processor = AutoImageProcessor.from_pretrained(source, revision=revision)
        log.info("loaded Hugging Face CLIP %s", source)
        return cls(model, spec, image_transform(image_processor), tokenizer, image_processor)

    def encode_image(self, images: Tensor) -> Tensor:
        return normalize(self.image_outputs(images))

    def image_projection(self) -> ImageProjection | None:
        return ImageProjection("visual_projection.weight", None)

    def image_outputs(self, images: Tensor) -> Tensor:
        return _pooled(self.model.get_image_features(pixel_values=images))

    def encode_text(self, text: TextBatch) -> Tensor:
        out = self.model.get_text_features(input_ids=text["input_ids"], attention_mask=text.get("attention_mask"))
        return normalize(_pooled(out))

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        batch = self._tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp()

    def saved_id(self, directory: str | Path) -> str:
        return f"hf:{directory}"

    def save(self, directory: str | Path) -> Path:
        """``save_pretrained`` of model (safetensors), tokenizer and image processor into ``directory``.

        Plain ``CLIPModel.from_pretrained(directory)`` loads the result. The folder is written next
        to ``directory`` and moved into place (``config.json`` last), so an interrupted save never
        leaves a folder that looks complete.
        """

        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            self._tokenizer.save_pretrained(tmp)
            self._image_processor.save_pretrained(tmp)
            apply_umask(tmp)

        directory = atomic_write_dir(directory, write, last=(CONFIG_FILE,))
        index = directory / f"{WEIGHTS_FILE}.index.json"  # large models are saved in shards
        return index if index.is_file() else directory / WEIGHTS_FILE


def _resolve_source(spec: ModelSpec) -> tuple[str, str | None]:
    """(hub id or local folder, revision). A name that is a path, or that exists, is a local folder."""
    name = spec.name
    path = Path(name).expanduser()
    is_local = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or path.exists()
    if not is_local:
        return name, spec.weights
    if spec.weights is not None:
        raise ValueError(f"a local Hugging Face folder takes no '@{spec.weights}'; use 'hf:{name}'")
    if not path.is_dir():
        raise FileNotFoundError(f"Hugging Face model folder {str(path)!r} does not exist")
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"Hugging Face model folder {str(path)!r} holds no {CONFIG_FILE}; "
            "expected a folder written by save_pretrained (config, weights, tokenizer, preprocessor)"
        )
    return str(path), None


def _describe_folder(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    shapes = {k: v for f in files for k, v in check_checkpoint(f).items()}
    return describe_checkpoint(shapes)


def _check_loading_info(info: dict, source: str) -> None:
    """Refuse a checkpoint whose keys or shapes do not match the architecture exactly."""
    # position_ids are non-persistent buffers that old checkpoints still carry: harmless.
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.endswith("position_ids"))
    problems = {
        "missing": sorted(info.get("missing_keys", ())),
        "unexpected": unexpected,
        "mismatched": sorted(str(k) for k in info.get("mismatched_keys", ())),
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        raise ValueError(f"checkpoint {source!r} does not match CLIPModel: {problems}")


def _pooled(out: object) -> Tensor:
    """The projected embedding from ``get_*_features``: a tensor (transformers 4.x) or an output object (5.x)."""
    if isinstance(out, Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, Tensor):
        return pooled
    raise TypeError(f"cannot find the projected embedding in {type(out).__name__}")


def _to_rgb(image):
    return image.convert("RGB")


def _setting(settings, key: str):
    """Read one field of a size setting: a dict in transformers 4.x, a ``SizeDict`` in 5.x."""
    return settings.get(key) if hasattr(settings, "get") else getattr(settings, key, None)


def _interpolation(resample) -> T.InterpolationMode:
    if isinstance(resample, T.InterpolationMode):
        return resample
    if resample is None:
        return T.InterpolationMode.BICUBIC
    return _INTERPOLATION[int(resample)]


def image_transform(image_processor) -> T.Compose:
    """A torchvision transform (PIL image -> float tensor (3, H, W)) from an HF image processor's settings."""
    steps: list = []
    if getattr(image_processor, "do_resize", True):
        size = image_processor.size
        shortest = _setting(size, "shortest_edge")
        target = int(shortest) if shortest else (int(_setting(size, "height")), int(_setting(size, "width")))
        steps.append(T.Resize(target, interpolation=_interpolation(getattr(image_processor, "resample", None))))
    if getattr(image_processor, "do_center_crop", False):
        crop = image_processor.crop_size
        steps.append(T.CenterCrop((int(_setting(crop, "height")), int(_setting(crop, "width")))))
    if getattr(image_processor, "do_convert_rgb", True):
        steps.append(_to_rgb)
    steps.append(T.ToTensor())  # rescales to [0, 1], the processor's default rescale_factor of 1/255
    if getattr(image_processor, "do_normalize", True):
        steps.append(T.Normalize(mean=list(image_processor.image_mean), std=list(image_processor.image_std)))
    return T.Compose(steps)
