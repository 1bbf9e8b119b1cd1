"""The closed-form edit of the image projection (``forget.solver=closed_form``), alone and in joint edits of
several requests, on tiny random models of every backend."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_method_stages import changed_keys, make_data
from test_method_stages import model as model  # noqa: F401 - the shared fixture

from clipforget.methods import get_method
from clipforget.methods.base import clone_model
from clipforget.methods.edit import closed_form_edit, forget_directions
from clipforget.methods.forget import ForgetConfig, ForgetObjective
from clipforget.methods.losses import embed_images, projected_targets
from clipforget.models import projection_inputs
from clipforget.models.prefix import FrozenImagePrefix


def test_projected_targets_lose_exactly_the_forget_directions():
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=-1)
    directions = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    redundant = torch.cat([directions, directions[:1] * 2])  # a repeated direction adds nothing
    goal = projected_targets(emb, redundant)
    assert torch.allclose(goal.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert float((goal @ directions.T).abs().max()) < 1e-5
    mirrored = projected_targets(emb, directions, overshoot=1.0)
    assert bool(((mirrored @ directions.T) * (emb @ directions.T) <= 1e-6).all())  # signs flipped
    other = torch.linalg.svd(directions.T, full_matrices=True)[0][:, 3:]  # what the directions leave
    kept = (goal @ other).norm(dim=-1) / (emb @ other).norm(dim=-1)
    assert torch.allclose(goal @ other, (emb @ other) * kept[:, None], atol=1e-5)  # the rest only rescaled


def test_the_projection_target_takes_the_forget_text_off_the_images_through_the_image_tower(model):
    data = make_data()
    layers = model.layers()
    pick = next(n for n, ps in reversed(list(layers.items())) if model.tower_of(ps[0]) == "image" and any(p.endswith("weight") for p in ps))
    weights = [model.model.get_parameter(p) for p in layers[pick] if p.endswith("weight")]
    config = ForgetConfig(class_weight=0.0, target="project")
    objective = ForgetObjective(model, data, config, layers[pick])
    everything = torch.arange(len(data.forget_images))
    text = objective._text[0]

    def off_text() -> float:
        return float((embed_images(model, data.forget_images) @ text).abs().mean())

    start, loss0 = off_text(), float(objective(everything)["loss"].detach())
    for _ in range(20):
        grads = torch.autograd.grad(objective(everything)["loss"], weights)
        with torch.no_grad():
            for w, g in zip(weights, grads):
                w -= 0.05 * g / (g.norm() + 1e-12)
    assert float(objective(everything)["loss"].detach()) < loss0
    assert off_text() < start
    with pytest.raises(ValueError, match="target"):
        ForgetConfig(target="pull")


def test_projection_inputs_reproduce_the_image_outputs_through_the_named_projection(model):
    proj = model.image_projection()
    assert proj is not None, f"{model.backend} exposes no image projection"
    images = make_data().forget_images
    params = dict(model.named_weights())
    w = params[proj.weight].detach()
    w = w.T if proj.transposed else w
    b = params[proj.bias].detach() if proj.bias else 0.0
    before = {k: v.clone() for k, v in model.weights().items()}
    features = projection_inputs(model, images, batch_size=4)
    assert features.shape == (len(images), w.shape[1])
    with torch.no_grad():
        assert torch.allclose(features @ w.T + b, model.image_outputs(images), atol=1e-5)
    assert not changed_keys(before, model.weights())  # the identity swap is undone
    stages = model.image_stages()
    if stages:  # a frozen-prefix view reads the same inputs from its activations
        view = FrozenImagePrefix(model, stages[-1].name)
        assert torch.allclose(projection_inputs(view, view.prefix(images)), features, atol=1e-5)


def test_the_closed_form_edit_changes_only_the_projection_and_takes_the_forget_directions_off(model):
    data = make_data(n=8)
    config = ForgetConfig(target="project", solver="closed_form", overshoot=0.0, ridge=1e-6, retain_weight=0.0)
    q = torch.linalg.svd(forget_directions(model, data).T.double(), full_matrices=False)[0]
    before = {k: v.clone() for k, v in model.weights().items()}

    def along(images) -> float:  # share of the output norm inside the forget directions
        with torch.no_grad():
            z = model.image_outputs(images).double()
        return float(((z @ q).norm(dim=-1) / z.norm(dim=-1)).mean())

    start = along(data.forget_images)
    info = closed_form_edit(model, data, config)
    proj = model.image_projection()
    assert changed_keys(before, model.weights()) == {p for p in (proj.weight, proj.bias) if p}
    assert start > 0.05 and along(data.forget_images) < 0.05 * start  # with no ridge the targets are met
    assert info["edit_norm"] > 0
    assert abs(info["final"]["forget_similarity"]) < 0.05 * abs(info["before"]["forget_similarity"])  # orthogonal


def test_the_retain_weight_keeps_retain_outputs_in_place(model):
    data = make_data(n=8)
    with torch.no_grad():
        retain0 = model.image_outputs(data.retain_images).clone()

    def retain_drift(weight: float) -> float:
        edited = clone_model(model)
        closed_form_edit(edited, data, ForgetConfig(target="project", solver="closed_form", retain_weight=weight, ridge=1e-3))
        with torch.no_grad():
            return float((edited.image_outputs(data.retain_images) - retain0).norm() / retain0.norm())

    assert retain_drift(100.0) < 0.5 * retain_drift(0.0)


def test_candidate_retain_weights_keep_the_edit_the_rule_picks(model):
    """One edit per candidate weight, scored by the given function; the one kept is the feasible
    candidate with the highest utility (else the one that forgets most), applied exactly as a single
    edit at that weight would be, and nothing but the projection changes."""
    from clipforget.methods.edit import chosen_closed_form_edit, projection_parameters

    data = make_data(n=8)
    weights = (0.0, 1.0, 100.0)
    scored = []

    def score_fn(state):  # utility grows with the weight; the largest weight is made infeasible
        scored.append({k: v.clone() for k, v in state.items()})
        n = len(scored)
        return float(n), (0.5 if n == len(weights) else 0.0)

    config = ForgetConfig(target="project", solver="closed_form", retain_weights=weights, ridge=1e-3)
    before = {k: v.clone() for k, v in model.weights().items()}
    edited = clone_model(model)
    info = chosen_closed_form_edit(edited, data, config, score_fn, forget_target=0.0)
    assert [c["retain_weight"] for c in info["curve"]] == list(weights)
    assert info["choice"]["retain_weight"] == 1.0 and info["choice"]["feasible"]
    single = clone_model(model)
    closed_form_edit(single, data, dataclasses.replace(config, retain_weight=1.0, retain_weights=()))
    after, expected = edited.weights(), single.weights()
    assert set(changed_keys(before, after)) == set(projection_parameters(model))
    assert all(torch.allclose(after[k], expected[k], atol=1e-6) for k in after)
    assert torch.equal(scored[1][projection_parameters(model)[0]], after[projection_parameters(model)[0]])

    nothing_feasible = lambda state: (1.0, 0.9)  # noqa: E731 - ties everywhere: the earliest forgets most
    info = chosen_closed_form_edit(clone_model(model), data, config, nothing_feasible, forget_target=0.0)
    assert info["choice"]["retain_weight"] == 0.0 and not info["choice"]["feasible"]


def test_closed_form_settings_are_checked():
    with pytest.raises(ValueError, match="target: project"):
        ForgetConfig(solver="closed_form")
    with pytest.raises(ValueError, match="retain_weights"):
        ForgetConfig(target="project", solver="closed_form", retain_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="ridge"):
        ForgetConfig(target="project", solver="closed_form", ridge=0)
    with pytest.raises(ValueError, match="solver"):
        ForgetConfig(target="project", solver="lstsq")


def test_ours_with_the_closed_form_edit_changes_only_the_image_projection(model):
    from clipforget.methods import get_method

    method = get_method("ours")
    proj = model.image_projection()
    config = method.smoke_config().with_overrides(
        ["select.towers=[image]", "forget.target=project", "forget.solver=closed_form", "forget.overshoot=1.0",
         "use_remind=false", "use_souping=false"])
    result = method.run(model, make_data(), config, seed=0)
    changed = changed_keys(model.weights(), result.model.weights())
    assert changed == {p for p in (proj.weight, proj.bias) if p}
    assert result.diagnostics["forget"]["solver"] == "closed_form"


def test_the_name_overshoot_pushes_the_names_directions_on_their_own(model):
    data = make_data(n=8)
    names = ["cat", "tree"]
    directions = forget_directions(model, data, names).double()
    label_q = torch.linalg.svd(directions[[0, 3]].T, full_matrices=False)[0]

    all_q = torch.linalg.svd(directions.T, full_matrices=False)[0]
    names_q = torch.linalg.svd(all_q - label_q @ (label_q.T @ all_q), full_matrices=False)[0][:, :2]
    with torch.no_grad():
        z0 = model.image_outputs(data.forget_images).double()

    def shares(name_overshoot) -> tuple[float, float]:
        edited = clone_model(model)
        config = ForgetConfig(target="project", solver="closed_form", overshoot=0.0, name_overshoot=name_overshoot,
                              ridge=1e-6, retain_weight=0.0)
        closed_form_edit(edited, data, config, names)
        with torch.no_grad():
            z = edited.image_outputs(data.forget_images).double()
        return float((z @ label_q).norm() / z.norm()), float((z @ names_q).norm() / (z0 @ names_q).norm())

    (label_same, names_same), (label_far, names_far) = shares(None), shares(2.0)
    assert label_same < 0.05 and label_far < 0.05  # the label's directions are met either way
    assert names_same < 0.05 and abs(names_far - 2.0) < 0.1  # the names' part: orthogonal, or mirrored twice as far
    with pytest.raises(ValueError, match="name_overshoot"):
        ForgetConfig(target="project", solver="closed_form", name_overshoot=-1)


def test_one_joint_edit_of_one_request_is_the_single_runs_edit(model):
    from clipforget.methods import get_method
    from clipforget.methods.ours import forget_together

    ours = get_method("ours")
    config = ours.smoke_config().with_overrides(["forget.self_names=0"])
    single = ours.run(model, make_data(n=8), config, seed=3).model
    joint, info = forget_together([(model, make_data(n=8))], config, seed=3)
    for (k, a), b in zip(single.weights().items(), joint.weights().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert len(info["requests"]) == 1 and info["edit_norm"] > 0


def test_a_joint_edit_takes_every_requests_directions_off_its_own_images(model):
    from clipforget.methods.ours import forget_together

    first = make_data(seed=0, n=8)
    second = dataclasses.replace(make_data(seed=1, n=8), forget_text="a photo of a parrot", forget_label=3)
    config = get_method("ours").smoke_config().with_overrides(["forget.self_names=0", "forget.ridge=1e-6",
                                                              "forget.overshoot=0", "forget.retain_weight=0"])
    joint, _ = forget_together([(model, first), (model, second)], config, seed=0, holdout=0.0)

    def along(m, data) -> float:  # share of the forget outputs' norm inside the request's own directions
        q = torch.linalg.svd(forget_directions(model, data).T.double(), full_matrices=False)[0]
        with torch.no_grad():
            z = m.image_outputs(data.forget_images).double()
        return float(((z @ q).norm(dim=-1) / z.norm(dim=-1)).mean())

    for data in (first, second):
        assert along(model, data) > 0.05 and along(joint, data) < 0.2 * along(model, data)


def test_kept_images_stay_where_they_were(model):
    data, earlier = make_data(seed=0, n=8), make_data(seed=2, n=8).forget_images
    with torch.no_grad():
        start = model.image_outputs(earlier).clone()

    def drift(keep, weight: float = 1.0) -> float:
        edited = clone_model(model)
        config = ForgetConfig(target="project", solver="closed_form", ridge=1e-3, keep_weight=weight)
        closed_form_edit(edited, data, config, keep=keep)
        with torch.no_grad():
            return float((edited.image_outputs(earlier) - start).norm() / start.norm())

    assert drift([earlier]) < 0.5 * drift([])
    assert drift([earlier], weight=0.0) == pytest.approx(drift([]), rel=1e-4)  # keep_weight 0: off


def test_only_the_closed_form_edit_joins_requests(model):
    from clipforget.config import ConfigError
    from clipforget.methods.ours import forget_together

    with pytest.raises(ConfigError, match="one after another"):
        forget_together([(model, make_data()), (model, make_data(seed=1))], get_method("ours-paper").smoke_config())
    candidates = get_method("ours").config_class().with_overrides(["forget.retain_weights=[0.1,1.0]"])
    with pytest.raises(ConfigError, match="one retain weight"):
        forget_together([(model, make_data()), (model, make_data(seed=1))], candidates)
