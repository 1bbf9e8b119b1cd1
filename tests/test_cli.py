"""The real command line, called as ``main([...])`` on tiny models and scenarios."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from synthetic import build_tiny_scenario

from clipforget.audit import AuditConfig
from clipforget.app.cli import main
from clipforget.data import build_scenario, load_scenario_config
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
    config = load_scenario_config("cifar10-cat")
    try:
        splits = build_scenario(config)
    except DataNotFoundError as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"cifar10-cat needs ../shared/data and Debian's dataset-fashion-mnist: {e}")
    code = main(["eval", "--model", _saved_copy(tiny_model_id, tmp_path / "m"), "--scenario", "cifar10-cat",
                 "--out", str(tmp_path / "m.json")])
    assert code == 0, "the data is here, so the command must succeed"
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics["heldout"]) == {s.name for s in splits.heldout}
    for name, eval_set in (("target", splits.target), ("retain", splits.retain)):
        assert metrics["details"][name]["count"] == len(eval_set.records)
        assert len(metrics["details"][name]["predicted"]) == len(eval_set.records)
        assert 0.0 <= metrics[name] <= 100.0


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


def test_lists_name_every_method_and_scenario_with_a_description(capsys):
    from clipforget.data import bundled_scenarios
    from clipforget.methods import list_methods

    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == bundled_scenarios()
    assert all("[needs: " in line and len(line.split()) > 6 for line in lines), lines
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines) == list_methods(), "the catalog names exactly the registered methods"
    assert all("[uses D_" in line for line in lines), lines


def test_listing_imports_no_model_code():
    import subprocess
    import sys

    code = ("import sys; from clipforget.app.cli import main; main(['methods']); main(['scenarios']); "
            "heavy = sorted({'torch', 'open_clip', 'transformers', 'timm', 'matplotlib'} & set(sys.modules)); "
            "assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr


def test_a_reader_that_closes_the_pipe_early_ends_the_listing_quietly():
    import subprocess
    import sys

    # `clipforget methods | head -0`: the reader closes the pipe before the listing is written
    listing = subprocess.Popen([sys.executable, "-m", "clipforget", "methods"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    listing.stdout.close()
    stderr = listing.stderr.read().decode()
    assert listing.wait(timeout=60) == 141 and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_version(capsys):
    from clipforget import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"clipforget {__version__}"


def test_every_option_of_every_command_has_help_and_the_model_grammar_is_shown():
    from clipforget.app.cli_flags import build_parser as _parser

    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"clipforget {name} {action.option_strings or action.dest} has no help"
    assert "BACKEND:NAME[@WEIGHTS]" in parser.format_help() and "clipforget forget --model" in parser.format_help()
    assert "openclip:RN50@openai" in commands["forget"].format_help()


@pytest.mark.parametrize("method", ["audit", *__import__("clipforget.methods", fromlist=["x"]).list_methods()])
def test_config_prints_the_full_default_that_config_reads_back(method, capsys, tmp_path):
    from clipforget.audit import AuditConfig
    from clipforget.methods import get_method

    assert main(["config", method]) == 0
    path = tmp_path / "c.yaml"
    path.write_text(capsys.readouterr().out)
    cls = AuditConfig if method == "audit" else get_method(method).config_class
    assert cls.from_yaml(path) == cls()
    if method != "audit":
        from clipforget.app.runner import resolve_method_config

        assert resolve_method_config(method, path) == cls(), "what --config reads"


def test_config_of_an_unknown_method_is_one_clear_error(caplog):
    assert main(["config", "nope"]) == 2
    assert "unknown method 'nope'" in caplog.text


@pytest.fixture(scope="module")
def edited_pair(tmp_path_factory) -> tuple[str, str]:
    """A tiny open_clip ResNet and a copy with its text projection flipped, both saved: (original, edited) ids."""
    from tiny import register_tiny_openclip

    root = tmp_path_factory.mktemp("pair")
    register_tiny_openclip(root)
    torch.manual_seed(0)
    original = load_model("openclip:tiny-RN")
    edited = copy.deepcopy(original)
    with torch.no_grad():
        edited.model.text_projection.mul_(-1)
    original.save(root / "original")
    edited.save(root / "edited")
    return original.saved_id(root / "original"), edited.saved_id(root / "edited")


def test_audit_command_end_to_end(edited_pair, tiny_scenario, tmp_path, capsys):
    original, edited = edited_pair
    config = tmp_path / "audit.yaml"
    config.write_text(AuditConfig(templates=("a photo of a {}.",), relearn_steps=(1, 2)).to_yaml())
    out = tmp_path / "audit"
    argv = ["audit", "--model", edited, "--original", original, "--scenario", str(tiny_scenario), "--out", str(out),
            "--seed", "1", "--config", str(config), "--image-prefix", "visual.layer4"]
    assert main(argv) == 0
    audited = json.loads((out / "audit.json").read_text())
    assert (audited["seed"], audited["model"], audited["original"]) == (1, edited, original)
    assert audited["image_prefix"] == "visual.layer4", "only the text changed, so both run on shared prefix activations"
    assert audited["parts"]["relearn"]["changed"] == ["text_projection"]
    assert audited["parts"]["relearn"]["settings"]["towers"]["parameters"] > 1
    assert audited["parts"]["image"]["cosine_target"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert "## Audit: can the subgroup still be found?" in (out / "audit.md").read_text()
    printed = capsys.readouterr().out
    assert "Target, worst prompt" in printed and "audit.md" in printed


def test_audit_command_refuses_a_file_as_its_output_before_loading_anything(tiny_scenario, tmp_path, caplog):
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    argv = ["audit", "--model", "nope:x", "--original", "nope:y", "--scenario", str(tiny_scenario), "--out", str(taken / "sub")]
    assert main(argv) == 2
    assert "is a file" in caplog.text and "unknown model backend" not in caplog.text
    assert taken.read_text() == "not a directory"
