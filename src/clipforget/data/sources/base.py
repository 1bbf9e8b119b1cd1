"""What every source kind shares: the entry and source protocol, the config, the kind registry, files."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from clipforget.config import Config, require
from clipforget.data.locations import DataNotFoundError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "test")
DATASET_KINDS = ("torchvision", "clip_benchmark")  # the kinds that take 'dataset' and 'download'
CLEAN = "clean"  # flag: an Imagenette photo from the ImageNet validation set (unseen by ImageNet towers)

UNREADABLE_HINT = ("replace it, or remove it from its folder or manifest: clipforget does not skip unreadable images, "
                   "since the splits (and every result) would then depend on which files happen to read")


class ImageLoadError(RuntimeError):
    """An image could not be read; the message names the file."""


@dataclass(frozen=True)
class Entry:
    """One image as its source lists it: raw class and subgroup names, split, flags."""

    key: str
    classname: str
    subgroup: str
    split: str | None
    flags: frozenset[str] = frozenset()


class ImageSource(Protocol):
    """What every source kind provides."""

    def entries(self) -> tuple[Entry, ...]: ...

    def load(self, key: str) -> Image.Image: ...

    def identity(self) -> str:
        """A string that changes when the source's content may change (for fingerprints)."""
        ...


@dataclass(frozen=True)
class SourceConfig(Config):
    """One image source of a scenario.

    - ``kind``: a registered source kind (``imagefolder``, ``manifest``, ``fashion_mnist``,
      ``cifar10_jpeg``, ``imagenette``, ``torchvision``).
    - ``root``: the folder (imagefolder, fashion_mnist, torchvision), the manifest file, or the folder
      holding the archive (cifar10_jpeg, imagenette). Optional where the kind has a default location;
      a relative path resolves against the scenario file's folder.
    - ``dataset``: torchvision and clip_benchmark only, the dataset name (``CIFAR100``; ``cifar100``).
    - ``download``: torchvision and clip_benchmark only, whether it may download (needs internet).
    """

    kind: str
    root: str | None = None
    dataset: str | None = None
    download: bool = False

    def check(self, where: str = "source") -> None:
        require(self.kind in _KINDS, f"{where}.kind: {self.kind!r} is unknown; known kinds: {source_kinds()}")
        require(
            self.kind in DATASET_KINDS or (self.dataset is None and not self.download),
            f"{where}: 'dataset' and 'download' apply only to kinds {list(DATASET_KINDS)}, not {self.kind!r}",
        )


SourceFactory = Callable[[SourceConfig], ImageSource]
_KINDS: dict[str, SourceFactory] = {}


def register_source_kind(kind: str) -> Callable[[SourceFactory], SourceFactory]:
    """Register a factory ``SourceConfig -> ImageSource`` under ``kind``; duplicates are refused."""

    def add(factory: SourceFactory) -> SourceFactory:
        if kind in _KINDS:
            raise ValueError(f"source kind {kind!r} is already registered")
        _KINDS[kind] = factory
        return factory

    return add


def source_kinds() -> list[str]:
    return sorted(_KINDS)


@functools.lru_cache(maxsize=32)
def open_source(config: SourceConfig) -> ImageSource:
    """The source for ``config`` (cached: listing and in-memory arrays are built once per process)."""
    config.check()
    return _KINDS[config.kind](config)


def open_image(path: Path) -> Image.Image:
    """Read an image file fully as RGB; any failure raises :class:`ImageLoadError` naming the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"cannot read image {path} ({e}); {UNREADABLE_HINT}") from e


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _sorted_dirs(path: Path) -> list[os.DirEntry]:
    return sorted((d for d in os.scandir(path) if d.is_dir()), key=lambda d: d.name)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataNotFoundError(f"{what}: folder {path} does not exist")
    return path


class FileSource:
    """Images stored as files under ``root``; keys are paths relative to it (or absolute)."""

    def __init__(self, root: Path, entries: tuple[Entry, ...], identity: str):
        self.root = root
        self._entries = entries
        self._identity = identity

    def entries(self) -> tuple[Entry, ...]:
        return self._entries

    def load(self, key: str) -> Image.Image:
        return open_image(self.root / key)

    def identity(self) -> str:
        return self._identity



def _list_class_folders(root: Path, prefix: str, split: str | None, name_of=lambda d: d) -> list[Entry]:
    """Entries of ``root/<class dir>/<image>``; keys are ``prefix + <class dir>/<image>``."""
    entries = []
    for cls in _sorted_dirs(root):
        for f in sorted(os.listdir(cls.path)):
            if _is_image(f):
                flags = frozenset({CLEAN}) if f.startswith("ILSVRC2012_val_") else frozenset()
                name = name_of(cls.name)
                entries.append(Entry(f"{prefix}{cls.name}/{f}", name, name, split, flags))
    return entries

