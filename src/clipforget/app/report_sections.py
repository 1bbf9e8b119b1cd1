"""The sections of a run's ``report.html``, each a list of HTML blocks from one :class:`RunFiles`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from clipforget import __version__
from clipforget.app import figures
from clipforget.app.html import e, facts, img, num, table
from clipforget.app.report import audit_rows
from clipforget.app.runfiles import (
    SET_ROLES,
    RunFiles,
    config_diff,
    set_order,
)


def banner(warnings: Sequence[str]) -> str:
    if not warnings:
        return '<div class="banner ok"><strong>Nothing flagged.</strong>No stage ended on its budget, a weight choice ' \
               "met its constraint, the Target fell, and the audit found no open road (where it ran).</div>"
    items = "".join(f"<li>{e(w)}</li>" for w in warnings)
    return f'<div class="banner warn"><strong>⚠ {len(warnings)} warning(s): read the result with care.</strong><ul>{items}</ul></div>'


def forgotten_section(run: RunFiles) -> list[str]:
    out = ["<h2 id=forgotten>What was forgotten</h2>"]
    f = run.forget
    out.append(facts([("subgroup", f["subgroup"]), ("its label", f["label"]), ("forget text", f["text"]),
                      ("aliases (the audit's only)", ", ".join(f["aliases"]) or "–")]))
    if not run.sets:
        return out + ["<p class=muted>sets.json is absent (a run from an older clipforget): no set sizes.</p>"]
    rows = []
    for name in set_order(run.sets["sets"]):
        s = run.sets["sets"][name]
        role = SET_ROLES.get(name, "held out: zero-shot, never used for training or selection")
        classes = len(s["classnames"]) if s["classnames"] else "–"
        rows.append((name, role, s["count"], classes, ", ".join(s["subgroups"][:6]) + (" …" if len(s["subgroups"]) > 6 else "")))
    out += ["<h3>Set sizes</h3>", table(["set", "role", "images", "classes scored over", "subgroups"], rows, numeric=(2, 3))]
    return out


def config_section(run: RunFiles) -> list[str]:
    c, info = run.config, run.info
    out = ["<h2 id=config>Model and method</h2>",
           facts([("model", c.get("model", info.get("model"))), ("method", c.get("method", info.get("method"))),
                  ("seed", c.get("seed")), ("device", c.get("device")), ("image stages frozen before", c.get("image_prefix")),
                  ("clipforget", info.get("versions", {}).get("clipforget", __version__)),
                  ("git commit", info.get("git_commit")), ("unlearned model", info.get("unlearned_model") or "not saved")])]
    diff = config_diff(c.get("method", ""), c.get("method_config", {}))
    if diff is None:
        out.append("<p class=muted>The method is not registered in this clipforget: no defaults to compare with.</p>")
    elif diff:
        out += ["<h3>Where the method config differs from its defaults</h3>",
                table(["field", "this run", "default"], [(k, json.dumps(a), json.dumps(b)) for k, a, b in diff], numeric=())]
    else:
        out.append("<p>The method config is the method's default.</p>")
    full = yaml.safe_dump(c.get("method_config", {}), sort_keys=False)
    return out + [f"<details><summary>the full method config (config.yaml)</summary><pre>{e(full)}</pre></details>"]


def columns(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(display name, details key) of every scored column, in the paper's order."""
    return [("Target ↓", "target"), ("Retain ↑", "retain"), *((h, f"heldout/{h}") for h in metrics["original"]["heldout"])]


def value(m: Mapping[str, Any], key: str) -> float:
    return m["heldout"][key[8:]] if key.startswith("heldout/") else m[key]


def results_section(run: RunFiles) -> list[str]:
    m, cols = run.metrics, columns(run.metrics)
    rows = [(name, *(num(value(m[name], k)) for _, k in cols), num(m["score"]) if name == "unlearned" else "–")
            for name in ("original", "unlearned")]
    rows.append(("change", *(f"{value(m['unlearned'], k) - value(m['original'], k):+.1f}" for _, k in cols), ""))
    out = ["<h2 id=results>Zero-shot top-1 accuracy (%)</h2>", table(["model", *(c for c, _ in cols), "Score ↑"], rows),
           f"<p class=muted>Score = 100/(1+K)·[max(0, 1−T/T₀) + Σ min(1, A/A₀)], K = {len(cols) - 1} utility columns.</p>"]
    if (run.dir / "plots" / "metrics.png").is_file():
        out.append(img((run.dir / "plots" / "metrics.png").read_bytes(), "accuracies, original and unlearned"))
    details = [(k, m["original"]["details"].get(k), m["unlearned"]["details"].get(k)) for _, k in cols]
    out += ["<h3>Top-1, top-5 and mean per-class accuracy</h3>",
            table(["set", "images", "top-1 original", "top-1 unlearned", "top-5 original", "top-5 unlearned",
                   "per-class mean original", "per-class mean unlearned"],
                  [(k, o.get("count"), num(o.get("top1")), num(u.get("top1")), num(o.get("top5")), num(u.get("top5")),
                    num(o.get("mean_per_class")), num(u.get("mean_per_class"))) for k, o, u in details if o and u])]
    return out + per_class(run, details)


