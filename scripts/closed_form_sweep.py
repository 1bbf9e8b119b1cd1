"""Score closed-form edits of the image projection (``forget.solver=closed_form``) on a scenario, fast.

    python scripts/closed_form_sweep.py SCENARIO '[{"overshoot": 2, "ridge": 3, "retain_weight": 0.1}, ...]' [--seed 0]

Each JSON object holds ForgetConfig fields (``target=project`` and ``solver=closed_form`` are implied;
``self_names``/``self_name_min`` pick the names as the method does). The edit is the library's own
(:func:`clipforget.methods.edit.closed_form_edit`) on the run's 80% of D_f for the seed; images are
reduced once to the projection's inputs, so each edit is scored in seconds: Target, Retain, each
held-out set, the paper's Score, and the audit's worst-prompt Target and search share (the audit's
aliases and template sets; no souping). ``--relearn`` adds the audit's relearning Target after 10
steps on the projection (its 10 images, rate and seed), at a few seconds per edit. What it cannot see: the restore stage's alpha,
which scales the edit back in a real run.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch
import torch.nn.functional as F

from clipforget.audit.config import AuditConfig, template_set
from clipforget.audit.measures import relearn_curve, renamed_classifiers, retrieval
from clipforget.audit.roads import gallery_sets
from clipforget.methods.core import clone_model
from clipforget.methods.base import stage_generator
from clipforget.methods.edit import closed_form_edit, projection_parameters
from clipforget.methods.forget import ForgetConfig
from clipforget.methods.naming import subgroup_names, vocabulary
from clipforget.methods.scoring import split_forget
from clipforget.metrics import ScenarioMetrics, paper_score
from clipforget.models import projection_inputs
from clipforget.app.prepare import prepare
from clipforget.zeroshot import build_zero_shot_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("grid", help="a JSON list of ForgetConfig overrides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relearn", action="store_true", help="also relearn each edit as the bench audit does")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_grad_enabled(False)
    prepared = prepare("testbed", args.scenario)
    view = prepared.training_view(prepared.model.image_stages()[-1].name)  # images = the last stage's inputs
    splits, images, original = prepared.splits, view.images, prepared.original_metrics
    fit, _ = split_forget(view.data, 0.2, args.seed)
    base = view.model
    feats = {"target": images.target, "retain": images.retain, **{f"heldout/{k}": v for k, v in images.heldout.items()}}
    inputs = {k: projection_inputs(base, v.images) for k, v in feats.items()}
    label = splits.classnames.index(splits.forget_label)
    classifiers = {"target": build_zero_shot_classifier(base, splits.classnames, splits.templates)}
    classifiers["retain"] = classifiers["target"]
    classifiers.update({f"heldout/{k}": build_zero_shot_classifier(base, v.classnames, v.templates) for k, v in images.heldout.items()})
    names = [splits.forget_label, *(a for a in splits.forget_aliases if a != splits.forget_label)]
    renamed = [c for t in (splits.templates, template_set("openai_imagenet"))
               for c in renamed_classifiers(base, splits.classnames, label, names, t, 64).values()]
    keep = gallery_sets(splits)
    subgroup = torch.cat([torch.full((len(v),), k == "target") for k, v in keep.items()])
    queries = build_zero_shot_classifier(base, list(dict.fromkeys([splits.forget_text, *(f"a photo of a {a}." for a in names[1:])])), ["{}"])

    audit = AuditConfig()
    shots = images.forget_train[torch.randperm(len(images.forget_train), generator=stage_generator(args.seed, "audit/relearn"))[:audit.relearn_k]]

    def relearned(model) -> float:
        with torch.enable_grad():
            curve = relearn_curve(model, shots, images.target.images, splits, projection_parameters(model), steps=[10],
                                  lr=audit.relearn_lr, desc="relearn")
        return round(curve["10"], 1)

    def score(model) -> dict:
        proj = model.image_projection()
        params = dict(model.named_weights())
        w, b = params[proj.weight], params[proj.bias] if proj.bias else 0.0
        emb = {k: F.normalize(x @ w.T + b, dim=-1) for k, x in inputs.items()}
        acc = {k: 100.0 * float(((e @ classifiers[k]).argmax(-1) == feats[k].labels).float().mean()) for k, e in emb.items()}
        metrics = ScenarioMetrics(acc["target"], acc["retain"], {k: acc[f"heldout/{k}"] for k in images.heldout}, {})
        worst = max(100.0 * float(((emb["target"] @ c).argmax(-1) == label).float().mean()) for c in renamed)
        gallery = torch.cat([emb[k][v] for k, v in keep.items()])
        search = max(retrieval(gallery, subgroup, queries[:, j])["share"] for j in range(queries.shape[1]))
        return {"score": round(paper_score(metrics, original), 1), "target": round(metrics.target, 1),
                "retain": round(metrics.retain, 1), "heldout": {k: round(v, 1) for k, v in metrics.heldout.items()},
                "worst_prompt": round(worst, 1), "search": round(search, 1),
                "search_chance": round(100.0 * float(subgroup.float().mean()), 1),
                **({"relearn": relearned(model)} if args.relearn else {})}

    print(json.dumps({"original": score(base)}))
    for overrides in json.loads(args.grid):
        config = ForgetConfig(**{"target": "project", "solver": "closed_form", **overrides})
        found = subgroup_names(base, fit, vocabulary(config.vocabulary), config.self_names, min_probability=config.self_name_min,
                               min_ratio=config.self_name_ratio)
        model = clone_model(base)
        info = closed_form_edit(model, fit, config, [n["name"] for n in found])
        print(json.dumps({"config": overrides, "names": [n["name"] for n in found], **score(model),
                          "edit_norm": round(info["edit_norm"], 3)}), flush=True)


if __name__ == "__main__":
    main()
