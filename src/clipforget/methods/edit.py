"""Stage 1 as one solve (``forget.solver="closed_form"``): a regularised least-squares edit of the
image projection that takes the subgroup's text directions off the forget images and holds the
retain images' outputs in place (beyond the paper; docs/decisions.md, "A closed-form edit")."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clipforget.methods.core import ScoreFn, UnlearnData
from clipforget.methods.forget import ForgetConfig
from clipforget.methods.losses import basis, encode_texts
from clipforget.methods.scoring import best_candidate, feasible, forget_progress
from clipforget.models.base import DualEncoder, projection_inputs
from clipforget.zeroshot import build_zero_shot_classifier


@torch.no_grad()
def forget_directions(model: DualEncoder, data: UnlearnData, forget_names: Sequence[str] = ()) -> Tensor:
    """The subgroup's text directions (rows): the forget text and each name's prompt, then the forget
    label's and each name's zero-shot class vector over the scenario's templates."""
    texts = [data.forget_text, *(data.templates[0].format(n) for n in forget_names)]
    classifier = build_zero_shot_classifier(model, [*data.classnames, *forget_names], data.templates)
    columns = [data.forget_label, *range(len(data.classnames), len(data.classnames) + len(forget_names))]
    return torch.cat([encode_texts(model, texts), classifier[:, columns].T])


def projection_parameters(model: DualEncoder) -> list[str]:
    """The parameter names of ``model``'s image projection (what :func:`closed_form_edit` changes)."""
    proj = model.image_projection()
    if proj is None:
        raise ValueError(f"forget.solver=closed_form edits the image projection, which the {model.backend} backend "
                         "does not expose; use forget.solver=gradient")
    return [p for p in (proj.weight, proj.bias) if p]


@dataclass(frozen=True)
class _Moments:
    """Count, sum and sum of outer products of a set of rows (float64): enough to centre them later."""

    count: int
    sum: Tensor
    outer: Tensor

    @classmethod
    def of(cls, x: Tensor) -> _Moments:
        return cls(len(x), x.sum(0), x.T @ x)

    def centred(self, mean: Tensor) -> Tensor:
        """``Σ (x − m)(x − m)ᵀ``."""
        s = torch.outer(mean, self.sum)
        return self.outer - s - s.T + self.count * torch.outer(mean, mean)


@dataclass(frozen=True)
class EditTerms:
    """What one forget request adds to the closed-form edit's least-squares problem (float64).

    ``forget``, ``retain``, ``keep``: moments of the projection inputs of D_f, D_r and the images whose
    outputs must stay where they are (earlier requests' D_f); ``cross`` = ``Σ_forget f gᵀ`` and
    ``goal_sum`` = ``Σ g`` for the forget images' targets ``g``.
    """

    forget: _Moments
    cross: Tensor
    goal_sum: Tensor
    retain: _Moments
    keep: _Moments | None
    retain_weight: float
    keep_weight: float
    directions: int


@torch.no_grad()
def edit_terms(model: DualEncoder, data: UnlearnData, config: ForgetConfig, forget_names: Sequence[str] = (),
               keep: Sequence[Tensor] = ()) -> EditTerms:
    """The terms of one request (``data``) in the edit of ``model``'s image projection (see :func:`closed_form_edit`).

    ``keep``: image batches (in ``model``'s view) whose outputs the edit must hold in place, each image
    weighted by ``config.keep_weight``.
    """
    proj = model.image_projection()
    projection_parameters(model)  # a clear error when the backend has no projection
    params = dict(model.named_weights())
    weight = params[proj.weight]
    w = (weight.T if proj.transposed else weight).detach().double().cpu()
    b = params[proj.bias].detach().double().cpu() if proj.bias else torch.zeros(w.shape[0], dtype=torch.float64)
    x = projection_inputs(model, data.forget_images).double()
    r = projection_inputs(model, data.retain_images).double()
    directions = forget_directions(model, data, forget_names).double().cpu()
    k = len(forget_names)
    q = basis(directions)
    label = basis(directions[[0, 1 + k]])  # the forget text and the label's class vector
    names = q - label @ (label.T @ q)  # what the names add
    u, s, _ = torch.linalg.svd(names, full_matrices=False)
    names = u[:, s > 1e-3]
    z = x @ w.T + b
    name_overshoot = config.overshoot if config.name_overshoot is None else config.name_overshoot
    goal = -(1 + config.overshoot) * (z @ label) @ label.T - (1 + name_overshoot) * (z @ names) @ names.T
    kept = torch.cat([projection_inputs(model, images).double() for images in keep]) if keep else None
    return EditTerms(_Moments.of(x), x.T @ goal, goal.sum(0), _Moments.of(r),
                     None if kept is None or not len(kept) else _Moments.of(kept), config.retain_weight,
                     config.keep_weight, int(q.shape[1]))


