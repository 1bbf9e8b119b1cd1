"""The stages of the paper's method, one at a time, on tiny random models of every backend."""

from __future__ import annotations

import math

import pytest
import torch

from clipforget.methods import NonFiniteLossError, TrainConfig, UnlearnData, train_loop
from clipforget.methods.adapters import AdapterConfig, Tuning, tuning
from clipforget.methods.align import (
    AlignConfig,
    align_images,
    norm_targets,
    record_stats,
    stats_distance,
)
from clipforget.methods.base import clone_model
from clipforget.methods.fisher import (
    SelectConfig,
    candidate_layers,
    fisher_scores,
    top_layers,
)
from clipforget.methods.forget import ForgetConfig, ForgetObjective, forget_progress, forget_stage
from clipforget.methods.losses import embed_images, forget_class_loss
from clipforget.zeroshot import class_head
from clipforget.methods.remind import RemindConfig, distillation_gap, remind_stage
from clipforget.models import DualEncoder, load_model


def make_data(seed: int = 0, n: int = 6, size: int = 32) -> UnlearnData:
    g = torch.Generator().manual_seed(seed)
    return UnlearnData(
        forget_images=torch.randn(n, 3, size, size, generator=g),
        forget_text="a photo of a marmoset",
        retain_images=torch.randn(n + 2, 3, size, size, generator=g),
        retain_labels=torch.arange(n + 2) % 3 + 1,
        classnames=("monkey", "cat", "dog", "bird"),
        templates=("a photo of a {}.", "a {}."),
        forget_label=0,
        calibration_images=torch.randn(n, 3, size, size, generator=g),
    )


@pytest.fixture
def model(tiny_model_id) -> DualEncoder:
    torch.manual_seed(0)  # random-initialised tiny models: the same weights every time
    return load_model(tiny_model_id)


def changed_keys(before: dict, after: dict) -> set[str]:
    assert list(before) == list(after)
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_fisher_scores_every_candidate_and_top_k_is_deterministic(model):
    data = make_data()
    config = SelectConfig(top_k=3, max_samples=3, towers=("image", "text"))  # the paper's candidate set
    layers = candidate_layers(model, config)
    assert {model.tower_of(ps[0]) for ps in layers.values()} == {"image", "text"}
    scores = fisher_scores(model, data, layers, config, torch.Generator().manual_seed(0))
    assert set(scores.relative) == set(layers) and all(v >= 0 and math.isfinite(v) for v in scores.forget.values())
    assert any(v > 0 for n, v in scores.forget.items() if model.tower_of(layers[n][0]) == "image")
    assert any(v > 0 for n, v in scores.forget.items() if model.tower_of(layers[n][0]) == "text")
    chosen = top_layers(scores.relative, 3)
    assert len(chosen) == 3 and min(scores.relative[c] for c in chosen) >= sorted(scores.relative.values())[-3]
    text_only = candidate_layers(model, SelectConfig(towers=("text",), exclude=(r"ln",)))
    assert all(model.tower_of(p) == "text" for ps in text_only.values() for p in ps)
    assert not any("ln" in name for name in text_only)


@pytest.mark.parametrize("use_lora", [True, False])
def test_forget_changes_only_the_selected_layers_and_lowers_similarity(model, use_lora):
    data = make_data()
    layers = model.layers()
    # one image-tower and one text-tower matrix layer, whatever the backend calls them
    picks = [next(n for n, ps in layers.items() if model.tower_of(ps[0]) == t and any(p.endswith("weight") for p in ps)) for t in ("image", "text")]
    params = [p for n in picks for p in layers[n]]
    before = {k: v.clone() for k, v in model.weights().items()}
    start = forget_progress(model, data)["forget_similarity"]
    config = ForgetConfig(train=TrainConfig(steps=8, lr=1e-2, batch_size=4, check_every=4), delta=-1.0)
    info = forget_stage(model, data, Tuning(tuple(params), AdapterConfig(rank=2), torch.Generator().manual_seed(0), use_lora), config)
    changed = changed_keys(before, model.weights())
    assert changed and changed <= set(params)
    assert info["final"]["forget_similarity"] < start
    assert info["steps_run"] == 8 and not info["stopped_early"]


