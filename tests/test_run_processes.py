"""Real processes on one run directory: a second run is refused while the first holds it, and a run
killed (SIGKILL) during any stage resumes to the same metrics and weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bad_input_cases import World, forget_argv, snapshot
from bad_input_cases import world as world  # noqa: F401 - the shared fixture
from safetensors.torch import load_file

from clipforget.app.cli import main

SRC = Path(__file__).resolve().parent.parent / "src"

# Runs the real CLI with one hook around the method's stage `stage` (or the report): "kill" SIGKILLs the
# process once the stage's work is done but before it is saved; "wait" signals that it is inside the
# stage (holding the directory's lock) and waits for a go-ahead file.
DRIVER = r"""
import os, signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
mode, stage, ready, go, *argv = sys.argv[1:]
import clipforget.methods.ours as ours
import clipforget.app.runoutputs as pipeline
real_stage, real_report = ours.run_stage, pipeline.write_report

def hook():
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.05)

def run_stage(store, name, model, fn):
    if name != stage:
        return real_stage(store, name, model, fn)
    def hooked():
        out = fn()
        hook()
        return out
    return real_stage(store, name, model, hooked)

def write_report(run_dir):
    if stage == "report":
        hook()
    return real_report(run_dir)

ours.run_stage, pipeline.write_report = run_stage, write_report
from clipforget.app.cli import main
sys.exit(main(argv))
"""


def _start(tmp: Path, mode: str, stage: str, argv: list[str]) -> subprocess.Popen:
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(driver), mode, stage, str(tmp / "ready"), str(tmp / "go"), *argv],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _same_result(run: Path, reference: Path) -> None:
    assert json.loads((run / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    a, b = (load_file(d / "model" / "open_clip_model.safetensors") for d in (run, reference))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the weights differ"
    events = [json.loads(line)["stage"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert events == ["select", "forget", "remind", "restore"]


def test_a_second_process_on_the_same_out_is_refused_and_nothing_is_corrupted(world: World, tmp_path, caplog):
    out = tmp_path / "run"
    first = _start(tmp_path, "wait", "forget", forget_argv(world, out))
    try:
        deadline = time.time() + 300
        while not (tmp_path / "ready").exists():
            assert first.poll() is None, first.stdout.read()
            assert time.time() < deadline, "the first run never reached its forget stage"
            time.sleep(0.1)
        before = snapshot(out)
        for extra in ([], ["--seed", "1"], ["--restart"]):
            caplog.clear()
            assert main(forget_argv(world, out, *extra)) == 2
            assert "is in use by another clipforget process" in caplog.text
            assert snapshot(out) == before, "the refused run changed a file"
    finally:
        (tmp_path / "go").touch()
        output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output
    _same_result(out, world.finished)


def _kill_and_resume(world: World, tmp_path: Path, stage: str) -> None:
    out = tmp_path / "run"
    killed = _start(tmp_path, "kill", stage, forget_argv(world, out))
    output, _ = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, output
    assert not (out / "stages" / f"{stage}.json").exists() and json.loads((out / "run.json").read_text())["status"] == "running"
    assert main(forget_argv(world, out)) == 0, "the same command resumes the killed run"
    _same_result(out, world.finished)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and stage not in info["resumed_stages"]


def test_a_run_killed_during_a_stage_resumes_bit_for_bit(world: World, tmp_path):
    _kill_and_resume(world, tmp_path, "forget")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["select", "remind", "restore", "report"])
def test_a_run_killed_during_any_stage_resumes_bit_for_bit(world: World, tmp_path, stage):
    _kill_and_resume(world, tmp_path, stage)
