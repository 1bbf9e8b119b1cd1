"""A request mined from a description against the hand-built scenario, on the testbed: mining figures, then
``ours`` run on each, both unlearned models scored and audited on the hand-built scenario's test images.

    python scripts/mined_vs_handbuilt.py OUT [--seed 0]

Two requests: English springers among CIFAR-10 and Imagenette photos (label ``dog``, the query rule;
pool from ``scripts/springer_pool.py --exclude-clean --cifar-split train``, so no image the hand-built
springer-in-dog scores is in it) and sneakers among Fashion-MNIST training images (label ``sneaker``,
the label rule: the subgroup is its whole class; pool from ``scripts/sneaker_pool.py``). Every step
whose output exists is kept. Prints a Markdown table and writes ``OUT/comparison.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from clipforget.app import api
from clipforget.audit import audit_summary
from clipforget.app.bench_tables import finished
from clipforget.io import atomic_write_json
from clipforget.app.runner import run_forget

HERE = Path(__file__).parent
REQUESTS = {
    "springer-in-dog": {
        "pool": ("springer_pool.py", ["--exclude-clean", "--cifar-split", "train"], "springer-clean-pool.csv"),
        "query": "photos of English springer spaniels", "label": "dog", "truth": "English springer",
        "aliases": ["English springer", "English springer spaniel", "springer spaniel"],
        "classnames": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        "mined": "springer", "config": None},
    "fmnist-sneaker": {
        "pool": ("sneaker_pool.py", [], "sneaker-pool/pool.csv"),
        "query": "photos of sneakers", "label": "sneaker", "truth": "sneaker",
        "aliases": ["sneakers", "running shoe", "athletic shoe", "trainer"],
        "classnames": ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"],
        "mined": "sneaker-label", "config": {"forget_rule": "label"}},
}


def run_request(out: Path, scenario: str, r: dict, seed: int) -> dict:
    script, args, pool = r["pool"]
    pool = out / pool
    if not pool.exists():
        target = pool.parent if script == "sneaker_pool.py" else pool
        subprocess.run([sys.executable, str(HERE / script), str(target), *args], check=True)
    mined_yaml = out / f"{r['mined']}.yaml"
    if not mined_yaml.exists():
        api.mine("testbed", pool, r["query"], r["label"], out=mined_yaml, aliases=r["aliases"], classnames=r["classnames"],
                 truth=r["truth"], config=r["config"], seed=seed)
    mining = json.loads(mined_yaml.with_suffix(".mining.json").read_text())
    stem = r["mined"].split("-")[0]
    runs = {"mined": out / f"{stem}-run", "hand-built": out / f"{stem}-handbuilt"}
    for kind, run in runs.items():
        if not finished(run):
            run_forget("testbed", mined_yaml if kind == "mined" else scenario, run, seed=seed)
    hand = runs["hand-built"]
    original = json.loads((hand / "metrics.json").read_text())["original"]
    rows = {"original": {"metrics": {k: original[k] for k in ("target", "retain", "heldout")},
                         "audit": {k: {"unlearned": v["original"]} if isinstance(v, dict) and "original" in v else v
                                   for k, v in audit_summary(json.loads((hand / "audit.json").read_text())).items()}}}
    for kind, run in runs.items():
        if kind == "hand-built":
            metrics = json.loads((run / "metrics.json").read_text())["unlearned"]
            audit = json.loads((run / "audit.json").read_text())
        else:
            scored = out / f"{stem}-run-on-handbuilt.json"
            if not scored.exists():
                scored.write_text(json.dumps(api.evaluate(f"testbed@{run / 'model'}", scenario).to_dict()))
            metrics = json.loads(scored.read_text())
            audit_dir = out / f"{stem}-run-audit"
            if not (audit_dir / "audit.json").exists():
                api.audit(f"testbed@{run / 'model'}", "testbed", scenario, out=audit_dir, seed=seed)
            audit = json.loads((audit_dir / "audit.json").read_text())
        rows[kind] = {"metrics": {k: metrics[k] for k in ("target", "retain", "heldout")}, "audit": audit_summary(audit)}
    return {"mining": mining["comparison"], "sets": {k: mining[k] for k in ("forget", "retain", "calibration")},
            "runs": rows}


def markdown(result: dict) -> str:
    lines = ["| scenario | sets | forget set: mined, precision, recall | subgroup leaked into retain / calibration | "
             "Target | worst prompt | search (chance) | relearn @10 | Retain | held out |", "|" + "---|" * 10]
    for scenario, r in result.items():
        c = r["mining"]
        for kind, row in r["runs"].items():
            m, a = row["metrics"], row["audit"]
            mined = f"{c['mined']}, {c['precision']:.1f}, {c['recall']:.1f}" if kind == "mined" else "–"
            leaked = f"{c['leaked_retain']:.1f} / {c['leaked_calibration']:.1f}" if kind == "mined" else "–"
            held = ", ".join(f"{k} {m['heldout'][k]:.1f}" for k in sorted(m["heldout"]))
            lines.append(f"| {scenario} | {kind} | {mined} | {leaked} | {m['target']:.1f} | "
                         f"{a['target_worst']['unlearned']:.1f} | {a['search_share']['unlearned']:.1f} "
                         f"({a['search_chance']:.1f}) | {a['relearn']['unlearned']:.1f} | {m['retain']:.1f} | {held} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {scenario: run_request(args.out, scenario, r, args.seed) for scenario, r in REQUESTS.items()}
    atomic_write_json(args.out / "comparison.json", result)
    print(markdown(result))


if __name__ == "__main__":
    main()
