"""Stage 1, forget: tune only the selected layers to push forget images away from the forget text
(with ``solver="closed_form"``, the image projection is edited in one solve instead: :mod:`.edit`).

Stops when the mean forget similarity falls below ``delta``, or the forget images' zero-shot
accuracy reaches ``target_acc``, else at the step budget. Training runs in eval mode so BatchNorm
running statistics never change; adapters are merged back before returning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
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
    projected_targets,
    tunes_text,
)
from clipforget.methods.training import BatchStream, TrainConfig, train_loop
from clipforget.models.base import DualEncoder


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
    retain_weights: with "closed_form", candidate retain weights instead of ``retain_weight`` alone: one
        edit is solved per weight and each is scored by the run's one scoring function; the run keeps
        the feasible edit with the highest utility, else the one that forgets most (the rule every
        method picks its weights by, :func:`clipforget.methods.scoring.best_candidate`). Empty: off.
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
    retain_weights: tuple[float, ...] = ()
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
        require(all(w >= 0 for w in self.retain_weights), f"retain_weights must all be >= 0, got {list(self.retain_weights)}")
        require(len(set(self.retain_weights)) == len(self.retain_weights),
                f"retain_weights {list(self.retain_weights)} names a weight twice; give each once")
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
