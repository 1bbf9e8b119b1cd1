"""Class names, prompt templates and the image sets the testbed is trained and measured on."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from clipforget.data.presets import imagenet_classnames  # noqa: F401  (the testbed's ImageNet names are the library's)
from clipforget.data.sources import (
    CLEAN,
    FASHION_MNIST_CLASSES,
    IMAGENETTE_CLASSES,
    Entry,
    ImageSource,
    SourceConfig,
    open_source,
)

# The templates of the shipped scenarios (cifar10-cat, fmnist-sneaker, springer-in-dog).
CIFAR_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the small {}.",
    "a good photo of a {}.",
    "itap of a {}.",
)
FMNIST_TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}, a type of clothing.",
    "a good photo of a {}.",
)
PHOTO_TEMPLATES = ("a photo of a {}.", "a good photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "itap of a {}.")
BRIDGE_TEMPLATE = "a photo of a {}."
FMNIST_PROMPT_NAMES = {c: c.split("/")[0].lower() for c in FASHION_MNIST_CLASSES}  # "T-shirt/top" -> "t-shirt"


@dataclass(frozen=True)
class ImageSet:
    """A class-balanced, deterministic subset of one image source, with prompt names and templates.

    ``per_class=None`` takes every matching image. ``require_flags`` / ``exclude_flags`` filter by the
    source's entry flags (Imagenette's ``clean``). ``prompt_names`` maps source class names to the
    names put into the templates (identity where absent); ``split=None`` takes any split. Selection is by a hash of each key, so it
    does not depend on a seed and feature caches are shared between seeds.
    """

    name: str
    source: SourceConfig
    split: str | None
    per_class: int | None
    templates: tuple[str, ...]
    prompt_names: Mapping[str, str] = field(default_factory=dict)
    require_flags: frozenset[str] = frozenset()
    exclude_flags: frozenset[str] = frozenset()

    def open(self) -> ImageSource:
        return open_source(self.source)

    def select(self, source: ImageSource) -> tuple[list[Entry], tuple[str, ...]]:
        """The chosen entries (sorted by class, then hash) and the class prompt names in label order."""
        by_class: dict[str, list[Entry]] = {}
        for e in source.entries():
            if (self.split is not None and e.split != self.split) or not self.require_flags <= e.flags or self.exclude_flags & e.flags:
                continue
            by_class.setdefault(e.classname, []).append(e)
        chosen = []
        classes = sorted(by_class)
        for c in classes:
            ranked = sorted(by_class[c], key=lambda e: hashlib.sha1(e.key.encode()).hexdigest())
            chosen += ranked if self.per_class is None else ranked[: self.per_class]
        return chosen, tuple(self.prompt_names.get(c, c) for c in classes)


def standard_sets(train_per_class: int, test_per_class: int) -> dict[str, ImageSet]:
    """The pretraining (``*-train``) and evaluation (``*-test``) sets on the shared data."""
    cifar = SourceConfig(kind="cifar10_jpeg")
    fmnist = SourceConfig(kind="fashion_mnist")
    nette = SourceConfig(kind="imagenette")
    nette_names = {name: name for name in IMAGENETTE_CLASSES.values()}
    clean = frozenset({CLEAN})
    sets = [
        ImageSet("cifar10-train", cifar, "train", train_per_class, CIFAR_TEMPLATES),
        ImageSet("fashion-mnist-train", fmnist, "train", train_per_class, FMNIST_TEMPLATES, FMNIST_PROMPT_NAMES),
        ImageSet("imagenette-train", nette, "train", train_per_class, PHOTO_TEMPLATES, nette_names, exclude_flags=clean),
        ImageSet("cifar10-test", cifar, "test", test_per_class, CIFAR_TEMPLATES),
        ImageSet("fashion-mnist-test", fmnist, "test", test_per_class, FMNIST_TEMPLATES, FMNIST_PROMPT_NAMES),
        # All 500 clean photos (366 in Imagenette's train folder, 134 in val): unseen by the tower.
        ImageSet("imagenette-clean", nette, None, None, PHOTO_TEMPLATES, nette_names, require_flags=clean),
    ]
    return {s.name: s for s in sets}
