"""The shared inputs and the command builders of the bad-input matrix (tests/test_bad_input.py): a world
of files no row changes, and per row a scratch folder with the files it sets up."""

from __future__ import annotations

import argparse
import hashlib
import json
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


def corrupt_ckpt(r: Row) -> list[str]:
    model = r.own_checkpoint()
    weights = r.tmp / "ckpt" / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    return r.forget(model=model)


def pickle_with_objects(r: Row) -> list[str]:
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, r.tmp / "w.pt")
    return r.forget(model=f"openclip:tiny-RN@{r.tmp / 'w.pt'}")


def wrong_arch(r: Row) -> list[str]:
    return r.forget(model=f"openclip:tiny-ViT@{r.world.ckpt / 'open_clip_model.safetensors'}")


def wrong_arch_folder(r: Row) -> list[str]:
    r.own_checkpoint()
    cfg = json.loads((r.tmp / "ckpt" / "open_clip_config.json").read_text())
    from tiny import TINY_CONFIGS

    cfg["model_cfg"] = TINY_CONFIGS["tiny-ViT"]
    (r.tmp / "ckpt" / "open_clip_config.json").write_text(json.dumps(cfg))
    return r.forget(model=f"openclip:local-dir:{r.tmp / 'ckpt'}")


def corrupt_image(r: Row) -> list[str]:
    scenario = build_tiny_scenario(r.tmp / "sc")
    (r.tmp / "sc" / "pets" / "images" / "springer" / "train_000.png").write_bytes(b"not a png")
    return r.forget(scenario=scenario)


def user_folder(r: Row) -> list[str]:
    r.write("run/report.md", "my notes")
    r.write("run/model/weights.bin", b"\x00\x01")
    return r.forget()


def symlink_into_checkpoint(r: Row) -> list[str]:
    (r.tmp / "link").symlink_to(r.world.ckpt)
    return r.forget(out=r.tmp / "link" / "run")


def checkpoint_inside_out(r: Row) -> list[str]:
    model = r.own_checkpoint()
    return r.forget(model=model, out=r.tmp)


def folder_inside_out(backend: str) -> Callable[[Row], list[str]]:
    def argv(r: Row) -> list[str]:
        (r.tmp / "ckpt").mkdir()
        return r.forget(model=backend.format(r.tmp / "ckpt"), out=r.tmp)

    return argv


def edited_scenario(r: Row) -> list[str]:
    scenario = r.scenario_with("templates", ["a photo of a {}."])
    assert main(r.forget(scenario=scenario)) == 0
    scenario.write_text(scenario.read_text().replace("a photo of a {}.", "an image of a {}."))
    return r.forget(scenario=scenario)


def changed_weights(r: Row) -> list[str]:
    model = r.own_checkpoint()
    assert main(r.forget(model=model)) == 0
    from safetensors.torch import load_file, save_file

    path = r.tmp / "ckpt" / "open_clip_model.safetensors"
    state = load_file(path)
    state["text_projection"] = state["text_projection"] * 2
    save_file(state, path)
    return r.forget(model=model)


def changed_seed(r: Row) -> list[str]:
    r.finished_copy()
    return r.forget("--seed", "1")


def deleted_stage_file(r: Row) -> list[str]:
    (r.finished_copy() / "stages" / "forget.safetensors").unlink()
    return r.forget()


def damaged_stage_file(r: Row) -> list[str]:
    path = r.finished_copy() / "stages" / "remind.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return r.forget()


def damaged_stage_json(r: Row) -> list[str]:
    (r.finished_copy() / "stages" / "select.json").write_text('{"layers": [')
    return r.forget()


def restart_run(r: Row) -> list[str]:
    r.finished_copy()
    r.write("run/notes.txt", "mine")
    return r.forget("--seed", "1", "--restart")


def rerun_finished(r: Row) -> list[str]:
    r.finished_copy()
    return r.forget()


def failed_then_corrected(r: Row) -> list[str]:
    assert main(r.forget("forget.train.lr=1e9", "forget.train.grad_clip=null")) == 2
    assert json.loads((r.out / "run.json").read_text())["status"] == "failed"
    return r.forget()


def stale_unfinished(r: Row) -> list[str]:
    r.write("run/.clipforget-run.json", json.dumps({"kind": "run", "key": {"config": {"seed": 5}}}))
    r.write("run/config.yaml", "seed: 5\n")
    r.write("run/run.json", json.dumps({"status": "running"}))
    return r.forget()


def bench_dir(r: Row) -> list[str]:
    r.write("run/.clipforget-run.json", json.dumps({"kind": "bench"}))
    return r.forget()


def bench_user_folder(r: Row) -> list[str]:
    r.write("b/table.md", "mine")
    return ["bench", "--model", r.world.model, "--scenarios", str(r.world.scenario), "--methods", "ours",
            "--out", str(r.tmp / "b"), "--no-audit"]


def bench_list_variant(r: Row) -> list[str]:
    return ["bench", "--model", r.world.model, "--scenarios", str(r.world.scenario), "--no-audit",
            "--methods", "ours[use_lora=false,restore.grid=[0.0,1.0],forget.train.steps=2,remind.x=1]", "--out", str(r.tmp / "b")]


def questionable(*extra: str) -> Callable[[Row], list[str]]:
    return lambda r: r.forget("use_remind=false", "restore.grid=[0.0]", *extra)


def read_only(r: Row) -> list[str]:
    if os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder")
    (r.tmp / "ro").mkdir(mode=0o500)
    return r.forget(out=r.tmp / "ro" / "run")


def file_as_out(r: Row) -> list[str]:
    r.write("taken", "mine")
    return r.forget(out=r.tmp / "taken")


def under_a_file(r: Row) -> list[str]:
    r.write("taken", "mine")
    return r.forget(out=r.tmp / "taken" / "run")


def eval_command(model: str | None = None, out: str = "m.json") -> Callable[[Row], list[str]]:
    def argv(r: Row) -> list[str]:
        (r.tmp / "adir").mkdir()
        r.write("taken", "mine")
        return ["eval", "--model", model or r.world.model, "--scenario", str(r.world.scenario), "--out", str(r.tmp / out)]

    return argv


def config_file(text: str) -> Callable[[Row], list[str]]:
    def argv(r: Row) -> list[str]:
        path = r.write("c.yaml", text)
        return ["forget", "--model", r.world.model, "--scenario", str(r.world.scenario), "--config", str(path),
                "--no-audit", "--out", str(r.out)]

    return argv


def scenario_field(path: str, value) -> Callable[[Row], list[str]]:
    return lambda r: r.forget(scenario=r.scenario_with(path, value))


def scenario_text(text: str) -> Callable[[Row], list[str]]:
    return lambda r: r.forget(scenario=r.write("s.yaml", text))


def forget_with(*extra: str, **kw) -> Callable[[Row], list[str]]:
    return lambda r: r.forget(*extra, **{k: v.format(tmp=r.tmp) if isinstance(v, str) else v for k, v in kw.items()})


def snapshot(*roots: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for root in roots for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}