def solve_edit(terms: Sequence[EditTerms], ridge: float, centre: bool = True) -> tuple[Tensor, Tensor]:
    """``(ΔW, m)`` minimising the sum of every request's terms plus the ridge (see :func:`closed_form_edit`).

    ``m`` is the mean of every request's retain inputs (zeros with ``centre`` False, for a projection
    without bias); each request's retain term is weighted against its own forget images.
    """
    dim = terms[0].forget.sum.shape[0]
    retain_count = sum(t.retain.count for t in terms)
    mean = sum(t.retain.sum for t in terms) / retain_count if centre else torch.zeros(dim, dtype=torch.float64)
    a = torch.zeros(dim, dim, dtype=torch.float64)
    rhs = torch.zeros_like(terms[0].cross)
    n, square = 0, 0.0
    for t in terms:
        xc = t.forget.centred(mean)
        a += xc + t.retain_weight * (t.forget.count / t.retain.count) * t.retain.centred(mean)
        if t.keep is not None:
            a += t.keep_weight * t.keep.centred(mean)
        rhs += t.cross - torch.outer(mean, t.goal_sum)
        n, square = n + t.forget.count, square + float(torch.trace(xc))
    scale = square / (n * dim)
    a += ridge * scale * n * torch.eye(dim, dtype=torch.float64)
    return torch.linalg.solve(a, rhs).T, mean  # (out, in)


@torch.no_grad()
def apply_edit(model: DualEncoder, delta: Tensor, mean: Tensor) -> float:
    """Add ``ΔW`` to ``model``'s image projection (in place; ``−ΔW m`` to its bias); returns ``‖ΔW‖ / ‖W‖``."""
    proj = model.image_projection()
    params = dict(model.named_weights())
    weight = params[proj.weight]
    w_norm = float(weight.detach().double().norm())
    weight.add_((delta.T if proj.transposed else delta).to(weight))
    if proj.bias:
        params[proj.bias].sub_((delta @ mean).to(weight))
    return float(delta.norm()) / w_norm


@torch.no_grad()
def closed_form_edit(model: DualEncoder, data: UnlearnData, config: ForgetConfig, forget_names: Sequence[str] = (),
                     keep: Sequence[Tensor] = ()) -> dict[str, Any]:
    """Edit ``model``'s image projection (in place) so that each forget image lands on its projection target.

    With ``f`` the projection's inputs and ``z = W f + b`` its outputs, the edit ``ΔW`` minimises
    ``Σ_forget ‖ΔW (f − m) − g‖² + λ n/|D_r| Σ_retain ‖ΔW (f − m)‖² + κ Σ_keep ‖ΔW (f − m)‖² + μ s n ‖ΔW‖²``
    where ``g = −(1 + overshoot) Q Qᵀ z`` takes the subgroup's text directions ``Q`` out of each forget
    output (:func:`projected_targets`),
    (the self-names' part of ``Q`` pushed by ``name_overshoot`` instead when it is set),
    ``m`` is the retain inputs' mean (folded into the bias; 0 when the projection has no bias), ``λ`` is
    ``retain_weight``, ``κ`` is ``keep_weight``, ``μ`` is ``ridge``, ``s`` the forget inputs' mean square and
    ``n = |D_f|``; ``keep`` are images (earlier requests' D_f) whose outputs stay where they are. The change reaches an unseen
    image only through the part of its features that resembles the forget images' and not the retain
    images'; it moves outputs only within the span of ``Q``.
    """
    changed = projection_parameters(model)
    terms = edit_terms(model, data, config, forget_names, keep)
    delta, mean = solve_edit([terms], config.ridge, centre=bool(model.image_projection().bias))
    before = forget_progress(model, data)
    size = apply_edit(model, delta, mean)
    return _edit_info(model, data, changed, terms, size, before)


def _edit_info(model: DualEncoder, data: UnlearnData, changed: list[str], terms: EditTerms, size: float,
               before: dict[str, float]) -> dict[str, Any]:
    """What a closed-form forget stage reports once its edit is applied."""
    return {"solver": "closed_form", "parameters": changed, "edit_norm": size, "directions": terms.directions,
            "kept": 0 if terms.keep is None else terms.keep.count,
            "before": before, "final": forget_progress(model, data), "stop_target": False}


@torch.no_grad()
def chosen_closed_form_edit(model: DualEncoder, data: UnlearnData, config: ForgetConfig, score_fn: ScoreFn,
                            forget_target: float, forget_names: Sequence[str] = (),
                            keep: Sequence[Tensor] = ()) -> dict[str, Any]:
    """:func:`closed_form_edit` at each of ``config.retain_weights``, the one the run's rule picks kept.

    Each candidate edit is applied to ``model``'s projection, scored by ``score_fn`` (utility, forget
    accuracy of the held-out forget images) and taken back; the feasible candidate with the highest
    utility is applied for good, else the one that forgets most. Returns what
    :func:`closed_form_edit` returns, with the curve of candidates and the chosen weight.
    """
    changed = projection_parameters(model)
    terms = edit_terms(model, data, config, forget_names, keep)
    centre = bool(model.image_projection().bias)
    params = dict(model.named_weights())

    def projection() -> dict[str, Tensor]:
        return {k: params[k].detach().clone() for k in changed}

    original = projection()
    before = forget_progress(model, data)
    curve, edits = [], []
    for weight in config.retain_weights:
        delta, mean = solve_edit([dataclasses.replace(terms, retain_weight=weight)], config.ridge, centre=centre)
        size = apply_edit(model, delta, mean)
        utility, forget_acc = score_fn(projection())
        model.load_weights(original)
        curve.append({"retain_weight": weight, "utility": utility, "forget_acc": forget_acc, "edit_norm": size})
        edits.append((delta, mean))
    pick = best_candidate(curve, forget_target)
    size = apply_edit(model, *edits[pick])
    return {**_edit_info(model, data, changed, terms, size, before), "curve": curve,
            "choice": {**curve[pick], "feasible": feasible(curve[pick], forget_target)}}
