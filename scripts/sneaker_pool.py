"""Write a labelled pool for measuring ``clipforget mine`` on Fashion-MNIST: the first N training images
of every class as PNG files, and a manifest (labels for the comparison only).

    python scripts/sneaker_pool.py OUT_DIR [--per-class N]

Training images only, so a run on the mined scenario can be scored on the hand-built fmnist-sneaker
(whose Target, Retain and held-out Fashion-MNIST images are test images). Rows: class under the
scenario's prompt-friendly names (``sneaker``, ``ankle boot``, ...), subgroup the same. The files and
``OUT_DIR/pool.csv`` are the same on every machine with the same archive.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipforget.data import SourceConfig, open_source
from clipforget.io import atomic_write_text

NAMES = {"T-shirt/top": "t-shirt", "Trouser": "trouser", "Pullover": "pullover", "Dress": "dress", "Coat": "coat",
         "Sandal": "sandal", "Shirt": "shirt", "Sneaker": "sneaker", "Bag": "bag", "Ankle boot": "ankle boot"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=100)
    args = p.parse_args()
    source = open_source(SourceConfig(kind="fashion_mnist"))
    by_class: dict[str, list] = {}
    for e in sorted(source.entries(), key=lambda e: e.key):
        if e.split == "train":
            by_class.setdefault(e.classname, []).append(e)
    rows = ["path,class,subgroup"]
    for cls, entries in sorted(by_class.items()):
        name = NAMES[cls]
        for e in entries[: args.per_class]:
            path = args.out / "images" / name.replace(" ", "_") / f"{e.key.replace('/', '_')}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                source.load(e.key).save(path)
            rows.append(f'"{path.resolve()}",{name},{name}')
    atomic_write_text(args.out / "pool.csv", "\n".join(rows) + "\n")
    print(f"{len(rows) - 1} images -> {args.out / 'pool.csv'}")


if __name__ == "__main__":
    main()
