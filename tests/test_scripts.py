"""The benchmark scripts run: the GPU check at toy sizes on the CPU (what a lent GPU will run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def scripts_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    yield
    for name in ("gpu_check", "bench_speed", "bench_memory"):
        sys.modules.pop(name, None)


def test_the_gpu_check_runs_at_toy_sizes_on_the_cpu(scripts_on_path, tmp_path):
    from tiny import register_tiny_openclip

    import gpu_check

    (tmp_path / "cfg").mkdir()
    register_tiny_openclip(tmp_path / "cfg")
    gpu_check.main(["--device", "cpu", "--quick", "--archs", "tiny-ViT", "--run-arch", "tiny-ViT", "--image-size", "32", "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    (row,) = result["throughput"]
    assert row["arch"] == "tiny-ViT" and all(row[k] > 0 for k in ("forward_fp32", "forward_bf16", "forward_backward_bf16"))
    (run,) = result["runs"]
    assert run["precision"] == "fp32" and run["heldout"] == "streamed" and 0 <= run["target"] <= 100
    assert "| tiny-ViT |" in (tmp_path / "out" / "gpu_check.md").read_text()
