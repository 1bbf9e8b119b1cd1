"""The real command line, called as ``main([...])`` on tiny models and scenarios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic import build_tiny_scenario

from clipforget.cli import main
from clipforget.data.locations import DataNotFoundError
from clipforget.models import load_model


@pytest.fixture(scope="module")
def tiny_scenario(tmp_path_factory) -> Path:
    return build_tiny_scenario(tmp_path_factory.mktemp("scenario"))


def _saved_copy(model_id: str, directory: Path) -> str:
    """Save a tiny model the way clipforget does and return the id that loads the saved copy."""
    model = load_model(model_id)
    model.save(directory)
    return model.saved_id(directory)


def test_eval_writes_every_column(tiny_model_id, tiny_scenario, tmp_path, capsys):
    model_id = _saved_copy(tiny_model_id, tmp_path / "model")
    out = tmp_path / "metrics.json"
    assert main(["eval", "--model", model_id, "--scenario", str(tiny_scenario), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"target", "retain", "heldout"}
    assert metrics["heldout"], "the tiny scenario has a held-out set"
    for value in [metrics["target"], metrics["retain"], *metrics["heldout"].values()]:
        assert 0.0 <= value <= 100.0
    assert "Target" in capsys.readouterr().out


def test_eval_on_the_cifar10_tree(tiny_model_id, tmp_path):
    """The foundation's done-criterion: a tiny model evaluated on a scenario over the CIFAR-10 JPEG tree."""
    try:
        code = main(["eval", "--model", _saved_copy(tiny_model_id, tmp_path / "m"), "--scenario", "cifar10-cat",
                     "--out", str(tmp_path / "m.json")])
    except DataNotFoundError as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"real data unavailable: {e}")
    if code != 0 and not (tmp_path / "m.json").exists():
        pytest.skip("cifar10-cat needs ../shared/data and Debian's dataset-fashion-mnist")
    assert json.loads((tmp_path / "m.json").read_text())["target"] >= 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--model", "nope:x", "--scenario", "cifar10-cat"], "unknown model backend"),
        (["eval", "--model", "openclip:tiny-RN", "--scenario", "no-such-scenario"], "no-such-scenario"),
        (["eval", "--model", "hf:/does/not/exist", "--scenario", "cifar10-cat"], "/does/not/exist"),
    ],
)
def test_bad_input_gets_one_clear_error(argv, message, caplog):
    assert main(argv) == 2
    assert message in caplog.text


def test_lists(capsys):
    assert main(["scenarios"]) == 0
    assert {"cifar10-cat", "fmnist-sneaker", "springer-in-dog"} <= set(capsys.readouterr().out.split())
    assert main(["methods"]) == 0
    assert "ours" in capsys.readouterr().out.split()