def forget_label_probability(model: DualEncoder, data: UnlearnData) -> float:
    with torch.no_grad():
        classifier = class_head(model, data.classnames, data.templates)
        logits = model.logit_scale * embed_images(model, data.forget_images) @ classifier
    return float(logits.softmax(-1)[:, data.forget_label].mean())


@pytest.mark.parametrize("tower", ["image", "text"])
def test_the_class_term_pushes_forget_images_off_their_label(model, tower):
    data = make_data()
    layers = model.layers()
    pick = next(n for n, ps in layers.items() if model.tower_of(ps[0]) == tower and any(p.endswith("weight") for p in ps))
    weights = [model.model.get_parameter(p) for p in layers[pick] if p.endswith("weight")]
    # the similarity term is off (hinged at delta 1 it is zero): only the class term can move the weights
    objective = ForgetObjective(model, data, ForgetConfig(delta=1.0, hinge=True, class_weight=1.0), layers[pick])
    start = forget_label_probability(model, data)
    for _ in range(10):
        grads = torch.autograd.grad(objective(torch.arange(len(data.forget_images)))["loss"], weights)
        with torch.no_grad():
            for w, g in zip(weights, grads):
                w -= 0.05 * g / (g.norm() + 1e-12)
    assert forget_label_probability(model, data) < start - 1e-4
    silent = ForgetObjective(model, data, ForgetConfig(delta=1.0, hinge=True, class_weight=0.0), layers[pick])
    assert float(silent(torch.arange(len(data.forget_images)))["loss"].detach()) == 0.0


