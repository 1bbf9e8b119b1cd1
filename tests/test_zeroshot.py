"""Zero-shot classifier, its content-keyed cache, image embeddings and accuracy."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from clipforget.models import DualEncoder, ModelSpec
from clipforget.models.base import normalize
from clipforget.zeroshot import (
    build_zero_shot_classifier,
    classifier_cache_key,
    compute_image_embeddings,
    state_dict_digest,
    zero_shot_accuracy,
)

CLASSES = ["cat", "dog", "bird"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}"]


class KnownTextModel(DualEncoder):
    """A text's embedding is its class's row of a table plus a small offset per template, and an
    "image" is already an embedding: the right classifier and predictions are known in advance."""

    backend = "known"
    image_prefixes = ("image_",)
    text_prefixes = ("table", "offsets")

    def __init__(self, name: str = "known", seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        model = nn.Module()
        model.table = nn.Parameter(torch.randn(len(CLASSES), 8, generator=g))
        model.offsets = nn.Parameter(0.3 * torch.randn(len(TEMPLATES), 8, generator=g))
        model.logit_scale = nn.Parameter(torch.tensor(4.6))
        super().__init__(model, ModelSpec(name, name), preprocess=torch.as_tensor)
        self.texts_encoded = 0

    def tokenize(self, texts):
        ids = []
        for text in texts:
            (c,) = [i for i, name in enumerate(CLASSES) if name in text.rstrip(".").split()]
            (t,) = [i for i, tpl in enumerate(TEMPLATES) if tpl.format(CLASSES[c]) == text]
            ids.append([c, t])
        return {"input_ids": torch.tensor(ids)}

    def encode_text(self, text):
        self.texts_encoded += len(text["input_ids"])
        c, t = text["input_ids"].T
        return normalize(self.model.table[c] + self.model.offsets[t])

    def saved_id(self, directory):
        raise NotImplementedError

    def encode_image(self, images):
        return normalize(images)

    @property
    def logit_scale(self):
        return self.model.logit_scale.exp()

    def save(self, directory):
        raise NotImplementedError


def expected_classifier(model: KnownTextModel) -> torch.Tensor:
    table, offsets = model.model.table.detach(), model.model.offsets.detach()
    per_template = normalize(table[:, None, :] + offsets[None, :, :])  # (C, T, D)
    return normalize(per_template.mean(dim=1)).T


# -- classifier ---------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_classifier_is_the_normalised_template_mean_per_class(batch_size):
    model = KnownTextModel()
    w = build_zero_shot_classifier(model, CLASSES, TEMPLATES, batch_size=batch_size)
    assert w.shape == (8, len(CLASSES)) and not w.requires_grad
    torch.testing.assert_close(w, expected_classifier(model))


def test_classifier_classifies_images_near_their_class_text():
    model = KnownTextModel()
    w = build_zero_shot_classifier(model, CLASSES, TEMPLATES)
    labels = torch.tensor([2, 0, 1, 1, 2])
    images = model.model.table.detach()[labels] + 0.05 * torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    acc = zero_shot_accuracy(compute_image_embeddings(model, images, progress=False) @ w, labels, len(CLASSES))
    assert acc.top1 == 100.0


@pytest.mark.parametrize("templates", [[], ["a photo of a cat"]])
def test_classifier_rejects_templates_without_a_slot(templates):
    with pytest.raises(ValueError, match="template"):
        build_zero_shot_classifier(KnownTextModel(), CLASSES, templates)


def test_classifier_rejects_no_classes():
    with pytest.raises(ValueError, match="no class names"):
        build_zero_shot_classifier(KnownTextModel(), [], TEMPLATES)


# -- cache --------------------------------------------------------------------------------------
def test_cache_hit_returns_identical_weights_without_encoding(tmp_path):
    model = KnownTextModel()
    first = build_zero_shot_classifier(model, CLASSES, TEMPLATES, cache_dir=tmp_path)
    encoded = model.texts_encoded
    again = build_zero_shot_classifier(model, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert model.texts_encoded == encoded  # answered from the cache
    assert torch.equal(first, again)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_cache_is_keyed_by_content_not_by_name(tmp_path):
    a, same_weights_other_name = KnownTextModel(name="a"), KnownTextModel(name="b")
    other_weights = KnownTextModel(name="a", seed=1)
    key = classifier_cache_key(a, CLASSES, TEMPLATES)
    assert classifier_cache_key(same_weights_other_name, CLASSES, TEMPLATES) == key
    assert classifier_cache_key(other_weights, CLASSES, TEMPLATES) != key
    assert classifier_cache_key(a, CLASSES[::-1], TEMPLATES) != key
    assert classifier_cache_key(a, CLASSES, TEMPLATES[:1]) != key


def test_a_weight_change_invalidates_the_cache(tmp_path):
    model = KnownTextModel()
    old = build_zero_shot_classifier(model, CLASSES, TEMPLATES, cache_dir=tmp_path)
    with torch.no_grad():
        model.model.table[1].mul_(-1)
    new = build_zero_shot_classifier(model, CLASSES, TEMPLATES, cache_dir=tmp_path)
    torch.testing.assert_close(new, expected_classifier(model))
    assert not torch.allclose(new[:, 1], old[:, 1])
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_cache_round_trip_and_invalidation_on_real_backends(tiny_models, tmp_path):
    classes, templates = ["marmoset", "howler monkey", "airplane"], ["a photo of a {}.", "{}"]
    first = build_zero_shot_classifier(tiny_models, classes, templates, cache_dir=tmp_path)
    assert torch.equal(build_zero_shot_classifier(tiny_models, classes, templates, cache_dir=tmp_path), first)
    torch.testing.assert_close(first.norm(dim=0), torch.ones(len(classes)))
    _, param = next(tiny_models.named_weights("text"))
    with torch.no_grad():
        param.add_(torch.randn_like(param))
    changed = build_zero_shot_classifier(tiny_models, classes, templates, cache_dir=tmp_path)
    torch.testing.assert_close(changed, build_zero_shot_classifier(tiny_models, classes, templates))
    assert not torch.allclose(changed, first)


def test_state_dict_digest_sees_every_element_and_dtype_but_not_key_order():
    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(2)}
    digest = state_dict_digest(state)
    assert state_dict_digest(dict(reversed(list(state.items())))) == digest
    changed = {**state, "a": state["a"].clone().index_put_((torch.tensor(1), torch.tensor(2)), torch.tensor(5.5))}
    assert state_dict_digest(changed) != digest
    assert state_dict_digest({**state, "b": torch.ones(2, dtype=torch.float64)}) != digest
    assert state_dict_digest({**state, "b": torch.ones(1, 2)}) != digest


# -- image embeddings ---------------------------------------------------------------------------
@torch.no_grad()
def test_image_embeddings_from_a_tensor_or_batches_match_one_pass(tiny_models):
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = tiny_models.encode_image(images)
    from_tensor = compute_image_embeddings(tiny_models, images, batch_size=2, progress=False)
    from_batches = compute_image_embeddings(tiny_models, (x for x in images.split(3)), progress=False)
    for embs in (from_tensor, from_batches):
        assert embs.shape == reference.shape and embs.device.type == "cpu"
        torch.testing.assert_close(embs, reference, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(embs.norm(dim=-1), torch.ones(5))


def test_image_embeddings_refuse_labelled_batches_and_no_images():
    model = KnownTextModel()
    with pytest.raises(TypeError, match="image tensors"):
        compute_image_embeddings(model, [(torch.randn(2, 8), torch.tensor([0, 1]))], progress=False)
    with pytest.raises(ValueError, match="no images"):
        compute_image_embeddings(model, [], progress=False)


# -- accuracy -----------------------------------------------------------------------------------
# 4 samples, 6 classes. Sample 0: right. Sample 1: its class ranks 2nd. Sample 2: its class ranks
# last. Sample 3: right. So top-1 2/4, top-5 3/4; per class: 0 -> 1/1, 1 -> 0/1, 2 -> 1/2, 3..5 none.
LOGITS = torch.tensor(
    [
        [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [0.0, 8.0, 9.0, 1.0, 2.0, 3.0],
        [5.0, 4.0, 0.0, 3.0, 2.0, 1.0],
        [0.0, 1.0, 9.0, 3.0, 2.0, 1.0],
    ]
)
LABELS = torch.tensor([0, 1, 2, 2])


def test_accuracy_from_logits():
    acc = zero_shot_accuracy(LOGITS, LABELS, num_classes=6)
    assert (acc.top1, acc.top5, acc.count) == (50.0, 75.0, 4)
    assert acc.per_class == (100.0, 0.0, 50.0, None, None, None)
    assert acc.mean_per_class == 50.0
    assert json.loads(json.dumps(acc.to_dict())) == acc.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        acc.top1 = 0.0


def test_accuracy_from_predictions_has_no_top5():
    acc = zero_shot_accuracy(LOGITS.argmax(dim=1), LABELS, num_classes=6)
    assert (acc.top1, acc.top5) == (50.0, None)
    assert acc.per_class == (100.0, 0.0, 50.0, None, None, None)


def test_top5_is_capped_at_the_number_of_classes():
    acc = zero_shot_accuracy(torch.tensor([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]]), torch.tensor([0, 2]), num_classes=3)
    assert (acc.top1, acc.top5) == (0.0, 100.0)


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        (LOGITS, torch.tensor([0, 1, 2, 6]), "labels must lie"),
        (LOGITS[:3], LABELS, "expected logits"),
        (LOGITS[:, :5], LABELS, "expected logits"),
        (torch.tensor([0.0, 1.0, 2.0, 2.0]), LABELS, "expected logits"),
        (LOGITS[:0], LABELS[:0], "no samples"),
    ],
)
def test_accuracy_rejects_inconsistent_inputs(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        zero_shot_accuracy(scores, labels, num_classes=6)


def test_a_large_label_space_is_encoded_once_while_the_text_side_is_unchanged(tiny_models):
    classes = [f"thing {i}" for i in range(130)]  # 260 prompts: remembered in memory
    templates = ["a photo of a {}.", "{}"]
    calls = []
    encode = tiny_models.encode_text

    def counting(text):
        calls.append(1)
        return encode(text)

    tiny_models.encode_text = counting
    try:
        first = build_zero_shot_classifier(tiny_models, classes, templates)
        encoded = len(calls)
        image_param = next(n for n, _ in tiny_models.named_weights("image"))
        with torch.no_grad():  # an image-side edit: the classifier is the same, not recomputed
            dict(tiny_models.named_weights())[image_param].add_(1.0)
        assert torch.equal(build_zero_shot_classifier(tiny_models, classes, templates), first) and len(calls) == encoded
        _, text_param = next(tiny_models.named_weights("text"))
        with torch.no_grad():
            text_param.add_(torch.randn_like(text_param))
        changed = build_zero_shot_classifier(tiny_models, classes, templates)
        assert len(calls) > encoded and not torch.allclose(changed, first)
    finally:
        del tiny_models.encode_text
