"""The frozen image prefix: same embeddings, and nothing in the prefix can change."""

from __future__ import annotations

import pytest
import torch
from test_method_stages import make_data

from clipforget.methods import get_method
from clipforget.models import load_model
from clipforget.models.prefix import FrozenImagePrefix


@pytest.fixture
def rn(tmp_path):
    from tiny import register_tiny_openclip

    register_tiny_openclip(tmp_path)
    torch.manual_seed(0)
    return load_model("openclip:tiny-RN")


def test_stages_cover_every_image_parameter_once(rn):
    stages = rn.image_stages()
    for name, _ in rn.named_weights():
        owners = [s.name for s in stages if s.owns(name)]
        assert len(owners) == (1 if rn.tower_of(name) == "image" else 0), (name, owners)


def test_view_gives_the_same_embeddings(rn):
    x = torch.randn(4, 3, 32, 32)
    view = FrozenImagePrefix(rn, "visual.layer3")
    assert torch.allclose(view.encode_image(view.prefix(x)), rn.encode_image(x), atol=1e-6)
    assert view.tower_of("visual.layer1.0.conv1.weight") is None
    assert view.tower_of("visual.layer4.0.conv1.weight") == "image"
    assert not any(k.startswith("visual.layer1") for k in view.layers())


def test_the_view_keeps_the_models_eval_mode(rn):
    """A view of an eval-mode model is in eval mode, so that code which restores a module's mode after
    scoring (evaluate_scenario) leaves the shared BatchNorm layers in eval mode, not in training mode."""
    rn.eval()
    view = FrozenImagePrefix(rn, "visual.layer4")
    assert not view.training
    was = view.training
    view.eval()
    view.train(was)
    assert not rn.model.training and not any(m.training for m in rn.model.modules())


def test_a_method_on_the_view_changes_only_the_tail(rn):
    view = FrozenImagePrefix(rn, "visual.layer4")
    data = make_data()
    data = type(data)(**{**data.__dict__, **{k: view.prefix(getattr(data, k)) for k in
                                            ("forget_images", "retain_images", "calibration_images")}})
    config = get_method("ours").smoke_config().with_overrides(["use_souping=false", "select.towers=[image]"])
    before = {k: v.clone() for k, v in rn.weights().items()}
    result = get_method("ours").run(view, data, config, seed=0)
    unlearned = result.model.unwrap()
    after = unlearned.weights()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the forget stage must change something"
    frozen = view.frozen
    assert not any(s.owns(k) for s in frozen for k in changed), sorted(changed)
    assert all(k.startswith(("visual.layer4", "visual.attnpool")) for k in changed), sorted(changed)


def test_bad_stage_names_are_refused(rn, tiny_model_id):
    with pytest.raises(ValueError, match="unknown image stage"):
        FrozenImagePrefix(rn, "visual.layer9")
    other = load_model(tiny_model_id)
    if other.image_stages() is None:
        with pytest.raises(ValueError, match="does not expose image stages"):
            FrozenImagePrefix(other, "anything")
