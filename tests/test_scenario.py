"""Scenario YAML -> splits: determinism, disjointness, clear refusals, and the shipped scenarios."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from synthetic import build_tiny_scenario, tiny_scenario_dict

from clipforget.config import ConfigError
from clipforget.data.loading import load_images
from clipforget.data.locations import shared_data_candidates
from clipforget.data.presets import imagenet_classnames
from clipforget.data.scenario import (
    ScenarioConfig,
    build_scenario,
    bundled_scenarios,
    load_scenario_config,
    open_sources,
    scenario_fingerprint,
)
from clipforget.data.sources import FASHION_MNIST_DIR, OPENCLIPART_DIR
from clipforget.data.types import ScenarioSplits
from clipforget.app.testbed.names import PHOTO_TEMPLATES

PUBLIC = ["cifar10-cat", "clipart-bird", "fmnist-sneaker", "springer-in-dog"]
EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


@pytest.fixture
def tiny(tmp_path) -> dict:
    return tiny_scenario_dict(tmp_path)


def all_sets(s: ScenarioSplits) -> dict[str, tuple]:
    sets = {"forget_train": s.forget_train, "retain_train": s.retain_train, "calibration": s.calibration,
            "target": s.target.records, "retain": s.retain.records}  # fmt: skip
    return sets | {f"heldout:{h.name}": h.records for h in s.heldout}


def assert_disjoint(s: ScenarioSplits) -> None:
    keys = {name: {(r.source, r.key) for r in records} for name, records in all_sets(s).items()}
    for name, records in all_sets(s).items():
        assert len(keys[name]) == len(records), f"{name} holds an image twice"
    for (a, ka), (b, kb) in itertools.combinations(keys.items(), 2):
        assert not ka & kb, f"{a} and {b} share images"


def test_tiny_scenario_builds_a_within_class_subgroup(tmp_path):
    s = build_scenario(build_tiny_scenario(tmp_path))
    assert (s.name, s.seed, s.forget_label, s.forget_text) == ("tiny-springer", 0, "dog", "a photo of a dog.")
    assert len(s.forget_train) == 6 and {(r.label, r.subgroup) for r in s.forget_train} == {("dog", "springer")}
    assert {(r.label, r.subgroup) for r in s.target.records} == {("dog", "springer")}
    assert {(r.label, r.subgroup) for r in s.retain.records} == {("dog", "poodle"), ("cat", "cat")}
    assert all("/train_" in r.key for r in s.forget_train + s.retain_train + s.calibration)
    assert all("/test_" in r.key for r in s.target.records + s.retain.records)
    assert s.target.classnames == s.retain.classnames == ("dog", "cat", "car")
    (fruit,) = s.heldout
    assert fruit.classnames == ("red apple", "banana") and fruit.templates == ("a photo of a {}, a fruit.",)
    assert {r.label for r in fruit.records} == {"red apple", "banana"} and len(fruit.records) == 6
    assert {r.label for r in s.calibration} == {"cat", "car"} and len(s.calibration) == 4
    assert len(s.fingerprint) == 64
    assert_disjoint(s)


def test_builder_is_deterministic_for_a_seed_and_differs_across_seeds(tiny):
    a, b = build_scenario(tiny), build_scenario(copy.deepcopy(tiny))
    assert a == b
    other = build_scenario({**tiny, "seed": 1})
    assert other.forget_train != a.forget_train and other.fingerprint != a.fingerprint
    assert_disjoint(other)


def test_fingerprint_follows_the_resolved_config(tmp_path, tiny):
    path = build_tiny_scenario(tmp_path)
    assert scenario_fingerprint(path) == scenario_fingerprint(tiny) == build_scenario(path).fingerprint
    assert scenario_fingerprint({**tiny, "templates": ["a {}."]}) != scenario_fingerprint(tiny)


def test_relative_roots_resolve_against_the_scenario_file(tmp_path, tiny):
    tiny["sources"]["fruit"]["root"] = "fruit"
    path = tmp_path / "relative.yaml"
    path.write_text(yaml.safe_dump(tiny))
    assert load_scenario_config(path).sources["fruit"].root == str((tmp_path / "fruit").resolve())
    assert build_scenario(path).heldout[0].records


def test_loaded_records_become_image_tensors(tmp_path):
    path = build_tiny_scenario(tmp_path)
    s = build_scenario(path)

    def preprocess(image):  # what a model's preprocess does: PIL -> tensor
        return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)

    images = load_images(s.target.records, open_sources(path), preprocess)
    assert images.shape == (4, 3, 32, 32)


def set_in(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return d


DELETE = object()

BAD = {
    "unknown class": ("forget.select.classes", ["wolf"],
                      r"forget.select: 'wolf' is not a class of source 'pets'; its classes: \['car', 'cat', 'dog'\]"),
    "unknown subgroup": ("forget.select.subgroups", ["beagle"], r"subgroup 'beagle' is not in \['dog'\]"),
    "unknown source kind": ("sources.fruit.kind", "webdataset", r"sources.fruit.kind: 'webdataset' is unknown; known kinds"),
    "undeclared source": ("forget.select.source", "zoo", r"source 'zoo' is not declared"),
    "label not in label space": ("forget.label", "wolf", r"forget.label: 'wolf' is not in classnames"),
    "retain not a sibling": ("retain.1.label", "car", r"'car' is not a sibling of 'dog'"),
    "retain overlaps forget": ("retain.0.select.subgroups", ["springer", "poodle"],
                               r"retain\[0\] 'poodle': selects images of the forget subgroup \(overlapping sets\)"),
    "calibration overlaps forget": ("calibration.0.classes", ["dog", "car"],
                                    r"calibration\[0\]: selects images of the forget subgroup"),
    "empty count": ("forget.train.count", 0, r"forget.train.count is 0: an empty set"),
    "empty retain": ("retain", [], r"retain: list at least one sibling"),
    "empty classes": ("heldout.0.classes", [], r"heldout\[0\] 'fruit'.classes: the list is empty"),
    "no image matches": ("forget.test.flags", ["clean"], r"forget.test: no image matches"),
    "too few images": ("forget.train.count", 9, r"forget.train: asks for 9 images but only 8 are available"),
    "too few after earlier sets": ("retain.0.train.split", "any",
                                   r"asks for 11 images but only 10 are available .*the rest went to retain\[0\] 'poodle'.test"),  # fmt: skip
    "unknown field": ("forget.labels", "dog", r"unknown field\(s\) \['labels'\]"),
    "bad type": ("forget.train.count", "ten", r"forget.train.count: expected an integer"),
    "bad split": ("forget.train.split", "val", r"forget.train.split: 'val' is not one of"),
    "missing field": ("forget.text", DELETE, r"forget.text: give the text"),
    "template without {}": ("templates", ["a photo of a dog"], r"template 'a photo of a dog' has no '\{\}'"),
    "heldout template without {}": ("heldout.0.templates", ["fruit"], r"heldout\[0\] 'fruit'.templates"),
    "bad rename": ("heldout.0.rename", {"cherry": "x"}, r"rename: \['cherry'\] are not among classes"),
    "class in two superclasses": ("hierarchy.vehicle", ["car", "cat"],
                                  r"'cat' is in both 'animal' and 'vehicle'"),
    "alias is a class": ("forget.aliases", ["spaniel", "Cat "], r"forget.aliases: 'Cat ' is the class 'cat' of classnames"),
    "unknown label space": ("heldout.0.classnames", "imagenet21k",
                            r"heldout\[0\].classnames: 'imagenet21k' is not a named label space; known: \['imagenet1k', 'imagenet1k_clip', 'imagenet1k_openai'\]"),  # fmt: skip
    "unknown template preset": ("templates", "openai", r"templates: 'openai' is not a template preset; known: \[.*'openai_imagenet'"),
    "heldout class not in its label space": ("heldout.0.classnames", ["banana", "cherry"],
                                             r"heldout\[0\] 'fruit'.classnames: the selected classes \['red apple'\] are not in the label space"),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_scenarios_are_refused_with_one_clear_message(tiny, case):
    path, value, message = BAD[case]
    if case == "too few after earlier sets":
        tiny = set_in(tiny, "retain.0.train.count", 11)  # 8 train + 6 test poodles, 4 taken by the test set
    with pytest.raises(ConfigError, match=message):
        build_scenario(set_in(tiny, path, value))


def test_unknown_scenario_name_lists_the_bundled_ones():
    with pytest.raises(ConfigError, match="cifar10-cat"):
        build_scenario("no-such-scenario")


def test_bundled_scenarios_are_the_public_ones():
    assert bundled_scenarios() == sorted(PUBLIC + ["fmnist-sneaker-local", "imagenet-box-turtle", "imagenet-marmoset"])


@pytest.mark.parametrize("spec", bundled_scenarios() + [str(p) for p in sorted(EXAMPLES.glob("*.yaml"))])
def test_shipped_scenario_validates_without_data_and_round_trips(spec):
    config = load_scenario_config(spec)
    assert config.seed == 0 and config.forget.aliases
    assert all("{}" in t for t in config.templates + tuple(t for h in config.heldout for t in h.templates))
    assert ScenarioConfig.from_dict(yaml.safe_load(config.to_yaml())) == config
    if spec in PUBLIC:
        assert config.name == spec
        (inet,) = [h for h in config.heldout if h.name == "imagenette-1000way"]
        (clean,) = [h for h in config.heldout if h.name == "imagenette-clean"]
        assert inet.classnames == imagenet_classnames() and inet.templates == PHOTO_TEMPLATES
        assert (inet.source, inet.classes, inet.split, inet.flags) == (clean.source, clean.classes, clean.split, clean.flags)
        assert ("English springer" in inet.classes) == (spec != "springer-in-dog")  # its springers are Target


def _real_data_available(name: str = "") -> str | None:
    if name.startswith("clipart") and not OPENCLIPART_DIR.is_dir():
        return f"clip art not installed at {OPENCLIPART_DIR} (apt-get install openclipart-png, or make data)"
    if not FASHION_MNIST_DIR.is_dir():
        return f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)"
    for name in ("cifar10-jpg.tar.gz", "imagenette-224.tar.gz"):
        if not any((p / name).is_file() for p in shared_data_candidates()):
            return f"{name} not found in {[str(p) for p in shared_data_candidates()]} (set CLIPFORGET_SHARED_DATA)"
    return None


@pytest.mark.parametrize("name", PUBLIC)
def test_public_scenario_builds_on_the_real_data(name):
    # First run extracts the shared archives into the cache (~10 s); later runs only list them.
    reason = _real_data_available(name)
    if reason:
        pytest.skip(reason)
    s = build_scenario(name)
    assert_disjoint(s)
    assert s == build_scenario(name)
    for records in all_sets(s).values():
        assert records
    assert all(r.label in s.classnames for r in s.target.records + s.retain.records)
    for h in s.heldout:
        labels = {r.label for r in h.records}
        wider = h.name in ("imagenette-1000way", "clipart-other")  # scored over more names than they hold
        assert labels < set(h.classnames) if wider else labels == set(h.classnames)
    (inet,) = [h for h in s.heldout if h.name == "imagenette-1000way"]
    assert len(inet.classnames) == 1000 and len(inet.records) == 20 * (9 if name == "springer-in-dog" else 10)
    assert all("ILSVRC2012_val_" in r.key for r in inet.records)
    if name == "springer-in-dog":
        assert {(r.label, r.subgroup) for r in s.target.records} == {("dog", "English springer")}
        assert all("ILSVRC2012_val_" in r.key for r in s.target.records)
        assert ("dog", "cifar10 dog") in {(r.label, r.subgroup) for r in s.retain.records}
    if name == "clipart-bird":  # a style inside a class: drawings forgotten, photos of the same class kept
        assert {(r.source, r.label) for r in s.target.records + s.forget_train} == {("clipart", "bird")}
        assert (len(s.forget_train), len(s.target.records)) == (20, 24)  # all 44 mapped bird drawings
        assert {r.source for r in s.retain.records if r.label == "bird"} == {"cifar10"}
        (drawn,) = [h for h in s.heldout if h.name == "clipart-other"]
        assert {r.source for r in drawn.records} == {"clipart"} and "bird" not in {r.label for r in drawn.records}
    sources = open_sources(name)
    few = [records[0] for records in all_sets(s).values()]
    images = load_images(few, sources, lambda im: torch.from_numpy(np.asarray(im.resize((8, 8)), np.float32)))
    assert images.shape == (len(few), 8, 8, 3)


@pytest.mark.parametrize("field", ["hierarchy", "forget"])
def test_a_scenario_without_a_required_field_names_it(tmp_path, field):
    data = tiny_scenario_dict(tmp_path)
    del data[field]
    with pytest.raises(ConfigError, match=rf"required field\(s\) \['{field}'\] are missing; add them"):
        ScenarioConfig.from_dict(data)
