"""Weight-space operations of the restore stage: pure functions on state dicts."""

from __future__ import annotations

import pytest
import torch

from clipforget.methods.souping import (
    greedy_soup,
    interpolate,
    search_alpha,
    weighted_soup,
)


def states(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "n": torch.tensor(5)}
    b = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "n": torch.tensor(7)}
    return a, b


def test_interpolate_endpoints_are_exact_and_midpoint_is_the_mean():
    orig, unl = states()
    for k, v in interpolate(orig, unl, 0.0).items():
        assert torch.equal(v, orig[k])
    for k, v in interpolate(orig, unl, 1.0).items():
        assert torch.equal(v, unl[k])
    mid = interpolate(orig, unl, 0.5)
    assert torch.allclose(mid["w"], (orig["w"] + unl["w"]) / 2)
    assert mid["n"].dtype == torch.int64


def test_interpolate_rejects_mismatched_state_dicts():
    orig, unl = states()
    with pytest.raises(KeyError, match="differ in keys"):
        interpolate(orig, {k: v for k, v in unl.items() if k != "b"}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate(orig, {**unl, "w": torch.zeros(4, 3)}, 0.5)


def test_search_alpha_picks_the_best_feasible_alpha():
    orig, unl = states()
    # utility falls with alpha, forget accuracy too: the smallest feasible alpha wins
    def score(sd):
        alpha = float(((sd["w"] - orig["w"]) / (unl["w"] - orig["w"])).mean())
        return 1 - alpha, 1 - alpha

    choice = search_alpha(orig, unl, score, [0.0, 0.25, 0.5, 0.75, 1.0], forget_target=0.3)
    assert choice.choice["alpha"] == 0.75 and len(choice.curve) == 5
    assert torch.allclose(choice.state["w"], interpolate(orig, unl, 0.75)["w"])
    none_feasible = search_alpha(orig, unl, score, [0.0, 0.5], forget_target=0.1)
    assert none_feasible.choice["alpha"] == 0.5  # the one that forgets most


def test_search_alpha_center_keeps_away_from_both_edges_of_the_feasible_region():
    orig, unl = states()

    def score(sd):  # forgotten only for alpha in [0.375, 0.875]: reminding brings the subgroup back at 1
        alpha = round(float(((sd["w"] - orig["w"]) / (unl["w"] - orig["w"])).mean()), 4)
        return 0.9, 0.0 if 0.375 <= alpha <= 0.875 else 0.5

    grid = [i / 8 for i in range(9)]
    assert search_alpha(orig, unl, score, grid, forget_target=0.0, tolerance=0.01, rule="edge").choice["alpha"] == 0.375
    assert search_alpha(orig, unl, score, grid, forget_target=0.0, tolerance=0.01, rule="center").choice["alpha"] == 0.625
    # the utility tolerance still rules: only alpha 0.875 is near the best utility, so it is taken

    def best_late(sd):
        utility, forget_acc = score(sd)
        return utility + 0.05 * bool(torch.allclose(sd["w"], interpolate(orig, unl, 0.875)["w"])), forget_acc

    assert search_alpha(orig, unl, best_late, grid, forget_target=0.0, tolerance=0.01, rule="center").choice["alpha"] == 0.875


def test_search_alpha_margin_keeps_the_edge_rule_inside_the_feasible_region():
    orig, unl = states()

    def score(sd):  # forget accuracy reaches 0 at alpha 0.5; utility flat
        alpha = round(float(((sd["w"] - orig["w"]) / (unl["w"] - orig["w"])).mean()), 4)
        return 0.9, max(0.0, 0.5 - alpha)

    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert search_alpha(orig, unl, score, grid, forget_target=0.0, tolerance=0.01).choice["alpha"] == 0.5
    assert search_alpha(orig, unl, score, grid, forget_target=0.0, tolerance=0.01, margin=1).choice["alpha"] == 0.75
    # no alpha keeps the margin: the plain feasible choice, not a failure
    assert search_alpha(orig, unl, score, grid, forget_target=0.0, tolerance=0.01, margin=4).choice["alpha"] == 0.5


def test_weighted_soup_follows_the_weights():
    orig, unl = states()
    soup = weighted_soup([orig, unl], [{"w": 1.0, "b": 0.0, "n": 1.0}, {"w": 0.0, "b": 1.0, "n": 1.0}])
    assert torch.equal(soup["w"], orig["w"]) and torch.equal(soup["b"], unl["b"])


def test_greedy_soup_adds_only_ingredients_that_help():
    a, b = states()
    bad = {k: v * 100 if v.is_floating_point() else v for k, v in a.items()}

    def score(sd):
        return -float((sd["w"] - a["w"]).abs().mean()), 0.0

    choice = greedy_soup([bad, a, b], score, forget_target=0.0)
    assert torch.equal(choice.state["w"], a["w"]) and choice.choice["n_ingredients"] == 1


def test_forget_holdout_splits_d_f_into_disjoint_deterministic_parts():
    from test_method_stages import make_data

    from clipforget.methods.scoring import split_forget

    data = make_data(n=10)
    fit, check = split_forget(data, 0.2, seed=0)
    assert len(fit.forget_images) == 8 and len(check.forget_images) == 2
    rows = {tuple(x.flatten()[:4].tolist()) for x in data.forget_images}
    fit_rows = {tuple(x.flatten()[:4].tolist()) for x in fit.forget_images}
    check_rows = {tuple(x.flatten()[:4].tolist()) for x in check.forget_images}
    assert fit_rows | check_rows == rows and not fit_rows & check_rows
    again, _ = split_forget(data, 0.2, seed=0)
    assert torch.equal(again.forget_images, fit.forget_images)
    same, same_check = split_forget(data, 0.0, seed=0)
    assert same is data and same_check is data


def test_alpha_tolerance_prefers_the_smallest_feasible_alpha_near_the_best_utility():
    from clipforget.methods.souping import pick_alpha

    curve = [
        {"alpha": 0.0, "utility": 0.80, "forget_acc": 0.6},
        {"alpha": 0.3, "utility": 0.745, "forget_acc": 0.0},
        {"alpha": 0.6, "utility": 0.70, "forget_acc": 0.0},
        {"alpha": 1.0, "utility": 0.75, "forget_acc": 0.0},
    ]
    assert pick_alpha(curve, forget_target=0.0) == 3  # the best feasible utility
    assert pick_alpha(curve, forget_target=0.0, tolerance=0.01) == 1  # within 0.01 of it, closest to the original
    assert pick_alpha(curve, forget_target=0.0, tolerance=0.0) == 3


def test_the_shared_rule_takes_the_best_feasible_candidate_else_the_one_that_forgets_most():
    from clipforget.methods.scoring import best_candidate

    curve = [{"utility": 0.9, "forget_acc": 0.5}, {"utility": 0.7, "forget_acc": 0.0}, {"utility": 0.8, "forget_acc": 0.0},
             {"utility": 0.8, "forget_acc": 0.0}]
    assert best_candidate(curve, forget_target=0.0) == 2  # ties keep the earlier
    assert best_candidate(curve, forget_target=0.5) == 0
    none_feasible = [{"utility": 0.9, "forget_acc": 0.5}, {"utility": 0.1, "forget_acc": 0.2}, {"utility": 0.3, "forget_acc": 0.2}]
    assert best_candidate(none_feasible, forget_target=0.0) == 2


def test_the_run_template_keeps_the_held_out_forget_images_from_every_method(tiny_model_id):
    from test_method_stages import make_data

    from clipforget.config import Config
    from clipforget.methods.base import Method, MethodResult, WeightChoice

    from clipforget.models import load_model

    model = load_model(tiny_model_id)
    seen = {}

    class Spy(Method):
        config_class = Config

        def fit(self, run, config):
            seen.update(fit=run.data.forget_images, check=run.check.forget_images, target=run.forget_target,
                        score=run.score_fn(run.original))
            return MethodResult(run.student)

    data = make_data(n=10)
    Spy().run(model, data, Config(), seed=3, choice=WeightChoice(holdout=0.3, forget_target=0.1))
    fit = {tuple(x.flatten()[:6].tolist()) for x in seen["fit"]}
    check = {tuple(x.flatten()[:6].tolist()) for x in seen["check"]}
    assert len(fit) == 7 and len(check) == 3 and not fit & check
    assert seen["target"] == 0.1
    utility, forget_acc = seen["score"]
    assert 0 <= utility <= 1
    assert abs(forget_acc * 3 - round(forget_acc * 3)) < 1e-6  # measured on the 3 held-out images only
