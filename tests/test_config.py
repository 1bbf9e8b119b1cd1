"""Config parsing: every Python float literal, duplicate keys refused, full dotted paths in errors."""

from __future__ import annotations

import math

import pytest

from clipforget.app.bench import parse_variant
from clipforget.config import ConfigError, load_yaml
from clipforget.methods import get_method

OURS = get_method("ours").config_class


@pytest.mark.parametrize("text", ["1e-3", "1.0e9", "1E5", ".5", "-2.", "+3.5e+2", "1_000.5", "2e-4", "0.001"])
def test_every_python_float_literal_is_a_float(text):
    value = load_yaml(text)
    assert isinstance(value, float) and value == float(text.replace("_", ""))


@pytest.mark.parametrize("text, expected", [("10", 10), ("0", 0), ("true", True), ("null", None), ("1e", "1e"),
                                            ("1.2.3", "1.2.3"), ("abc", "abc"), ("[0.0, 1.0]", [0.0, 1.0])])
def test_other_scalars_keep_their_yaml_meaning(text, expected):
    value = load_yaml(text)
    assert value == expected and type(value) is type(expected)


def test_infinities_and_nan():
    assert load_yaml("-.inf") == -math.inf and math.isnan(load_yaml(".nan"))


@pytest.mark.parametrize("override, lr", [("forget.train.lr=1e-3", 1e-3), ("forget.train.lr=1.0e9", 1e9)])
def test_overrides_take_exponent_floats(override, lr):
    assert OURS().with_overrides([override]).forget.train.lr == lr


def test_a_config_file_with_exponent_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("forget:\n  train:\n    lr: 3e-4\n")
    assert OURS.from_yaml(path).forget.train.lr == 3e-4


def test_a_duplicate_key_is_refused_naming_key_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("use_lora: true\nforget:\n  train:\n    lr: 0.1\n    steps: 3\n    lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"line 6: duplicate key 'lr' \(first given on line 4\)"):
        OURS.from_yaml(path)


@pytest.mark.parametrize("override, path", [
    ("adapter.rank=0", "adapter.rank"), ("forget.train.lr=-1", "forget.train.lr"),
    ("align.train.lr=0", "align.train.lr"), ("distill.train.lr=0", "distill.train.lr"),
    ("restore.grid=[2.0]", "restore.grid"),
])  # fmt: skip
def test_range_errors_name_the_full_path(override, path):
    with pytest.raises(ConfigError, match=rf"^{path.replace('.', '[.]')} must be"):
        OURS().with_overrides([override])


def test_a_range_error_in_a_file_names_the_file_and_the_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("distill:\n  train:\n    lr: 0\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: distill\.train\.lr must be > 0"):
        OURS.from_yaml(path)


@pytest.mark.parametrize("entry, overrides", [
    ("ours[restore.grid=[0.0,1.0]]", ["restore.grid=[0.0,1.0]"]),
    ("ours[use_lora=false, restore.grid=[0.0, 0.5, 1.0],forget.train.lr=1e-3]",
     ["use_lora=false", "restore.grid=[0.0, 0.5, 1.0]", "forget.train.lr=1e-3"]),
])  # fmt: skip
def test_method_variants_keep_list_values_whole(entry, overrides):
    name, parsed = parse_variant(entry)
    assert (name, parsed) == ("ours", overrides)
    assert OURS().with_overrides(parsed).forget.train.lr in (1e-3, OURS().forget.train.lr)


def test_a_partial_nested_section_changes_only_the_fields_it_names():
    from clipforget.methods.forget import ForgetConfig
    from clipforget.methods.ours import OursConfig, PaperConfig

    ours = OursConfig.from_dict({"forget": {"overshoot": 1.0, "train": {"steps": 5}}})
    assert (ours.forget.solver, ours.forget.overshoot, ours.forget.ridge) == ("closed_form", 1.0, 3.0)
    assert (ours.forget.train.steps, ours.forget.train.lr, ours.forget.train.batch_size) == (5, 1e-3, 32)
    assert PaperConfig.from_dict({"forget": {"delta": -0.3}}).forget.solver == "gradient"
    assert ForgetConfig.from_dict({"train": {"steps": 7}}).train.lr == 1e-3  # the section's own default, not TrainConfig's
    with pytest.raises(ConfigError, match="forget.train.*unknown field"):
        OursConfig.from_dict({"forget": {"train": {"stepz": 1}}})
