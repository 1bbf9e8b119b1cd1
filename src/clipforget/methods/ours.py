"""The method: select -> forget -> remind -> restore, every stage switchable for ablations.

``ours`` forgets the images by a closed-form edit of the image projection (beyond the paper);
``ours-paper`` is the paper's configuration of the same stages (text tower, LoRA, remind, souping).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from clipforget.config import Config, ConfigError
from clipforget.methods.adapters import AdapterConfig, Tuning
from clipforget.methods.align import AlignConfig, align_images, norm_targets
from clipforget.methods.anchor import AnchorConfig, TextAnchor
from clipforget.methods.base import (
    Method,
    MethodResult,
    MethodRun,
    StateDict,
    register_method,
    run_stage,
    stage_generator,
)
from clipforget.methods.fisher import (
    SelectConfig,
    Selection,
    candidate_layers,
    fisher_scores,
    top_layers,
)
from clipforget.methods.core import UnlearnData, clone_model
from clipforget.methods.edit import apply_edit, chosen_closed_form_edit, closed_form_edit, edit_terms, projection_parameters, solve_edit
from clipforget.methods.forget import ForgetConfig, forget_progress, forget_stage
from clipforget.methods.losses import tunes_text
from clipforget.methods.naming import subgroup_names, vocabulary
from clipforget.methods.scoring import split_forget
from clipforget.methods.remind import RemindConfig, remind_stage
from clipforget.methods.restore import RESTORE_MODES, RestoreConfig, RestoreInputs
from clipforget.methods.training import TrainConfig
from clipforget.models.base import DualEncoder

log = logging.getLogger(__name__)
STAGES = ("select", "forget", "remind", "restore")


def image_side_forget() -> ForgetConfig:
    """The forget section of ``ours``: the closed-form edit of the image projection (beyond the paper).

    Each forget image is sent to its original embedding with the subgroup's text directions taken out
    and pushed past orthogonal (the forget text and the label's class vector twice as far as the
    original similarity, the self-names' own part half as far), the retain images' outputs are held
    in place and the edit is kept small; the self-names are those the original model gives the
    forget images with probability at least 0.2. The measurements behind each value are in
    docs/decisions.md ("A closed-form edit of the image projection").
    """
    return ForgetConfig(solver="closed_form", target="project", overshoot=2.0, name_overshoot=0.5, ridge=3.0,
                        retain_weight=0.1, self_names=5, self_name_min=0.2)


@dataclass(frozen=True)
class OursConfig(Config):
    """The method. The ``use_*`` switches are the ablations; the sections tune each stage.

    The defaults forget the images (beyond the paper): the forget stage is one closed-form edit of the
    image projection (:func:`image_side_forget`), with no remind and no restore stage, since nothing
    was trained that needs repair and souping scales the edit back to where only the label prompt is
    closed. :class:`PaperConfig` (method ``ours-paper``) is the paper's configuration.

    use_relative_fisher: select by F(D_f)/F(D_r); else by ``select.fallback``. (The closed-form edit
        without a remind stage changes only the projection and selects nothing.)
    use_lora: LoRA on the selected matrices (else full tuning of the selected layers).
    use_remind: run the remind stage at all.  use_alignment: align retain images first.
    use_distillation: KD from the original model (else cross-entropy on the retain labels).
    use_souping: run the restore stage (else the reminded weights are the result).
    """

    use_relative_fisher: bool = True
    use_lora: bool = True
    use_remind: bool = False
    use_alignment: bool = True
    use_distillation: bool = True
    use_souping: bool = False
    select: SelectConfig = field(default_factory=SelectConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    forget: ForgetConfig = field(default_factory=image_side_forget)
    align: AlignConfig = field(default_factory=AlignConfig)
    distill: RemindConfig = field(default_factory=RemindConfig)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)


@dataclass(frozen=True)
class PaperConfig(OursConfig):
    """The paper's configuration (method ``ours-paper``): relative Fisher over the text tower's layers,
    LoRA forgetting by gradient, remind (alignment + distillation) and restore by souping, with the
    additions listed in the README (class term, text anchor, retain labels, the weight choice)."""

    use_remind: bool = True
    use_souping: bool = True
    forget: ForgetConfig = field(default_factory=ForgetConfig)


def self_names(teacher: DualEncoder, data: UnlearnData, config: ForgetConfig) -> list[dict[str, float]]:
    """The names the original model gives the forget images that the forget stage also takes off
    (``config.self_names`` of ``config.vocabulary``, at the configured floors)."""
    return subgroup_names(teacher, data, vocabulary(config.vocabulary), config.self_names,
                          min_probability=config.self_name_min, min_ratio=config.self_name_ratio)


def _state_of(model: DualEncoder, keys: list[str], original: StateDict) -> StateDict:
    """The named entries plus any other entry that differs from ``original`` (what a stage changed)."""
    own = model.weights()
    changed = {k for k, v in own.items() if not torch.equal(v, original[k])}
    return {k: own[k].detach().clone() for k in sorted(set(keys) | changed)}


@register_method("ours")
class Ours(Method):
    config_class = OursConfig

    @classmethod
    def smoke_config(cls) -> OursConfig:
        tiny = TrainConfig(steps=6, lr=1e-2, batch_size=8, check_every=3)
        return cls.config_class(
            select=SelectConfig(top_k=3, max_samples=4),
            adapter=AdapterConfig(rank=2),
            forget=dataclasses.replace(cls.config_class().forget, train=tiny, delta=-1.0),
            align=AlignConfig(train=TrainConfig(steps=4, lr=0.05, batch_size=8, grad_clip=None)),
            distill=RemindConfig(train=TrainConfig(steps=4, lr=1e-2, batch_size=8, ema_decay=0.5)),
            restore=RestoreConfig(grid=(0.0, 0.5, 1.0)),
        )

    def fit(self, run: MethodRun, config: OursConfig) -> MethodResult:
        stages = _Stages(run, config)
        diagnostics = {"select": run_stage(run.store, "select", run.student, stages.select)}
        stages.selection = Selection.from_dict(diagnostics["select"])
        diagnostics["forget"] = run_stage(run.store, "forget", run.student, stages.forget)
        stages.after_forget = stages.changed()
        if config.use_remind:
            diagnostics["remind"] = run_stage(run.store, "remind", run.student, stages.remind)
        if config.use_souping:
            diagnostics["restore"] = run_stage(run.store, "restore", run.student, stages.restore)
        return MethodResult(model=run.student, diagnostics=diagnostics,
                            artifacts=_artifacts(stages.selection, diagnostics.get("restore", {})))


def _artifacts(selection: Selection, restore: dict[str, Any]) -> dict[str, Any]:
    """The files a run of ``ours`` leaves beside its metrics: the Fisher scores and the alpha curve."""
    artifacts = {}
    if selection.scores:
        artifacts["fisher.json"] = {**selection.scores, "selected": selection.layers}
    if restore.get("curve"):
        artifacts["alpha_curve.json"] = {"curve": restore["curve"], "chosen": restore.get("choice", {}).get("alpha")}
    return artifacts


class _Stages:
    """The four stages of one run of ``ours``, each ``() -> (info, changed state)`` for :func:`run_stage`.

    ``selection`` is set once the select stage has run (or resumed), ``after_forget`` once forget has.
    """

    def __init__(self, run: MethodRun, config: OursConfig) -> None:
        self.run, self.config = run, config
        self.selection: Selection | None = None
        self.after_forget: StateDict = {}

    @property
    def params(self) -> list[str]:
        return self.selection.params

    @property
    def forget_names(self) -> list[str]:
        return [n["name"] for n in self.selection.forget_names]

    def changed(self) -> StateDict:
        return _state_of(self.run.student, self.params, self.run.original)

    def _anchor(self, stage: str) -> TextAnchor | None:
        config, student = self.config, self.run.student
        if config.anchor.weight == 0 or stage not in config.anchor.stages or not tunes_text(student, self.params):
            return None
        return TextAnchor(self.run.teacher, self.run.data, config.anchor, stage_generator(self.run.seed, f"anchor-{stage}"))

    def _tuning(self, stage: str) -> Tuning:
        g = stage_generator(self.run.seed, stage)
        return Tuning(tuple(self.params), self.config.adapter, g, self.config.use_lora)

    def select(self) -> tuple[dict[str, Any], StateDict]:
        run, config = self.run, self.config
        student = run.student
        names = self_names(run.teacher, run.data, config.forget)
        if names:
            log.info("the original model also calls the forget images: %s", ", ".join(n["name"] for n in names))
        if config.forget.solver == "closed_form" and not config.use_remind:
            params = projection_parameters(student)
            layers = sorted({layer for layer, owned in student.layers().items() if set(owned) & set(params)})
            log.info("no layer selection: the closed-form edit changes only the image projection (%s) and no "
                     "remind stage follows", ", ".join(params))
            return Selection(layers, params, forget_names=names).to_dict(), {}
        candidates = candidate_layers(student, config.select)
        scores = fisher_scores(student, run.data, candidates, config.select, stage_generator(run.seed, "select"))
        if config.use_relative_fisher:
            layers = top_layers(scores.relative, config.select.top_k)
        elif config.select.fallback == "forget_fisher":
            layers = top_layers(scores.forget, config.select.top_k)
        else:
            layers = sorted(candidates)
        params = sorted({p for layer in layers for p in candidates[layer]})
        log.info("selected %d layers: %s", len(layers), ", ".join(layers))
        return Selection(layers, params, scores.to_dict(), names).to_dict(), {}

    def forget(self) -> tuple[dict[str, Any], StateDict]:
        run, config = self.run, self.config
        if config.forget.solver == "closed_form":
            keep = [f.images for f in run.forgotten]  # earlier subgroups stay put
            if config.forget.retain_weights:
                info = chosen_closed_form_edit(run.student, run.data, config.forget, run.score_fn, run.forget_target,
                                               self.forget_names, keep=keep)
                log.info("forget: retain weight %g of %s (utility %.3f, held-out forget accuracy %.3f)",
                         info["choice"]["retain_weight"], ", ".join(str(w) for w in config.forget.retain_weights),
                         info["choice"]["utility"], info["choice"]["forget_acc"])
            else:
                info = closed_form_edit(run.student, run.data, config.forget, self.forget_names, keep=keep)
            log.info("forget: closed-form edit of %s (relative size %.3f)", ", ".join(info["parameters"]), info["edit_norm"])
            return info, self.changed()
        info = forget_stage(run.student, run.data, self._tuning("forget"), config.forget, anchor=self._anchor("forget"),
                            forget_names=self.forget_names)
        return info, self.changed()

    def remind(self) -> tuple[dict[str, Any], StateDict]:
        run, config = self.run, self.config
        tuning = self._tuning("remind")  # its generator also draws the alignment's batches, as before
        retain, info = run.data.retain_images, {}
        targets = norm_targets(run.teacher, run.data.calibration_images) if config.use_alignment else None
        if targets is not None:
            retain, info["align"] = align_images(run.teacher, run.data.retain_images, targets, config.align, tuning.generator)
        elif config.use_alignment:
            log.warning("alignment skipped: a LayerNorm image tower needs calibration images")
        info["distill"] = remind_stage(
            run.student, run.teacher, run.data, retain, tuning, config.distill, config.forget,
            use_distillation=config.use_distillation, anchor=self._anchor("remind"), forget_names=self.forget_names,
        )  # fmt: skip
        return info, self.changed()

    def restore(self) -> tuple[dict[str, Any], StateDict]:
        run, student = self.run, self.run.student
        unlearned = {k: v.detach().clone() for k, v in student.weights().items()}
        inputs = RestoreInputs(self.config.restore, run.original, self.after_forget, unlearned, self.selection,
                               student.layers(), run.score_fn, run.forget_target)
        choice = RESTORE_MODES[self.config.restore.mode](inputs)
        student.load_weights(choice.state)
        return {"curve": choice.curve, "choice": choice.choice}, self.changed()


@register_method("ours-paper")
class OursPaper(Ours):
    config_class = PaperConfig


def joins_requests(config: Config) -> bool:
    """Whether ``config`` (of ``ours``) can forget several requests in one run: the closed-form edit at
    one retain weight with no remind and no restore stage, whose least-squares problems simply add up."""
    return (isinstance(config, OursConfig) and config.forget.solver == "closed_form" and not config.use_remind
            and not config.use_souping and not config.forget.retain_weights)


@torch.no_grad()
def forget_together(requests: Sequence[tuple[DualEncoder, UnlearnData]], config: OursConfig, *, seed: int = 0,
                    holdout: float = 0.2, keep: Sequence[Tensor] = ()) -> tuple[DualEncoder, dict[str, Any]]:
    """Forget several subgroups with one closed-form edit of the image projection.

    ``requests``: per request the model as received in that request's view (every view of the same
    weights and frozen prefix) and its task. Each request holds out ``holdout`` of its D_f as a single
    run does, takes its own self-names and adds its own terms (:func:`clipforget.methods.edit.edit_terms`);
    one solve over their sum edits a clone of the first model. ``keep``: images (earlier requests' D_f,
    in the same view) whose outputs stay in place. Returns the edited clone and, per request, what the
    edit did to its held-out forget images.
    """
    if not joins_requests(config):
        raise ConfigError("forgetting several scenarios in one run needs the closed-form edit at one retain weight "
                          "without remind or souping (method ours at its defaults); run the requests one after another "
                          "instead")
    student = clone_model(requests[0][0]).eval()
    terms, info = [], []
    for model, data in requests:
        fit, check = split_forget(data, holdout, seed)
        names = self_names(model, fit, config.forget)
        terms.append(edit_terms(model, fit, config.forget, [n["name"] for n in names], keep if not terms else ()))
        info.append({"forget_names": names, "check": check, "before": forget_progress(model, check)})
    delta, mean = solve_edit(terms, config.forget.ridge, centre=bool(student.image_projection().bias))
    size = apply_edit(student, delta, mean)
    out = {"solver": "closed_form", "parameters": projection_parameters(student), "edit_norm": size,
           "requests": [{"forget_names": i["forget_names"], "directions": t.directions, "before": i["before"],
                         "final": forget_progress(student, i["check"])} for i, t in zip(info, terms)]}
    return student, out
