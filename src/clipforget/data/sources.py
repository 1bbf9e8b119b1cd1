"""Image sources: each lists its images (:class:`Entry`) and loads one as an RGB PIL image.

Kinds live in one explicit registry (:func:`register_source_kind` rejects duplicates):

- ``imagefolder``: ``root/<class>/<image>``; no splits.
- ``manifest``: a CSV or JSONL file with ``path, class[, subgroup][, split][, flags]``; relative
  paths resolve against the manifest's folder.
- ``fashion_mnist``: the four IDX ``.gz`` files (default ``/usr/share/datasets/fashion-mnist``).
- ``cifar10_jpeg`` / ``imagenette``: the shared archives, sha256-checked and extracted once
  (see :mod:`clipforget.data.locations`). Imagenette entries of the clean ``ILSVRC2012_val_*``
  photos carry the flag ``clean``.
- ``torchvision``: a ``torchvision.datasets`` class by name (needs the data on disk, or
  ``download: true`` when online).
- ``imagenet``: ImageNet-1K in the ImageFolder layout ``root/{train,val}/<wnid>/*``, from ``root`` or
  ``$CLIPFORGET_IMAGENET``; classes are named by the ``imagenet1k_clip`` label space, the subgroup is
  the wnid.
- ``clip_benchmark``: a CLIP_benchmark dataset (``dataset: cifar100``, ``wds/<name>``, ...) through
  its own builder, with its class names (needs the ``clip_benchmark`` package; data on disk under
  ``root``, or ``download: true`` when online).

Splits are ``train`` / ``test`` (Imagenette's ``val`` is ``test``) or ``None`` for sources without
splits. An unreadable image raises :class:`ImageLoadError` naming the file; nothing is skipped.
"""

from __future__ import annotations

import csv
import functools
import gzip
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from clipforget.config import Config, ConfigError, require
from clipforget.data.locations import (
    DataNotFoundError,
    cache_dir,
    extract_archive,
    find_archive,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "test")
DATASET_KINDS = ("torchvision", "clip_benchmark")  # the kinds that take 'dataset' and 'download'
IMAGENET_ENV = "CLIPFORGET_IMAGENET"

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

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
CLEAN = "clean"  # flag: an Imagenette photo from the ImageNet validation set (unseen by ImageNet towers)


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


@register_source_kind("imagefolder")
def _imagefolder(config: SourceConfig) -> ImageSource:
    require(config.root is not None, "an 'imagefolder' source needs 'root': the folder of class folders")
    root = _require_dir(Path(config.root), "imagefolder source")
    entries = tuple(_list_class_folders(root, "", None))
    if not entries:
        raise DataNotFoundError(f"imagefolder source {root}: no images found under root/<class>/")
    return FileSource(root, entries, f"imagefolder:{root.resolve()}")


def _read_manifest_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"manifest {path} line {n}: not valid JSON ({e})") from e
        return rows
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    raise ConfigError(f"manifest {path}: use a .csv or .jsonl file")


