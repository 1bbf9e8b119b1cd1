"""Synthetic image data written by tests: image trees, manifests, IDX files and a tiny scenario.

Every class (and subgroup) gets its own base colour plus noise, so a tiny model can tell them apart.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def colour_of(name: str) -> np.ndarray:
    digest = hashlib.sha256(name.encode()).digest()
    return np.frombuffer(digest[:3], dtype=np.uint8).astype(np.int16)


def write_image(path: Path, name: str, index: int, size: int = 32) -> Path:
    """A ``size`` x ``size`` RGB image of ``name``'s colour with noise seeded by (name, index)."""
    rng = np.random.default_rng([index, *colour_of(name).tolist()])
    pixels = np.clip(colour_of(name) + rng.integers(-30, 31, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_image_tree(root: Path, counts: dict[str, int], ext: str = ".png", prefix: str = "") -> Path:
    """``root/<class>/<prefix>NNNN<ext>`` with ``counts[class]`` images each."""
    for cls, n in counts.items():
        for i in range(n):
            write_image(root / cls / f"{prefix}{i:04d}{ext}", cls, i)
    return root


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    """A CSV (``.csv``) or JSONL (``.jsonl``) manifest of ``rows``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            writer.writerows(rows)
    return path


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes (gzipped when ``path`` ends in ``.gz``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_fashion_mnist(root: Path, per_class: dict[str, int] | None = None, gz: bool = True) -> Path:
    """The four Fashion-MNIST IDX files with ``per_class[split]`` images of each of the 10 labels.

    Image ``i`` of a split has every pixel equal to ``i % 256``, so a test can check which it got.
    """
    per_class = per_class or {"train": 3, "t10k": 2}
    for prefix, n in per_class.items():
        labels = np.repeat(np.arange(10), n).astype(np.uint8)
        images = (np.arange(len(labels)) % 256).astype(np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return root


TINY_COUNTS = {  # (class, subgroup) -> (train, test) images
    ("dog", "springer"): (8, 6),
    ("dog", "poodle"): (8, 6),
    ("cat", "cat"): (8, 6),
    ("car", "car"): (4, 4),
}


def tiny_scenario_dict(root: Path) -> dict:
    """A tiny within-class scenario on synthetic images written under ``root``.

    A manifest source (dog/{springer, poodle}, cat, car) and an imagefolder held-out set (apple,
    banana). Forget springer-in-dog; retain poodles (same label) and cats.
    """
    rows = []
    for (cls, sub), (n_train, n_test) in TINY_COUNTS.items():
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                rel = f"images/{sub}/{split}_{i:03d}.png"
                write_image(root / "pets" / rel, sub, i + (1000 if split == "test" else 0))
                rows.append({"path": rel, "class": cls, "subgroup": sub, "split": split})
    write_manifest(root / "pets" / "manifest.csv", rows)
    make_image_tree(root / "fruit", {"apple": 5, "banana": 5})
    return {
        "name": "tiny-springer",
        "seed": 0,
        "sources": {
            "pets": {"kind": "manifest", "root": str(root / "pets" / "manifest.csv")},
            "fruit": {"kind": "imagefolder", "root": str(root / "fruit")},
        },
        "classnames": ["dog", "cat", "car"],
        "templates": ["a photo of a {}.", "a picture of a {}."],
        "hierarchy": {"animal": ["dog", "cat"], "vehicle": ["car"]},
        "forget": {
            "name": "springer",
            "label": "dog",
            "text": "a photo of a dog.",
            "select": {"source": "pets", "classes": ["dog"], "subgroups": ["springer"]},
            "train": {"split": "train", "count": 6},
            "test": {"split": "test", "count": 4},
        },
        "retain": [
            {"name": "poodle", "label": "dog",
             "select": {"source": "pets", "classes": ["dog"], "subgroups": ["poodle"]},
             "train": {"split": "train", "count": 4}, "test": {"split": "test", "count": 4}},
            {"name": "cat", "label": "cat", "select": {"source": "pets", "classes": ["cat"]},
             "train": {"split": "train", "count": 4}, "test": {"split": "test", "count": 4}},
        ],  # fmt: skip
        "calibration": [{"source": "pets", "classes": ["cat", "car"], "per_class": 2, "split": "train"}],
        "heldout": [
            {"name": "fruit", "source": "fruit", "classes": ["apple", "banana"], "per_class": 3, "split": "any",
             "rename": {"apple": "red apple"}, "templates": ["a photo of a {}, a fruit."]},
        ],  # fmt: skip
    }


def build_tiny_scenario(root: Path) -> Path:
    """Write the tiny scenario's images and its YAML under ``root``; return the YAML path."""
    path = Path(root) / "tiny-springer.yaml"
    path.write_text(yaml.safe_dump(tiny_scenario_dict(Path(root)), sort_keys=False))
    return path
