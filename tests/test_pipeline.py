"""The application layer: run directories, resume, refusing to clobber, the bench runner, the CLI."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from synthetic import build_tiny_scenario

from clipforget.audit import AuditConfig
from clipforget.app.bench import run_bench
from clipforget.app.cli import main
from clipforget.config import ConfigError
from clipforget.methods import get_method
from clipforget.models import load_model
from clipforget.app.runner import run_forget
from clipforget.app.rundir import ResumeError

SMOKE = get_method("ours-paper").smoke_config()  # every stage runs: select, forget, remind, restore
AUDIT = AuditConfig(templates=("a photo of a {}.", "itap of a {}."), relearn_steps=(1, 2))  # seconds on tiny models


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Path:
    return build_tiny_scenario(tmp_path_factory.mktemp("scenario"))


@pytest.fixture(scope="module")
def saved_rn(tmp_path_factory) -> str:
    """A tiny open_clip ResNet saved to disk, so the run reads a real checkpoint folder."""
    from tiny import register_tiny_openclip

    register_tiny_openclip(tmp_path_factory.mktemp("cfg"))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    load_model("openclip:tiny-RN").save(folder)
    return f"openclip:local-dir:{folder}"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_run_directory_is_self_describing_and_input_untouched(saved_rn, scenario, tmp_path):
    ckpt = Path(saved_rn.split("local-dir:")[1])
    before = _digest(ckpt)
    result = run_forget(saved_rn, scenario, tmp_path / "run", config=SMOKE, seed=0, audit=AUDIT)
    run = tmp_path / "run"
    for name in ["config.yaml", "scenario.yaml", "run.json", "metrics.json", "events.jsonl", "fisher.json",
                 "alpha_curve.json", "report.md", "plots/metrics.png", "plots/fisher.png", "model/open_clip_model.safetensors"]:
        assert (run / name).is_file(), name
    assert _digest(ckpt) == before, "the input checkpoint must never be modified"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["seed"] == 0 and "torch" in info["versions"]
    assert {"load", "method", "evaluate_unlearned"} <= set(info["timings"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["score"] == pytest.approx(result.score)
    assert yaml.safe_load((run / "config.yaml").read_text())["method_config"] == SMOKE.to_dict()
    # The saved unlearned model loads back and equals the returned one.
    reloaded = load_model(f"openclip:local-dir:{run / 'model'}")
    for k, v in result.model.weights().items():
        assert torch.equal(v, reloaded.weights()[k]), k


def test_a_killed_run_resumes_from_its_last_finished_stage(saved_rn, scenario, tmp_path, caplog):
    first = run_forget(saved_rn, scenario, tmp_path / "run", config=SMOKE, seed=1, audit=False)
    # Pretend the run was killed during the restore stage.
    for name in ["stages/restore.json", "stages/restore.safetensors", "metrics.json"]:
        (tmp_path / "run" / name).unlink(missing_ok=True)
    with caplog.at_level(logging.INFO):
        second = run_forget(saved_rn, scenario, tmp_path / "run", config=SMOKE, seed=1, audit=False)
    resumed = [r.getMessage() for r in caplog.records if "already finished" in r.getMessage()]
    assert any("'select'" in m for m in resumed) and any("'remind'" in m for m in resumed)
    assert not any("'restore'" in m for m in resumed)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["resumed_stages"] == ["select", "forget", "remind"]
    stored = sum(json.loads((tmp_path / "run" / "stages" / f"{s}.json").read_text())["seconds"] for s in info["resumed_stages"])
    assert info["compute_seconds"] == pytest.approx(info["wall_seconds"] + stored)
    for k, v in first.model.weights().items():
        assert torch.equal(v, second.model.weights()[k]), k


def test_a_directory_holding_another_run_is_refused(saved_rn, scenario, tmp_path):
    run_forget(saved_rn, scenario, tmp_path / "run", config=SMOKE, seed=0, audit=False)
    with pytest.raises(ConfigError, match="holds a different run"):
        run_forget(saved_rn, scenario, tmp_path / "run", config=SMOKE, seed=2)


def test_writing_into_the_input_checkpoint_is_refused(saved_rn, scenario):
    ckpt = Path(saved_rn.split("local-dir:")[1])
    with pytest.raises(ConfigError, match="inside the input checkpoint"):
        run_forget(saved_rn, scenario, ckpt / "run", config=SMOKE)


def test_bench_runs_every_cell_once_and_resumes(saved_rn, scenario, tmp_path):
    configs = {"ours": SMOKE}
    table = run_bench(saved_rn, [str(scenario)], out=tmp_path, methods=["ours"], seeds=[0, 1], configs=configs, audit=AUDIT)
    assert "| ours |" in table and "±" in table
    assert "Target worst prompt ↓" in table and "search share ↓ (chance" in table
    cells = sorted(tmp_path.glob("runs/*/ours/seed*/metrics.json"))
    assert len(cells) == 2
    stamps = [c.stat().st_mtime_ns for c in cells]
    run_bench(saved_rn, [str(scenario)], out=tmp_path, methods=["ours"], seeds=[0, 1], configs=configs, audit=AUDIT)
    assert [c.stat().st_mtime_ns for c in cells] == stamps, "finished cells must not be redone"
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {r["seed"] for r in rows} == {0, 1}
    for r in rows:
        audited = json.loads((tmp_path / "runs" / r["scenario"] / "ours" / f"seed{r['seed']}" / "audit.json").read_text())
        assert r["audit/target_worst"] == audited["parts"]["names"]["target_worst"]["unlearned"]
        assert r["original"]["audit/target_worst"] == audited["parts"]["names"]["target_worst"]["original"]
        assert r["audit/search_chance"] == audited["parts"]["search"]["chance"]
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header.startswith("scenario,method,seed") and "audit/search_share" in header


def test_cli_forget_with_a_config_file_and_overrides(saved_rn, scenario, tmp_path):
    cfg = tmp_path / "smoke.yaml"
    cfg.write_text(SMOKE.to_yaml())
    argv = ["forget", "--model", saved_rn, "--scenario", str(scenario), "--out", str(tmp_path / "run"),
            "--config", str(cfg), "--seed", "3", "restore.grid=[0.0,1.0]", "--no-audit"]
    assert main(argv) == 0
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["seed"] == 3 and resolved["method_config"]["restore"]["grid"] == [0.0, 1.0]
    assert not (tmp_path / "run" / "audit.json").exists(), "--no-audit skips the audit"
    assert "## Audit" not in (tmp_path / "run" / "report.md").read_text()


def test_every_run_is_audited_into_audit_json_and_the_report(saved_rn, scenario, tmp_path):
    run = tmp_path / "run"
    audit_yaml, smoke_yaml = tmp_path / "audit.yaml", tmp_path / "smoke.yaml"
    audit_yaml.write_text(AUDIT.to_yaml())
    smoke_yaml.write_text(SMOKE.to_yaml())
    argv = ["forget", "--model", saved_rn, "--scenario", str(scenario), "--out", str(run), "--config", str(smoke_yaml),
            "--audit-config", str(audit_yaml), "use_souping=false"]  # souping may rightly pick the original here, which leaves nothing to relearn
    assert main(argv) == 0
    audited = json.loads((run / "audit.json").read_text())
    assert audited["config"] == AUDIT.to_dict() and audited["seed"] == 0
    assert set(audited["parts"]) == set(AUDIT.parts) == set(audited["seconds"])
    names = audited["parts"]["names"]
    label = next(p for p in names["prompts"] if p["name"] == "dog" and p["templates"] == "scenario")
    metrics = json.loads((run / "metrics.json").read_text())
    assert (label["original"], label["unlearned"]) == (metrics["original"]["target"], metrics["unlearned"]["target"])
    assert audited["parts"]["relearn"]["changed"], "the run changed parameters, so relearning has some to tune"
    report = (run / "report.md").read_text()
    assert "## Audit: can the subgroup still be found?" in report and "Target, worst of" in report
    assert "audit" in json.loads((run / "run.json").read_text())["timings"]


def test_the_audit_runs_in_the_methods_view_on_prefix_activations(saved_rn, scenario, tmp_path):
    from clipforget.app.prepare import prepare
    from clipforget.app.runner import run_method

    prepared = prepare(saved_rn, scenario)
    run_method(prepared, tmp_path / "run", method="ours", config=SMOKE.with_overrides(["use_souping=false"]),
               image_prefix="visual.layer4", audit=AUDIT)
    audited = json.loads((tmp_path / "run" / "audit.json").read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    label = next(p for p in audited["parts"]["names"]["prompts"] if p["name"] == "dog" and p["templates"] == "scenario")
    assert label["unlearned"] == metrics["unlearned"]["target"]
    relearn = audited["parts"]["relearn"]
    assert relearn["changed"] and not any(n.startswith(("visual.stem", "visual.conv", "visual.layer1")) for n in relearn["changed"])


@pytest.mark.parametrize("override, message", [("forget.nope=1", "unknown field"), ("restore.grid=[2.0]", "grid")])
def test_cli_refuses_bad_overrides(saved_rn, scenario, tmp_path, override, message, caplog):
    argv = ["forget", "--model", saved_rn, "--scenario", str(scenario), "--out", str(tmp_path / "r"), override]
    assert main(argv) == 2
    assert message in caplog.text
    assert not (tmp_path / "r").exists(), "a refused run writes nothing"


def test_a_frozen_image_prefix_trains_only_the_tail_and_scores_like_the_whole_model(saved_rn, scenario, tmp_path):
    from clipforget.evaluation import evaluate_scenario
    from clipforget.app.prepare import prepare
    from clipforget.app.runner import run_method

    prepared = prepare(saved_rn, scenario)
    config = SMOKE.with_overrides(["use_souping=false"])  # souping may rightly pick the original here
    result = run_method(prepared, tmp_path / "run", method="ours", config=config, image_prefix="visual.layer4", audit=False)
    assert type(result.model).__name__ == "OpenClipModel", "the result is the ordinary model again"
    before, after = prepared.model.weights(), result.model.weights()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("visual.layer4", "visual.attnpool")) or not k.startswith("visual.")
                           for k in changed), sorted(changed)
    # Metrics computed on cached prefix activations equal those of the whole reloaded model.
    reloaded = load_model(result.model.saved_id(tmp_path / "run" / "model"))
    full = evaluate_scenario(reloaded, prepared.splits, prepared.images)
    assert (full.target, full.retain, full.heldout) == (result.unlearned.target, result.unlearned.retain,
                                                         result.unlearned.heldout)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["image_prefix"] == "visual.layer4"


def test_a_finished_bench_cell_of_an_edited_scenario_is_refused_then_redone_on_restart(saved_rn, tmp_path):
    scenario = build_tiny_scenario(tmp_path / "scenario")
    out, kwargs = tmp_path / "bench", dict(methods=["ours"], seeds=[0], configs={"ours": SMOKE}, audit=False)
    run_bench(saved_rn, [str(scenario)], out=out, **kwargs)
    (metrics,) = out.glob("runs/*/ours/seed0/metrics.json")
    before = metrics.stat().st_mtime_ns
    run_bench(saved_rn, [str(scenario)], out=out, **kwargs)
    assert metrics.stat().st_mtime_ns == before, "a cell finished under the same key is kept"
    edited = yaml.safe_load(scenario.read_text())
    edited["templates"] = ["a photo of the {}."]
    scenario.write_text(yaml.safe_dump(edited, sort_keys=False))
    with pytest.raises(ResumeError, match="finished a different run: it differs in .*the scenario"):
        run_bench(saved_rn, [str(scenario)], out=out, **kwargs)
    assert metrics.stat().st_mtime_ns == before, "a refused bench changes nothing"
    run_bench(saved_rn, [str(scenario)], out=out, restart=True, **kwargs)
    assert metrics.stat().st_mtime_ns != before
    assert yaml.safe_load((metrics.parent / "scenario.yaml").read_text())["templates"] == ["a photo of the {}."]


def test_bench_runs_config_variants_as_their_own_rows(saved_rn, scenario, tmp_path):
    table = run_bench(saved_rn, [str(scenario)], out=tmp_path, methods=["ours", "ours[use_souping=false]"],
                      seeds=[0], configs={"ours": SMOKE}, audit=False)
    assert "| ours[use_souping=false] |" in table and "| ours |" in table
    variant = yaml.safe_load((tmp_path / "runs" / "tiny-springer" / "ours+use_souping=false" / "seed0" / "config.yaml").read_text())
    assert variant["method"] == "ours" and variant["method_config"]["use_souping"] is False
    folders = [p.name for p in (tmp_path / "runs").rglob("*") if p.is_dir()]
    assert not [f for f in folders if set(f) & set("*?[]{}'\" $!&;|<>()`\\ ")], folders


@pytest.mark.parametrize("variant, folder", [("ours", "ours"), ("ours[use_lora=false,select.top_k=4]", "ours+use_lora=false+select.top_k=4"),
                                             ("ours[anchor.words=a*b?]", "ours+anchor.words=a_b_"),
                                             ("my method*", "my_method_")])
def test_bench_folder_names_need_no_quoting(variant, folder):
    from clipforget.app.bench import folder_name

    assert folder_name(variant) == folder


@pytest.mark.parametrize("policy, kept", [("none", set()), ("ours", {"ours"}), ("all", {"ours", "ft"}), ("best", None)])
def test_bench_keeps_the_models_it_is_told_to(saved_rn, scenario, tmp_path, policy, kept):
    configs = {"ours": SMOKE, "ft": get_method("ft").smoke_config()}
    run_bench(saved_rn, [str(scenario)], out=tmp_path, methods=["ours", "ft"], configs=configs, audit=False,
              save_models=policy)
    rows = json.loads((tmp_path / "results.json").read_text())
    if kept is None:  # best: the cell with the highest Score (the first on a tie) keeps its model
        kept = {max(rows, key=lambda r: r["score"])["method"]}
    have = {r["method"] for r in rows if (tmp_path / r["cell"] / "model").is_dir()}
    assert have == kept
    for r in rows:
        info = json.loads((tmp_path / r["cell"] / "run.json").read_text())
        assert (info["unlearned_model"] is not None) == (r["method"] in kept)
        assert (tmp_path / r["cell"] / "model" / "README.md").is_file() == (r["method"] in kept), "a saved model has its card"
    page = (tmp_path / "report.html").read_text()
    assert all(f'href="{r["cell"]}/report.html"' in page for r in rows)
    assert all((tmp_path / r["cell"] / "report.html").is_file() for r in rows)


def test_bench_resumes_a_bench_written_before_run_markers(saved_rn, scenario, tmp_path):
    """A bench folder of a clipforget without markers (report.html and bench.json included) is still a bench."""
    from clipforget.app.rundir import LOCK, MARKER

    args = {"out": tmp_path, "methods": ["ours"], "configs": {"ours": SMOKE}, "audit": False}
    run_bench(saved_rn, [str(scenario)], **args)
    for name in (MARKER, LOCK):
        for p in tmp_path.rglob(name):
            p.unlink()
    assert (tmp_path / "report.html").is_file() and next(tmp_path.glob("runs/*/ours/seed0/bench.json"))
    stamp = next(tmp_path.glob("runs/*/ours/seed0/metrics.json")).stat().st_mtime_ns
    run_bench(saved_rn, [str(scenario)], **args)
    assert next(tmp_path.glob("runs/*/ours/seed0/metrics.json")).stat().st_mtime_ns == stamp, "a finished cell is kept"


def test_bench_refuses_unknown_methods_before_any_work(saved_rn, scenario, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run_bench(saved_rn, [str(scenario)], out=tmp_path, methods=["nope"])
    with pytest.raises(ValueError, match="name\\[field=value"):
        run_bench(saved_rn, [str(scenario)], out=tmp_path, methods=["ours[use_lora=false"])
    assert not (tmp_path / "runs").exists()
