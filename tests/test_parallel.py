"""Two processes (torchrun, accelerate's PartialState over gloo) against one: the same figures, one run directory, one bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic import build_tiny_scenario

from clipforget.methods import get_method
from clipforget.models import load_model

pytest.importorskip("accelerate")
JOB = Path(__file__).with_name("parallel_job.py")


def _run(args: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(JOB.parent), *sys.path])}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict, Path]:
    from tiny import register_tiny_openclip

    root = tmp_path_factory.mktemp("parallel")
    register_tiny_openclip(root)
    torch.manual_seed(0)
    load_model("openclip:tiny-RN").save(root / "base")
    model_id, scenario = f"openclip:local-dir:{root / 'base'}", str(build_tiny_scenario(root / "data"))
    config = root / "smoke.yaml"
    config.write_text(get_method("ours-paper").smoke_config().to_yaml())
    job = [str(JOB), model_id, scenario, str(config)]
    one = _run([sys.executable, *job, str(root / "one")], root / "one")
    # torchrun starts the processes (accelerate launch --cpu starts several only through mpirun); accelerate's
    # PartialState joins them over gloo
    two = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", *job,
                str(root / "two")], root / "two")
    return one, two, root


def test_two_processes_give_the_single_process_figures(runs):
    one, two, root = runs
    assert (one["processes"], two["processes"]) == (1, 2)
    for key in ("target", "retain"):  # evaluation: each process scores half the images, the rows gathered in order
        assert two["eval"][key] == pytest.approx(one["eval"][key], abs=1e-6)
    assert two["eval"]["details"]["retain"]["predicted"] == one["eval"]["details"]["retain"]["predicted"]
    for run in (one, two):  # a streamed held-out set: each process reads its share of the files
        assert run["eval_streamed"]["details"] == run["eval"]["details"] and run["eval"]["heldout"]
    # the paper's forget run: Fisher over half the samples each, each batch split, gradients averaged
    fisher = [json.loads((root / run / "forget" / "fisher.json").read_text()) for run in ("one", "two")]
    for part in ("forget", "retain"):
        assert fisher[1][part] == pytest.approx(fisher[0][part], rel=1e-5)
    base = load_model(f"openclip:local-dir:{root / 'base'}").model.state_dict()
    for stage in ("forget", "remind"):  # the tuned weights after each training stage
        one_w, two_w = (load_file(root / run / "forget" / "stages" / f"{stage}.safetensors") for run in ("one", "two"))
        assert set(one_w) == set(two_w) and one_w
        moved = max(float((one_w[k] - base[k]).abs().max()) for k in one_w)
        apart = max(float((one_w[k] - two_w[k]).abs().max()) for k in one_w)
        assert moved > 1e-3 and apart < 0.05 * moved, (stage, moved, apart)  # the same training (Adam amplifies rounding)
    for key in ("target", "retain", "score"):
        assert two["forget"][key] == pytest.approx(one["forget"][key], abs=1e-6)


def test_a_launch_writes_one_run_directory_and_shards_the_bench(runs):
    one, two, root = runs
    assert (root / "two" / "forget" / "metrics.json").is_file()
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("clipforget-rank1-*"))  # the scratch folder is gone
    assert two["cells"] == one["cells"] and len(two["cells"]) == 6  # every cell once
    assert two["bench"] == pytest.approx(one["bench"], abs=1e-6)  # each cell alone: exactly the single-process figures
    assert (root / "two" / "bench" / "table.md").read_text().count("\n") == (root / "one" / "bench" / "table.md").read_text().count("\n")
