"""Image sources: each lists its images (:class:`Entry`) and loads one as an RGB PIL image.

Kinds live in one explicit registry (:func:`register_source_kind` rejects duplicates), one module
per concern:

- ``imagefolder``: ``root/<class>/<image>``; no splits. ``manifest``: a CSV or JSONL file with
  ``path, class[, subgroup][, split][, flags]``; relative paths resolve against the manifest's folder
  (:mod:`.files`).
- ``fashion_mnist``: the four IDX ``.gz`` files (default ``/usr/share/datasets/fashion-mnist``) (:mod:`.idx`).
- ``cifar10_jpeg`` / ``imagenette``: the shared archives, sha256-checked and extracted once
  (see :mod:`clipforget.data.locations`). Imagenette entries of the clean ``ILSVRC2012_val_*``
  photos carry the flag ``clean`` (:mod:`.archives`).
- ``openclipart``: Debian's public-domain clip art, classes from a shipped reviewed mapping (:mod:`.clipart`).
- ``torchvision``: a ``torchvision.datasets`` class by name (needs the data on disk, or
  ``download: true`` when online). ``clip_benchmark``: a CLIP_benchmark dataset (``dataset: cifar100``,
  ``wds/<name>``, ...) through its own builder, with its class names (needs the ``clip_benchmark``
  package; data on disk under ``root``, or ``download: true`` when online) (:mod:`.datasets`).
- ``imagenet``: ImageNet-1K in the ImageFolder layout ``root/{train,val}/<wnid>/*``, from ``root`` or
  ``$CLIPFORGET_IMAGENET``; classes are named by the ``imagenet1k_clip`` label space, the subgroup is
  the wnid (:mod:`.imagenet`).

Splits are ``train`` / ``test`` (Imagenette's ``val`` is ``test``) or ``None`` for sources without
splits. An unreadable image raises :class:`ImageLoadError` naming the file; nothing is skipped.
"""

from clipforget.data.sources.archives import (
    CIFAR10_JPEG,
    IMAGENETTE,
    IMAGENETTE_CLASSES,
    Archive,
    cifar10_jpeg_source,
    imagenette_source,
)
from clipforget.data.sources.base import (
    CLEAN,
    DATASET_KINDS,
    IMAGE_EXTENSIONS,
    SPLITS,
    UNREADABLE_HINT,
    Entry,
    FileSource,
    ImageLoadError,
    ImageSource,
    SourceConfig,
    SourceFactory,
    open_image,
    open_source,
    register_source_kind,
    source_kinds,
)
from clipforget.data.sources.clipart import OPENCLIPART_DIR, ClipArtSource, clipart_source, mapping_rows
from clipforget.data.sources.datasets import ClipBenchmarkSource, TorchvisionSource
from clipforget.data.sources.files import _read_manifest_rows
from clipforget.data.sources.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, ArraySource, read_idx
from clipforget.data.sources.imagenet import IMAGENET_ENV, imagenet_source

__all__ = [
    "ArraySource", "Archive", "CIFAR10_JPEG", "CLEAN", "ClipArtSource", "ClipBenchmarkSource", "DATASET_KINDS",
    "Entry", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "FileSource", "IMAGENET_ENV", "IMAGENETTE",
    "IMAGENETTE_CLASSES", "IMAGE_EXTENSIONS", "ImageLoadError", "ImageSource", "OPENCLIPART_DIR", "SPLITS",
    "SourceConfig", "SourceFactory", "TorchvisionSource", "UNREADABLE_HINT", "cifar10_jpeg_source",
    "clipart_source", "imagenet_source", "imagenette_source", "mapping_rows", "open_image", "open_source",
    "read_idx", "register_source_kind", "source_kinds", "_read_manifest_rows",
]  # fmt: skip
