"""Re-score a finished run's stored stages along the souping path: Target, Retain and every held-out set.

    python scripts/alpha_path.py RUN_DIR SCENARIO ALPHAS [STAGES] [--model MODEL]

ALPHAS is a comma-separated list (0: the original, 1: the stage's weights); STAGES a comma-separated
list of stage names whose ``stages/<name>.safetensors`` to interpolate toward (default: remind). It
sees what the restore stage cannot: the held-out sets at every alpha.
"""

from __future__ import annotations

import argparse

from safetensors.torch import load_file

from clipforget.evaluation import evaluate_scenario
from clipforget.methods.core import clone_model
from clipforget.methods.souping import interpolate
from clipforget.app.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("scenario")
    parser.add_argument("alphas", help="e.g. 0.1,0.5,1.0")
    parser.add_argument("stages", nargs="?", default="remind", help="e.g. forget,remind (default: remind)")
    parser.add_argument("--model", default="testbed", help="the run's original model (default: testbed)")
    args = parser.parse_args()
    prepared = prepare(args.model, args.scenario)
    view = prepared.training_view(prepared.model.default_image_prefix)
    original = {k: v.clone() for k, v in view.model.weights().items()}
    model = clone_model(view.model)
    o = prepared.original_metrics
    print(f"original: Target {o.target:.1f} Retain {o.retain:.1f}", {k: round(v, 1) for k, v in o.heldout.items()})
    for stage in args.stages.split(","):
        unlearned = {**original, **load_file(f"{args.run}/stages/{stage}.safetensors")}
        for alpha in (float(a) for a in args.alphas.split(",")):
            model.load_weights(interpolate(original, unlearned, alpha))
            m = evaluate_scenario(model, prepared.splits, view.images)
            print(f"{stage} alpha {alpha:.2f}: Target {m.target:.1f} Retain {m.retain:.1f}", {k: round(v, 1) for k, v in m.heldout.items()})


if __name__ == "__main__":
    main()
