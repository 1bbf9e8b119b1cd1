"""Section 5 of ``scripts/bench_speed.py``: the peak memory of a whole ``run_forget`` as its held-out set
grows, and as its retain set D_r grows, every set kept in memory against every set streamed from disk
(one child process per row, its own peak RSS).

    python scripts/bench_speed.py --only-memory
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_speed import reset_peak_rss, rss_mib, vit


def _child(scenario: str, above_mib: float) -> dict:
    done = subprocess.run([sys.executable, __file__, scenario, str(above_mib)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


HELD_CLASSES = 8


def write_memory_scenario(root: Path, n_held: int, n_retain: int = 12) -> Path:
    """A scenario on synthetic 224 px files: a forget set of 12, a retain set of 12 poodles and
    ``n_retain`` cats, and a held-out folder of ``n_held`` images."""
    import csv

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path)

    rows = []
    for cls, sub in (("dog", "springer"), ("dog", "poodle"), ("cat", "cat")):
        for split in ("train", "test"):
            for i in range(n_retain + 8 if (sub, split) == ("cat", "train") else 16):
                rel = f"{sub}/{split}_{i}.jpg"
                image(root / "pool" / rel)
                rows.append({"path": rel, "class": cls, "subgroup": sub, "split": split})
    (root / "pool").mkdir(parents=True, exist_ok=True)
    with open(root / "pool" / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "class", "subgroup", "split"])
        writer.writeheader()
        writer.writerows(rows)
    held = root / f"held-{n_held}"
    if not held.is_dir():
        for i in range(n_held):
            image(held / f"class{i % HELD_CLASSES}" / f"{i:05d}.jpg")
    group = {"train": {"split": "train", "count": 12}, "test": {"split": "test", "count": 12}}
    scenario = {
        "name": f"memory-{n_held}-{n_retain}", "seed": 0, "classnames": ["dog", "cat"], "templates": ["a photo of a {}."],
        "hierarchy": {"animal": ["dog", "cat"]},
        "sources": {"pool": {"kind": "manifest", "root": str(root / "pool" / "manifest.csv")},
                    "held": {"kind": "imagefolder", "root": str(held)}},
        "forget": {"name": "springer", "label": "dog", "text": "a photo of a dog.",
                   "select": {"source": "pool", "classes": ["dog"], "subgroups": ["springer"]}, **group},
        "retain": [{"name": "poodle", "label": "dog", "select": {"source": "pool", "classes": ["dog"], "subgroups": ["poodle"]}, **group},
                   {"name": "cat", "label": "cat", "select": {"source": "pool", "classes": ["cat"]}, **group,
                    "train": {"split": "train", "count": n_retain}}],
        "calibration": [{"source": "pool", "classes": ["cat"], "per_class": 4, "split": "train"}],
        "heldout": [{"name": "held", "source": "held", "classes": [f"class{i}" for i in range(HELD_CLASSES)],
                     "per_class": n_held // HELD_CLASSES, "split": "any"}],
    }
    path = root / f"memory-{n_held}-{n_retain}.yaml"
    path.write_text(json.dumps(scenario))  # JSON is YAML
    return path


def memory_child(scenario: str, above_mib: float) -> None:
    from clipforget.data import Streaming
    from clipforget.app.runner import run_forget

    with tempfile.TemporaryDirectory() as tmp:
        model = vit(64, Path(tmp), image_size=224)
        reset_peak_rss()
        floor = rss_mib("VmRSS")
        start = time.perf_counter()
        run_forget("openclip:speed-ViT-64-224", scenario, Path(tmp) / "run", model=model, audit=False,
                   streaming=Streaming(above_mib=above_mib))
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mib": rss_mib("VmHWM") - floor}))


def heldout_memory() -> list[str]:
    return _memory_table("held-out images", [(n, 12) for n in (512, 1024, 2560, 5120)])


def retain_memory() -> list[str]:
    """The same as D_r grows (a held-out set of 64): a training set a method draws batches from."""
    return _memory_table("retain images", [(64, n) for n in (512, 5120)])


def _memory_table(what: str, sizes: list[tuple[int, int]], repeats: int = 3) -> list[str]:
    """One row per size: kept once, streamed ``repeats`` times (its peak moves by whole batches in flight:
    the median and the largest are shown)."""
    lines = [f"| {what} | kept in memory: time (s) | peak RSS above the model (MiB) | streamed: time (s) | "
             f"peak RSS above the model (MiB), median (max) of {repeats} | streamed time / kept |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for n_held, n_retain in sizes:
            scenario = str(write_memory_scenario(Path(tmp), n_held, n_retain))
            kept = _child(scenario, 1e9)
            streamed = sorted((_child(scenario, 0) for _ in range(repeats)), key=lambda r: r["peak_rss_mib"])
            middle = streamed[len(streamed) // 2]
            seconds = sorted(r["seconds"] for r in streamed)[len(streamed) // 2]
            lines.append(f"| {n_held if what.startswith('held') else n_retain + 12} | {kept['seconds']:.1f} | "
                         f"{kept['peak_rss_mib']:.0f} | {seconds:.1f} | {middle['peak_rss_mib']:.0f} "
                         f"({streamed[-1]['peak_rss_mib']:.0f}) | {seconds / kept['seconds']:.2f} |")
            print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    memory_child(sys.argv[1], float(sys.argv[2]))
