"""The README's results tables from finished run folders: the paper's columns beside the audit's.

    python scripts/audit_table.py ROOT [ROOT ...]

Each ROOT holds ``<scenario>/<method>/seed<N>/`` run folders (a ``clipforget bench`` folder's ``runs/``,
or ``clipforget forget --out ROOT/<scenario>/<method>/seed<N>`` runs). Prints one Markdown table per
scenario: per method the mean over its seeds (± the standard deviation where there are several) of
Target, Retain, each held-out set, the Score, the worst-prompt Target, the search share and the
relearned Target after the smallest budget on the changed parameters (``audit.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _row(run: Path) -> dict[str, float] | None:
    try:
        metrics = json.loads((run / "metrics.json").read_text())
        audit = json.loads((run / "audit.json").read_text())["parts"]
    except FileNotFoundError:
        return None
    u, o = metrics["unlearned"], metrics["original"]
    row = {"Target ↓": u["target"], "Retain ↑": u["retain"], **{k: v for k, v in u["heldout"].items()},
           "Score ↑": metrics["score"], "worst prompt ↓": audit["names"]["target_worst"]["unlearned"],
           "search ↓": audit["search"]["worst"]["unlearned"]["share"]}
    relearn = audit.get("relearn", {}).get("settings", {}).get("changed")
    if relearn:
        first = str(audit["relearn"]["steps"][0])
        row["relearn @%s ↓" % first] = relearn["unlearned"][first]
    original = {"Target ↓": o["target"], "Retain ↑": o["retain"], **o["heldout"],
                "worst prompt ↓": audit["names"]["target_worst"]["original"],
                "search ↓": audit["search"]["worst"]["original"]["share"]}
    if relearn and "original" in relearn:
        original["relearn @%s ↓" % first] = relearn["original"][first]
    row["_original"], row["_chance"] = original, audit["search"]["chance"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path)
    args = parser.parse_args()
    table: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for root in args.roots:
        for run in sorted(root.glob("*/*/seed*")):
            row = _row(run)
            if row is not None:
                table[run.parent.parent.name][run.parent.name].append(row)
    for scenario, methods in sorted(table.items()):
        first = next(iter(methods.values()))[0]
        columns = [c for c in first if not c.startswith("_")]
        print(f"#### {scenario}\n")
        print("| Method | " + " | ".join(c if c != "search ↓" else f"search ↓ (chance {first['_chance']:.1f})" for c in columns) + " | seeds |")
        print("|---" * (len(columns) + 2) + "|")
        original = first["_original"]
        print("| original | " + " | ".join(f"{original[c]:.1f}" if c in original else "–" for c in columns) + " | – |")
        for method, rows in sorted(methods.items()):
            print(f"| {method} | " + " | ".join(_cell([r[c] for r in rows if c in r]) if all(c in r for r in rows) else "–"
                                              for c in columns) + f" | {len(rows)} |")
        print()


if __name__ == "__main__":
    main()
