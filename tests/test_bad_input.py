"""The matrix of bad and stateful inputs, through the real command line.

Every row: the command (after an optional setup of files), the exit code, a fragment of the message,
and that every file present before the command is byte-identical after it (inputs and, for a refused
command, everything). A refused command logs exactly one line (exit 2) and shows no traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from synthetic import build_tiny_scenario

from clipforget.app.cli import main
from clipforget.methods import get_method
from clipforget.models import load_model

SMOKE = get_method("ours-paper").smoke_config()  # every stage runs: select, forget, remind, restore


@dataclass
class World:
    """Inputs shared by every row (never changed by one): a scenario, a checkpoint, a config, a finished run."""

    root: Path
    scenario: Path
    ckpt: Path
    smoke: Path
    finished: Path

    @property
    def model(self) -> str:
        return f"openclip:local-dir:{self.ckpt}"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from tiny import register_tiny_openclip

    root = tmp_path_factory.mktemp("world")
    register_tiny_openclip(root)
    torch.manual_seed(0)
    load_model("openclip:tiny-RN").save(root / "ckpt")
    smoke = root / "smoke.yaml"
    smoke.write_text(SMOKE.to_yaml())
    w = World(root, build_tiny_scenario(root / "scenario"), root / "ckpt", smoke, root / "finished")
    assert main(forget_argv(w, w.finished)) == 0
    return w


def forget_argv(w: World, out: Path, *extra: str, model: str | None = None, scenario: Path | None = None) -> list[str]:
    return ["forget", "--model", model or w.model, "--scenario", str(scenario or w.scenario), "--config", str(w.smoke),
            "--no-audit", "--out", str(out), *extra]


@dataclass
class Row:
    world: World
    tmp: Path

    @property
    def out(self) -> Path:
        return self.tmp / "run"

    def forget(self, *extra: str, **kw) -> list[str]:
        return forget_argv(self.world, kw.pop("out", self.out), *extra, **kw)

    def finished_copy(self) -> Path:
        shutil.copytree(self.world.finished, self.out)
        return self.out

    def scenario_with(self, path: str, value) -> Path:
        """A copy of the world's scenario with one field set (dotted path; list items by index)."""
        data = yaml.safe_load(self.world.scenario.read_text())
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(last) if isinstance(node, list) else last] = value
        out = self.tmp / "scenario.yaml"
        out.write_text(yaml.safe_dump(data, sort_keys=False))
        return out

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def own_checkpoint(self) -> str:
        """A copy of the world's checkpoint in this row (a row may change it)."""
        shutil.copytree(self.world.ckpt, self.tmp / "ckpt")
        return f"openclip:local-dir:{self.tmp / 'ckpt'}"


def _corrupt_ckpt(r: Row) -> list[str]:
    model = r.own_checkpoint()
    weights = r.tmp / "ckpt" / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    return r.forget(model=model)


def _pickle_with_objects(r: Row) -> list[str]:
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, r.tmp / "w.pt")
    return r.forget(model=f"openclip:tiny-RN@{r.tmp / 'w.pt'}")


def _wrong_arch(r: Row) -> list[str]:
    return r.forget(model=f"openclip:tiny-ViT@{r.world.ckpt / 'open_clip_model.safetensors'}")


def _wrong_arch_folder(r: Row) -> list[str]:
    r.own_checkpoint()
    cfg = json.loads((r.tmp / "ckpt" / "open_clip_config.json").read_text())
    from tiny import TINY_CONFIGS

    cfg["model_cfg"] = TINY_CONFIGS["tiny-ViT"]
    (r.tmp / "ckpt" / "open_clip_config.json").write_text(json.dumps(cfg))
    return r.forget(model=f"openclip:local-dir:{r.tmp / 'ckpt'}")


def _corrupt_image(r: Row) -> list[str]:
    scenario = build_tiny_scenario(r.tmp / "sc")
    (r.tmp / "sc" / "pets" / "images" / "springer" / "train_000.png").write_bytes(b"not a png")
    return r.forget(scenario=scenario)


