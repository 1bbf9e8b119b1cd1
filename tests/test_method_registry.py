"""Every registered method (ours, ours-paper and every baseline), run end to end through the one
interface on every tiny random model: the same architecture out, the input untouched, a change or a
recorded choice of the original, bit-identical under a seed, resumable stage by stage."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_method_stages import make_data

from clipforget.config import Config
from clipforget.methods import (
    InMemoryStore,
    Method,
    MethodResult,
    get_method,
    list_methods,
    register_method,
)
from clipforget.methods.base import unregister_method
from clipforget.models import load_model


@pytest.fixture
def model(tiny_model_id):
    torch.manual_seed(0)
    return load_model(tiny_model_id)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown method 'nope'; known methods: .*ours"):
        get_method("nope")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_method("ours", type(get_method("ours")))

    class Dummy(Method):
        config_class = Config

        def fit(self, run, config) -> MethodResult:
            return MethodResult(run.student)

    register_method("dummy-test")(Dummy)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_method("dummy-test", Dummy)
        assert isinstance(get_method("dummy-test"), Dummy)
    finally:
        unregister_method("dummy-test")


def run(name, model, seed=0, store=None):
    method = get_method(name)
    return method.run(model, make_data(), method.smoke_config(), seed=seed, store=store)


@pytest.mark.parametrize("name", list_methods())
def test_method_unlearns_into_the_same_architecture_and_leaves_the_input_alone(name, model):
    before = {k: v.clone() for k, v in model.weights().items()}
    result = run(name, model)
    after = result.model.weights()
    assert list(after) == list(before) and all(after[k].shape == v.shape for k, v in before.items())
    assert all(torch.equal(v, model.weights()[k]) for k, v in before.items()), "the input model changed"
    assert result.model is not model and result.diagnostics
    changed = any(not torch.equal(after[k], v) for k, v in before.items())
    assert changed or chose_original(result.diagnostics), "nothing changed and no choice of the original was recorded"
    if "unlearn" in result.diagnostics:  # a baseline: the record is exact and candidates were scored
        assert changed != chose_original(result.diagnostics) and result.diagnostics["unlearn"]["curve"]


def chose_original(diagnostics: dict) -> bool:
    """Whether a method recorded that it chose the original weights (baselines; ours' souping alpha 0)."""
    if "unlearn" in diagnostics:
        return diagnostics["unlearn"]["chose_original"]
    return diagnostics.get("restore", {}).get("choice", {}).get("alpha") == 0.0


@pytest.mark.parametrize("name", list_methods())
def test_same_seed_gives_bit_identical_runs(name, tiny_model_id):
    def fresh():
        torch.manual_seed(0)
        return load_model(tiny_model_id)

    a, b = run(name, fresh(), seed=3), run(name, fresh(), seed=3)
    sa, sb = a.model.weights(), b.model.weights()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _without_times(a.diagnostics) == _without_times(b.diagnostics)


def _without_times(diagnostics: dict) -> dict:
    """Diagnostics less the wall times, which no seed fixes."""
    return {stage: {k: v for k, v in d.items() if k != "seconds"} for stage, d in diagnostics.items()}


@pytest.mark.parametrize("name", list_methods())
def test_resume_from_the_store_skips_finished_stages(name, model, monkeypatch):
    store = InMemoryStore()
    first = run(name, model, store=store)
    assert store.payloads, "a method must save its finished stages"
    saved = list(store.payloads)

    def no_work(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for module_name, module in list(sys.modules.items()):  # every stage's work goes through these
        if module_name.startswith("clipforget.methods"):
            for fn in ("train_loop", "fisher_scores", "make_score_fn", "search_alpha", "greedy_soup"):
                if hasattr(module, fn):
                    monkeypatch.setattr(module, fn, no_work)
    second = run(name, model, store=store)
    s1, s2 = first.model.weights(), second.model.weights()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert list(store.payloads) == saved


def test_resume_after_a_kill_matches_an_uninterrupted_run(model):
    full = run("ours-paper", model)
    store = InMemoryStore()
    run("ours-paper", model, store=store)
    for stage in ("remind", "restore"):  # as if killed after the forget stage
        store.payloads.pop(stage)
    resumed = run("ours-paper", model, store=store)
    sf, sr = full.model.weights(), resumed.model.weights()
    assert all(torch.equal(sf[k], sr[k]) for k in sf)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "docs" / "examples" / "methods").glob("*.yaml")))
def test_every_shipped_method_config_is_valid(path):
    from clipforget.app.runner import resolve_method_config

    name = path.stem.split("-")[0]  # ours-<variant>.yaml configures "ours"
    config = resolve_method_config(name, path)
    assert config != get_method(name).config_class(), f"{path.name} changes nothing"
