"""Named label spaces and template presets, and the scenario fields that use them."""

from __future__ import annotations

import copy

import pytest
import yaml
from synthetic import tiny_scenario_dict

from clipforget.config import ConfigError
from clipforget.data import presets
from clipforget.data.presets import label_space, register_label_space, register_templates, template_preset
from clipforget.data.scenario import ScenarioConfig, build_scenario, load_scenario_config, scenario_fingerprint
from clipforget.data.sources import IMAGENETTE_CLASSES


@pytest.fixture
def tiny(tmp_path) -> dict:
    return tiny_scenario_dict(tmp_path)


def fruit(tiny: dict, **fields) -> dict:
    """``tiny`` with its held-out set ``fruit`` changed by ``fields``."""
    tiny = copy.deepcopy(tiny)
    tiny["heldout"][0].update(fields)
    return tiny


def test_imagenet_label_spaces_are_the_1000_classes_in_synset_order():
    names, curated = label_space("imagenet1k"), label_space("imagenet1k_openai")
    assert len(names) == len(curated) == 1000 and names[0] == curated[0] == "tench"
    assert set(IMAGENETTE_CLASSES.values()) <= set(names)  # Imagenette photos need no rename
    assert curated[names.index("English springer")] == "English Springer Spaniel"


def test_openai_templates_are_80_strings_with_a_placeholder():
    templates = template_preset("openai_imagenet")
    assert len(templates) == 80 and all(isinstance(t, str) and "{}" in t for t in templates)
    assert template_preset("simple_imagenet")[0] == "itap of a {}."


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="'imagenet1k' is already registered"):
        register_label_space("imagenet1k", lambda: ("cat",))
    with pytest.raises(ValueError, match="'openai_imagenet' is already registered"):
        register_templates("openai_imagenet", lambda: ("a {}.",))


def test_a_heldout_set_scored_over_a_named_label_space(tiny):
    s = build_scenario(fruit(tiny, classnames="imagenet1k", rename={"apple": "Granny Smith"}, templates="simple_imagenet"))
    (h,) = s.heldout
    assert h.classnames == label_space("imagenet1k") and h.templates == template_preset("simple_imagenet")
    assert {r.label for r in h.records} == {"Granny Smith", "banana"} and len(h.records) == 6


def test_a_heldout_set_scored_over_an_explicit_label_space(tiny):
    (h,) = build_scenario(fruit(tiny, classnames=["cherry", "banana", "red apple"])).heldout
    assert h.classnames == ("cherry", "banana", "red apple") and {r.label for r in h.records} == {"red apple", "banana"}


def test_a_class_missing_from_the_label_space_is_named_with_a_close_match(tiny):
    with pytest.raises(ConfigError, match=r"the selected classes \['red apple'\] are not in the label space "
                       r"\(1000 names: tench, .*'red apple' is close to .*; map each to a name of it under 'rename'"):  # fmt: skip
        load_scenario_config(fruit(tiny, classnames="imagenet1k"))


def test_a_class_named_twice_in_the_label_space_is_refused(tiny):
    assert label_space("imagenet1k").count("crane") == 2  # ImageNet's bird and machine
    with pytest.raises(ConfigError, match=r"\['crane'\] name more than one class of the label space"):
        load_scenario_config(fruit(tiny, classnames="imagenet1k", rename={"apple": "crane"}))


def test_clip_benchmark_and_callable_templates_become_placeholder_strings(tiny):
    config = load_scenario_config({
        **fruit(tiny, templates=[lambda c: f"a photo of a {c}, a fruit."]),
        "templates": ["a photo of a {c}.", "a {}."],
    })  # fmt: skip
    assert config.templates == ("a photo of a {}.", "a {}.")
    assert config.heldout[0].templates == ("a photo of a {}, a fruit.",)


def test_presets_are_expanded_into_the_resolved_config(tiny, monkeypatch):
    named = fruit({**tiny, "templates": "simple_imagenet"}, classnames="imagenet1k", rename={"apple": "Granny Smith"})
    config = load_scenario_config(named)
    written = yaml.safe_load(config.to_yaml())
    assert written["templates"] == list(template_preset("simple_imagenet"))
    assert written["heldout"][0]["classnames"] == list(label_space("imagenet1k"))
    assert ScenarioConfig.from_dict(written) == config
    expanded = {**named, "templates": list(template_preset("simple_imagenet"))}
    assert scenario_fingerprint(named) == scenario_fingerprint(expanded)
    monkeypatch.setitem(presets.TEMPLATE_PRESETS, "simple_imagenet", lambda: ("itap of a {}.",))
    assert scenario_fingerprint(named) != scenario_fingerprint(expanded)  # the content, not the name, counts


def test_aliases_round_trip_and_reach_the_splits(tiny):
    tiny["forget"]["aliases"] = ["springer spaniel", "springers", "Englsh springer"]
    config = load_scenario_config(tiny)
    assert ScenarioConfig.from_dict(yaml.safe_load(config.to_yaml())).forget.aliases == tuple(tiny["forget"]["aliases"])
    assert build_scenario(config).forget_aliases == ("springer spaniel", "springers", "Englsh springer")