@pytest.mark.parametrize("tower", ["image", "text"])
def test_the_image_term_moves_forget_embeddings_off_the_original_only_through_the_image_tower(model, tower):
    data = make_data()
    layers = model.layers()
    pick = next(n for n, ps in reversed(list(layers.items())) if model.tower_of(ps[0]) == tower and any(p.endswith("weight") for p in ps))
    weights = [model.model.get_parameter(p) for p in layers[pick] if p.endswith("weight")]
    original = embed_images(model, data.forget_images)
    # only the image term is on: the similarity term is hinged away and the class term is off
    config = ForgetConfig(delta=1.0, hinge=True, class_weight=0.0, image_weight=1.0, image_margin=-1.0)
    objective = ForgetObjective(model, data, config, layers[pick])
    everything = torch.arange(len(data.forget_images))
    for _ in range(10):
        grads = torch.autograd.grad(objective(everything)["loss"], weights, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(weights, grads):
                if g is not None:
                    w -= 0.05 * g / (g.norm() + 1e-12)
    cosine = float((embed_images(model, data.forget_images) * original).sum(-1).mean())
    if tower == "image":
        assert cosine < 0.999
    else:  # the text tower cannot move image embeddings
        assert cosine == pytest.approx(1.0, abs=1e-6)


def test_forget_class_loss_is_bounded_and_vanishes_off_the_label():
    logits = torch.tensor([[10.0, 0.0, 0.0], [-10.0, 0.0, 0.0]], requires_grad=True)
    loss = forget_class_loss(logits, 0)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert logits.grad[1].abs().max() < 1e-4 < logits.grad[0].abs().max()  # off the label: no push


def test_forget_stops_once_below_delta(model):
    data = make_data()
    params = model.layers()[next(iter(model.layers()))]
    config = ForgetConfig(train=TrainConfig(steps=50, check_every=1), delta=1.0)  # already below
    info = forget_stage(model, data, Tuning(tuple(params), AdapterConfig(), torch.Generator().manual_seed(0)), config)
    assert info["stopped_early"] and info["steps_run"] == 0


def test_adapters_merge_back_to_the_original_names_and_shapes(model):
    """LoRA on every kind of layer (conv, linear, attention, embedding, bare matrices) merges cleanly."""
    before = {k: v.clone() for k, v in model.weights().items()}
    flags = {n: p.requires_grad for n, p in model.named_weights()}
    cls = type(model.model)
    names = sorted(p for ps in model.layers().values() for p in ps)
    with tuning(model.network, names, AdapterConfig(rank=2), torch.Generator().manual_seed(0)) as params:
        assert any(p.ndim == 2 for p in params)
        model.encode_image(torch.randn(2, 3, 32, 32)).sum().backward()
        with torch.no_grad():
            for p in params:
                p.add_(0.01)
    after = model.weights()
    assert list(after) == list(before) and all(after[k].shape == before[k].shape for k in before)
    assert changed_keys(before, after) and {n: p.requires_grad for n, p in model.named_weights()} == flags
    assert type(model.network) is cls and not any(type(m).__name__.startswith("Parametrized") for m in model.network.modules())


def test_remind_moves_retain_logits_toward_the_teacher(model):
    data = make_data()
    teacher = model
    student = clone_model(model)
    params = [p for n, ps in model.layers(("image",)).items() for p in ps][-6:]
    forget = ForgetConfig(train=TrainConfig(steps=6, lr=5e-2, batch_size=4), delta=-1.0)
    forget_stage(student, data, Tuning(tuple(params), AdapterConfig(rank=2), torch.Generator().manual_seed(0), use_lora=False), forget)
    gap_before = distillation_gap(student, teacher, data.retain_images, data)
    assert gap_before > 0
    distill = RemindConfig(train=TrainConfig(steps=15, lr=1e-2, batch_size=8), forget_weight=0.0, use_calibration=False, ce_weight=0.0)
    info = remind_stage(student, teacher, data, data.retain_images, Tuning(tuple(params), AdapterConfig(rank=2),
                        torch.Generator().manual_seed(0), use_lora=False), distill, forget)  # fmt: skip
    assert distillation_gap(student, teacher, data.retain_images, data) < gap_before
    assert set(info["curves"]) == {"loss", "kd", "embed"}


def retain_cross_entropy(model: DualEncoder, data: UnlearnData) -> float:
    with torch.no_grad():
        logits = model.logit_scale * embed_images(model, data.retain_images) @ class_head(model, data.classnames, data.templates)
    return float(torch.nn.functional.cross_entropy(logits, data.retain_labels))


def test_remind_label_term_lowers_the_retain_cross_entropy(model):
    data = make_data()
    student = clone_model(model)
    params = [p for n, ps in model.layers(("image",)).items() for p in ps][-6:]
    start = retain_cross_entropy(student, data)
    # only the label term: no KD, no embedding term, no forget term, retain images only
    distill = RemindConfig(train=TrainConfig(steps=15, lr=1e-2, batch_size=8), kd_weight=0.0, embed_weight=0.0,
                            forget_weight=0.0, use_calibration=False, ce_weight=1.0)  # fmt: skip
    info = remind_stage(student, model, data, data.retain_images, Tuning(tuple(params), AdapterConfig(rank=2),
                        torch.Generator().manual_seed(0), use_lora=False), distill, ForgetConfig())  # fmt: skip
    assert retain_cross_entropy(student, data) < start
    assert "ce" in info["curves"]


def test_alignment_reduces_the_statistics_distance_within_the_bound(model):
    data = make_data()
    targets = norm_targets(model, data.calibration_images)
    images = data.retain_images + 1.0  # shifted away from the calibration statistics
    config = AlignConfig(train=TrainConfig(steps=10, lr=0.1, batch_size=16, grad_clip=None), epsilon=0.5)

    def distance(x):
        with torch.no_grad(), record_stats(model) as stats:
            model.encode_image(x)
            return float(stats_distance(stats, targets))

    aligned, info = align_images(model, images, targets, config, torch.Generator().manual_seed(0))
    assert distance(aligned) < distance(images)
    assert (aligned - images).abs().max() <= 0.5 + 1e-6


def test_nan_loss_raises_a_clear_error():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 3.*lower the learning rate"):
        train_loop([w], lambda step: {"loss": w.sum() * (float("nan") if step == 3 else 1.0)}, TrainConfig(steps=10), desc="t")


def test_train_loop_ema_lags_the_raw_weights():
    def train(ema_decay):
        w = torch.nn.Parameter(torch.zeros(1))
        config = TrainConfig(steps=4, lr=1.0, optimizer="sgd", grad_clip=None, ema_decay=ema_decay)
        log = train_loop([w], lambda step: {"loss": -w.sum()}, config)
        assert log.steps_run == 4
        return float(w.detach())

    assert 0 < train(0.5) < train(None)


def test_subgroup_names_are_the_vocabulary_entries_the_model_gives_forget_images_more_than_retain_images(model):
    from clipforget.methods.naming import subgroup_names

    data = make_data()
    vocabulary = ["red", "green", "blue", "cat", "dog", "ship", "tree", "car", data.classnames[0]]
    names = subgroup_names(model, data, vocabulary, count=3)
    assert len(names) <= 3
    assert all(n["name"] != data.classnames[0] for n in names)  # a class of the scenario is never taken
    margins = [n["forget"] - n["retain"] for n in names]
    assert all(m > 0 for m in margins) and margins == sorted(margins, reverse=True)
    assert subgroup_names(model, data, vocabulary, count=0) == []
    everything = subgroup_names(model, data, vocabulary, count=len(vocabulary))
    floor = sorted(n["forget"] for n in everything)[len(everything) // 2]
    kept = subgroup_names(model, data, vocabulary, count=len(vocabulary), min_probability=floor)
    assert kept == [n for n in everything if n["forget"] >= floor] and len(kept) < len(everything)
    ratios = sorted(n["forget"] / n["retain"] for n in everything)
    ratio = (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2  # between two names: no float sits on the edge
    specific = subgroup_names(model, data, vocabulary, count=len(vocabulary), min_ratio=ratio)
    assert specific == [n for n in everything if n["forget"] >= ratio * n["retain"]] and len(specific) < len(everything)


def test_forget_names_join_the_forget_label_in_the_class_term(model):
    data = make_data()
    config = ForgetConfig(delta=1.0, hinge=True, class_weight=1.0)
    params = [n for n, _ in model.named_weights()][:1]
    everything = torch.arange(len(data.forget_images))
    alone = float(ForgetObjective(model, data, config, params)(everything)["class"])
    named = float(ForgetObjective(model, data, config, params, forget_names=["red", "blue"])(everything)["class"])
    assert named > alone  # the joint probability of the label and the names is larger than the label's


def test_the_paper_method_on_image_candidates_changes_the_image_tower_only(model):
    from clipforget.methods import get_method

    method = get_method("ours-paper")
    # the souped choice may be the original, so no souping here
    config = method.smoke_config().with_overrides(["select.towers=[image]", "forget.self_names=2", "use_souping=false"])
    result = method.run(model, make_data(), config, seed=0)
    before, after = model.weights(), result.model.weights()
    changed = changed_keys(before, after)
    assert changed, "the forget run changed nothing"
    assert all(model.tower_of(k) == "image" for k in changed), sorted(k for k in changed if model.tower_of(k) != "image")


def test_ours_by_default_edits_only_the_image_projection_and_ours_paper_tunes_the_text_tower(model):
    from clipforget.methods import get_method

    proj = model.image_projection()
    ours = get_method("ours")
    result = ours.run(model, make_data(), ours.smoke_config(), seed=0)
    assert changed_keys(model.weights(), result.model.weights()) == {p for p in (proj.weight, proj.bias) if p}
    assert set(result.diagnostics) == {"select", "forget"}  # no remind, no restore
    paper = get_method("ours-paper")
    config = paper.smoke_config()
    assert (config.forget.solver, config.select.towers, config.use_remind, config.use_souping) == ("gradient", ("text",), True, True)
    result = paper.run(model, make_data(), config.with_overrides(["use_souping=false"]), seed=0)
    changed = changed_keys(model.weights(), result.model.weights())
    assert changed and all(model.tower_of(k) == "text" for k in changed)


