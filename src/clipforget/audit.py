"""The forgetting audit: can a user of the model still find the forgotten subgroup by any road?

The Target column asks one question (the subgroup's test images under the scenario's label prompts),
and a model can close that one door by moving one label's text embedding. The audit asks five more,
each on the original and the unlearned model side by side, on images no method saw:

- ``names``: the Target under other names of the subgroup (``ScenarioSplits.forget_aliases``) and a
  wider template set (the 80 OpenAI ImageNet prompts); ``target_worst`` is the largest of them. An
  alias that is one of the 1000 ImageNet names is also scored 1000-way ("fine-grained recognition").
- ``search``: text-to-image retrieval with the forget text and each alias over a gallery of the
  Target, Retain and held-out test images: the subgroup's share of the top n, against chance.
- ``image``: how far the subgroup's image embeddings moved (cosine to the original's), and a linear
  probe on frozen image embeddings (subgroup vs its siblings), as a downstream user could fit one.
- ``relearn``: a few steps of fine-tuning on k subgroup images from D_f under their label, on the
  parameters the run changed and on the whole towers they belong to; the same budget on the original.
- ``membership``: whether D_f (which the method saw) can be told from unseen subgroup images by
  their similarity to the forget text or their loss (AUC with a Hanley-McNeil 95% interval).

Pure library: models, splits and preprocessed images in, an :class:`AuditResult` out. The verdict
flags are evidence against stated thresholds, not a pass mark; every figure says what it cannot see.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforget.config import Config, require
from clipforget.data import presets
from clipforget.data.types import ScenarioSplits
from clipforget.evaluation import ScenarioImages
from clipforget.methods.adapters import AdapterConfig, tuning
from clipforget.methods.base import clone_model, stage_generator
from clipforget.methods.losses import ClassHead
from clipforget.methods.training import TrainConfig, train_loop
from clipforget.models.base import DualEncoder
from clipforget.zeroshot import build_zero_shot_classifier, compute_image_embeddings
from clipforget.progress import progress

log = logging.getLogger(__name__)

Part = Literal["names", "search", "image", "relearn", "membership"]
PARTS: tuple[Part, ...] = ("names", "search", "image", "relearn", "membership")
RelearnSetting = Literal["changed", "towers"]
SIDES = ("original", "unlearned")

NOTES: dict[str, dict[str, str]] = {
    "names": {
        "measures": "Target re-scored with the label's class name replaced by each alias, under the scenario's "
                    "templates and the 80 OpenAI ImageNet templates; the worst prompt is the largest Target.",
        "cannot_see": "names and prompts nobody listed; a label space other than the scenario's (except the "
                      "1000-way fine-grained check of aliases that are ImageNet names).",
    },
    "search": {
        "measures": "text-to-image retrieval: the subgroup's share of the top n gallery images (n = its size) "
                    "for the forget text and each alias, against chance n / gallery size.",
        "cannot_see": "other queries, a larger or different gallery; the share is over this small test gallery.",
    },
    "image": {
        "measures": "how far the subgroup's image embeddings moved (cosine to the original's), and the balanced "
                    "accuracy of a linear probe separating the subgroup from its siblings on frozen embeddings.",
        "cannot_see": "a cosine near 1 means the image side is unchanged and the subgroup stays recoverable from "
                      "the embeddings; a low probe accuracy says one linear probe on few images failed, not that "
                      "none can succeed; the probe may separate image sources rather than subgroups (read it "
                      "against the original's).",
    },
    "relearn": {
        "measures": "Target after a few steps of fine-tuning on k subgroup images from D_f under their label, on "
                    "the parameters the run changed and on their whole towers; the same budget on the original "
                    "for scale.",
        "cannot_see": "other learning rates, more images, other losses or parameter sets; one seeded draw of "
                      "the k images.",
    },
    "membership": {
        "measures": "AUC of telling D_f (seen by the method) from unseen subgroup test images by similarity to "
                    "the forget text and by the label loss; 0.5 = indistinguishable.",
        "cannot_see": "D_f and the test images may come from different sources or splits (the original's AUC "
                      "shows that baseline); stronger attacks (shadow models, per-image calibration).",
    },
}


# -- config -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditThresholds(Config):
    """The thresholds of the verdict flags (evidence, not a pass mark).

    max_target_worst: the worst-prompt Target (%) at or below which the names road counts as closed.
    max_search_ratio: the worst query's share of the top n at or below this multiple of chance.
    max_image_cosine: a mean Target image cosine (unlearned vs original) below this counts as moved.
    max_relearn_recovery: after the smallest relearning budget (the first setting run), the Target at
        or below this fraction of the original model's Target counts as resisting relearning.
    max_membership_shift: |AUC(unlearned) - AUC(original)| at or below this, for both scores, counts
        as leaving no membership trace.
    """

    max_target_worst: float = 5.0
    max_search_ratio: float = 2.0
    max_image_cosine: float = 0.99
    max_relearn_recovery: float = 0.5
    max_membership_shift: float = 0.1

    def __post_init__(self) -> None:
        require(0 <= self.max_target_worst <= 100, f"max_target_worst is a percentage, got {self.max_target_worst}")
        require(self.max_search_ratio > 0, f"max_search_ratio must be > 0, got {self.max_search_ratio}")
        require(-1 <= self.max_image_cosine <= 1, f"max_image_cosine is a cosine in [-1, 1], got {self.max_image_cosine}")
        require(self.max_relearn_recovery >= 0, f"max_relearn_recovery must be >= 0, got {self.max_relearn_recovery}")
        require(0 <= self.max_membership_shift <= 1, f"max_membership_shift must be in [0, 1], got {self.max_membership_shift}")


@dataclass(frozen=True)
class AuditConfig(Config):
    """What the audit runs (each part switchable) and how.

    parts: the tests to run, any of names, search, image, relearn, membership.
    templates: the wider template set of the names test: a preset of :mod:`clipforget.data.presets`
        ("openai_imagenet": open_clip's 80 OpenAI ImageNet prompts) or a list of templates with ``{}``.
    fine_grained_templates: templates of the 1000-way ImageNet classifier for aliases that are ImageNet names.
    search_template: how an alias becomes a search query (the forget text is searched as it is).
    relearn_k: subgroup images from D_f the relearning fine-tunes on (at most |D_f|).
    relearn_steps: step counts after which the relearned Target is read, increasing (one run per setting).
    relearn_lr: Adam learning rate. Default 1e-4: the scale of rates used to fine-tune CLIP-style towers
        (1e-5 to 1e-4), at the upper end because an attacker with ten images and fifty steps wants speed;
        one point of the attacker's choices, not a bound.
    relearn_settings: "changed" tunes the parameters the run changed; "towers" every parameter of the
        towers those belong to (the logit scale stays fixed in both).
    relearn_original: also fine-tune the original with the same budget (the scale to read against).
    probe_steps: L-BFGS iterations of the linear probe.  probe_l2: its L2 penalty on standardised features.
    batch_size: images (and prompts) per forward pass.
    thresholds: the verdict flags' thresholds (:class:`AuditThresholds`).
    """

    parts: tuple[Part, ...] = PARTS
    templates: str | tuple[str, ...] = "openai_imagenet"
    fine_grained_templates: tuple[str, ...] = ("a photo of a {}.",)
    search_template: str = "a photo of a {}."
    relearn_k: int = 10
    relearn_steps: tuple[int, ...] = (10, 50)
    relearn_lr: float = 1e-4
    relearn_settings: tuple[RelearnSetting, ...] = ("changed", "towers")
    relearn_original: bool = True
    probe_steps: int = 100
    probe_l2: float = 1e-2
    batch_size: int = 64
    thresholds: AuditThresholds = field(default_factory=AuditThresholds)

    def __post_init__(self) -> None:
        unknown = [p for p in self.parts if p not in PARTS]
        require(not unknown, f"parts: unknown part(s) {unknown}; known parts: {list(PARTS)}")
        require(bool(self.parts) and len(set(self.parts)) == len(self.parts),
                f"parts must name each part at most once and at least one, got {list(self.parts)}; to skip the audit, switch it off")
        if isinstance(self.templates, str):
            require(self.templates in presets.TEMPLATE_PRESETS, f"templates: {self.templates!r} is not a template "
                    f"preset; known: {sorted(presets.TEMPLATE_PRESETS)} (or give a list of templates with '{{}}')")
        else:
            require(bool(self.templates) and all("{}" in t for t in self.templates),
                    f"templates: every template must contain '{{}}', got {list(self.templates)}")
        require(bool(self.fine_grained_templates) and all("{}" in t for t in self.fine_grained_templates),
                f"fine_grained_templates: every template must contain '{{}}', got {list(self.fine_grained_templates)}")
        require("{}" in self.search_template, f"search_template must contain '{{}}', got {self.search_template!r}")
        require(self.relearn_k >= 1, f"relearn_k must be >= 1 image, got {self.relearn_k}")
        steps = list(self.relearn_steps)
        require(bool(steps) and all(s >= 1 for s in steps) and steps == sorted(set(steps)),
                f"relearn_steps must be positive step counts in increasing order, got {steps}")
        require(self.relearn_lr > 0, f"relearn_lr must be > 0, got {self.relearn_lr}")
        bad = [s for s in self.relearn_settings if s not in ("changed", "towers")]
        require(not bad and bool(self.relearn_settings) and len(set(self.relearn_settings)) == len(self.relearn_settings),
                f"relearn_settings: give 'changed' and/or 'towers' once each, got {list(self.relearn_settings)}")
        require(self.probe_steps >= 1, f"probe_steps must be >= 1, got {self.probe_steps}")
        require(self.probe_l2 >= 0, f"probe_l2 must be >= 0, got {self.probe_l2}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")


def template_set(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The templates a preset name stands for (:mod:`clipforget.data.presets`), or the given templates."""
    return presets.template_preset(spec, "templates") if isinstance(spec, str) else tuple(spec)


# -- result -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditResult:
    """One audit: per part, the figures of both models; the verdict; seconds per part.

    ``parts[name]`` holds JSON-ready figures keyed by "original" / "unlearned" where a figure is per
    model (accuracies and shares in %, cosines and AUCs as fractions). :func:`audit_summary` picks
    the headline figures from :meth:`to_dict`'s output.
    """

    seed: int
    config: AuditConfig
    parts: Mapping[str, Mapping[str, Any]]
    verdict: Mapping[str, Any]
    seconds: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "config": self.config.to_dict(), "parts": dict(self.parts),
                "verdict": dict(self.verdict), "notes": {p: NOTES[p] for p in self.parts}, "seconds": dict(self.seconds)}


