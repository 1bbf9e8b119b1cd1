"""The shared archives (``cifar10_jpeg``, ``imagenette``), sha256-checked and extracted once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipforget.data.locations import DataNotFoundError, extract_archive, find_archive
from clipforget.data.sources.base import (
    SPLITS,
    FileSource,
    ImageSource,
    SourceConfig,
    _list_class_folders,
    _require_dir,
    register_source_kind,
)

IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


@dataclass(frozen=True)
class Archive:
    filename: str
    sha256: str
    subdir: str  # the folder inside the archive that holds the splits


CIFAR10_JPEG = Archive(
    "cifar10-jpg.tar.gz", "d175fc167b175a42e060bf346e298bccfbfc54be7bebb9686bd463d2f838c72b", "cifar10"
)
IMAGENETTE = Archive(
    "imagenette-224.tar.gz", "52fceff1aef3c9f1d4bc4ec2ffdba43be8dd2d7a6d5a46aef505cb55c60c1d41", "imagenette"
)


def _archive_root(config: SourceConfig, archive: Archive) -> Path:
    extracted = extract_archive(find_archive(archive.filename, config.root), archive.sha256)
    return _require_dir(extracted / archive.subdir, f"archive {archive.filename}")


@register_source_kind("cifar10_jpeg")
def _cifar10_jpeg(config: SourceConfig) -> ImageSource:
    root = _archive_root(config, CIFAR10_JPEG)
    return cifar10_jpeg_source(root, f"cifar10_jpeg:{CIFAR10_JPEG.sha256}")


def cifar10_jpeg_source(root: Path, identity: str) -> FileSource:
    """The CIFAR-10 JPEG layout ``root/{train,test}/<class>/*.jpg`` (exposed for tests)."""
    entries = [e for split in SPLITS for e in _list_class_folders(root / split, f"{split}/", split)]
    return FileSource(root, tuple(entries), identity)


@register_source_kind("imagenette")
def _imagenette(config: SourceConfig) -> ImageSource:
    root = _archive_root(config, IMAGENETTE)
    return imagenette_source(root, f"imagenette:{IMAGENETTE.sha256}")


def imagenette_source(root: Path, identity: str) -> FileSource:
    """The Imagenette layout ``root/{train,val}/<wnid>/*.JPEG``; ``val`` is the test split."""

    def name_of(wnid: str) -> str:
        if wnid not in IMAGENETTE_CLASSES:
            raise DataNotFoundError(f"Imagenette folder {root}: unknown wnid {wnid!r}")
        return IMAGENETTE_CLASSES[wnid]

    entries = [
        e
        for folder, split in (("train", "train"), ("val", "test"))
        for e in _list_class_folders(_require_dir(root / folder, "Imagenette"), f"{folder}/", split, name_of)
    ]
    return FileSource(root, tuple(entries), identity)

