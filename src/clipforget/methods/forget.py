"""Stage 1, forget: tune only the selected layers to push forget images away from the forget text
(or, with ``solver="closed_form"``, edit the image projection in one least-squares solve).

Stops when the mean forget similarity falls below ``delta``, or the forget images' zero-shot
accuracy reaches ``target_acc``, else at the step budget. Training runs in eval mode so BatchNorm
running statistics never change; adapters are merged back before returning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforget.config import Config, require
from clipforget.methods.adapters import Tuning
from clipforget.methods.anchor import TextAnchor
from clipforget.methods.core import UnlearnData
from clipforget.methods.scoring import forget_progress  # noqa: F401  (re-exported)
from clipforget.methods.losses import (
    ClassHead,
    embed_images,
    encode_texts,
    forget_class_loss,
    forget_loss,
    tunes_text,
)
from clipforget.methods.training import BatchStream, TrainConfig, train_loop
from clipforget.models.base import DualEncoder, projection_inputs
from clipforget.zeroshot import build_zero_shot_classifier


@dataclass(frozen=True)
class ForgetConfig(Config):
    """The forget stage.

    train: optimisation (steps is the budget; check_every is how often the stop rule is checked).
    delta: with target "push", stop once the mean forget similarity is below this (the paper's δ; the
        default's measurement: docs/decisions.md, "Defaults of the paper's stages").
    hinge: penalise only similarity above ``delta`` (else the plain mean similarity).
    target_acc: also stop once the forget images' zero-shot accuracy is at or below this; None: off.
    class_weight: weight of a second forget term, ``-log(1 - p(label))`` of the forget images over the
        scenario's class prompts (beyond the paper, which only lowers the forget-text similarity): it
        pushes the subgroup off its label among the classes Target is scored on, and it saturates
        (the default's measurement: docs/decisions.md).
    image_weight: weight of a third term, ``relu(cos(f(x), f₀(x)) - image_margin)``: each forget image's
        embedding is pushed away from where the original model put it (beyond the paper). The text
        terms alone can be met by moving a few text embeddings; this one can only be met on the image
        side, so other names of the subgroup and text searches no longer find it either.
    image_margin: the cosine to the original embedding below which a forget image no longer counts.
    target: what the forget images are trained toward. "push": lower their similarity to the forget
        text(s) (the paper's loss; the stop rule is ``delta``). "project": move each image's embedding to
        its original with the subgroup's text directions taken out (beyond the paper):
        ``normalize(e - (1 + overshoot) Q Qᵀ e)``, ``Q`` an orthonormal basis of the forget text, the forget
        label's class vector and each self-name's (from the text tower as the stage starts: the
        original's when only image layers are tuned). The image keeps
        everything else it carried, so the change the image tower must make is the least that takes
        the subgroup's names off it.
    overshoot: with "project", how far past orthogonal to push (0: orthogonal to every forget direction;
        1: the mirror image, negative similarity as large as the original's; 2: twice as large).
    solver: "gradient" (train the selected layers for ``train.steps``) or "closed_form" (with target
        "project" only; beyond the paper): edit the image tower's last linear map
        (:meth:`clipforget.models.base.DualEncoder.image_projection`) in one regularised least-squares
        solve, see :func:`closed_form_edit`. The selected layers are then left to the later stages.
    retain_weight: with "closed_form", the weight of keeping each retain image's output where it was,
        relative to moving each forget image's (per image).
    name_overshoot: with "closed_form", the overshoot of the self-names' directions (their part not
        already spanned by the forget text and label); None: ``overshoot``. Pushing the subgroup far
        past its fine-grained name moves photos that look like it (docs/decisions.md).
    keep_weight: with "closed_form", the weight of holding each image of an earlier request's D_f where
        the model as received puts it (relative to moving a forget image), so that a later edit does not
        undo an earlier one; 0: off.
    ridge: with "closed_form", the penalty on the edit's size, relative to the forget inputs' mean
        square (larger: a smaller edit that reaches fewer unseen images).
    self_names: also push the forget images off this many names the original model gives them, read
        from ``vocabulary`` (:mod:`clipforget.methods.naming`; beyond the paper): their prompts join the
        forget text in the similarity term and the forget label in the class term (and, with the
        closed-form solver, the directions taken off). 0: off (5 in the default of method ``ours``).
    self_name_min: take a name only if the original model gives it at least this mean probability on
        the forget images (among the vocabulary): a name the model hardly uses for them says little
        about them, and taking its direction off moves unrelated images (docs/decisions.md). 0: off.
    self_name_ratio: take a name only if the original gives it to the forget images at least this many
        times as often (mean probability) as to the retain images: names specific to the subgroup, not
        ones its siblings share (docs/decisions.md). 0: off.
    vocabulary: a named label space (``imagenet1k``) or a list of names to read them from.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, lr=1e-3, batch_size=32))
    delta: float = -0.5
    hinge: bool = False
    target_acc: float | None = None
    class_weight: float = 1.0
    image_weight: float = 0.0
    image_margin: float = 0.0
    self_names: int = 0
    self_name_min: float = 0.0
    self_name_ratio: float = 0.0
    vocabulary: str | tuple[str, ...] = "imagenet1k"
    target: Literal["push", "project"] = "push"
    overshoot: float = 0.0
    solver: Literal["gradient", "closed_form"] = "gradient"
    retain_weight: float = 1.0
    name_overshoot: float | None = None
    keep_weight: float = 1.0
    ridge: float = 1.0

    @property
    def needs_original_embeddings(self) -> bool:
        """Whether the objective reads the original model's embeddings of the forget images."""
        return self.image_weight > 0 or self.target == "project"

    def __post_init__(self) -> None:
        require(self.class_weight >= 0, f"class_weight must be >= 0, got {self.class_weight}")
        require(self.image_weight >= 0, f"image_weight must be >= 0, got {self.image_weight}")
        require(-1 <= self.image_margin <= 1, f"image_margin is a cosine similarity in [-1, 1], got {self.image_margin}")
        require(self.target in ("push", "project"), f"target must be 'push' or 'project', got {self.target!r}")
        require(0 <= self.overshoot <= 4, f"overshoot must be in [0, 4], got {self.overshoot}")
        require(self.solver in ("gradient", "closed_form"), f"solver must be 'gradient' or 'closed_form', got {self.solver!r}")
        require(self.solver == "gradient" or self.target == "project",
                f"solver 'closed_form' solves for the projection target; set target: project (got {self.target!r})")
        require(self.retain_weight >= 0, f"retain_weight must be >= 0, got {self.retain_weight}")
        require(self.ridge > 0, f"ridge must be > 0, got {self.ridge}")
        require(self.keep_weight >= 0, f"keep_weight must be >= 0, got {self.keep_weight}")
        require(self.name_overshoot is None or 0 <= self.name_overshoot <= 4,
                f"name_overshoot must be in [0, 4] (or null: the overshoot), got {self.name_overshoot}")
        require(self.self_names >= 0, f"self_names must be >= 0, got {self.self_names}")
        require(0 <= self.self_name_min < 1, f"self_name_min is a probability in [0, 1), got {self.self_name_min}")
        require(self.self_name_ratio >= 0, f"self_name_ratio must be >= 0, got {self.self_name_ratio}")
        require(-1 <= self.delta <= 1, f"delta is a cosine similarity in [-1, 1], got {self.delta}")
        require(self.target_acc is None or 0 <= self.target_acc <= 1, f"target_acc must be in [0, 1], got {self.target_acc}")


class ForgetObjective:
    """The forget loss of a batch of forget images: similarity to the forget text (+ the class term).

    Text embeddings are recomputed with gradient only when a text-tower parameter is tuned.
    """

    def __init__(self, model: DualEncoder, data: UnlearnData, config: ForgetConfig, param_names: Sequence[str],
                 original_embeddings: Tensor | None = None, forget_names: Sequence[str] = ()):
        self.model, self.data, self.config = model, data, config
        self.text_trains = tunes_text(model, param_names)
        self.texts = [data.forget_text, *(data.templates[0].format(n) for n in forget_names)]
        self.classes = [*data.classnames, *forget_names]  # the forget label's column and each name's
        self.forget_columns = [data.forget_label, *range(len(data.classnames), len(self.classes))]
        with torch.no_grad():
            self._text = encode_texts(model, self.texts)
        self._head = ClassHead(model, self.classes, data.templates, param_names)
        if config.needs_original_embeddings and original_embeddings is None:
            original_embeddings = embed_images(model, data.forget_images)
        self._original = original_embeddings
        self._projected = None
        if config.target == "project":
            directions = torch.cat([self._text, self._head()[:, self.forget_columns].detach().T])
            self._projected = projected_targets(original_embeddings, directions, config.overshoot)

    def __call__(self, index: Tensor) -> dict[str, Tensor]:
        """The loss of the forget images ``data.forget_images[index]``."""
        model, data, config = self.model, self.data, self.config
        text = encode_texts(model, self.texts) if self.text_trains else self._text
        emb = model.encode_image(data.forget_images[index].to(model.device))
        sim = emb @ text.T  # (B, texts): the forget text, then each name's prompt
        if self._projected is not None:
            goal = self._projected[index.to(self._projected.device)].to(emb.device)
            terms = {"project": (1 - (emb * goal).sum(-1)).mean()}
        else:
            terms = {"similarity": forget_loss(sim, config.delta, config.hinge)}
        if config.image_weight > 0:
            own = (emb * self._original[index.to(self._original.device)].to(emb.device)).sum(-1)
            terms["image"] = config.image_weight * torch.relu(own - config.image_margin).mean()
        if config.class_weight > 0:
            classifier = self._head()
            logits = model.logit_scale.detach() * emb @ classifier.to(emb.dtype)
            terms["class"] = config.class_weight * forget_class_loss(logits, self.forget_columns)
        return {"loss": sum(terms.values()), "mean_similarity": sim[:, 0].mean().detach(), **{k: v.detach() for k, v in terms.items()}}


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
    q = _basis(directions)
    label = _basis(directions[[0, 1 + k]])  # the forget text and the label's class vector
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
    return {"solver": "closed_form", "parameters": changed, "edit_norm": size, "directions": terms.directions,
            "kept": 0 if terms.keep is None else terms.keep.count,
            "before": before, "final": forget_progress(model, data), "stop_target": False}


def _basis(directions: Tensor) -> Tensor:
    """An orthonormal basis (columns) of the rows of ``directions``, dropping near-dependent ones."""
    u, s, _ = torch.linalg.svd(directions.T, full_matrices=False)
    return u[:, s > 1e-4 * s[0]]


def projected_targets(embeddings: Tensor, directions: Tensor, overshoot: float = 0.0) -> Tensor:
    """``normalize(e - (1 + overshoot) Q Qᵀ e)`` for each row ``e`` of ``embeddings``; ``Q`` spans ``directions``."""
    q = _basis(directions.float())
    e = embeddings.float()
    return F.normalize(e - (1 + overshoot) * (e @ q) @ q.T, dim=-1).to(embeddings.dtype)


def forget_stage(
    model: DualEncoder,
    data: UnlearnData,
    tune: Tuning,
    config: ForgetConfig,
    *,
    anchor: TextAnchor | None = None,
    original_embeddings: Tensor | None = None,
    forget_names: Sequence[str] = (),
) -> dict[str, Any]:
    """Tune ``tune.names`` of ``model`` (in place) to forget; return the curves and checks.

    ``original_embeddings``: the original model's embeddings of ``data.forget_images`` (for the image
    term; computed from ``model`` when absent, which is right while ``model`` is still the original).
    ``forget_names``: other names of the subgroup to push the images off (see ``ForgetConfig.self_names``).

    ``anchor``: a text-anchor term added to the loss (see :mod:`clipforget.methods.anchor`).
    """
    model.eval()
    batches = BatchStream(len(data.forget_images), config.train.batch_size, tune.generator)
    checks: dict[str, list[float]] = {"step": [], "forget_similarity": [], "forget_acc": []}

    objective = ForgetObjective(model, data, config, tune.names, original_embeddings, forget_names)

    def loss_fn(step: int) -> dict[str, torch.Tensor]:
        terms = objective(batches.next())
        if anchor is not None:
            anchored = anchor.loss(model)
            terms = {**terms, "loss": terms["loss"] + anchored, "anchor": anchored.detach()}
        return terms

    def should_stop(step: int) -> bool:
        progress = forget_progress(model, data)
        checks["step"].append(step)
        for k, v in progress.items():
            checks[k].append(v)
        return (config.target == "push" and progress["forget_similarity"] < config.delta) or (
            config.target_acc is not None and progress["forget_acc"] <= config.target_acc
        )

    with tune(model) as params:
        train_log = train_loop(params, loss_fn, config.train, should_stop=should_stop, desc="forget")
    final = forget_progress(model, data)
    if anchor is not None:
        final["anchor_drift"] = anchor.drift(model)
    has_target = config.target == "push" or config.target_acc is not None  # "project" alone runs its budget
    return {**train_log.to_dict(), "checks": checks, "final": final, "stop_target": has_target}