def audit_summary(audit: Mapping[str, Any]) -> dict[str, Any]:
    """Headline figures of an audit dict (:meth:`AuditResult.to_dict`), per model where per model:
    ``target_worst``, ``search_share`` (worst query) with ``search_chance``, ``relearn`` (Target after
    the smallest budget of the first relearning setting run) with ``relearn_steps`` and ``relearn_setting``."""
    parts, out = audit.get("parts", {}), {}
    if "names" in parts:
        out["target_worst"] = dict(parts["names"]["target_worst"])
    if "search" in parts:
        out["search_share"] = {s: parts["search"]["worst"][s]["share"] for s in SIDES}
        out["search_chance"] = parts["search"]["chance"]
    for setting, entry in parts.get("relearn", {}).get("settings", {}).items():
        if "unlearned" in entry:
            first = str(parts["relearn"]["steps"][0])
            out["relearn"] = {s: entry[s][first] for s in SIDES if s in entry}
            out["relearn_steps"], out["relearn_setting"] = int(first), setting
            break
    return out


# -- the audit ----------------------------------------------------------------------------------
@dataclass
class _Side:
    """One model with its images; image embeddings computed once per set."""

    model: DualEncoder
    images: ScenarioImages
    batch_size: int
    _cache: dict[str, Tensor] = field(default_factory=dict)

    def emb(self, name: str) -> Tensor:
        if name not in self._cache:
            self._cache[name] = compute_image_embeddings(self.model, self.tensor(name), batch_size=self.batch_size,
                                                         progress=False)
        return self._cache[name]

    def tensor(self, name: str) -> Tensor:
        if name == "forget_train":
            return self.images.forget_train
        if name.startswith("heldout/"):
            return self.images.heldout[name.removeprefix("heldout/")].images
        return getattr(self.images, name).images


