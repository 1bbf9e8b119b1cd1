"""What a run's report shows of its images: the sets' sizes and label spaces, and a few thumbnails.

:func:`write_sets` writes ``sets.json`` and ``examples/*.png`` into a run directory. The predictions
shown next to each thumbnail are not here: they are the models' ``predicted`` lists in
``metrics.json`` (:func:`clipforget.evaluation.evaluate_scenario`), joined by set name and image index.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clipforget.data.sources import ImageLoadError
from clipforget.data.types import Record, ScenarioSplits
from clipforget.io import atomic_write_bytes, atomic_write_json

EXAMPLES_PER_SET = 4
THUMBNAIL_PX = 112


def example_indices(count: int, k: int, seed: int, name: str) -> list[int]:
    """``k`` image indices of a set of ``count``, spread evenly and shifted by the seed and the set's name."""
    if count <= 0 or k <= 0:
        return []
    k = min(k, count)
    shift = (seed * 7919 + sum(map(ord, name))) % count
    return sorted({(shift + round(i * count / k)) % count for i in range(k)})


def thumbnail_png(image, size: int = THUMBNAIL_PX) -> bytes:
    """A PNG of ``image`` (a PIL image) fitted into ``size`` x ``size`` pixels."""
    image = image.convert("RGB")
    image.thumbnail((size, size))
    if min(image.size) < size // 2:  # tiny sources (28 px Fashion-MNIST) are scaled up, pixels kept sharp
        from PIL import Image

        scale = size / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _set_entry(records: Sequence[Record], classnames: Sequence[str], scored: bool) -> dict[str, Any]:
    index = {c: i for i, c in enumerate(classnames)}
    return {"count": len(records), "scored": scored, "classnames": list(classnames),
            "labels": [index[r.label] for r in records] if scored else [],
            "subgroups": sorted({r.subgroup for r in records})}


def write_sets(out: str | Path, splits: ScenarioSplits, sources: Mapping[str, Any], *, seed: int = 0,
               per_set: int = EXAMPLES_PER_SET) -> Path:
    """``sets.json`` (what was forgotten, each set's size, label space and labels, its example
    thumbnails) and the thumbnails under ``examples/``.

    Sets are named as in ``metrics.json``'s ``details`` (``target``, ``retain``, ``heldout/<name>``),
    plus the training sets the method saw (``forget_train``, ``retain_train``, ``calibration``),
    which are not scored. An image that cannot be read is left out of the examples; it fails nothing.
    """
    out = Path(out)
    sets: dict[str, tuple[Sequence[Record], Sequence[str], bool]] = {
        "forget_train": (splits.forget_train, splits.classnames, False),
        "retain_train": (splits.retain_train, splits.classnames, False),
        "calibration": (splits.calibration, (), False),
        "target": (splits.target.records, splits.target.classnames, True),
        "retain": (splits.retain.records, splits.retain.classnames, True),
        **{f"heldout/{s.name}": (s.records, s.classnames, True) for s in splits.heldout},
    }
    entries: dict[str, Any] = {}
    for name, (records, classnames, scored) in sets.items():
        entry = _set_entry(records, classnames, scored)
        entry["examples"] = []
        if name != "calibration":  # its images are the retain set's kind; the report shows the others
            for i in example_indices(len(records), per_set, seed, name):
                r = records[i]
                try:
                    png = thumbnail_png(sources[r.source].load(r.key))
                except (ImageLoadError, OSError):  # a thumbnail is decoration: a missing one fails nothing
                    continue
                file = f"examples/{name.replace('/', '-')}-{i}.png"
                atomic_write_bytes(out / file, png)
                entry["examples"].append({"index": i, "image": file, "label": r.label, "subgroup": r.subgroup})
        entries[name] = entry
    forget = {"subgroup": splits.forget_train[0].subgroup if splits.forget_train else "", "label": splits.forget_label,
              "text": splits.forget_text, "aliases": list(splits.forget_aliases)}
    return atomic_write_json(out / "sets.json", {"scenario": splits.name, "forget": forget, "sets": entries})
