"""The whole run on a tiny model that knows the subgroup: ``ours`` makes it forget and keeps the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from synthetic import build_tiny_scenario

from clipforget.data import build_scenario, load_images, load_scenario_config, open_sources
from clipforget.models import load_model
from clipforget.app.runner import run_forget
from clipforget.zeroshot import build_zero_shot_classifier


def taught_tiny_model(scenario: Path, tmp_path: Path):
    """A tiny open_clip ResNet whose image tower was trained on the scenario's training images and their
    labels (springers and poodles both as "dog"), so that it recognises the subgroup before forgetting."""
    from tiny import register_tiny_openclip

    tmp_path.mkdir(parents=True, exist_ok=True)
    register_tiny_openclip(tmp_path)
    torch.manual_seed(0)
    model = load_model("openclip:tiny-RN")
    config = load_scenario_config(scenario)
    splits = build_scenario(config)
    records = splits.forget_train + splits.retain_train
    images = load_images(records, open_sources(config), model.preprocess)
    labels = torch.tensor([splits.classnames.index(r.label) for r in records])
    heads = build_zero_shot_classifier(model, splits.classnames, splits.templates)
    params = [p for n, p in model.named_weights() if model.tower_of(n) == "image"]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    model.train()
    for _ in range(60):
        loss = F.cross_entropy(10 * model.encode_image(images) @ heads, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    root = tmp_path_factory.mktemp("taught")
    scenario = build_tiny_scenario(root / "scenario")
    return scenario, taught_tiny_model(scenario, root / "cfg")


@pytest.mark.xfail(strict=True, reason="known defect: on this toy the closed-form edit moves the springers' "
                   "embeddings off the dog directions (similarity to the forget text 0.18 -> -0.33) but every other "
                   "class lies further still, so they stay dogs (Target 100 -> 100); docs/decisions.md")
def test_ours_forgets_the_subgroup_of_a_model_that_knew_it_and_keeps_its_siblings(taught, tmp_path):
    scenario, model = taught
    result = run_forget("openclip:tiny-RN", scenario, tmp_path / "run", model=model, audit=False)
    assert result.original.target == 100.0 and result.original.retain == 100.0, "the taught model knows every image"
    assert result.unlearned.target <= 25.0, "the springers are no longer dogs"
    assert result.unlearned.retain >= 75.0, "poodles stay dogs and cats stay cats"


def test_a_run_whose_target_did_not_fall_says_so(taught, tmp_path):
    scenario, model = taught
    result = run_forget("openclip:tiny-RN", scenario, tmp_path / "run", model=model, audit=False)
    assert result.original.target == 100.0, "the taught model knows the springers"
    changed = [k for k, v in result.model.weights().items() if not torch.equal(v, model.weights()[k])]
    assert changed and all(result.model.tower_of(k) == "image" for k in changed)  # the edit ran, on the image side
    if result.unlearned.target >= result.original.target:
        assert any("Target did not fall (100.0 -> 100.0)" in w for w in result.warnings), result.warnings


def test_the_paper_configuration_forgets_the_subgroup_of_a_model_that_knew_it(taught, tmp_path):
    scenario, model = taught
    result = run_forget("openclip:tiny-RN", scenario, tmp_path / "run", model=model, audit=False, method="ours-paper")
    assert result.original.target == 100.0
    assert result.unlearned.target <= 25.0 and not any("Target did not fall" in w for w in result.warnings)