@dataclass
class _Context:
    sides: dict[str, _Side]
    splits: ScenarioSplits
    config: AuditConfig
    seed: int
    tuned: tuple[str, ...]

    @property
    def label(self) -> int:
        return self.splits.classnames.index(self.splits.forget_label)

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(a for a in self.splits.forget_aliases if a != self.splits.forget_label)


def audit(original: DualEncoder, unlearned: DualEncoder, splits: ScenarioSplits, images: ScenarioImages,
          config: AuditConfig | None = None, *, seed: int, tuned: Sequence[str] | None = None,
          unlearned_images: ScenarioImages | None = None) -> AuditResult:
    """Audit ``unlearned`` against ``original`` on a scenario (see the module doc).

    ``images``: the scenario's preprocessed images (or a frozen-prefix view's activations, with view
    models); ``unlearned_images`` when the unlearned model preprocesses differently. ``tuned``: the
    parameters the run changed (default: those that differ between the two models). Deterministic
    under ``seed``; both models are left as they were.
    """
    config = config or AuditConfig()
    if tuned is None:
        tuned = changed_parameters(original, unlearned)
    sides = {"original": _Side(original, images, config.batch_size),
             "unlearned": _Side(unlearned, unlearned_images or images, config.batch_size)}
    ctx = _Context(sides, splits, config, seed, tuple(tuned))
    modes = {k: s.model.training for k, s in sides.items()}
    results, seconds = {}, {}
    try:
        for s in sides.values():
            s.model.eval()
        for part in progress(config.parts, desc="audit", unit="parts"):
            start = time.perf_counter()
            results[part] = _PARTS[part](ctx)
            seconds[part] = time.perf_counter() - start
            log.info("audit %s done in %.1f s", part, seconds[part])
    finally:
        for k, s in sides.items():
            s.model.train(modes[k])
    return AuditResult(seed, config, results, verdict(results, config.thresholds), seconds)


