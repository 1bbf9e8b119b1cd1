"""One bench table (mean ± std over seeds) from cells run into several bench folders or documented as rows.

    python scripts/seed_table.py docs/results/photo-bench-cells.csv [more results.json or CSV files]
        [--columns heldout/imagenette-1000way]

Each argument is a bench's ``results.json`` (its cells, with the original model's figures) or a CSV in
the bench's ``results.csv`` layout (cells documented elsewhere; a ``source`` column says where from; a
row with method ``original`` gives the original model's figures).
A cell that appears twice (same scenario, method and seed) is refused. The table keeps the paper's
columns the cells share (Target, Retain, Score and the held-out sets named by ``--columns``) and the
audit's; times are left out, since the cells ran in different sessions and under different loads.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from clipforget.app.bench_tables import markdown_table

KEPT = ("target", "retain", "score", "audit/target_worst", "audit/search_share", "audit/search_chance", "audit/relearn@10")


def read_cells(path: Path, columns: tuple[str, ...]) -> list[dict]:
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
    else:
        with open(path, newline="") as f:
            raw = [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    cells = []
    for r in raw:
        cell = {"scenario": r["scenario"], "method": r["method"], "seed": int(r["seed"]), "seconds": None,
                **{k: float(r[k]) for k in (*KEPT, *columns) if k in r}}
        if "original" in r:
            cell["original"] = {k: float(v) for k, v in r["original"].items() if k in (*KEPT, *columns)}
        cells.append(cell)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--columns", nargs="*", default=["heldout/imagenette-1000way"],
                        help="held-out columns to keep (every cell must have them)")
    args = parser.parse_args()
    cells = [c for f in args.files for c in read_cells(f, tuple(args.columns))]
    originals = {c["scenario"]: {k: v for k, v in c.items() if k in (*KEPT, *args.columns)}
                 for c in cells if c["method"] == "original"}
    cells = [c for c in cells if c["method"] != "original"]
    originals.update({c["scenario"]: c["original"] for c in cells if "original" in c})
    seen: set[tuple] = set()
    for c in cells:
        key = (c["scenario"], c["method"], c["seed"])
        if key in seen:
            raise SystemExit(f"cell {key} appears twice; give each cell once")
        seen.add(key)
        missing = [k for k in ("target", "retain", "score", *args.columns) if k not in c]
        if missing:
            raise SystemExit(f"cell {key} lacks {missing}; drop it or the column (--columns)")
    for c in cells:
        if c["scenario"] not in originals:
            raise SystemExit(f"nothing gives the original model of {c['scenario']}: add a results.json of one of its "
                             "bench folders, or a CSV row with method 'original'")
        c["original"] = originals[c["scenario"]]
    print(markdown_table(cells, times=False), end="")


if __name__ == "__main__":
    main()