def per_class(run: RunFiles, details) -> list[str]:
    if not run.sets:
        return []
    out = ["<h3>Per-class accuracy (%)</h3>"]
    for key, o, u in details:
        s = run.sets["sets"].get(key)
        if not (s and o and u and s["classnames"]):
            continue
        counts = Counter(s["labels"])
        rows = [(c, counts[i], num(o["per_class"][i]), num(u["per_class"][i]), f"{u['per_class'][i] - o['per_class'][i]:+.1f}")
                for i, c in enumerate(s["classnames"]) if counts[i] and o["per_class"][i] is not None]
        body = table(["class", "images", "original", "unlearned", "change"], rows)
        open_ = " open" if key in ("target", "retain") else ""
        out.append(f"<details{open_}><summary>{e(key)}: {len(rows)} classes with images</summary>{body}</details>")
    return out


def confusion_section(run: RunFiles) -> list[str]:
    out = ["<h2 id=confusion>Where the forgotten images went</h2>"]
    before, after = run.predicted("original", "target"), run.predicted("unlearned", "target")
    if not (run.sets and before and after):
        return out + ["<p class=muted>No per-image predictions in metrics.json (a run from an older clipforget).</p>"]
    names, label = run.sets["sets"]["target"]["classnames"], run.sets["forget"]["label"]
    cb, ca = Counter(before), Counter(after)
    order = sorted(range(len(names)), key=lambda i: (-ca[i], -cb[i], i))
    shown = [i for i in order if ca[i] or cb[i] or names[i] == label]  # the forgotten label's row, even at 0
    rows = [(names[i] + (" (the forgotten label)" if names[i] == label else ""), cb[i], ca[i]) for i in shown]
    n = len(after)
    top = next((i for i in order if names[i] != label), None)
    lead = (f"<p>Of the {n} Target images, the original model assigned {cb[names.index(label)] if label in names else 0} to "
            f"<b>{e(label)}</b>; the unlearned model assigns {ca[names.index(label)] if label in names else 0}. "
            + (f"Most now go to <b>{e(names[top])}</b> ({ca[top]}).</p>" if top is not None and ca[top] else "</p>"))
    fig = figures.confusion_figure([names[i] for i in shown], {"original": [cb[i] for i in shown],
                                                               "unlearned": [ca[i] for i in shown]}, label)
    highlight = [names[i] == label for i in shown]
    return out + [lead, table(["class assigned", "original", "unlearned"], rows, highlight=highlight), img(fig, "confusion row")]


def examples_section(run: RunFiles) -> list[str]:
    out = ["<h2 id=examples>Example images</h2>",
           "<p class=muted>A few images of each set, with the top-1 class of each model (✓ right, ✗ wrong).</p>"]
    if not run.sets:
        return out + ["<p class=muted>sets.json is absent.</p>"]
    for name in set_order(run.sets["sets"]):
        s = run.sets["sets"][name]
        if not s.get("examples"):
            continue
        before, after = run.predicted("original", name), run.predicted("unlearned", name)
        cards = []
        for ex in s["examples"]:
            path = run.dir / ex["image"]
            if not path.is_file():
                continue
            lines = [f"<b>{e(ex['label'])}</b>" + (f" <span class=muted>({e(ex['subgroup'])})</span>" if ex["subgroup"] != ex["label"] else "")]
            for model, preds in (("before", before), ("after", after)):
                if preds:
                    p = preds[ex["index"]]
                    ok = p == s["labels"][ex["index"]]
                    lines.append(f'{model}: <span class="{"ok" if ok else "bad"}">{e(s["classnames"][p])} {"✓" if ok else "✗"}</span>')
            if not (before and after):
                lines.append('<span class="muted">trained on, not scored</span>')
            cards.append(f'<div class="card">{img(path.read_bytes(), name + " example", cls="")}' + "<br>".join(lines) + "</div>")
        out += [f"<h3>{e(name)}</h3>", f'<div class="grid">{"".join(cards)}</div>']
    return out


def curve_groups(event: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, list[float]]]:
    """Every ``curves`` mapping (series -> value per step) inside a stage's event, by where it sits."""
    out: dict[str, dict[str, list[float]]] = {}
    for k, v in event.items():
        if k == "curves" and isinstance(v, Mapping):
            out[prefix] = {s: list(xs) for s, xs in v.items() if isinstance(xs, list)}
        elif isinstance(v, Mapping):
            out.update(curve_groups(v, f"{prefix}.{k}" if prefix else k))
    return out