def changed_parameters(original: DualEncoder, unlearned: DualEncoder) -> tuple[str, ...]:
    """Names of the unlearned model's parameters that differ from the original's (or that it lacks)."""
    before = dict(original.named_weights())
    out = []
    for name, p in unlearned.named_weights():
        q = before.get(name)
        if q is None or q.shape != p.shape or not torch.equal(q.detach().cpu(), p.detach().cpu()):
            out.append(name)
    return tuple(sorted(out))


# -- shared pieces ------------------------------------------------------------------------------
def _top1_share(emb: Tensor, classifier: Tensor, index: int) -> float:
    """Share (%) of ``emb`` whose top-1 class under ``classifier`` (D, C) is ``index``."""
    return 100.0 * float(((emb @ classifier.cpu()).argmax(-1) == index).float().mean())


@torch.no_grad()
def _renamed_classifiers(model: DualEncoder, classnames: Sequence[str], label: int, names: Sequence[str],
                         templates: Sequence[str], batch_size: int) -> dict[str, Tensor]:
    """A zero-shot classifier (D, C) per name: the scenario's, with class ``label`` called that name."""
    others = build_zero_shot_classifier(model, [c for i, c in enumerate(classnames) if i != label], templates,
                                        batch_size=batch_size).cpu()
    named = build_zero_shot_classifier(model, names, templates, batch_size=batch_size).cpu()
    return {n: torch.cat([others[:, :label], named[:, j : j + 1], others[:, label:]], 1) for j, n in enumerate(names)}


