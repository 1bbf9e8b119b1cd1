"""Three forget requests one after another on the testbed, against one run forgetting all three at once,
and every subgroup's figures after each step.

    python scripts/sequential_requests.py OUT [--method ours] [--seed 0] [--scenarios S1 S2 S3]

Request k runs ``clipforget forget`` on the model request k-1 wrote (the first on ``testbed``), so each
run continues the ledger: the model as received is its teacher and endpoint, its weight choice keeps
the earlier subgroups forgotten, and it re-checks them (``ledger_check.json``). A finished step is
kept. Then every model of the sequence (the original and after each step) is scored on every
scenario: Target, worst-prompt Target (the audit's names test against the original) and Retain, and
each scenario's held-out sets. ``OUT/together`` is one ``clipforget forget`` run with all three
scenarios (one closed-form edit for every request), scored the same way. Retain and held-out sets of
one scenario hold images of another request's subgroup (CIFAR-10 cats in springer-in-dog's Retain,
sneakers in its Fashion-MNIST set), which a sequence forgets on purpose; the ``others`` figures leave
out the images whose class is another request's subgroup (``cat``, ``sneaker``, ``English springer``).
Prints Markdown tables and writes ``OUT/sequence.json``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from clipforget.audit import AuditConfig
from clipforget.audit import audit as run_audit
from clipforget.app.bench_tables import finished
from clipforget.data import build_scenario, load_scenario_config, open_sources
from clipforget.evaluation import evaluate_scenario
from clipforget.io import atomic_write_json
from clipforget.models import load_model
from clipforget.app.prepare import load_scenario_images
from clipforget.app.runner import run_forget
from clipforget.app.together import run_forget_together

SCENARIOS = ("cifar10-cat", "fmnist-sneaker", "springer-in-dog")
#: The class name each scenario's subgroup has in the other scenarios' label spaces.
SUBGROUP_CLASS = {"cifar10-cat": "cat", "fmnist-sneaker": "sneaker", "springer-in-dog": "English springer"}


def run_sequence(out: Path, scenarios, method: str, seed: int) -> list[tuple[str, str]]:
    """Run the requests in order; returns ``(step name, model id)`` for the original and each step."""
    models, model_id = [("original", "testbed")], "testbed"
    for k, scenario in enumerate(scenarios, 1):
        run = out / f"{k}-{scenario}"
        if not finished(run):
            run_forget(model_id, scenario, run, method=method, seed=seed)
        model_id = f"testbed@{run / 'model'}"
        models.append((f"after {k} ({scenario})", model_id))
    together = out / "together"
    if not finished(together):
        run_forget_together("testbed", list(scenarios), together, method=method, seed=seed)
    models.append(("all at once", f"testbed@{together / 'model'}"))
    return models


def others_accuracy(metrics, images, skip: set[str]) -> dict[str, float]:
    """Retain and each held-out set's top-1 over the images whose class is not in ``skip``."""
    sets = {"retain": images.retain, **{f"heldout/{k}": v for k, v in images.heldout.items()}}
    out = {}
    for name, data in sets.items():
        predicted = torch.tensor(metrics.details[name]["predicted"])
        keep = torch.tensor([data.classnames[int(y)] not in skip for y in data.labels])
        out[name.removeprefix("heldout/")] = float(100 * (predicted[keep] == data.labels[keep]).float().mean())
    return out


def score_all(models, scenarios, seed: int) -> dict:
    """Every model on every scenario: Target, worst prompt, Retain and held-out accuracy."""
    names_only = AuditConfig(parts=("names",))
    original = load_model("testbed").eval()
    table: dict = {}
    for scenario in scenarios:
        config = load_scenario_config(scenario)
        splits = build_scenario(config)
        images = load_scenario_images(splits, open_sources(config), original.preprocess)
        for step, model_id in models:
            model = original if model_id == "testbed" else load_model(model_id).eval()
            metrics = evaluate_scenario(model, splits, images)
            names = run_audit(original, model, splits, images, names_only, seed=seed, tuned=()).parts["names"]
            skip = {SUBGROUP_CLASS[s] for s in scenarios if s != scenario}
            table.setdefault(step, {})[scenario] = {
                "target": metrics.target, "target_worst": names["target_worst"]["unlearned"],
                "retain": metrics.retain, "heldout": dict(metrics.heldout),
                "others": others_accuracy(metrics, images, skip)}
            logging.info("%s on %s: Target %.1f, worst prompt %.1f, Retain %.1f", step, scenario, metrics.target,
                         names["target_worst"]["unlearned"], metrics.retain)
    return table


def markdown(table: dict, scenarios) -> str:
    head = ["model", *(f"{s}: Target / worst / Retain" for s in scenarios), "held-out sets (mean over scenarios' sets)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step, per in table.items():
        cells = [f"{per[s]['target']:.1f} / {per[s]['target_worst']:.1f} / {per[s]['retain']:.1f}" for s in scenarios]
        held = [v for s in scenarios for v in per[s]["heldout"].values()]
        lines.append("| " + " | ".join([step, *cells, f"{sum(held) / len(held):.1f}"]) + " |")
    detail = ["", "| model | " + " | ".join(f"{s}: {h}" for s in scenarios for h in table["original"][s]["heldout"]) + " |",
              "|" + "---|" * (1 + sum(len(table["original"][s]["heldout"]) for s in scenarios))]
    for step, per in table.items():
        detail.append("| " + " | ".join([step, *(f"{v:.1f}" for s in scenarios for v in per[s]["heldout"].values())]) + " |")
    others = ["", "Leaving out the other requests' subgroups (" + ", ".join(SUBGROUP_CLASS[s] for s in scenarios) + "):", "",
              "| model | " + " | ".join(f"{s}: {h}" for s in scenarios for h in table["original"][s]["others"]) + " |",
              "|" + "---|" * (1 + sum(len(table["original"][s]["others"]) for s in scenarios))]
    for step, per in table.items():
        others.append("| " + " | ".join([step, *(f"{v:.1f}" for s in scenarios for v in per[s]["others"].values())]) + " |")
    return "\n".join(lines + detail + others) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--method", default="ours")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenarios", nargs=3, default=list(SCENARIOS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    models = run_sequence(args.out, args.scenarios, args.method, args.seed)
    table = score_all(models, args.scenarios, args.seed)
    atomic_write_json(args.out / "sequence.json", {"method": args.method, "seed": args.seed, "models": models, "table": table})
    print(markdown(table, args.scenarios))


if __name__ == "__main__":
    main()
