"""Dataset libraries as sources: ``torchvision`` classes and ``clip_benchmark`` builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from clipforget.config import ConfigError, require
from clipforget.data.locations import DataNotFoundError, cache_dir
from clipforget.data.sources.base import SPLITS, Entry, ImageLoadError, ImageSource, SourceConfig, register_source_kind


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