@torch.no_grad()
def _label_target(model: DualEncoder, target_images: Tensor, splits: ScenarioSplits, batch_size: int) -> float:
    """The Target (%): the subgroup's test images classified as the label under the scenario's prompts."""
    classifier = build_zero_shot_classifier(model, splits.classnames, splits.templates, batch_size=batch_size)
    emb = compute_image_embeddings(model, target_images, batch_size=batch_size, progress=False)
    return _top1_share(emb, classifier, splits.classnames.index(splits.forget_label))


# -- names --------------------------------------------------------------------------------------
def _names(ctx: _Context) -> dict[str, Any]:
    splits, config = ctx.splits, ctx.config
    names = (splits.forget_label, *ctx.aliases)
    template_sets = {"scenario": splits.templates, "wide": template_set(config.templates)}
    prompts = [{"name": n, "templates": t} for t in template_sets for n in names]
    for side_name, side in ctx.sides.items():
        target = side.emb("target")
        for t, templates in template_sets.items():
            classifiers = _renamed_classifiers(side.model, splits.classnames, ctx.label, names, templates, config.batch_size)
            for p in prompts:
                if p["templates"] == t:
                    p[side_name] = _top1_share(target, classifiers[p["name"]], ctx.label)
    worst = {s: max(prompts, key=lambda p: p[s]) for s in SIDES}
    out = {"label": splits.forget_label, "aliases": list(ctx.aliases),
           "template_counts": {t: len(v) for t, v in template_sets.items()}, "prompts": prompts,
           "target_worst": {s: worst[s][s] for s in SIDES},
           "worst_prompt": {s: {"name": worst[s]["name"], "templates": worst[s]["templates"]} for s in SIDES}}
    fine = _fine_grained(ctx)
    if fine:
        out["fine_grained"] = fine
    return out


def _fine_grained(ctx: _Context) -> dict[str, Any]:
    """For aliases among the 1000 ImageNet names: the share (%) of Target images whose 1000-way top-1 is the alias."""
    names = presets.imagenet_classnames()
    hits = {a: torch.tensor([i for i, n in enumerate(names) if n.lower() == a.lower()]) for a in ctx.aliases}
    hits = {a: idx for a, idx in hits.items() if len(idx)}  # a name may name two synsets ("crane")
    if not hits:
        return {}
    templates = ctx.config.fine_grained_templates
    shares: dict[str, dict[str, float]] = {a: {} for a in hits}
    for side_name, side in ctx.sides.items():
        with torch.no_grad():
            classifier = build_zero_shot_classifier(side.model, names, templates, batch_size=ctx.config.batch_size).cpu()
        top1 = (side.emb("target") @ classifier).argmax(-1)
        for a, idx in hits.items():
            shares[a][side_name] = 100.0 * float(torch.isin(top1, idx).double().mean())
    return {"classes": len(names), "templates": list(templates), "aliases": shares}


# -- search -------------------------------------------------------------------------------------
def _gallery_sets(splits: ScenarioSplits) -> dict[str, list[int]]:
    """Per image set (target, retain, heldout/<name>): the indices kept in the gallery, duplicates dropped."""
    seen: set[tuple[str, str]] = set()
    sets = {"target": splits.target, "retain": splits.retain, **{f"heldout/{s.name}": s for s in splits.heldout}}
    keep = {}
    for name, eval_set in sets.items():
        keep[name] = []
        for i, r in enumerate(eval_set.records):
            if (r.source, r.key) not in seen:
                seen.add((r.source, r.key))
                keep[name].append(i)
    return keep