@register_source_kind("manifest")
def _manifest(config: SourceConfig) -> ImageSource:
    require(config.root is not None, "a 'manifest' source needs 'root': the path of the CSV/JSONL file")
    path = Path(config.root)
    if not path.is_file():
        raise DataNotFoundError(f"manifest file {path} does not exist")
    entries = []
    for n, row in enumerate(_read_manifest_rows(path), 1):
        where = f"manifest {path} row {n}"
        require(isinstance(row, dict), f"{where}: expected a mapping of columns")
        require(bool(row.get("path")) and bool(row.get("class")), f"{where}: columns 'path' and 'class' are required")
        split = row.get("split") or None
        require(split in (None, *SPLITS), f"{where}: split {split!r} must be one of {list(SPLITS)} or empty")
        flags = row.get("flags") or ()
        flags = frozenset(flags.split(";") if isinstance(flags, str) else flags)
        cls = str(row["class"])
        entries.append(Entry(str(row["path"]), cls, str(row.get("subgroup") or cls), split, flags))
    require(bool(entries), f"manifest {path} lists no images")
    keys = [e.key for e in entries]
    require(len(set(keys)) == len(keys), f"manifest {path}: a path is listed twice")
    return FileSource(path.parent, tuple(entries), f"manifest:{path.resolve()}:{path.stat().st_mtime_ns}")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes into an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageLoadError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ImageLoadError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise ImageLoadError(f"{path}: IDX header says {dims} but the file holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


class ArraySource:
    """Images held in memory as uint8 arrays per split (loaded lazily); keys are ``<split>/<index>``."""

    def __init__(self, labels: dict[str, np.ndarray], images: dict[str, Callable[[], np.ndarray]],
                 classes: tuple[str, ...], identity: str):  # fmt: skip
        self._images = images
        self._loaded: dict[str, np.ndarray] = {}
        self._identity = identity
        self._entries = tuple(
            Entry(f"{split}/{i}", classes[y], classes[y], split)
            for split, ys in labels.items()
            for i, y in enumerate(ys.tolist())
        )

    def entries(self) -> tuple[Entry, ...]:
        return self._entries

    def load(self, key: str) -> Image.Image:
        split, _, index = key.partition("/")
        if split not in self._images or not index.isdigit():
            raise ImageLoadError(f"{self._identity}: no image {key!r}")
        if split not in self._loaded:
            self._loaded[split] = self._images[split]()
        array = self._loaded[split]
        if int(index) >= len(array):
            raise ImageLoadError(f"{self._identity}: no image {key!r} (split has {len(array)})")
        return Image.fromarray(np.ascontiguousarray(array[int(index)])).convert("RGB")

    def identity(self) -> str:
        return self._identity


@register_source_kind("fashion_mnist")
def _fashion_mnist(config: SourceConfig) -> ImageSource:
    root = Path(config.root) if config.root is not None else FASHION_MNIST_DIR
    files = {s: (root / f"{p}-images-idx3-ubyte.gz", root / f"{p}-labels-idx1-ubyte.gz")
             for s, p in (("train", "train"), ("test", "t10k"))}  # fmt: skip
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        raise DataNotFoundError(
            f"Fashion-MNIST files missing: {missing}; install Debian's 'dataset-fashion-mnist' or set the "
            "source's 'root' to the folder of the four IDX .gz files"
        )
    labels = {s: read_idx(lab) for s, (_, lab) in files.items()}
    images = {s: functools.partial(read_idx, img) for s, (img, _) in files.items()}
    return ArraySource(labels, images, FASHION_MNIST_CLASSES, f"fashion_mnist:{root.resolve()}")


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


class _SplitDatasets:
    """A source over map-style datasets per split (``self._data``) whose items are (PIL image, label);
    keys are ``"<split>/<index>"``."""

    _data: dict[str, Any]
    _entries: tuple[Entry, ...]
    _identity: str

    def entries(self) -> tuple[Entry, ...]:
        return self._entries

    def load(self, key: str) -> Image.Image:
        split, _, index = key.partition("/")
        try:
            image = self._data[split][int(index)][0]
        except (KeyError, ValueError, IndexError) as e:
            raise ImageLoadError(f"{self._identity}: no image {key!r}") from e
        return image.convert("RGB")

    def identity(self) -> str:
        return self._identity


class TorchvisionSource(_SplitDatasets):
    """A ``torchvision.datasets`` class with a ``train`` flag (CIFAR10/100, MNIST, FashionMNIST, ...)."""

    def __init__(self, dataset: str, root: Path, download: bool):
        import torchvision.datasets as tvd

        cls = getattr(tvd, dataset, None)
        require(cls is not None, f"torchvision has no dataset {dataset!r}")
        self._identity = f"torchvision:{dataset}:{root.resolve()}"
        try:
            self._data = {s: cls(str(root), train=(s == "train"), download=download) for s in SPLITS}
        except RuntimeError as e:  # torchvision's "Dataset not found. You can use download=True"
            raise DataNotFoundError(f"torchvision {dataset} under {root}: {e}") from e
        except TypeError as e:
            raise ConfigError(f"torchvision {dataset} has no train/test flag; use another source kind") from e
        classes = tuple(self._data["train"].classes)
        self._entries = tuple(
            Entry(f"{s}/{i}", classes[int(y)], classes[int(y)], s)
            for s, ds in self._data.items()
            for i, y in enumerate(ds.targets)
        )


@register_source_kind("torchvision")
def _torchvision(config: SourceConfig) -> ImageSource:
    require(config.dataset is not None, "a 'torchvision' source needs 'dataset', e.g. CIFAR10")
    root = Path(config.root) if config.root is not None else cache_dir() / "torchvision"
    return TorchvisionSource(config.dataset, root, config.download)


@register_source_kind("imagenet")
def _imagenet(config: SourceConfig) -> ImageSource:
    root = config.root if config.root is not None else os.environ.get(IMAGENET_ENV)
    layout = "the ImageFolder layout <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG"
    if root is None:
        raise DataNotFoundError(f"ImageNet source: no root given; set {IMAGENET_ENV} to your ImageNet-1K folder "
                                f"({layout}), or give the source a 'root'")
    given = "root" if config.root is not None else f"${IMAGENET_ENV}"
    root = Path(root).expanduser()
    missing = [str(root / d) for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise DataNotFoundError(f"ImageNet root {root} (from {given}) lacks {missing}; point {given} at an ImageNet-1K "
                                f"folder in {layout} (val/ sorted into wnid folders, as torchvision's ImageFolder reads it)")
    return imagenet_source(root, f"imagenet:{root.resolve()}")


def imagenet_source(root: Path, identity: str) -> FileSource:
    """``root/{train,val}/<wnid>/*``: class = the wnid's ``imagenet1k_clip`` name, subgroup = the wnid."""
    from clipforget.data.presets import imagenet_wnid_names

    names = imagenet_wnid_names()
    entries = []
    for folder, split in (("train", "train"), ("val", "test")):
        for cls in _sorted_dirs(root / folder):
            if cls.name not in names:
                raise DataNotFoundError(f"ImageNet folder {root / folder}: {cls.name!r} is not an ImageNet-1K wnid; "
                                        "keep only the 1000 class folders (n01440764, ...) under train/ and val/")
            entries += [Entry(f"{folder}/{cls.name}/{f}", names[cls.name], cls.name, split)
                        for f in sorted(os.listdir(cls.path)) if _is_image(f)]
    if not entries:
        raise DataNotFoundError(f"ImageNet folder {root}: no images under train/<wnid>/ or val/<wnid>/")
    return FileSource(root, tuple(entries), identity)


def _dataset_labels(ds: Any) -> list[int]:
    """Class indices of a torchvision-style dataset without loading its images."""
    for attr in ("targets", "labels", "_labels"):
        if getattr(ds, attr, None) is not None:
            return [int(y) for y in getattr(ds, attr)]
    if getattr(ds, "samples", None) is not None:
        return [int(y) for _, y in ds.samples]
    raise ConfigError(f"{type(ds).__name__}: cannot list its labels (no targets, labels or samples); "
                      "export it as a webdataset (clip_benchmark_export_wds) and use dataset: wds/<name>")


class ClipBenchmarkSource(_SplitDatasets):
    """A CLIP_benchmark dataset, both splits where it has them; class names and templates are its own.

    ``wds/<name>`` datasets are streamed once per split and held in memory (they have no random access).
    """

    def __init__(self, dataset: str, root: Path, download: bool):
        try:
            from clip_benchmark.datasets.builder import build_dataset
        except ImportError as e:
            raise DataNotFoundError(f"the clip_benchmark source {dataset!r} needs the clip_benchmark package ({e}): "
                                    "pip install 'clipforget[benchmark]'") from None
        self._identity = f"clip_benchmark:{dataset}:{root.resolve()}"
        self._data: dict[str, Any] = {}
        self.templates: tuple[str, ...] = ()
        entries, classes = [], None
        for split in SPLITS:
            try:
                ds = build_dataset(dataset, root=str(root), split=split, download=download)
            except (AssertionError, FileNotFoundError, RuntimeError, ValueError) as e:
                if split == "train":
                    continue  # a test-only set (ObjectNet, most webdatasets)
                raise DataNotFoundError(f"clip_benchmark dataset {dataset!r} under {root}: {e or type(e).__name__}; "
                                        "put the data there, or set download: true when online") from e
            classes = tuple(ds.classes)
            self.templates = tuple(getattr(ds, "templates", None) or self.templates)
            if dataset.startswith("wds/"):
                ds = list(ds)
            labels = [int(y) for _, y in ds] if isinstance(ds, list) else _dataset_labels(ds)
            self._data[split] = ds
            entries += [Entry(f"{split}/{i}", classes[y], classes[y], split) for i, y in enumerate(labels)]
        self._entries = tuple(entries)


@register_source_kind("clip_benchmark")
def _clip_benchmark(config: SourceConfig) -> ImageSource:
    require(config.dataset is not None, "a 'clip_benchmark' source needs 'dataset', e.g. cifar100 or wds/<name>")
    root = Path(config.root) if config.root is not None else cache_dir() / "clip_benchmark" / config.dataset
    return ClipBenchmarkSource(config.dataset, root, config.download)
