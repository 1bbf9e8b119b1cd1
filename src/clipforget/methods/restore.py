"""Stage 3, restore: a soup of the original and the unlearned weights that gives back what forgetting
cost elsewhere, chosen on the run's scoring function (``restore.mode``: one function per mode)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from clipforget.config import Config, require
from clipforget.methods.base import ScoreFn, StateDict
from clipforget.methods.fisher import Selection
from clipforget.methods.souping import SoupChoice, greedy_soup, search_alpha, weighted_soup


@dataclass(frozen=True)
class RestoreConfig(Config):
    """The souping stage.

    mode: "interpolate" (grid search over alpha), "greedy" (greedy soup of original, forget-stage
        and reminded weights) or "fisher" (per-layer Fisher-weighted average of original and
        unlearned: retain Fisher pulls toward the original, forget Fisher toward the unlearned).
    grid: the alpha values tried by "interpolate" (0: original, 1: unlearned).
    The forget target and the held-out part of D_f that check each alpha are the run's
    (:class:`clipforget.methods.base.WeightChoice`), the same for every method.
    tolerance: take the smallest feasible alpha whose utility is within this of the best feasible
        utility (0: the best, which can pick an alpha that loses held-out sets calibration cannot see).
    pick: which feasible alpha within ``tolerance`` of the best utility: "edge", the smallest one with
        ``margin`` feasible grid steps before it, or "center", the one farthest in grid steps from any
        infeasible alpha.
    margin: see ``pick``. The smallest feasible alpha sits where the holdout's 20 images first reach
        the target; unseen subgroup images cross that edge a little later.
    The rule and its values (edge, margin 3, tolerance 0.03) and the measurements behind them:
    docs/decisions.md, "Defaults of the paper's stages".
    """

    mode: Literal["interpolate", "greedy", "fisher"] = "interpolate"
    grid: tuple[float, ...] = tuple(i / 20 for i in range(21))
    tolerance: float = 0.03
    pick: Literal["center", "edge"] = "edge"
    margin: int = 3

    def __post_init__(self) -> None:
        require(bool(self.grid) and all(0 <= a <= 1 for a in self.grid), f"grid must be non-empty values in [0, 1], got {self.grid}")
        require(0 <= self.tolerance <= 1, f"tolerance must be in [0, 1], got {self.tolerance}")
        require(self.pick in ("center", "edge"), f"pick must be 'center' or 'edge', got {self.pick!r}")
        require(self.margin >= 0, f"margin must be >= 0 grid steps, got {self.margin}")



@dataclass(frozen=True)
class RestoreInputs:
    """What every restore mode reads: the original, forget-stage and current (unlearned) weights, the
    selection, the run's scoring function and forget target."""

    config: RestoreConfig
    original: StateDict
    after_forget: StateDict
    unlearned: StateDict
    selection: Selection
    layers: dict[str, list[str]]
    score_fn: ScoreFn
    forget_target: float


def _restore_interpolate(x: RestoreInputs) -> SoupChoice:
    """Grid search over α between the original and the unlearned weights."""
    c = x.config
    return search_alpha(x.original, x.unlearned, x.score_fn, sorted(c.grid), x.forget_target, c.tolerance, c.pick, c.margin)


def _restore_greedy(x: RestoreInputs) -> SoupChoice:
    """Greedy soup of the unlearned, the forget-stage and the original weights."""
    return greedy_soup([x.unlearned, {**x.original, **x.after_forget}, x.original], x.score_fn, x.forget_target)


def _restore_fisher(x: RestoreInputs) -> SoupChoice:
    """Per-layer Fisher-weighted average: retain Fisher pulls toward the original, forget Fisher toward the unlearned."""
    layer_of = {p: layer for layer in x.selection.layers for p in x.layers[layer]}
    scores = x.selection.scores
    w_orig = {k: scores["retain"][layer_of[k]] if k in layer_of else 1.0 for k in x.original}
    w_unl = {k: scores["forget"][layer_of[k]] if k in layer_of else 1.0 for k in x.original}
    soup = weighted_soup([x.original, x.unlearned], [w_orig, w_unl])
    utility, forget_acc = x.score_fn(soup)
    return SoupChoice(soup, [], {"utility": float(utility), "forget_acc": float(forget_acc)})


#: ``restore.mode`` -> the function that makes the soup.
RESTORE_MODES: dict[str, Callable[[RestoreInputs], SoupChoice]] = {
    "interpolate": _restore_interpolate, "greedy": _restore_greedy, "fisher": _restore_fisher}