def retrieval(gallery: Tensor, subgroup: Tensor, query: Tensor) -> dict[str, float]:
    """The subgroup's share (%) of the top n (n = subgroup size) and its mean rank (1 = first) for one query."""
    order = torch.argsort(gallery @ query, descending=True, stable=True)
    hit = subgroup[order]
    n = int(subgroup.sum())
    ranks = torch.nonzero(hit).squeeze(1).double() + 1
    return {"share": 100.0 * float(hit[:n].double().mean()), "mean_rank": float(ranks.mean())}


def _search(ctx: _Context) -> dict[str, Any]:
    keep = _gallery_sets(ctx.splits)
    subgroup = torch.cat([torch.full((len(v),), k == "target") for k, v in keep.items()])
    queries = list(dict.fromkeys([ctx.splits.forget_text, *(ctx.config.search_template.format(a) for a in ctx.aliases)]))
    rows: list[dict[str, Any]] = [{"query": q} for q in queries]
    for side_name, side in ctx.sides.items():
        gallery = torch.cat([side.emb(k)[v] for k, v in keep.items()])
        with torch.no_grad():
            text = build_zero_shot_classifier(side.model, queries, ["{}"], batch_size=ctx.config.batch_size).cpu()
        for j, row in enumerate(rows):
            row[side_name] = retrieval(gallery, subgroup, text[:, j])
    n, size = int(subgroup.sum()), len(subgroup)
    worst = {s: max(rows, key=lambda r: r[s]["share"]) for s in SIDES}
    return {"gallery": size, "subgroup": n, "chance": 100.0 * n / size, "chance_mean_rank": (size + 1) / 2,
            "queries": rows, "worst": {s: {"query": worst[s]["query"], **worst[s][s]} for s in SIDES}}