def _user_folder(r: Row) -> list[str]:
    r.write("run/report.md", "my notes")
    r.write("run/model/weights.bin", b"\x00\x01")
    return r.forget()


def _symlink_into_checkpoint(r: Row) -> list[str]:
    (r.tmp / "link").symlink_to(r.world.ckpt)
    return r.forget(out=r.tmp / "link" / "run")


def _checkpoint_inside_out(r: Row) -> list[str]:
    model = r.own_checkpoint()
    return r.forget(model=model, out=r.tmp)


def _folder_inside_out(backend: str) -> Callable[[Row], list[str]]:
    def argv(r: Row) -> list[str]:
        (r.tmp / "ckpt").mkdir()
        return r.forget(model=backend.format(r.tmp / "ckpt"), out=r.tmp)

    return argv


def _edited_scenario(r: Row) -> list[str]:
    scenario = r.scenario_with("templates", ["a photo of a {}."])
    assert main(r.forget(scenario=scenario)) == 0
    scenario.write_text(scenario.read_text().replace("a photo of a {}.", "an image of a {}."))
    return r.forget(scenario=scenario)


def _changed_weights(r: Row) -> list[str]:
    model = r.own_checkpoint()
    assert main(r.forget(model=model)) == 0
    from safetensors.torch import load_file, save_file

    path = r.tmp / "ckpt" / "open_clip_model.safetensors"
    state = load_file(path)
    state["text_projection"] = state["text_projection"] * 2
    save_file(state, path)
    return r.forget(model=model)


def _changed_seed(r: Row) -> list[str]:
    r.finished_copy()
    return r.forget("--seed", "1")


def _deleted_stage_file(r: Row) -> list[str]:
    (r.finished_copy() / "stages" / "forget.safetensors").unlink()
    return r.forget()


def _damaged_stage_file(r: Row) -> list[str]:
    path = r.finished_copy() / "stages" / "remind.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return r.forget()


def _damaged_stage_json(r: Row) -> list[str]:
    (r.finished_copy() / "stages" / "select.json").write_text('{"layers": [')
    return r.forget()


def _restart(r: Row) -> list[str]:
    r.finished_copy()
    r.write("run/notes.txt", "mine")
    return r.forget("--seed", "1", "--restart")


def _rerun_finished(r: Row) -> list[str]:
    r.finished_copy()
    return r.forget()


def _failed_then_corrected(r: Row) -> list[str]:
    assert main(r.forget("forget.train.lr=1e9", "forget.train.grad_clip=null")) == 2
    assert json.loads((r.out / "run.json").read_text())["status"] == "failed"
    return r.forget()


def _stale_unfinished(r: Row) -> list[str]:
    r.write("run/.clipforget-run.json", json.dumps({"kind": "run", "key": {"config": {"seed": 5}}}))
    r.write("run/config.yaml", "seed: 5\n")
    r.write("run/run.json", json.dumps({"status": "running"}))
    return r.forget()


def _bench_dir(r: Row) -> list[str]:
    r.write("run/.clipforget-run.json", json.dumps({"kind": "bench"}))
    return r.forget()


def _bench_user_folder(r: Row) -> list[str]:
    r.write("b/table.md", "mine")
    return ["bench", "--model", r.world.model, "--scenarios", str(r.world.scenario), "--methods", "ours",
            "--out", str(r.tmp / "b"), "--no-audit"]


def _bench_list_variant(r: Row) -> list[str]:
    return ["bench", "--model", r.world.model, "--scenarios", str(r.world.scenario), "--no-audit",
            "--methods", "ours[use_lora=false,restore.grid=[0.0,1.0],forget.train.steps=2,remind.x=1]", "--out", str(r.tmp / "b")]


def _questionable(*extra: str) -> Callable[[Row], list[str]]:
    return lambda r: r.forget("use_remind=false", "restore.grid=[0.0]", *extra)


