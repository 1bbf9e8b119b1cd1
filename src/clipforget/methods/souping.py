"""Stage 3, restore: weight-space souping, as pure functions on state dicts.

The scoring is the caller's: ``score_fn(state_dict) -> (utility, forget_acc)``. Feasibility and the
fallback when no soup is feasible are the rule every method shares (:mod:`clipforget.methods.scoring`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from clipforget.methods.core import ScoreFn, StateDict
from clipforget.methods.scoring import best_candidate, feasible, most_forgetting
from clipforget.progress import progress

log = logging.getLogger(__name__)


def _check_same_keys(states: Sequence[Mapping[str, Tensor]]) -> None:
    first = states[0]
    for other in states[1:]:
        if set(other) != set(first):
            diff = sorted(set(other) ^ set(first))
            raise KeyError(f"state dicts differ in keys: {diff[:5]}{' ...' if len(diff) > 5 else ''}")
        for k, v in first.items():
            if other[k].shape != v.shape:
                raise ValueError(f"state dicts differ in the shape of {k!r}: {tuple(v.shape)} vs {tuple(other[k].shape)}")


def interpolate(original: Mapping[str, Tensor], unlearned: Mapping[str, Tensor], alpha: float) -> StateDict:
    """``alpha * unlearned + (1 - alpha) * original``; alpha 0 and 1 give the endpoints exactly.

    Non-float entries (BatchNorm's ``num_batches_tracked``) come from the nearer endpoint.
    """
    _check_same_keys([original, unlearned])
    out: StateDict = {}
    for k, o in original.items():
        u = unlearned[k]
        if alpha == 0:
            out[k] = o.clone()
        elif alpha == 1:
            out[k] = u.clone()
        elif not o.is_floating_point():
            out[k] = (o if alpha < 0.5 else u).clone()
        else:
            out[k] = torch.lerp(o, u.to(o.dtype), float(alpha))
    return out


def uniform_soup(states: Sequence[Mapping[str, Tensor]]) -> StateDict:
    """The plain average of ``states`` (non-float entries from the first)."""
    return weighted_soup(states, [{k: torch.ones(()) for k in states[0]} for _ in states])


def weighted_soup(states: Sequence[Mapping[str, Tensor]], weights: Sequence[Mapping[str, Tensor | float]], eps: float = 1e-12) -> StateDict:
    """``sum_i w_i * θ_i / sum_i w_i`` entrywise; weights broadcast (a scalar per tensor is fine).

    With per-parameter Fisher diagonals as weights this is Fisher-weighted averaging (Matena &
    Raffel 2022). Where all weights are zero, the plain average is used.
    """
    _check_same_keys(list(states))
    out: StateDict = {}
    for k, first in states[0].items():
        if not first.is_floating_point():
            out[k] = first.clone()
            continue
        w = [torch.as_tensor(ws[k], dtype=torch.float32, device=first.device) for ws in weights]
        total = sum(w)
        num = sum(wi * s[k].float() for wi, s in zip(w, states))
        mean = sum(s[k].float() for s in states) / len(states)
        out[k] = torch.where(total > eps, num / total.clamp_min(eps), mean).to(first.dtype)
    return out


@dataclass(frozen=True)
class SoupChoice:
    """The chosen weights and the scores of every candidate tried (JSON-able ``curve``)."""

    state: StateDict
    curve: list[dict[str, float]]
    choice: dict[str, float]


def _steps_inside(ok: Sequence[bool], i: int) -> int:
    """Grid steps from entry ``i`` to the nearest infeasible entry (the grid's ends count as one)."""
    below = max((j for j in range(i) if not ok[j]), default=-1)
    above = min((j for j in range(i + 1, len(ok)) if not ok[j]), default=len(ok))
    return min(i - below, above - i)


def pick_alpha(curve: list[dict[str, float]], forget_target: float, tolerance: float = 0.0, rule: str = "edge", margin: int = 0) -> int:
    """Among feasible entries whose utility is within ``tolerance`` of the best feasible utility:

    - ``edge``: the earliest (the grid runs from the original toward the unlearned weights, so earlier
      means fewer changes to what calibration does not measure); with ``margin``, an entry counts as
      feasible only if the ``margin`` entries before it are too (when none is, the margin is dropped);
    - ``center``: the one farthest, in grid steps, from any infeasible entry (ties: the earliest). The
      forget accuracy of a few holdout images places the edges of the feasible region only roughly,
      and it need not fall monotonically: reminding can bring part of the subgroup back near alpha = 1.
    """
    ok = [feasible(c, forget_target) for c in curve]
    candidates = [i for i in range(len(curve)) if ok[i]]
    if rule == "edge" and margin > 0:
        inside = [i for i in candidates if i >= margin and all(ok[i - margin : i + 1])]
        if candidates and not inside:
            log.warning("no feasible alpha has %d feasible grid steps before it; taking the margin away", margin)
        candidates = inside or candidates
    if candidates:
        best = max(curve[i]["utility"] for i in candidates)
        near = [i for i in candidates if curve[i]["utility"] >= best - tolerance]
        if rule == "center":
            return max(near, key=lambda i: (_steps_inside(ok, i), -i))
        return min(near)
    log.warning("no candidate reaches forget accuracy <= %s; taking the one that forgets most", forget_target)
    return most_forgetting(curve)


def search_alpha(
    original: Mapping[str, Tensor],
    unlearned: Mapping[str, Tensor],
    score_fn: ScoreFn,
    grid: Sequence[float],
    forget_target: float,
    tolerance: float = 0.0,
    rule: str = "edge",
    margin: int = 0,
) -> SoupChoice:
    """Score ``interpolate(original, unlearned, a)`` for each ``a`` in ``grid`` (ascending); pick the best
    feasible one, or with ``tolerance`` one within it of the best utility chosen by ``rule`` (see ``pick_alpha``)."""
    if not grid:
        raise ValueError("the alpha grid is empty")
    if rule not in ("edge", "center"):
        raise ValueError(f"unknown alpha rule {rule!r}: use 'edge' or 'center'")
    curve = []
    for a in progress(grid, desc="alpha grid", unit="alphas"):
        utility, forget_acc = score_fn(interpolate(original, unlearned, a))
        curve.append({"alpha": float(a), "utility": float(utility), "forget_acc": float(forget_acc)})
        log.debug("alpha %.3f: utility %.4f, forget acc %.4f", a, utility, forget_acc)
    best = pick_alpha(curve, forget_target, tolerance, rule, margin)
    log.info("alpha %g: calibration accuracy %.1f%%, held-out forget accuracy %.1f%%", grid[best],
             100 * curve[best]["utility"], 100 * curve[best]["forget_acc"])
    return SoupChoice(interpolate(original, unlearned, grid[best]), curve, curve[best])


def greedy_soup(ingredients: Sequence[Mapping[str, Tensor]], score_fn: ScoreFn, forget_target: float) -> SoupChoice:
    """Greedy soup (Wortsman et al. 2022): rank ingredients by score, then add each one to the uniform
    average only if the soup stays feasible and its utility does not drop."""
    if not ingredients:
        raise ValueError("greedy soup needs at least one ingredient")
    scored = [dict(zip(("utility", "forget_acc"), map(float, score_fn(s)))) for s in progress(ingredients, desc="soup ingredients")]
    first = best_candidate(scored, forget_target)
    order = [first, *sorted((i for i in range(len(ingredients)) if i != first), key=lambda i: (-scored[i]["utility"], i))]
    chosen = [order[0]]
    soup, best = dict(ingredients[order[0]]), scored[order[0]]
    curve = [{"ingredient": float(order[0]), "added": 1.0, **best}]
    for i in order[1:]:
        candidate = uniform_soup([ingredients[j] for j in [*chosen, i]])
        utility, forget_acc = map(float, score_fn(candidate))
        ok = forget_acc <= max(forget_target, best["forget_acc"]) and utility >= best["utility"]
        curve.append({"ingredient": float(i), "added": float(ok), "utility": utility, "forget_acc": forget_acc})
        if ok:
            chosen.append(i)
            soup, best = candidate, {"utility": utility, "forget_acc": forget_acc}
    return SoupChoice({k: v.clone() for k, v in soup.items()}, curve, {"n_ingredients": float(len(chosen)), **best})
