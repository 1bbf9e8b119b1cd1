"""The five roads of the audit (names, search, image, relearn, membership), each a function of one
:class:`Context` (both models with their images, the splits, the config) returning JSON-ready figures."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforget.audit.config import SIDES, AuditConfig, template_set
from clipforget.audit.measures import (
    auc_interval,
    label_target,
    linear_probe,
    quantise,
    relearn_curve,
    renamed_classifiers,
    retrieval,
    top1_share,
)
from clipforget.data import presets
from clipforget.data.types import ScenarioSplits
from clipforget.evaluation import ScenarioImages
from clipforget.methods.base import stage_generator
from clipforget.models.base import DualEncoder
from clipforget.zeroshot import build_zero_shot_classifier, compute_image_embeddings

log = logging.getLogger(__name__)


@dataclass
class Side:
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
class Context:
    sides: dict[str, Side]
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


def _names(ctx: Context) -> dict[str, Any]:
    splits, config = ctx.splits, ctx.config
    names = (splits.forget_label, *ctx.aliases)
    template_sets = {"scenario": splits.templates, "wide": template_set(config.templates)}
    prompts = [{"name": n, "templates": t} for t in template_sets for n in names]
    for side_name, side in ctx.sides.items():
        target = side.emb("target")
        for t, templates in template_sets.items():
            classifiers = renamed_classifiers(side.model, splits.classnames, ctx.label, names, templates, config.batch_size)
            for p in prompts:
                if p["templates"] == t:
                    p[side_name] = top1_share(target, classifiers[p["name"]], ctx.label)
    worst = {s: max(prompts, key=lambda p: p[s]) for s in SIDES}
    out = {"label": splits.forget_label, "aliases": list(ctx.aliases),
           "template_counts": {t: len(v) for t, v in template_sets.items()}, "prompts": prompts,
           "target_worst": {s: worst[s][s] for s in SIDES},
           "worst_prompt": {s: {"name": worst[s]["name"], "templates": worst[s]["templates"]} for s in SIDES}}
    fine = _fine_grained(ctx)
    if fine:
        out["fine_grained"] = fine
    return out


def _fine_grained(ctx: Context) -> dict[str, Any]:
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


def gallery_sets(splits: ScenarioSplits) -> dict[str, list[int]]:
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


def _search(ctx: Context) -> dict[str, Any]:
    keep = gallery_sets(ctx.splits)
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


def _siblings(labels: Tensor, label: int) -> tuple[Tensor, str]:
    """Indices of the images under the forget label (the within-class siblings), else of all of them."""
    same = torch.nonzero(labels == label).squeeze(1)
    return (same, "same label") if len(same) else (torch.arange(len(labels)), "all retain images")


def _image(ctx: Context) -> dict[str, Any]:
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


def _relearn(ctx: Context) -> dict[str, Any]:
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
                           "before": {s: label_target(ctx.sides[s].model, ctx.sides[s].images.target.images, ctx.splits,
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


def _membership(ctx: Context) -> dict[str, Any]:
    splits = ctx.splits
    out: dict[str, Any] = {"members": len(ctx.sides["unlearned"].images.forget_train),
                           "non_members": len(ctx.sides["unlearned"].images.target.images), "similarity": {}, "loss": {}}
    for side_name, side in ctx.sides.items():
        with torch.no_grad():
            text = build_zero_shot_classifier(side.model, [splits.forget_text], ["{}"])[:, 0].cpu()
            classifier = build_zero_shot_classifier(side.model, splits.classnames, splits.templates).cpu()
            scale = float(side.model.logit_scale)
        members, others = side.emb("forget_train"), side.emb("target")
        out["similarity"][side_name] = auc_interval(quantise(members @ text), quantise(others @ text))

        def loss(emb: Tensor, classifier: Tensor = classifier, scale: float = scale) -> Tensor:
            return F.cross_entropy(scale * emb @ classifier, torch.full((len(emb),), ctx.label), reduction="none")

        out["loss"][side_name] = auc_interval(quantise(loss(members)), quantise(loss(others)))
    return out


ROADS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "names": _names, "search": _search, "image": _image, "relearn": _relearn, "membership": _membership,
}
