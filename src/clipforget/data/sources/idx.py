"""IDX files held in memory (``fashion_mnist``): :func:`read_idx` and :class:`ArraySource`."""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from clipforget.data.locations import DataNotFoundError
from clipforget.data.sources.base import Entry, ImageLoadError, ImageSource, SourceConfig, register_source_kind

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


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

