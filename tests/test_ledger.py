"""Sequential requests: a model folder's ledger, its checks, and a second request that continues it."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from synthetic import build_tiny_scenario, tiny_scenario_dict, write_image, write_manifest

from clipforget.audit import AuditConfig
from clipforget.app.cli import main
from clipforget.app.ledger import LEDGER_FILE, Ledger, LedgerError, read_ledger, write_ledger
from clipforget.methods import get_method
from clipforget.methods.restore import RestoreConfig
from clipforget.methods.scoring import Forgotten, forgotten_accuracy, make_score_fn
from clipforget.models import load_model
from clipforget.app.runner import run_forget

SMOKE = dataclasses.replace(get_method("ours-paper").smoke_config(), restore=RestoreConfig(grid=(1.0,)))  # every stage; weights change
AUDIT = AuditConfig(parts=("names", "search"), templates=("a photo of a {}.", "itap of a {}."))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    from tiny import register_tiny_openclip

    register_tiny_openclip(tmp_path_factory.mktemp("cfg"))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base")
    load_model("openclip:tiny-RN").save(folder)
    return f"openclip:local-dir:{folder}"


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> tuple[Path, Path]:
    """Two requests on the same images: forget springers (as dogs), then the cats' subgroup "tabby"."""
    root = tmp_path_factory.mktemp("data")
    first = build_tiny_scenario(root)
    second = tiny_scenario_dict(root)
    rows = [{"path": f"images/tabby/{s}_{i:03d}.png", "class": "cat", "subgroup": "tabby", "split": s}
            for s in ("train", "test") for i in range(8)]
    for r in rows:
        write_image(root / "pets" / r["path"], "tabby", hash(r["path"]) % 1000)
    second["sources"]["tabby"] = {"kind": "manifest", "root": str(write_manifest(root / "pets" / "tabby.csv", rows))}
    second["name"] = "tiny-tabby"
    second["forget"] = {"name": "tabby", "label": "cat", "text": "a photo of a cat.", "aliases": ["tabby cat"],
                        "select": {"source": "tabby", "classes": ["cat"]},
                        "train": {"split": "train", "count": 6}, "test": {"split": "test", "count": 4}}
    second["retain"] = [r for r in second["retain"] if r["name"] != "cat"] + [
        {"name": "cat", "label": "cat", "select": {"source": "pets", "classes": ["cat"]},
         "train": {"split": "train", "count": 4}, "test": {"split": "test", "count": 4}}]
    path = root / "tiny-tabby.yaml"
    path.write_text(yaml.safe_dump(second, sort_keys=False))
    return first, path


