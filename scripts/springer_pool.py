"""Write a labelled pool manifest for measuring ``clipforget mine``: the English springer photos of
Imagenette mixed into CIFAR-10 and the other Imagenette classes (labels for the comparison only).

    python scripts/springer_pool.py OUT.csv [--springers N] [--cifar-per-class N] [--imagenette-per-class N]
                                    [--cifar-split train|test] [--exclude-clean]

Springer rows: class ``dog``, subgroup ``English springer``; CIFAR-10 rows: their class, subgroup
``cifar10 <class>``; other Imagenette rows: their class. Images are the first N of each class by key
(CIFAR-10 from ``--cifar-split``, test by default), so the manifest is the same on every machine with
the same archives. ``--exclude-clean --cifar-split train`` leaves out every image that springer-in-dog
scores (its Target, Retain and held-out images: clean Imagenette photos, CIFAR-10 and Fashion-MNIST
test images), so a run on the mined scenario can be scored on the hand-built one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipforget.data import SourceConfig, open_source
from clipforget.data.sources import CLEAN
from clipforget.io import atomic_write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--springers", type=int, default=150)
    p.add_argument("--cifar-per-class", type=int, default=100)
    p.add_argument("--imagenette-per-class", type=int, default=20)
    p.add_argument("--cifar-split", choices=("train", "test"), default="test")
    p.add_argument("--exclude-clean", action="store_true", help="leave out the clean ILSVRC2012_val Imagenette photos")
    args = p.parse_args()
    rows = ["path,class,subgroup"]
    nette = open_source(SourceConfig(kind="imagenette"))
    cifar = open_source(SourceConfig(kind="cifar10_jpeg"))
    by_class: dict[str, list] = {}
    for e in sorted(nette.entries(), key=lambda e: e.key):
        if not (args.exclude_clean and CLEAN in e.flags):
            by_class.setdefault(e.classname, []).append(e)
    for cls, entries in sorted(by_class.items()):
        n = args.springers if cls == "English springer" else args.imagenette_per_class
        for e in entries[:n]:
            label, sub = ("dog", cls) if cls == "English springer" else (cls, cls)
            rows.append(f'"{nette.root / e.key}",{label},{sub}')
    by_class = {}
    for e in sorted(cifar.entries(), key=lambda e: e.key):
        if e.split == args.cifar_split:
            by_class.setdefault(e.classname, []).append(e)
    for cls, entries in sorted(by_class.items()):
        for e in entries[: args.cifar_per_class]:
            rows.append(f'"{cifar.root / e.key}",{cls},cifar10 {cls}')
    atomic_write_text(Path(args.out), "\n".join(rows) + "\n")
    print(f"{len(rows) - 1} images -> {args.out}")


if __name__ == "__main__":
    main()
