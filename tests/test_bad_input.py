"""The matrix of bad and stateful inputs, through the real command line.

Every row: the command (after an optional setup of files), the exit code, a fragment of the message,
and that every file present before the command is byte-identical after it (inputs and, for a refused
command, everything). A refused command logs exactly one line (exit 2) and shows no traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from bad_input_cases import (
    Row,
    bench_dir,
    bench_list_variant,
    bench_user_folder,
    changed_seed,
    changed_weights,
    checkpoint_inside_out,
    config_file,
    corrupt_ckpt,
    corrupt_image,
    damaged_stage_file,
    damaged_stage_json,
    deleted_stage_file,
    edited_scenario,
    eval_command,
    failed_then_corrected,
    file_as_out,
    folder_inside_out,
    forget_argv,
    forget_with,
    pickle_with_objects,
    questionable,
    read_only,
    rerun_finished,
    restart_run,
    scenario_field,
    scenario_text,
    snapshot,
    stale_unfinished,
    symlink_into_checkpoint,
    under_a_file,
    user_folder,
    wrong_arch,
    wrong_arch_folder,
)
from bad_input_cases import world as world  # noqa: F401 - the shared fixture

from clipforget.app.cli import main

GPU = torch.cuda.is_available()
CASES: dict[str, tuple[Callable[[Row], list[str]], int, str]] = {
    # -- models -----------------------------------------------------------------------------------------
    "unknown backend": (forget_with(model="nope:x"), 2, "unknown model backend 'nope'"),
    "empty model id": (forget_with(model=" "), 2, "model id is empty"),
    "missing hf folder": (forget_with(model="hf:/does/not/exist"), 2, "'/does/not/exist' does not exist"),
    "missing checkpoint file": (forget_with(model="openclip:tiny-RN@{tmp}/missing.safetensors"), 2, "does not exist"),
    "unknown open_clip architecture": (forget_with(model="openclip:NoSuchNet"), 2, "unknown open_clip architecture 'NoSuchNet'"),
    "local-dir without config": (lambda r: r.forget(model=f"openclip:local-dir:{r.write('empty/x.txt', '').parent}"), 2,
                                 "holds no open_clip_config.json"),
    "testbed with another name": (forget_with(model="testbed:other"), 2, "the testbed backend has one model"),
    "corrupt safetensors": (corrupt_ckpt, 2, "is damaged (truncated or not a safetensors file"),
    "garbage .pt checkpoint": (lambda r: r.forget(model=f"openclip:tiny-RN@{r.write('w.pt', b'garbage')}"), 2,
                               "is damaged or not a PyTorch checkpoint"),
    "pickle with objects": (pickle_with_objects, 2, "convert it to safetensors"),
    "wrong architecture file": (wrong_arch, 2, "does not fit the open_clip architecture tiny-ViT: it looks like an open_clip "
                                               "model (ResNet image tower"),
    "wrong architecture folder": (wrong_arch_folder, 2, "like open_clip tiny-RN"),
    "unknown pretrained tag": (forget_with(model="openclip:tiny-RN@nosuchtag"), 2, "nosuchtag"),
    "pretrained tag offline": (forget_with(model="openclip:RN50@openai"), 2, "could not be downloaded"),
    "hub id offline": (forget_with(model="hf:nosuch-org/nosuch-clip"), 2, "could not be downloaded"),
    # -- devices ----------------------------------------------------------------------------------------
    "unknown device": (forget_with("--device", "gpu0"), 2, "unknown device 'gpu0'"),
    "cuda without a GPU": (forget_with("--device", "cuda"), 0 if GPU else 2, "" if GPU else "torch sees no CUDA GPU"),
    "cuda index out of range": (forget_with("--device", "cuda:99"), 2, "sees" if GPU else "torch sees no CUDA GPU"),
    # -- scenarios --------------------------------------------------------------------------------------
    "unknown scenario": (forget_with(scenario=Path("no-such-scenario")), 2, "neither a file nor a bundled scenario"),
    "scenario not YAML": (scenario_text("a: [1,\n"), 2, "not valid YAML"),
    "scenario duplicate key": (scenario_text("name: a\nseed: 0\nname: b\n"), 2, "line 3: duplicate key 'name'"),
    "unknown class": (scenario_field("forget.select.classes", ["wolf"]), 2, "'wolf' is not a class of source 'pets'"),
    "overlapping sets": (scenario_field("retain.0.select.subgroups", ["springer", "poodle"]), 2, "(overlapping sets)"),
    "empty set": (scenario_field("forget.train.count", 0), 2, "an empty set"),
    "too-large count": (scenario_field("forget.train.count", 9), 2, "asks for 9 images but only 8 are available"),
    "unknown source kind": (scenario_field("sources.fruit.kind", "webdataset"), 2, "'webdataset' is unknown"),
    "template without {}": (scenario_field("templates", ["a photo of a dog"]), 2, "has no '{}'"),
    "duplicate class names": (scenario_field("classnames", ["dog", "cat", "dog"]), 2, "names a class twice"),
    "unknown scenario field": (scenario_field("forget.labels", "dog"), 2, "unknown field(s) ['labels']"),
    "missing image folder": (scenario_field("sources.fruit.root", "/no/such/fruit"), 2, "/no/such/fruit does not exist"),
    "corrupt image": (corrupt_image, 2, "does not skip unreadable images"),
    # -- methods and configs ----------------------------------------------------------------------------
    "unknown method": (forget_with("--method", "nope"), 2, "unknown method 'nope'"),
    "unknown config section": (forget_with("nope.x=1"), 2, "'nope' is not a config section"),
    "unknown config field": (forget_with("forget.nope=1"), 2, "unknown field 'nope'"),
    "override without =": (forget_with("forget.train.lr"), 2, "is not of the form section.field=value"),
    "range error names the path": (forget_with("adapter.rank=0"), 2, "adapter.rank must be >= 1"),
    "which lr": (forget_with("distill.train.lr=0"), 2, "distill.train.lr must be > 0"),
    "bad type": (forget_with("use_lora=3"), 2, "use_lora: expected true or false"),
    "grid out of range": (forget_with("restore.grid=[2.0]"), 2, "restore.grid must be"),
    "missing config file": (lambda r: r.forget("--config", str(r.tmp / "none.yaml")), 2, "none.yaml' does not exist"),
    "config duplicate key": (config_file("use_lora: true\nuse_lora: false\n"), 2, "line 2: duplicate key 'use_lora'"),
    "config range error": (config_file("forget:\n  train:\n    lr: -1e-3\n"), 2, "c.yaml: forget.train.lr must be > 0, got -0.001"),
    "config not YAML": (config_file("forget: [\n"), 2, "not valid YAML"),
    "unknown image prefix": (forget_with("--image-prefix", "visual.nope"), 2, "unknown image stage 'visual.nope'"),
    "NaN loss": (forget_with("forget.train.lr=1e9", "forget.train.grad_clip=null"), 2, "lower the learning rate"),
    "bench malformed variant": (lambda r: ["bench", "--model", "nope:x", "--scenarios", "x", "--methods", "ours[a=1",
                                           "--out", str(r.tmp / "b")], 2, "name[field=value"),
    "bench unknown method": (lambda r: ["bench", "--model", "nope:x", "--scenarios", "x", "--methods", "nope",
                                        "--out", str(r.tmp / "b")], 2, "unknown method 'nope'"),
    "bench list variant": (bench_list_variant, 2, "'remind' is not a config section"),
    # -- output paths -----------------------------------------------------------------------------------
    "out is the user's folder": (user_folder, 2, "already holds files that clipforget did not write (model/, report.md)"),
    "out is a file": (file_as_out, 2, "is a file"),
    "out under a file": (under_a_file, 2, "which is a file"),
    "out inside the checkpoint": (lambda r: r.forget(out=r.world.ckpt / "run"), 2, "inside the input checkpoint"),
    "out inside the checkpoint by a symlink": (symlink_into_checkpoint, 2, "inside the input checkpoint"),
    "checkpoint inside out": (checkpoint_inside_out, 2, "lies inside --out"),
    "hf folder inside out": (folder_inside_out("hf:{}"), 2, "lies inside --out"),
    "testbed folder inside out": (folder_inside_out("testbed@{}"), 2, "lies inside --out"),
    "weights file inside out": (lambda r: r.forget(model=f"openclip:tiny-RN@{r.write('w.safetensors', b'')}", out=r.tmp),
                                2, "lies inside --out"),
    "out is a bench directory": (bench_dir, 2, "is a clipforget bench directory"),
    "bench out is the user's folder": (bench_user_folder, 2, "did not write (table.md)"),
    "eval out is a directory": (eval_command("nope:x", "adir"), 2, "is a directory"),
    "eval out under a file": (eval_command("nope:x", "taken/m.json"), 2, "which is a file"),
    "eval out is fine": (eval_command(), 0, ""),
    "audit out is a file": (lambda r: ["audit", "--model", "nope:x", "--original", "nope:y", "--scenario",
                                       str(r.world.scenario), "--out", str(r.write("taken", "mine"))], 2, "is a file"),
    # -- resume -----------------------------------------------------------------------------------------
    "edited scenario at the same path": (edited_scenario, 2, "differs in the scenario"),
    "changed weights at the same path": (changed_weights, 2, "differs in the model's weights"),
    "another seed": (changed_seed, 2, "the run config (seed: 0 -> 1)"),
    "deleted stage tensor file": (deleted_stage_file, 2, "forget.safetensors is missing"),
    "damaged stage tensor file": (damaged_stage_file, 2, "remind.safetensors is damaged or changed"),
    "damaged stage json": (damaged_stage_json, 2, "select.json is damaged"),
    "restart": (restart_run, 0, ""),
    "rerun a finished run": (rerun_finished, 0, ""),
    "failed run, corrected command": (failed_then_corrected, 0, ""),
    "stale run that finished nothing": (stale_unfinished, 0, ""),
    # -- questionable results ---------------------------------------------------------------------------
    "result is the original": (questionable(), 0, ""),
    "result is the original, strict": (questionable("--strict"), 3, ""),
    "zero training budgets, strict": (forget_with("forget.train.steps=0", "align.train.steps=0", "distill.train.steps=0",
                                            "--strict"), 3, ""),
    "out is read-only": (read_only, 2, "permission denied"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_matrix(world, case, tmp_path, caplog, capsys):
    command, code, fragment = CASES[case]
    row = Row(world, tmp_path)
    argv = command(row)
    before = snapshot(world.root, tmp_path)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(argv) == code, caplog.text[-3000:]
    after = snapshot(world.root, tmp_path)
    inputs = {p: h for p, h in before.items() if p.is_relative_to(world.root)}
    assert {p: after.get(p) for p in inputs} == inputs, "an input changed"
    if code == 2:
        assert {p: after.get(p) for p in before} == before, "a refused command changed a file"
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "\n" not in errors[0].getMessage(), [r.getMessage() for r in errors]
        assert fragment in errors[0].getMessage()
        assert "weights_only=False" not in errors[0].getMessage(), "never advise unpickling untrusted files"
        assert "Traceback" not in capsys.readouterr().err
    else:
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    CHECKS.get(case, lambda row: None)(row)


def _check_user_files_kept(row: Row) -> None:
    assert (row.out / "notes.txt").read_text() == "mine", "--restart removes only what a run writes"
    assert json.loads((row.out / "run.json").read_text())["seed"] == 1


def _check_rerun(row: Row) -> None:
    events = [json.loads(line)["stage"] for line in (row.out / "events.jsonl").read_text().splitlines()]
    assert events == ["select", "forget", "remind", "restore"], "no duplicate events"
    assert (json.loads((row.out / "metrics.json").read_text())
            == json.loads((row.world.finished / "metrics.json").read_text()))


def _check_questionable(row: Row) -> None:
    metrics = json.loads((row.out / "metrics.json").read_text())
    assert any("the result is the original model" in w for w in metrics["warnings"])
    assert "Warning: a questionable result" in (row.out / "report.md").read_text()


CHECKS: dict[str, Callable[[Row], None]] = {
    "restart": _check_user_files_kept,
    "rerun a finished run": _check_rerun,
    "result is the original": _check_questionable,
    "result is the original, strict": _check_questionable,
    "zero training budgets, strict": _check_questionable,
    "failed run, corrected command": lambda row: _assert(json.loads((row.out / "run.json").read_text())["status"] == "finished"),
    "eval out is fine": lambda row: _assert(json.loads((row.tmp / "m.json").read_text())["target"] >= 0),
}


def _assert(condition: bool) -> None:
    assert condition


def test_an_unanticipated_error_shows_its_traceback_with_the_version_and_run_dir(world, tmp_path, caplog, monkeypatch):
    import clipforget.app.api

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(clipforget.app.api, "forget", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(forget_argv(world, tmp_path / "run"))
    assert f"clipforget {clipforget.__version__} failed unexpectedly (run directory {tmp_path / 'run'})" in caplog.text


def test_a_choice_that_met_no_forget_target_is_flagged(tiny_models):
    from clipforget.app.checks import result_warnings
    from clipforget.methods.core import clone_model

    changed = clone_model(tiny_models)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    infeasible = {"restore": {"choice": {"alpha": 1.0, "utility": 0.9, "forget_acc": 0.5}}}
    (warning,) = result_warnings(tiny_models, changed, infeasible)
    assert "stage restore: no candidate reached the forget target" in warning
    assert result_warnings(tiny_models, changed, {"restore": {"choice": {"alpha": 1.0, "forget_acc": 0.0}}}) == []
    (same,) = result_warnings(tiny_models, clone_model(tiny_models), {"restore": {"choice": {"alpha": 0.0, "forget_acc": 0.0}}})
    assert "the result is the original model" in same and "alpha = 0" in same