@pytest.fixture(scope="module")
def first_run(base, scenarios, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "first"
    run_forget(base, scenarios[0], out, config=SMOKE, seed=0, audit=AUDIT)
    return out


def test_a_forget_run_writes_a_ledger_of_its_request_beside_the_weights(base, scenarios, first_run):
    assert json.loads((first_run / "metrics.json").read_text())["weights_changed"]
    data = json.loads((first_run / "model" / LEDGER_FILE).read_text())
    (entry,) = data["requests"]
    assert entry["scenario"] == "tiny-springer" and entry["method"] == "ours" and entry["model"] == base
    assert entry["forget_text"] == "a photo of a dog." and entry["forget_label"] == "dog"
    assert entry["scenario_fingerprint"] and entry["scenario_config"]["forget"]["name"] == "springer"
    assert entry["method_config"] == SMOKE.to_dict()
    assert set(entry["metrics"]) == {"original", "unlearned"} and "target" in entry["metrics"]["unlearned"]
    assert "target_worst" in entry["audit"] and entry["recheck"] == []
    model_id = f"openclip:local-dir:{first_run / 'model'}"
    ledger = read_ledger(model_id, load_model(model_id))  # survives save and load
    assert [r["scenario"] for r in ledger.requests] == ["tiny-springer"]


def test_a_ledger_describing_other_weights_or_edited_is_refused(first_run, base, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(first_run / "model", model_dir)
    model_id = f"openclip:local-dir:{model_dir}"
    model = load_model(model_id)
    path = model_dir / LEDGER_FILE
    data = json.loads(path.read_text())

    data["requests"][0]["scenario"] = "something else"  # edited
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerError, match="edited after clipforget wrote it"):
        read_ledger(model_id, model)

    foreign = load_model(base)  # the right ledger beside other weights (as if copied into another folder)
    write_ledger(model_dir, Ledger(tuple(json.loads((first_run / "model" / LEDGER_FILE).read_text())["requests"])), model)
    read_ledger(model_id, model)
    with pytest.raises(LedgerError, match="describes other weights"):
        read_ledger(model_id, foreign)

    path.write_text("{not json")
    with pytest.raises(LedgerError, match="damaged"):
        read_ledger(model_id, model)


def test_the_cli_refuses_an_edited_ledger_in_one_line(first_run, scenarios, tmp_path, caplog):
    model_dir = tmp_path / "model"
    shutil.copytree(first_run / "model", model_dir)
    data = json.loads((model_dir / LEDGER_FILE).read_text())
    data["requests"][0]["metrics"]["unlearned"]["target"] += 55.5
    (model_dir / LEDGER_FILE).write_text(json.dumps(data))
    code = main(["forget", "--model", f"openclip:local-dir:{model_dir}", "--scenario", str(scenarios[1]),
                 "--out", str(tmp_path / "run"), "--no-audit"])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "edited" in errors[0] and "delete it" in errors[0]


def test_a_second_request_continues_the_ledger_and_rechecks_the_first(first_run, scenarios, tmp_path):
    received = f"openclip:local-dir:{first_run / 'model'}"
    result = run_forget(received, scenarios[1], tmp_path / "second", config=SMOKE, seed=0, audit=AUDIT)
    data = json.loads((tmp_path / "second" / "model" / LEDGER_FILE).read_text())
    assert [r["scenario"] for r in data["requests"]] == ["tiny-springer", "tiny-tabby"]
    assert data["requests"][1]["model"] == received
    check = json.loads((tmp_path / "second" / "ledger_check.json").read_text())
    (rechecked,) = check["rechecked"]
    assert rechecked["scenario"] == "tiny-springer" and check["unreachable"] == []
    for figure in ("target", "target_worst"):
        assert set(rechecked[figure]) == {"received", "unlearned"}
    # the received figures are the first run's unlearned model's, measured again here
    first = json.loads((first_run / "metrics.json").read_text())
    assert rechecked["target"]["received"] == pytest.approx(first["unlearned"]["target"])
    came_back = {k for k, v in rechecked["came_back"].items() if v > 0}
    warned = [w for w in result.warnings if "earlier request 1" in w]
    assert bool(came_back) == bool(warned)
    assert data["requests"][1]["recheck"] == check["rechecked"]
    # the third model id reads both requests back
    third = f"openclip:local-dir:{tmp_path / 'second' / 'model'}"
    assert len(read_ledger(third, load_model(third)).requests) == 2


def test_an_earlier_request_whose_data_is_gone_is_listed_not_rechecked(first_run, scenarios, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(first_run / "model", model_dir)
    model_id = f"openclip:local-dir:{model_dir}"
    model = load_model(model_id)
    data = json.loads((model_dir / LEDGER_FILE).read_text())
    data["requests"][0]["scenario_config"]["sources"]["fruit"]["root"] = str(tmp_path / "gone")
    write_ledger(model_dir, Ledger(tuple(data["requests"])), model)
    run_forget(model_id, scenarios[1], tmp_path / "run", config=SMOKE, seed=0, audit=False)
    check = json.loads((tmp_path / "run" / "ledger_check.json").read_text())
    assert check["rechecked"] == [] and check["unreachable"][0]["request"] == 1
    assert "gone" in check["unreachable"][0]["reason"]


def test_the_weight_choice_keeps_earlier_subgroups_where_the_received_model_had_them(tiny_models):
    """A candidate that brings an earlier subgroup back reports that rise as its forget accuracy (infeasible)."""
    from clipforget.methods.core import UnlearnData
    from clipforget.methods.scoring import predict

    received = tiny_models
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 32, 32, generator=g)
    classes, templates = ("dog", "cat"), ("a photo of a {}.",)
    before = predict(received, images, classes, templates)
    for scale in (0.5, 1.0, 2.0, 4.0, 8.0):  # perturb the weights until the candidate predicts differently
        candidate = copy.deepcopy(received)
        with torch.no_grad():
            for p in candidate.parameters():
                p.add_(torch.randn(p.shape, generator=g) * p.std(correction=0).clamp(min=0.01) * scale)
        after = predict(candidate, images, classes, templates)
        if not torch.equal(before, after):
            break
    assert not torch.equal(before, after)  # the candidate classifies the earlier subgroup differently
    label = max(range(2), key=lambda c: float((after == c).float().mean() - (before == c).float().mean()))
    earlier = Forgotten("request 1", images, classes, templates, label)
    rise = forgotten_accuracy(candidate, earlier) - forgotten_accuracy(received, earlier)
    assert rise > 0
    data = UnlearnData(images, "a photo of a dog.", images, torch.zeros(12, dtype=torch.long), classes, templates, 0)
    plain, constrained = make_score_fn(received, data), make_score_fn(received, data, [earlier])
    state = candidate.weights()
    assert constrained(state) == (plain(state)[0], pytest.approx(max(plain(state)[1], rise)))
    own = received.weights()
    assert constrained(own) == plain(own)  # the received model itself: no rise, the plain figure


def test_a_ledger_survives_save_and_load_on_every_backend(tiny_models, tmp_path):
    folder = tmp_path / "model"
    tiny_models.save(folder)
    entry = {"scenario": "s", "metrics": {"unlearned": {"target": 1.0}}}
    write_ledger(folder, Ledger((entry,)), tiny_models)
    model_id = tiny_models.saved_id(folder)
    assert read_ledger(model_id, load_model(model_id)).requests == (entry,)


def test_the_souping_endpoint_of_a_second_request_is_the_model_as_received(first_run, base, scenarios, tmp_path):
    """alpha = 0 of the second request gives back the first request's weights, not the base model's."""
    from clipforget.app.checks import same_weights

    received = f"openclip:local-dir:{first_run / 'model'}"
    only_endpoint = dataclasses.replace(SMOKE, restore=RestoreConfig(grid=(0.0,)))
    result = run_forget(received, scenarios[1], tmp_path / "run", config=only_endpoint, seed=0, audit=False)
    assert same_weights(result.model, load_model(received))
    assert not same_weights(result.model, load_model(base))


def test_one_run_forgets_two_scenarios_at_once_and_ledgers_both(base, scenarios, tmp_path):
    from clipforget.app.together import run_forget_together

    out = tmp_path / "both"
    config = get_method("ours").smoke_config()
    results = run_forget_together(base, list(scenarios), out, config=config, seed=0, audit=AUDIT)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["requests"]) == ["tiny-springer", "tiny-tabby"] and metrics["weights_changed"]
    for name, r in zip(metrics["requests"], results):
        assert (out / name / "audit.json").exists() and (out / name / "sets.json").exists()
        assert metrics["requests"][name]["score"] == r.score
        before, after = metrics["edit"]["requests"][name]["before"], metrics["edit"]["requests"][name]["final"]
        assert after["forget_similarity"] < before["forget_similarity"]  # each subgroup's held-out D_f moved off its text
    model_id = f"openclip:local-dir:{out / 'model'}"
    unlearned, original = load_model(model_id), load_model(base)
    proj = unlearned.image_projection()
    changed = {k for k, v in original.weights().items() if not torch.equal(v, unlearned.weights()[k])}
    assert changed == {p for p in (proj.weight, proj.bias) if p}
    ledger = read_ledger(model_id, unlearned)
    assert [r["scenario"] for r in ledger.requests] == ["tiny-springer", "tiny-tabby"]
    assert ledger.requests[0]["method_config"]["together_with"] == ["tiny-tabby"]


def test_forgetting_together_refuses_what_it_cannot_do_in_one_line(base, scenarios, tmp_path, capsys):
    args = ["forget", "--model", base, "--scenario", str(scenarios[0]), "--scenario", str(scenarios[1])]
    assert main([*args, "--method", "ours-paper", "--out", str(tmp_path / "a")]) == 2
    assert "one after another" in capsys.readouterr().err
    assert main(["forget", "--model", base, "--scenario", str(scenarios[0]), "--scenario", str(scenarios[0]),
                 "--out", str(tmp_path / "b")]) == 2
    assert "named twice" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