def _read_only(r: Row) -> list[str]:
    if os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder")
    (r.tmp / "ro").mkdir(mode=0o500)
    return r.forget(out=r.tmp / "ro" / "run")


def _file_as_out(r: Row) -> list[str]:
    r.write("taken", "mine")
    return r.forget(out=r.tmp / "taken")


def _under_a_file(r: Row) -> list[str]:
    r.write("taken", "mine")
    return r.forget(out=r.tmp / "taken" / "run")


def _eval(model: str | None = None, out: str = "m.json") -> Callable[[Row], list[str]]:
    def argv(r: Row) -> list[str]:
        (r.tmp / "adir").mkdir()
        r.write("taken", "mine")
        return ["eval", "--model", model or r.world.model, "--scenario", str(r.world.scenario), "--out", str(r.tmp / out)]

    return argv


def _config_file(text: str) -> Callable[[Row], list[str]]:
    def argv(r: Row) -> list[str]:
        path = r.write("c.yaml", text)
        return ["forget", "--model", r.world.model, "--scenario", str(r.world.scenario), "--config", str(path),
                "--no-audit", "--out", str(r.out)]

    return argv


def _scenario(path: str, value) -> Callable[[Row], list[str]]:
    return lambda r: r.forget(scenario=r.scenario_with(path, value))


def _scenario_text(text: str) -> Callable[[Row], list[str]]:
    return lambda r: r.forget(scenario=r.write("s.yaml", text))


def _args(*extra: str, **kw) -> Callable[[Row], list[str]]:
    return lambda r: r.forget(*extra, **{k: v.format(tmp=r.tmp) if isinstance(v, str) else v for k, v in kw.items()})


