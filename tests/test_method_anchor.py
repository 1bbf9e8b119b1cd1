"""The text-anchor term: its word list, which prompts it anchors, and that it holds text embeddings."""

from __future__ import annotations

from importlib import resources

import pytest
import torch
import yaml
from test_method_stages import make_data

from clipforget.config import ConfigError
from clipforget.methods import get_method
from clipforget.methods.adapters import AdapterConfig, Tuning
from clipforget.methods.anchor import (
    AnchorConfig,
    TextAnchor,
    anchor_prompts,
    builtin_words,
)
from clipforget.methods.base import clone_model
from clipforget.methods.forget import ForgetConfig, forget_stage
from clipforget.methods.losses import encode_texts
from clipforget.methods.training import TrainConfig
from clipforget.models import DualEncoder, load_model


@pytest.fixture
def model(tiny_model_id) -> DualEncoder:
    torch.manual_seed(0)
    return load_model(tiny_model_id)


def shipped_heldout_names() -> set[str]:
    names = set()
    for path in resources.files("clipforget").joinpath("scenarios").iterdir():
        if not path.name.endswith(".yaml"):
            continue
        spec = yaml.safe_load(path.read_text())
        for held in spec.get("heldout", []):
            rename = held.get("rename", {})
            names |= {rename.get(c, c).lower() for c in held["classes"]} | {c.lower() for c in held["classes"]}
    return names


def test_builtin_words_are_unique_and_leave_out_every_shipped_heldout_class():
    words = builtin_words()
    assert len(words) > 300 and len(set(words)) == len(words)
    heldout = shipped_heldout_names()
    assert {"tench", "truck", "t-shirt", "sneaker"} <= heldout  # the scenarios were really read
    assert not heldout & {w.lower() for w in words}


def test_prompts_leave_out_the_forget_class_and_its_nearest_words(model):
    data = make_data()  # forget label "monkey", forget text "a photo of a marmoset"
    words = ("monkey", "ape", "table", "river", "cloud", "lamp", "cup", "tree", "road", "star", "book")
    config = AnchorConfig(words=words, exclude_nearest=0.2, include_classes=False)
    prompts = anchor_prompts(model, data, config)
    assert "a photo of a monkey." not in prompts
    kept = [w for w in words if w != "monkey"]
    assert len(prompts) == len(kept) - 2
    with torch.no_grad():
        sims = encode_texts(model, [f"a photo of a {w}." for w in kept]) @ encode_texts(model, [data.forget_text])[0]
    nearest = {f"a photo of a {kept[i]}." for i in sims.argsort(descending=True)[:2].tolist()}
    assert not nearest & set(prompts)
    with_classes = anchor_prompts(model, data, AnchorConfig(words=words, exclude_nearest=0.0))
    assert {t.format(c) for c in ("cat", "dog", "bird") for t in data.templates} <= set(with_classes)
    assert not {t.format("monkey") for t in data.templates} & set(with_classes)


def text_layer_params(model: DualEncoder) -> list[str]:
    layers = model.layers(("text",))
    return [p for name in list(layers)[-2:] for p in layers[name]]


def test_the_anchor_holds_text_embeddings_while_forgetting(model):
    """The same forget run with and without the anchor: with it, anchor prompts drift less."""
    data = make_data()
    params = text_layer_params(model)
    config = ForgetConfig(train=TrainConfig(steps=12, lr=2e-2, batch_size=4), delta=-1.0)
    anchor_config = AnchorConfig(words=("table", "river", "cloud", "lamp", "cup", "tree"), exclude_nearest=0.0, weight=10.0)
    drift = {}
    for weight in (0.0, 10.0):
        student = clone_model(model)
        anchor = TextAnchor(model, data, anchor_config, torch.Generator().manual_seed(0))
        used = anchor if weight else None
        forget_stage(student, data, Tuning(tuple(params), AdapterConfig(), torch.Generator().manual_seed(0), use_lora=False), config, anchor=used)
        drift[weight] = anchor.drift(student)
    assert drift[0.0] > 0
    assert drift[10.0] < drift[0.0]


def test_anchor_loss_is_zero_for_the_original_and_grows_with_change(model):
    data = make_data()
    anchor = TextAnchor(model, data, AnchorConfig(words=("table", "river"), batch_size=100), torch.Generator().manual_seed(0))
    assert float(anchor.loss(model).detach()) == pytest.approx(0.0, abs=1e-5)
    student = clone_model(model)
    with torch.no_grad():
        for name in text_layer_params(student):
            p = student.model.get_parameter(name)
            p.add_(0.1 * torch.randn_like(p))
    assert anchor.drift(student) > 1e-4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("weight", -1.0, "weight"), ("template", "a photo", "template"), ("exclude_nearest", 1.0, "exclude_nearest"), ("words", (), "words")],
)
def test_bad_anchor_config_is_a_clear_error(field, value, message):
    with pytest.raises(ConfigError, match=message):
        AnchorConfig(**{field: value})


def test_the_paper_method_applies_the_anchor_in_the_configured_stages_only(model):
    method = get_method("ours-paper")
    smoke = method.smoke_config()
    assert smoke.select.towers == ("text",)  # the anchor only acts when text layers are tuned
    for stages in (("remind",), ("forget", "remind")):
        config = smoke.with_overrides([f"anchor.stages=[{','.join(stages)}]"])
        diagnostics = method.run(model, make_data(), config, seed=0).diagnostics
        assert ("anchor" in diagnostics["forget"]["curves"]) == ("forget" in stages)
        assert "anchor" in diagnostics["remind"]["distill"]["curves"]
        assert diagnostics["remind"]["distill"]["final"]["anchor_drift"] >= 0
    off = method.run(model, make_data(), smoke.with_overrides(["anchor.weight=0"]), seed=0).diagnostics
    assert "anchor" not in off["forget"]["curves"] and "anchor" not in off["remind"]["distill"]["curves"]
