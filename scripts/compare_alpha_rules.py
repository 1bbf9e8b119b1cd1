"""Compare rules for choosing the souping alpha on finished `ours` runs of a benchmark folder.

For every `ours` cell of ``BENCH/runs/<scenario>/ours/seed<k>``, the reminded weights (the restore
stage's input, ``stages/remind.safetensors``) are interpolated with the original at every alpha of the
run's own curve and scored on the scenario's test sets; each rule then picks from the curve it was
given (calibration utility, holdout forget accuracy), exactly as the restore stage does. Prints the
mean Score per scenario of each rule.

This reads test metrics of every alpha, so a rule chosen from its output is chosen on the test
sets: say so wherever its figures are quoted.

    python scripts/compare_alpha_rules.py runs/bench --scenarios cifar10-cat fmnist-sneaker springer-in-dog
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from safetensors.torch import load_file

from clipforget.methods.base import clone_model
from clipforget.methods.souping import interpolate, pick_alpha
from clipforget.metrics import paper_score
from clipforget.evaluation import evaluate_scenario
from clipforget.app.prepare import prepare

RULES = {  # name -> (rule, tolerance, margin)
    "edge, tolerance 0.01": ("edge", 0.01, 0),
    "edge, tolerance 0.01, margin 1": ("edge", 0.01, 1),
    "center, tolerance 0.01": ("center", 0.01, 0),
    "center, tolerance 0.03": ("center", 0.03, 0),
    "edge, tolerance 0.03, margin 2": ("edge", 0.03, 2),
    "edge, tolerance 0.03, margin 3": ("edge", 0.03, 3),
}


def scores_per_alpha(bench: Path, scenario: str, model_id: str) -> dict[str, list[dict]]:
    prepared = prepare(model_id, scenario)
    view = prepared.training_view(prepared.model.default_image_prefix)
    original = {k: v.clone() for k, v in view.model.weights().items()}
    cells = {}
    for cell in sorted((bench / "runs" / scenario / "ours").glob("seed*")):
        unlearned = {**original, **load_file(cell / "stages" / "remind.safetensors")}
        curve = json.loads((cell / "alpha_curve.json").read_text())["curve"]
        student = clone_model(view.model)
        rows = []
        for point in curve:
            student.load_weights(interpolate(original, unlearned, point["alpha"]))
            metrics = evaluate_scenario(student, prepared.splits, view.images)
            rows.append({**point, "target": metrics.target, "score": paper_score(metrics, prepared.original_metrics)})
        cells[cell.name] = rows
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--scenarios", nargs="+", required=True)
    parser.add_argument("--model", default="testbed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    table = {name: {} for name in RULES}
    for scenario in args.scenarios:
        cells = scores_per_alpha(args.bench, scenario, args.model)
        if not cells:
            raise SystemExit(f"no finished ours cells under {args.bench}/runs/{scenario}/ours: run clipforget bench first")
        for name, (rule, tolerance, margin) in RULES.items():
            picked = [rows[pick_alpha(rows, 0.0, tolerance, rule, margin)] for rows in cells.values()]
            table[name][scenario] = (sum(p["score"] for p in picked) / len(picked), sum(p["target"] for p in picked) / len(picked))
    print("| rule | " + " | ".join(f"{s} Score (Target)" for s in args.scenarios) + " |")
    print("|---|" + "---|" * len(args.scenarios))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[s][0]:.2f} ({row[s][1]:.1f})" for s in args.scenarios) + " |")


if __name__ == "__main__":
    main()
