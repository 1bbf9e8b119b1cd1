"""What individual baselines do, on the tiny open_clip RN (every method through the one interface:
tests/test_method_registry.py)."""

from __future__ import annotations

import pytest
import torch
from test_method_stages import make_data

from clipforget.methods import get_method
from clipforget.methods.baselines.common import clip_logits, text_heads, tower_params
from clipforget.methods.baselines.finetuning import SalUnConfig, saliency_masks
from clipforget.methods.baselines.weightspace import SSD, TaskVectorConfig, dampen
from clipforget.methods.base import WeightChoice
from clipforget.methods.forget import forget_progress
from clipforget.methods.scoring import split_forget
from clipforget.methods.training import TrainConfig
from clipforget.models import DualEncoder
from clipforget.zeroshot import build_zero_shot_classifier


# -- behaviour on the tiny open_clip RN --------------------------------------------------------------


@pytest.fixture
def rn(tiny_models, request) -> DualEncoder:
    if "openclip-RN" not in request.node.callspec.id:
        pytest.skip("behaviour checks run on the tiny open_clip RN")
    return tiny_models


@pytest.mark.parametrize("name, retain_weight", [("ga", 0.0), ("neggrad+", 1.0)])
def test_ga_and_neggrad_lower_the_forget_similarity(rn, name, retain_weight):
    data = make_data()
    train = TrainConfig(steps=4, lr=1e-3, batch_size=6, check_every=100)
    method = get_method(name)
    result = method.run(rn, data, method.config_class(train=train, retain_weight=retain_weight))
    assert forget_progress(result.model, data)["forget_similarity"] < forget_progress(rn, data)["forget_similarity"]


def test_salun_changes_only_salient_weights(rn):
    data = make_data()
    config = SalUnConfig(train=TrainConfig(steps=3, lr=1e-3, batch_size=4, check_every=100), saliency_fraction=0.05)
    fit, _ = split_forget(data, WeightChoice().holdout, seed=0)  # the method sees D_f without the held-out part
    masks = saliency_masks(rn, fit, tower_params(rn), config.saliency_fraction, config.saliency_samples)
    after = get_method("salun").run(rn, data, config).model.weights()
    moved = {k: after[k] != v for k, v in rn.weights().items()}
    assert any(m.any() for m in moved.values())
    assert all(not (moved[k] & ~masks[k]).any() if k in masks else not moved[k].any() for k in moved)


def test_ssd_dampens_only_weights_more_important_to_forget_than_to_retain(rn):
    data, config = make_data(), SSD.smoke_config()
    forget, retain = SSD.importances(rn, data, config)
    state = rn.weights()
    out, selected = dampen(state, forget, retain, alpha=1.0, lam=0.5)
    assert selected > 0
    for k, v in state.items():
        moved = out[k] != v
        if k not in forget:
            assert not moved.any(), f"{k} is not a tower weight but changed"
        else:
            assert not (moved & ~(forget[k] > retain[k])).any(), f"{k}: a weight changed without I_f > I_r"
            assert (out[k].abs() <= v.abs()).all(), f"{k}: dampening grew a weight"


def test_task_vector_with_lambda_zero_returns_the_original(rn):
    config = TaskVectorConfig(train=TrainConfig(steps=2, lr=1e-3, batch_size=4), lambda_grid=(0.0,))
    result = get_method("task-vector").run(rn, make_data(), config)
    assert all(torch.equal(v, rn.weights()[k]) for k, v in result.model.weights().items())
    assert result.diagnostics["unlearn"]["chose_original"]


def test_forget_columns_are_the_forget_text_and_class(rn):
    data = make_data()
    with torch.no_grad():
        logits = clip_logits(rn, data.forget_images, text_heads(rn, data))
        images = rn.encode_image(data.forget_images)
        forget_text = rn.encode_text(rn.tokenize([data.forget_text]))
    heads = build_zero_shot_classifier(rn, data.classnames, data.templates)
    scale = float(rn.logit_scale)
    assert logits.shape == (len(data.forget_images), 1 + len(data.classnames))
    torch.testing.assert_close(logits[:, 0], scale * (images @ forget_text.T)[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[:, 1:], scale * images @ heads, rtol=1e-4, atol=1e-4)
