"""Mining a scenario from an unlabeled pool and a description: the sets, the files, the refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from synthetic import write_image, write_manifest

from clipforget.app.cli import main
from clipforget.config import ConfigError
from clipforget.data import build_scenario
from clipforget.app.mined_scenario import mine_scenario
from clipforget.mining import MineConfig, compare_with_truth, held_for_test, mine_sets

SMALL = MineConfig(forget_count=4, retain_per_class=4, calibration_per_class=4, guard=0.25, contrast=())


def _unit(*rows) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float), dim=-1)


def test_the_forget_set_is_the_images_nearest_the_query_and_the_label_keeps_those_far_from_it():
    # axes: 0 = "dog", 1 = "cat", 2 = the query's direction
    images = _unit([1, 0, 2], [1, 0, 1.5], [1, 0, 0.9], [1, 0, 0.2], [1, 0, 0.0], [1, 0, 0.1], [0, 1, 0], [0.1, 1, 0])
    classes, query = _unit([1, 0, 0], [0, 1, 0]), _unit([0.3, 0, 1])
    sets = mine_sets(images, query, classes, 0, MineConfig(retain_per_class=2, calibration_per_class=1, guard=0.25))
    assert set(sets.forget) == {0, 1, 2}  # the query is their nearest text; image 3 is nearer "dog"
    assert sets.forget == tuple(sorted(sets.forget, key=lambda i: -float(sets.margin[i])))
    # the label's other images, farthest from the query first; the guard drops the nearest quarter (image 3)
    assert sets.retain[0] == (4, 5) and 0 not in sets.calibration
    assert sets.retain[1] == (6, 7)  # the other class, most confident first
    truth = [True, True, False, True, False, False, False, False]
    c = compare_with_truth(sets, truth)
    assert (c["precision"], c["recall"], c["leaked_retain"]) == pytest.approx((200 / 3, 200 / 3, 0.0))
    with_count = mine_sets(images, query, classes, 0, MineConfig(forget_count=1))
    assert with_count.forget == (0,)


def test_a_contrast_name_nearer_than_the_query_keeps_an_image_out_of_the_forget_set():
    images = _unit([1, 0, 2], [1, 0, 1.5], [0, 1, 0])
    classes, query = _unit([1, 0, 0], [0, 1, 0]), _unit([0.3, 0, 1])
    rival = _unit([1, 0, 1.2])  # e.g. "Welsh springer spaniel": image 1 is nearer it than the query
    assert mine_sets(images, query, classes, 0, MineConfig()).forget == (0, 1)
    assert mine_sets(images, query, classes, 0, MineConfig(), contrast_emb=rival).forget == (0,)


def test_the_label_rule_forgets_the_whole_class_and_retains_none_of_it():
    images = _unit([1, 0, 2], [1, 0.5, 0], [2, 0.1, 0], [0, 1, 0], [0.1, 1, 0])
    classes, query = _unit([1, 0, 0], [0, 1, 0]), _unit([0, 0.2, 1])  # the query is nearest no image but the first
    sets = mine_sets(images, query, classes, 0, MineConfig(forget_rule="label"))
    assert sets.forget == (2, 0, 1)  # every image classified as the label, most confident first
    assert 0 not in sets.retain and 0 not in sets.calibration and sets.retain[1] == (3, 4)
    assert mine_sets(images, query, classes, 0, MineConfig(forget_rule="label", forget_count=2)).forget == (2, 0)
    with pytest.raises(ValueError, match="forget_rule"):
        MineConfig(forget_rule="nearest")


def test_test_positions_spread_over_the_order_and_leave_a_train_image():
    assert held_for_test(10, 0.3) == {1, 5, 8}
    assert held_for_test(2, 0.3) == {1} and held_for_test(3, 0.9) == {0, 2}


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """A labelled pool manifest (its labels only for the comparison): springers and poodles as dogs, cats."""
    root = tmp_path_factory.mktemp("pool")
    rows = []
    for sub, cls, n in (("springer", "dog", 10), ("poodle", "dog", 16), ("cat", "cat", 10)):
        for i in range(n):
            rel = f"img/{sub}_{i:03d}.png"
            write_image(root / rel, sub, i)
            rows.append({"path": rel, "class": cls, "subgroup": sub})
    return write_manifest(root / "pool.csv", rows)


def _mine(model, pool, out, **kw):
    kw = {"classnames": ["dog"], "config": SMALL, "truth": "springer", **kw}
    return mine_scenario(model, pool, "photos of English springer spaniels", "dog", out, aliases=["springer"], **kw)


def test_mining_writes_a_scenario_that_builds_and_is_deterministic(tiny_models, pool, tmp_path):
    first = _mine(tiny_models, pool, tmp_path / "a" / "s.yaml")
    second = _mine(tiny_models, pool, tmp_path / "b" / "s.yaml")
    assert first.manifest.read_bytes() == second.manifest.read_bytes()
    assert first.scenario.read_text() == second.scenario.read_text()
    splits = build_scenario(first.scenario)
    assert len(splits.forget_train) + len(splits.target.records) == 4
    assert splits.forget_label == "dog" and splits.forget_aliases == ("springer",)
    rows = list(csv.DictReader(first.manifest.open()))
    mined = [r for r in rows if r["class"] == "forget"]
    assert {r["path"] for r in mined} == {str(Path(pool.parent / "img" / Path(r["path"]).name)) for r in mined}
    # the reported precision is what the manifest holds
    hits = sum(r["pool_subgroup"] == "springer" for r in mined)
    c = json.loads(first.report.read_text())["comparison"]
    assert c["precision"] == pytest.approx(100 * hits / 4) and c["recall"] == pytest.approx(100 * hits / 10)
    retained = [r for r in rows if r["class"].startswith("retain:")]
    assert c["leaked_retain"] == pytest.approx(100 * sum(r["pool_subgroup"] == "springer" for r in retained) / 10)
    assert not {r["path"] for r in mined} & {r["path"] for r in retained}
    assert all(r["split"] == "train" for r in rows if r["class"].startswith("calibration:"))
    scenario = yaml.safe_load(first.scenario.read_text())
    assert scenario["sources"]["pool"] == {"kind": "manifest", "root": "s.pool.csv"}


def test_mining_refuses_bad_requests_with_one_clear_error(tiny_models, pool, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        _mine(tiny_models, tmp_path / "empty", tmp_path / "1.yaml")
    with pytest.raises(ConfigError, match="'dog' is not in the label space"):
        _mine(tiny_models, pool, tmp_path / "2.yaml", classnames=["cat", "car"])
    # a query that is exactly the label's prompt is never nearer than the label: it matches nothing
    with pytest.raises(ConfigError, match="matches nothing"):
        mine_scenario(tiny_models, pool, "a photo of a dog.", "dog", tmp_path / "3.yaml", classnames=["dog", "cat"],
                      templates=["a photo of a {}."], config=MineConfig())
    with pytest.raises(ConfigError, match="no class or subgroup of the pool"):
        _mine(tiny_models, pool, tmp_path / "4.yaml", truth="beagle")
    done = _mine(tiny_models, pool, tmp_path / "5.yaml")
    before = done.scenario.read_bytes()
    with pytest.raises(ConfigError, match="never overwrites"):
        _mine(tiny_models, pool, tmp_path / "5.yaml")
    assert done.scenario.read_bytes() == before
    assert not list(tmp_path.glob("[1234]*"))  # a refused request writes nothing


def test_the_cli_mines_and_reports_precision_and_recall(pool, tmp_path, capsys, caplog):
    from tiny import register_tiny_openclip

    register_tiny_openclip(tmp_path)
    config = tmp_path / "mine.yaml"
    config.write_text(SMALL.to_yaml())
    argv = ["mine", "--model", "openclip:tiny-RN", "--pool", str(pool), "--query", "springer spaniels", "--label", "dog",
            "--classnames", "dog", "--alias", "springer", "--truth", "springer", "--config", str(config),
            "--out", str(tmp_path / "m.yaml")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "recall" in printed and (tmp_path / "m.yaml").is_file()
    assert main([*argv[:-1], str(tmp_path / "n.yaml"), "--label", "horse"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "'horse' is not in the label space" in errors[0]
    assert main([*argv[:-1], str(tmp_path / "k.yaml"), "--forget-count", "3"]) == 0  # the flag the errors name
    assert json.loads((tmp_path / "k.mining.json").read_text())["comparison"]["mined"] == 3
    from clipforget.app.cli import _mine_config

    assert _mine_config(None, "label", 2) == MineConfig(forget_rule="label", forget_count=2)
    assert _mine_config(str(config), None, None) == str(config)