def stages_section(run: RunFiles) -> list[str]:
    out = ["<h2 id=stages>Stages</h2>"]
    timings = run.info.get("timings", {})
    for stage, ev in run.events.items():
        facts = [f"{num(ev.get('seconds'))} s"]
        if "steps_run" in ev:
            facts.append(f"{ev['steps_run']} steps" + (", stopped at its target" if ev.get("stopped_early") else ""))
        if ev.get("resumed"):
            facts.append("resumed from a finished stage")
        out.append(f"<h3>{e(stage)} <span class=muted>({e('; '.join(facts))})</span></h3>")
        groups = curve_groups(ev)
        if any(figures.curve_panels(groups, ev.get("checks"))):
            out.append(img(figures.curves_figure(stage, groups, ev.get("checks")), f"loss curves of stage {stage}"))
        if stage == "select" and run.fisher:
            out += fisher_section(run)
        elif stage == "restore" and run.alpha:
            out += alpha_section(run)
        elif isinstance(ev.get("curve"), list) and ev["curve"] and isinstance(ev["curve"][0], Mapping):
            out += candidates(ev)
    out += ["<h3>Wall time of each part (s)</h3>",
            table(["part", "seconds"], [(k, num(v)) for k, v in timings.items()]
                  + [("whole run (wall)", num(run.info.get("wall_seconds"))),
                     ("compute, counting resumed stages", num(run.info.get("compute_seconds")))])]
    return out


def candidates(ev: Mapping[str, Any]) -> list[str]:
    """A stage's scored candidates (checkpoints, or grid points) and the one kept."""
    curve, choice = ev["curve"], ev.get("choice") or {}
    tags = [k for k in curve[0] if k not in ("utility", "forget_acc")]
    x = tags[0] if len(tags) == 1 else None
    chosen = choice.get(x) if x else next((i for i, c in enumerate(curve) if c == choice), None)
    out = [img(figures.candidates_figure(curve, x, chosen), "scored candidates")]
    kept = ", ".join(f"{k} {choice[k]:g}" for k in tags if isinstance(choice.get(k), (int, float)))
    return out + [f"<p>{len(curve)} candidates scored on the calibration images and the held-out forget images; kept: "
                  f"{e(kept or '–')} (calibration accuracy {num(100 * choice['utility'] if 'utility' in choice else None)}%, "
                  f"forget accuracy {num(100 * choice['forget_acc'] if 'forget_acc' in choice else None)}%).</p>"]


def fisher_section(run: RunFiles) -> list[str]:
    f = run.fisher
    rel, selected = f["relative"], f["selected"]
    out = [f"<p>{len(selected)} of {len(rel)} candidate layers tuned, ranked by relative Fisher information "
           "F(forget) / F(retain):</p>"]
    if (run.dir / "plots" / "fisher.png").is_file():
        out.append(img((run.dir / "plots" / "fisher.png").read_bytes(), "Fisher ranking"))
    rows = [(n, f"{rel[n]:.3g}", f"{f['forget'].get(n, float('nan')):.3g}", f"{f['retain'].get(n, float('nan')):.3g}")
            for n in selected]
    return out + [table(["tuned layer", "relative", "F(forget)", "F(retain)"], rows)]


def alpha_section(run: RunFiles) -> list[str]:
    a = run.alpha or {}
    out = [f"<p>Chosen α = {e(a.get('chosen'))} (0 = the original weights, 1 = the unlearned ones).</p>"]
    if (run.dir / "plots" / "alpha.png").is_file():
        out.append(img((run.dir / "plots" / "alpha.png").read_bytes(), "alpha curve"))
    return out


def audit_section(run: RunFiles) -> list[str]:
    out = ["<h2 id=audit>Audit: can the subgroup still be found?</h2>"]
    if not run.audit:
        return out + ["<p class=muted>The run was not audited (--no-audit).</p>"]
    a, verdict = run.audit, run.audit["verdict"]
    out += [f"<p>Every road tested on the original and the unlearned model, on images no method saw (seed {e(a['seed'])}). "
            f"The flags are {e(verdict['kind'])}.</p>",
            table(["road", "figure", "original", "unlearned", "reference"], audit_rows(a["parts"], verdict["thresholds"]), numeric=(2, 3))]
    flags = [(k, "–" if v is None else ("yes" if v else "no")) for k, v in verdict["flags"].items()]
    flags.append(("closed on every road tested", "–" if verdict["every_road_closed"] is None else
                  ("yes" if verdict["every_road_closed"] else "no")))
    out += ["<h3>Flags</h3>", table(["flag", "met"], flags, highlight=[v == "no" for _, v in flags]),
            "<p class=muted>Thresholds: " + e(", ".join(f"{k} {v:g}" for k, v in verdict["thresholds"].items())) + "</p>",
            "<details><summary>what each figure measures, and what it cannot see</summary><ul>"
            + "".join(f"<li><b>{e(p)}</b>: {e(n['measures'])} <i>Cannot see:</i> {e(n['cannot_see'])}</li>" for p, n in a["notes"].items())
            + "</ul></details>",
            "<p class=muted>Seconds per part: " + e(", ".join(f"{k} {v:.1f}" for k, v in a["seconds"].items())) + "</p>"]
    return out
