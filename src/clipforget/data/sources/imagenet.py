"""``imagenet``: ImageNet-1K in the ImageFolder layout from a root the user gives."""

from __future__ import annotations

import os
from pathlib import Path

from clipforget.data.locations import DataNotFoundError
from clipforget.data.sources.base import (
    Entry,
    FileSource,
    ImageSource,
    SourceConfig,
    _is_image,
    _sorted_dirs,
    register_source_kind,
)

IMAGENET_ENV = "CLIPFORGET_IMAGENET"


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