GPU = torch.cuda.is_available()
CASES: dict[str, tuple[Callable[[Row], list[str]], int, str]] = {
    # -- models -----------------------------------------------------------------------------------------
    "unknown backend": (_args(model="nope:x"), 2, "unknown model backend 'nope'"),
    "empty model id": (_args(model=" "), 2, "model id is empty"),
    "missing hf folder": (_args(model="hf:/does/not/exist"), 2, "'/does/not/exist' does not exist"),
    "missing checkpoint file": (_args(model="openclip:tiny-RN@{tmp}/missing.safetensors"), 2, "does not exist"),
    "unknown open_clip architecture": (_args(model="openclip:NoSuchNet"), 2, "unknown open_clip architecture 'NoSuchNet'"),
    "local-dir without config": (lambda r: r.forget(model=f"openclip:local-dir:{r.write('empty/x.txt', '').parent}"), 2,
                                 "holds no open_clip_config.json"),
    "testbed with another name": (_args(model="testbed:other"), 2, "the testbed backend has one model"),
    "corrupt safetensors": (_corrupt_ckpt, 2, "is damaged (truncated or not a safetensors file"),
    "garbage .pt checkpoint": (lambda r: r.forget(model=f"openclip:tiny-RN@{r.write('w.pt', b'garbage')}"), 2,
                               "is damaged or not a PyTorch checkpoint"),
    "pickle with objects": (_pickle_with_objects, 2, "convert it to safetensors"),
    "wrong architecture file": (_wrong_arch, 2, "does not fit the open_clip architecture tiny-ViT: it looks like an open_clip "
                                               "model (ResNet image tower"),
    "wrong architecture folder": (_wrong_arch_folder, 2, "like open_clip tiny-RN"),
    "unknown pretrained tag": (_args(model="openclip:tiny-RN@nosuchtag"), 2, "nosuchtag"),
    "pretrained tag offline": (_args(model="openclip:RN50@openai"), 2, "could not be downloaded"),
    "hub id offline": (_args(model="hf:nosuch-org/nosuch-clip"), 2, "could not be downloaded"),
    # -- devices ----------------------------------------------------------------------------------------
    "unknown device": (_args("--device", "gpu0"), 2, "unknown device 'gpu0'"),
    "cuda without a GPU": (_args("--device", "cuda"), 0 if GPU else 2, "" if GPU else "torch sees no CUDA GPU"),
    "cuda index out of range": (_args("--device", "cuda:99"), 2, "sees" if GPU else "torch sees no CUDA GPU"),
    # -- scenarios --------------------------------------------------------------------------------------
    "unknown scenario": (_args(scenario=Path("no-such-scenario")), 2, "neither a file nor a bundled scenario"),
    "scenario not YAML": (_scenario_text("a: [1,\n"), 2, "not valid YAML"),
    "scenario duplicate key": (_scenario_text("name: a\nseed: 0\nname: b\n"), 2, "line 3: duplicate key 'name'"),
    "unknown class": (_scenario("forget.select.classes", ["wolf"]), 2, "'wolf' is not a class of source 'pets'"),
    "overlapping sets": (_scenario("retain.0.select.subgroups", ["springer", "poodle"]), 2, "(overlapping sets)"),
    "empty set": (_scenario("forget.train.count", 0), 2, "an empty set"),
    "too-large count": (_scenario("forget.train.count", 9), 2, "asks for 9 images but only 8 are available"),
    "unknown source kind": (_scenario("sources.fruit.kind", "webdataset"), 2, "'webdataset' is unknown"),
    "template without {}": (_scenario("templates", ["a photo of a dog"]), 2, "has no '{}'"),
    "duplicate class names": (_scenario("classnames", ["dog", "cat", "dog"]), 2, "names a class twice"),
    "unknown scenario field": (_scenario("forget.labels", "dog"), 2, "unknown field(s) ['labels']"),
    "missing image folder": (_scenario("sources.fruit.root", "/no/such/fruit"), 2, "/no/such/fruit does not exist"),
    "corrupt image": (_corrupt_image, 2, "does not skip unreadable images"),
    # -- methods and configs ----------------------------------------------------------------------------
    "unknown method": (_args("--method", "nope"), 2, "unknown method 'nope'"),
    "unknown config section": (_args("nope.x=1"), 2, "'nope' is not a config section"),
    "unknown config field": (_args("forget.nope=1"), 2, "unknown field 'nope'"),
    "override without =": (_args("forget.train.lr"), 2, "is not of the form section.field=value"),
    "range error names the path": (_args("adapter.rank=0"), 2, "adapter.rank must be >= 1"),
    "which lr": (_args("distill.train.lr=0"), 2, "distill.train.lr must be > 0"),
    "bad type": (_args("use_lora=3"), 2, "use_lora: expected true or false"),
    "grid out of range": (_args("restore.grid=[2.0]"), 2, "restore.grid must be"),
    "missing config file": (lambda r: r.forget("--config", str(r.tmp / "none.yaml")), 2, "none.yaml' does not exist"),
    "config duplicate key": (_config_file("use_lora: true\nuse_lora: false\n"), 2, "line 2: duplicate key 'use_lora'"),
    "config range error": (_config_file("forget:\n  train:\n    lr: -1e-3\n"), 2, "c.yaml: forget.train.lr must be > 0, got -0.001"),
    "config not YAML": (_config_file("forget: [\n"), 2, "not valid YAML"),
    "unknown image prefix": (_args("--image-prefix", "visual.nope"), 2, "unknown image stage 'visual.nope'"),
    "NaN loss": (_args("forget.train.lr=1e9", "forget.train.grad_clip=null"), 2, "lower the learning rate"),
    "bench malformed variant": (lambda r: ["bench", "--model", "nope:x", "--scenarios", "x", "--methods", "ours[a=1",
                                           "--out", str(r.tmp / "b")], 2, "name[field=value"),
    "bench unknown method": (lambda r: ["bench", "--model", "nope:x", "--scenarios", "x", "--methods", "nope",
                                        "--out", str(r.tmp / "b")], 2, "unknown method 'nope'"),
    "bench list variant": (_bench_list_variant, 2, "'remind' is not a config section"),
    # -- output paths -----------------------------------------------------------------------------------
    "out is the user's folder": (_user_folder, 2, "already holds files that clipforget did not write (model/, report.md)"),
    "out is a file": (_file_as_out, 2, "is a file"),
    "out under a file": (_under_a_file, 2, "which is a file"),
    "out inside the checkpoint": (lambda r: r.forget(out=r.world.ckpt / "run"), 2, "inside the input checkpoint"),
    "out inside the checkpoint by a symlink": (_symlink_into_checkpoint, 2, "inside the input checkpoint"),
    "checkpoint inside out": (_checkpoint_inside_out, 2, "lies inside --out"),
    "hf folder inside out": (_folder_inside_out("hf:{}"), 2, "lies inside --out"),
    "testbed folder inside out": (_folder_inside_out("testbed@{}"), 2, "lies inside --out"),
    "weights file inside out": (lambda r: r.forget(model=f"openclip:tiny-RN@{r.write('w.safetensors', b'')}", out=r.tmp),
                                2, "lies inside --out"),
    "out is a bench directory": (_bench_dir, 2, "is a clipforget bench directory"),
    "bench out is the user's folder": (_bench_user_folder, 2, "did not write (table.md)"),
    "eval out is a directory": (_eval("nope:x", "adir"), 2, "is a directory"),
    "eval out under a file": (_eval("nope:x", "taken/m.json"), 2, "which is a file"),
    "eval out is fine": (_eval(), 0, ""),
    "audit out is a file": (lambda r: ["audit", "--model", "nope:x", "--original", "nope:y", "--scenario",
                                       str(r.world.scenario), "--out", str(r.write("taken", "mine"))], 2, "is a file"),
    # -- resume -----------------------------------------------------------------------------------------
    "edited scenario at the same path": (_edited_scenario, 2, "differs in the scenario"),
    "changed weights at the same path": (_changed_weights, 2, "differs in the model's weights"),
    "another seed": (_changed_seed, 2, "the run config (seed: 0 -> 1)"),
    "deleted stage tensor file": (_deleted_stage_file, 2, "forget.safetensors is missing"),
    "damaged stage tensor file": (_damaged_stage_file, 2, "remind.safetensors is damaged or changed"),
    "damaged stage json": (_damaged_stage_json, 2, "select.json is damaged"),
    "restart": (_restart, 0, ""),
    "rerun a finished run": (_rerun_finished, 0, ""),
    "failed run, corrected command": (_failed_then_corrected, 0, ""),
    "stale run that finished nothing": (_stale_unfinished, 0, ""),
    # -- questionable results ---------------------------------------------------------------------------
    "result is the original": (_questionable(), 0, ""),
    "result is the original, strict": (_questionable("--strict"), 3, ""),
    "zero training budgets, strict": (_args("forget.train.steps=0", "align.train.steps=0", "distill.train.steps=0",
                                            "--strict"), 3, ""),
    "out is read-only": (_read_only, 2, "permission denied"),
}


def _snapshot(*roots: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for root in roots for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("case", list(CASES))
def test_the_matrix(world, case, tmp_path, caplog, capsys):
    command, code, fragment = CASES[case]
    row = Row(world, tmp_path)
    argv = command(row)
    before = _snapshot(world.root, tmp_path)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(argv) == code, caplog.text[-3000:]
    after = _snapshot(world.root, tmp_path)
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
    from clipforget.methods.core import clone_model
    from clipforget.app.checks import result_warnings

    changed = clone_model(tiny_models)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    infeasible = {"restore": {"choice": {"alpha": 1.0, "utility": 0.9, "forget_acc": 0.5}}}
    (warning,) = result_warnings(tiny_models, changed, infeasible)
    assert "stage restore: no candidate reached the forget target" in warning
    assert result_warnings(tiny_models, changed, {"restore": {"choice": {"alpha": 1.0, "forget_acc": 0.0}}}) == []
    (same,) = result_warnings(tiny_models, clone_model(tiny_models), {"restore": {"choice": {"alpha": 0.0, "forget_acc": 0.0}}})
    assert "the result is the original model" in same and "alpha = 0" in same