# -- image side ---------------------------------------------------------------------------------
def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, steps: int = 100,
                 l2: float = 1e-2) -> float:
    """Balanced accuracy (%) on the test set of a class-balanced logistic regression (L-BFGS from zero,
    deterministic) fitted on standardised ``train_x`` with labels ``train_y`` in {0, 1}."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, xt = ((train_x - mean) / std).double(), ((test_x - mean) / std).double()
    y = train_y.double()
    weight = torch.where(y > 0, 0.5 / y.sum(), 0.5 / (1 - y).sum())
    w = torch.zeros(xs.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = (weight * F.binary_cross_entropy_with_logits(xs @ w + b, y, reduction="none")).sum() + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        pred = (xt @ w + b) > 0
    truth = test_y.bool()
    recalls = [float((pred[truth == c] == c).double().mean()) for c in (True, False)]
    return 100.0 * sum(recalls) / 2


def _siblings(labels: Tensor, label: int) -> tuple[Tensor, str]:
    """Indices of the images under the forget label (the within-class siblings), else of all of them."""
    same = torch.nonzero(labels == label).squeeze(1)
    return (same, "same label") if len(same) else (torch.arange(len(labels)), "all retain images")


def _image(ctx: _Context) -> dict[str, Any]:
    o, u = ctx.sides["original"], ctx.sides["unlearned"]
    out: dict[str, Any] = {}
    for name in ("target", "retain"):
        cos = (o.emb(name) * u.emb(name)).sum(-1).double()
        out[f"cosine_{name}"] = {"mean": float(cos.mean()), "min": float(cos.min())}
    train_neg, train_kind = _siblings(o.images.retain_train.labels, ctx.label)
    test_neg, test_kind = _siblings(o.images.retain.labels, ctx.label)
    probe: dict[str, Any] = {"train": {"subgroup": len(o.images.forget_train), "siblings": len(train_neg), "kind": train_kind},
                             "test": {"subgroup": len(o.images.target.images), "siblings": len(test_neg), "kind": test_kind}}
    for side_name, side in ctx.sides.items():
        pos, neg = side.emb("forget_train"), side.emb("retain_train")[train_neg]
        tpos, tneg = side.emb("target"), side.emb("retain")[test_neg]
        probe[side_name] = linear_probe(torch.cat([pos, neg]), torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]),
                                        torch.cat([tpos, tneg]), torch.cat([torch.ones(len(tpos)), torch.zeros(len(tneg))]),
                                        steps=ctx.config.probe_steps, l2=ctx.config.probe_l2)
    out["probe"] = probe
    return out


# -- relearning ---------------------------------------------------------------------------------
def relearn_curve(model: DualEncoder, shots: Tensor, target_images: Tensor, splits: ScenarioSplits,
                  param_names: Sequence[str], *, steps: Sequence[int], lr: float, batch_size: int = 64,
                  desc: str = "relearn") -> dict[str, float]:
    """Fine-tune a copy of ``model`` (eval mode, logit scale fixed) on ``shots`` (subgroup images) under
    the forget label, cross-entropy over the scenario's class prompts, Adam; the Target (%) after each
    of ``steps``. ``model`` is left unchanged."""
    tuned = clone_model(model).eval()
    shots = shots.to(tuned.device)
    labels = torch.full((len(shots),), splits.classnames.index(splits.forget_label), device=tuned.device)
    head = ClassHead(tuned, splits.classnames, splits.templates, param_names)
    curve: dict[str, float] = {}

    def loss_fn(step: int) -> dict[str, Tensor]:
        logits = tuned.logit_scale.detach() * tuned.encode_image(shots) @ head().to(shots.dtype)
        return {"loss": F.cross_entropy(logits.float(), labels)}

    def read(step: int) -> bool:
        if step in steps:
            curve[str(step)] = _label_target(tuned, target_images, splits, batch_size)
        return False

    train = TrainConfig(steps=max(steps), lr=lr, batch_size=len(shots), weight_decay=0.0, grad_clip=None, check_every=1)
    with tuning(tuned.network, param_names, AdapterConfig(), torch.Generator(), use_lora=False) as params:
        train_loop(params, loss_fn, train, should_stop=read, desc=desc)
        curve[str(max(steps))] = _label_target(tuned, target_images, splits, batch_size)
    return curve


def _relearn(ctx: _Context) -> dict[str, Any]:
    config, u = ctx.config, ctx.sides["unlearned"]
    trainable = [n for n in ctx.tuned if u.model.tower_of(n) is not None]
    towers = sorted({u.model.tower_of(n) for n in trainable})
    param_sets = {"changed": trainable,
                  "towers": [n for n, _ in u.model.named_weights() if u.model.tower_of(n) in towers]}
    k = min(config.relearn_k, len(u.images.forget_train))
    if k < config.relearn_k:
        log.warning("audit: relearning on %d images, all of D_f (relearn_k is %d)", k, config.relearn_k)
    pick = torch.randperm(len(u.images.forget_train), generator=stage_generator(ctx.seed, "audit/relearn"))[:k]
    runs = ("unlearned", "original") if config.relearn_original else ("unlearned",)
    out: dict[str, Any] = {"k": k, "steps": list(config.relearn_steps), "lr": config.relearn_lr, "changed": list(ctx.tuned),
                           "fixed": [n for n in ctx.tuned if n not in trainable], "towers": towers,
                           "before": {s: _label_target(ctx.sides[s].model, ctx.sides[s].images.target.images, ctx.splits,
                                                       config.batch_size) for s in SIDES},
                           "settings": {}}
    for setting in config.relearn_settings:
        names = param_sets[setting]
        entry: dict[str, Any] = {"parameters": len(names),
                                 "numel": sum(p.numel() for n, p in u.model.named_weights() if n in set(names))}
        if not names:
            entry["skipped"] = "the run changed no parameter of either tower"
        for s in runs if names else ():
            side = ctx.sides[s]
            entry[s] = relearn_curve(side.model, side.images.forget_train[pick], side.images.target.images, ctx.splits,
                                     names, steps=config.relearn_steps, lr=config.relearn_lr,
                                     batch_size=config.batch_size, desc=f"relearn {s} ({setting})")
        out["settings"][setting] = entry
    return out


# -- membership ---------------------------------------------------------------------------------
def auc_interval(members: Tensor, others: Tensor, z: float = 1.96) -> dict[str, float]:
    """AUC = P(member score > other score) (ties count half) with the Hanley-McNeil interval."""
    diff = members.double()[:, None] - others.double()[None, :]
    auc = float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
    n1, n2 = len(members), len(others)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se = math.sqrt(max(0.0, auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n2 - 1) * (q2 - auc**2)) / (n1 * n2))
    return {"auc": auc, "low": max(0.0, auc - z * se), "high": min(1.0, auc + z * se)}


def _quantise(scores: Tensor) -> Tensor:
    """Scores to 6 decimals: equal embeddings scored in batches of different shapes differ by float32
    rounding, which must not rank them."""
    return torch.round(scores.double(), decimals=6)


def _membership(ctx: _Context) -> dict[str, Any]:
    splits = ctx.splits
    out: dict[str, Any] = {"members": len(ctx.sides["unlearned"].images.forget_train),
                           "non_members": len(ctx.sides["unlearned"].images.target.images), "similarity": {}, "loss": {}}
    for side_name, side in ctx.sides.items():
        with torch.no_grad():
            text = build_zero_shot_classifier(side.model, [splits.forget_text], ["{}"])[:, 0].cpu()
            classifier = build_zero_shot_classifier(side.model, splits.classnames, splits.templates).cpu()
            scale = float(side.model.logit_scale)
        members, others = side.emb("forget_train"), side.emb("target")
        out["similarity"][side_name] = auc_interval(_quantise(members @ text), _quantise(others @ text))

        def loss(emb: Tensor) -> Tensor:
            return F.cross_entropy(scale * emb @ classifier, torch.full((len(emb),), ctx.label), reduction="none")

        out["loss"][side_name] = auc_interval(_quantise(loss(members)), _quantise(loss(others)))
    return out


_PARTS: dict[str, Callable[[_Context], dict[str, Any]]] = {
    "names": _names, "search": _search, "image": _image, "relearn": _relearn, "membership": _membership,
}


# -- verdict ------------------------------------------------------------------------------------
def verdict(parts: Mapping[str, Mapping[str, Any]], thresholds: AuditThresholds) -> dict[str, Any]:
    """Boolean flags per road (None where the part did not run or could not), with the thresholds used."""
    flags: dict[str, bool | None] = {}
    if "names" in parts:
        flags["names_closed"] = parts["names"]["target_worst"]["unlearned"] <= thresholds.max_target_worst
    if "search" in parts:
        s = parts["search"]
        flags["search_near_chance"] = s["worst"]["unlearned"]["share"] <= thresholds.max_search_ratio * s["chance"]
    if "image" in parts:
        flags["image_moved"] = parts["image"]["cosine_target"]["mean"] < thresholds.max_image_cosine
    if "relearn" in parts:
        summary = audit_summary({"parts": {"relearn": parts["relearn"]}})
        before = parts["relearn"]["before"].get("original")
        flags["relearn_resists"] = None if "relearn" not in summary or before is None else (
            summary["relearn"]["unlearned"] <= thresholds.max_relearn_recovery * before)
    if "membership" in parts:
        m = parts["membership"]
        flags["membership_hidden"] = all(abs(m[k]["unlearned"]["auc"] - m[k]["original"]["auc"]) <= thresholds.max_membership_shift
                                         for k in ("similarity", "loss"))
    known = [v for v in flags.values() if v is not None]
    return {"kind": "evidence, not a pass mark: each flag compares one figure with a chosen threshold",
            "thresholds": thresholds.to_dict(), "flags": flags,
            "every_road_closed": all(known) if known else None}
