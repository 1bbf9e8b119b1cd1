"""One evaluation, one forget run and one bench on a tiny model: run alone, or under ``accelerate launch``.

    python tests/parallel_job.py MODEL_ID SCENARIO CONFIG OUT   (writes OUT/result.json from the main process)
"""

import json
import sys
from pathlib import Path

from clipforget import parallel
from clipforget.app import api
from clipforget.app.bench import run_bench
from clipforget.app.bench_tables import collect
from clipforget.app.cli import configure_logging
from clipforget.data import Streaming
from clipforget.app.runner import run_forget


def main() -> None:
    model_id, scenario, config, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    configure_logging()
    metrics = api.evaluate(model_id, scenario)
    streamed = api.evaluate(model_id, scenario, streaming=Streaming(above_mib=0, workers=1))  # held-out sets from disk
    forget = run_forget(model_id, scenario, out / "forget", method="ours-paper", config=config, seed=0, audit=False)
    run_bench(model_id, [scenario], methods=["ga", "ours", "rl"], seeds=[0, 1], out=out / "bench", save_models="none",
              audit=False, configs={"ours-paper": config})
    if parallel.is_main():
        rows = {(r["method"], r["seed"]): r["score"] for r in collect(out / "bench")}
        (out / "result.json").write_text(json.dumps({
            "processes": parallel.world_size(), "eval": metrics.to_dict(), "eval_streamed": streamed.to_dict(),
            "forget": {"target": forget.unlearned.target, "retain": forget.unlearned.retain,
                       "heldout": dict(forget.unlearned.heldout), "score": forget.score},
            "bench": {f"{m}/{s}": v for (m, s), v in sorted(rows.items())},
            "cells": sorted(r["cell"] for r in collect(out / "bench"))}))


if __name__ == "__main__":
    main()
