"""``report.html``: one self-contained page per run (and one per bench), generated from the JSON files.

Every figure is embedded as a data URI, so the page can be mailed or archived alone; it has no
script and loads nothing from the network. :func:`run_warnings` lists what makes a result suspect;
the page opens with them.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clipforget import __version__
from clipforget.app import figures
from clipforget.io import atomic_write_text
from clipforget.app.report import audit_rows

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d2330;
       max-width: 1120px; margin: 0 auto; padding: 1.2em 1.5em 4em; background: #fff; }
h1 { font-size: 1.55em; margin: .2em 0 .1em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #d8dce4; }
h3 { font-size: 1.02em; margin: 1.3em 0 .4em; }
.sub { color: #5b6475; margin: 0 0 1em; } code, pre { font: 13px/1.35 ui-monospace, "DejaVu Sans Mono", monospace; }
pre { background: #f5f6f8; padding: .8em; overflow-x: auto; border-radius: 4px; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 14px; }
th, td { border: 1px solid #d8dce4; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f2f5; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.hl td { background: #fff6e0; }
.banner { border-radius: 6px; padding: .7em 1em; margin: 1em 0; }
.banner.warn { background: #fff1f0; border: 2px solid #cf222e; } .banner.ok { background: #eefbf1; border: 1px solid #2da44e; }
.banner strong { display: block; margin-bottom: .2em; } .banner ul { margin: .2em 0 0 1.2em; padding: 0; }
.grid { display: flex; flex-wrap: wrap; gap: .7em; } .card { width: 132px; font-size: 12px; }
.card img { width: 112px; height: 112px; object-fit: contain; background: #f0f2f5; display: block; }
.ok { color: #1a7f37; } .bad { color: #cf222e; } .muted { color: #5b6475; }
img.fig { max-width: 100%; height: auto; display: block; margin: .4em 0 1em; }
details { margin: .4em 0; } summary { cursor: pointer; color: #0b57d0; }
nav a { margin-right: .8em; font-size: 14px; }
"""


def e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] | None = None,
          highlight: Sequence[bool] = ()) -> str:
    """An HTML table; the columns in ``numeric`` (default: all but the first) are right-aligned. Cells are escaped."""
    numeric = set(range(1, len(head)) if numeric is None else numeric)
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        cls = ' class="hl"' if i < len(highlight) and highlight[i] else ""
        out.append(f"<tr{cls}>" + "".join(f'<td{" class=n" if j in numeric else ""}>{e(c)}</td>'
                                          for j, c in enumerate(row)) + "</tr>")
    return "\n".join(out) + "</table>"


def facts(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of named facts, names as row headers."""
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>"


def img(data: bytes, alt: str, cls: str = "fig") -> str:
    return f'<img class="{cls}" alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def page(title: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{e(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# -- one run's files ------------------------------------------------------------------------------
def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class RunFiles:
    """The JSON files of a finished run directory (None / empty where a file is absent)."""

    dir: Path
    metrics: dict[str, Any]
    info: dict[str, Any]
    config: dict[str, Any]
    sets: dict[str, Any] | None
    events: dict[str, dict[str, Any]]
    fisher: dict[str, Any] | None
    alpha: dict[str, Any] | None
    audit: dict[str, Any] | None

    @classmethod
    def load(cls, run_dir: str | Path) -> RunFiles:
        d = Path(run_dir)
        events: dict[str, dict[str, Any]] = {}
        if (d / "events.jsonl").is_file():
            for line in (d / "events.jsonl").read_text().splitlines():
                if line.strip():
                    event = json.loads(line)
                    events[event["stage"]] = event  # a resumed stage's later line replaces its first
        config = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {}
        return cls(d, json.loads((d / "metrics.json").read_text()), _json(d / "run.json") or {}, config or {},
                   _json(d / "sets.json"), events, _json(d / "fisher.json"), _json(d / "alpha_curve.json"),
                   _json(d / "audit.json"))

    @property
    def forget(self) -> dict[str, Any]:
        """subgroup, label, text, aliases: from sets.json, else from the run's scenario.yaml."""
        if self.sets:
            return self.sets["forget"]
        path = self.dir / "scenario.yaml"
        f = (yaml.safe_load(path.read_text()) or {}).get("forget", {}) if path.is_file() else {}
        return {"subgroup": f.get("name", "?"), "label": f.get("label", "?"), "text": f.get("text", "?"),
                "aliases": list(f.get("aliases") or [])}

    def predicted(self, model: str, name: str) -> list[int] | None:
        return self.metrics.get(model, {}).get("details", {}).get(name, {}).get("predicted")


def _forget_target() -> float:
    from clipforget.methods.base import WeightChoice

    return WeightChoice().forget_target


def run_warnings(run: RunFiles) -> list[str]:
    """What makes this run's result suspect, one sentence each (empty when nothing does)."""
    out = []
    target = _forget_target()
    chose_original = False
    for stage, ev in run.events.items():
        choice = ev.get("choice")
        if isinstance(choice, Mapping) and isinstance(choice.get("forget_acc"), (int, float)) and choice["forget_acc"] > target:
            what = "α on the grid" if stage == "restore" else "candidate"
            out.append(f"No {what} met the forget constraint (held-out forget-set accuracy ≤ {100 * target:g}%) in stage "
                       f"{stage}: the one that forgets most was kept (forget accuracy {100 * choice['forget_acc']:.1f}%).")
        if ev.get("chose_original") or (stage == "restore" and isinstance(choice, Mapping) and choice.get("alpha") == 0):
            chose_original = True
            out.append(f"Stage {stage} chose the original weights: the saved model is the model it started from.")
        if "checks" in ev and ev.get("stopped_early") is False and ev.get("stop_target", True):
            final = ev.get("final", {})
            out.append(f"Stage {stage} ran its whole step budget ({ev.get('steps_run')} steps) without reaching its stop "
                       f"target (final forget similarity {_num(final.get('forget_similarity'), 3)}, "
                       f"forget accuracy {_num(100 * final['forget_acc'] if 'forget_acc' in final else None)}%).")
    if run.metrics.get("weights_changed") is False and not chose_original:  # the run compared the weights
        out.append("No weight changed (a training budget of zero, or a grid offering only the original): the result is "
                   "the original model, and nothing was forgotten.")
    o, u = run.metrics["original"]["target"], run.metrics["unlearned"]["target"]
    if u >= o:
        out.append(f"The Target did not fall: {o:.1f}% → {u:.1f}%.")
    if run.audit and run.audit["verdict"].get("every_road_closed") is False:
        open_roads = [k for k, v in run.audit["verdict"]["flags"].items() if v is False]
        out.append("The audit still finds the subgroup by some road (flags not met: " + ", ".join(open_roads) + ").")
    return out


# -- sections of a run's page -----------------------------------------------------------------------
def _banner(warnings: Sequence[str]) -> str:
    if not warnings:
        return '<div class="banner ok"><strong>Nothing flagged.</strong>No stage ended on its budget, a weight choice ' \
               "met its constraint, the Target fell, and the audit found no open road (where it ran).</div>"
    items = "".join(f"<li>{e(w)}</li>" for w in warnings)
    return f'<div class="banner warn"><strong>⚠ {len(warnings)} warning(s): read the result with care.</strong><ul>{items}</ul></div>'


SET_ROLES = {"target": "Target: test images of the forgotten subgroup", "retain": "Retain: test images of its siblings",
             "forget_train": "D_f, the forget set (the method trains on it)",
             "retain_train": "D_r, the retain set (the method trains on it)",
             "calibration": "D_m, calibration (distillation; choosing α / checkpoints)"}


def set_order(names: Iterable[str]) -> list[str]:
    """The scored sets first (Target, Retain, the held-out ones), then the training sets."""
    names = list(names)
    first = ["target", "retain", *sorted(n for n in names if n.startswith("heldout/")), "forget_train", "retain_train", "calibration"]
    return [n for n in first if n in names] + sorted(set(names) - set(first))


def _forgotten(run: RunFiles) -> list[str]:
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


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(method: str, config: Mapping[str, Any]) -> list[tuple[str, Any, Any]] | None:
    """(field, this run, default) for each field of a method config that differs from the method's
    defaults; None when the method is not registered here."""
    from clipforget.methods import get_method

    try:
        default = get_method(method).config_class().to_dict()
    except ValueError:
        return None
    ours, theirs = _flat(config), _flat(default)
    return [(k, ours.get(k, "–"), theirs.get(k, "–")) for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]


def _config(run: RunFiles) -> list[str]:
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


def _columns(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(display name, details key) of every scored column, in the paper's order."""
    return [("Target ↓", "target"), ("Retain ↑", "retain"), *((h, f"heldout/{h}") for h in metrics["original"]["heldout"])]


def _value(m: Mapping[str, Any], key: str) -> float:
    return m["heldout"][key[8:]] if key.startswith("heldout/") else m[key]


def _results(run: RunFiles) -> list[str]:
    m, cols = run.metrics, _columns(run.metrics)
    rows = [(name, *(_num(_value(m[name], k)) for _, k in cols), _num(m["score"]) if name == "unlearned" else "–")
            for name in ("original", "unlearned")]
    rows.append(("change", *(f"{_value(m['unlearned'], k) - _value(m['original'], k):+.1f}" for _, k in cols), ""))
    out = ["<h2 id=results>Zero-shot top-1 accuracy (%)</h2>", table(["model", *(c for c, _ in cols), "Score ↑"], rows),
           f"<p class=muted>Score = 100/(1+K)·[max(0, 1−T/T₀) + Σ min(1, A/A₀)], K = {len(cols) - 1} utility columns.</p>"]
    if (run.dir / "plots" / "metrics.png").is_file():
        out.append(img((run.dir / "plots" / "metrics.png").read_bytes(), "accuracies, original and unlearned"))
    details = [(k, m["original"]["details"].get(k), m["unlearned"]["details"].get(k)) for _, k in cols]
    out += ["<h3>Top-1, top-5 and mean per-class accuracy</h3>",
            table(["set", "images", "top-1 original", "top-1 unlearned", "top-5 original", "top-5 unlearned",
                   "per-class mean original", "per-class mean unlearned"],
                  [(k, o.get("count"), _num(o.get("top1")), _num(u.get("top1")), _num(o.get("top5")), _num(u.get("top5")),
                    _num(o.get("mean_per_class")), _num(u.get("mean_per_class"))) for k, o, u in details if o and u])]
    return out + _per_class(run, details)


def _per_class(run: RunFiles, details) -> list[str]:
    if not run.sets:
        return []
    out = ["<h3>Per-class accuracy (%)</h3>"]
    for key, o, u in details:
        s = run.sets["sets"].get(key)
        if not (s and o and u and s["classnames"]):
            continue
        counts = Counter(s["labels"])
        rows = [(c, counts[i], _num(o["per_class"][i]), _num(u["per_class"][i]), f"{u['per_class'][i] - o['per_class'][i]:+.1f}")
                for i, c in enumerate(s["classnames"]) if counts[i] and o["per_class"][i] is not None]
        body = table(["class", "images", "original", "unlearned", "change"], rows)
        open_ = " open" if key in ("target", "retain") else ""
        out.append(f"<details{open_}><summary>{e(key)}: {len(rows)} classes with images</summary>{body}</details>")
    return out


def _confusion(run: RunFiles) -> list[str]:
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


def _examples(run: RunFiles) -> list[str]:
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


def _stages(run: RunFiles) -> list[str]:
    out = ["<h2 id=stages>Stages</h2>"]
    timings = run.info.get("timings", {})
    for stage, ev in run.events.items():
        facts = [f"{_num(ev.get('seconds'))} s"]
        if "steps_run" in ev:
            facts.append(f"{ev['steps_run']} steps" + (", stopped at its target" if ev.get("stopped_early") else ""))
        if ev.get("resumed"):
            facts.append("resumed from a finished stage")
        out.append(f"<h3>{e(stage)} <span class=muted>({e('; '.join(facts))})</span></h3>")
        groups = curve_groups(ev)
        if any(figures.curve_panels(groups, ev.get("checks"))):
            out.append(img(figures.curves_figure(stage, groups, ev.get("checks")), f"loss curves of stage {stage}"))
        if stage == "select" and run.fisher:
            out += _fisher(run)
        elif stage == "restore" and run.alpha:
            out += _alpha(run)
        elif isinstance(ev.get("curve"), list) and ev["curve"] and isinstance(ev["curve"][0], Mapping):
            out += _candidates(ev)
    out += ["<h3>Wall time of each part (s)</h3>",
            table(["part", "seconds"], [(k, _num(v)) for k, v in timings.items()]
                  + [("whole run (wall)", _num(run.info.get("wall_seconds"))),
                     ("compute, counting resumed stages", _num(run.info.get("compute_seconds")))])]
    return out


def _candidates(ev: Mapping[str, Any]) -> list[str]:
    """A stage's scored candidates (checkpoints, or grid points) and the one kept."""
    curve, choice = ev["curve"], ev.get("choice") or {}
    tags = [k for k in curve[0] if k not in ("utility", "forget_acc")]
    x = tags[0] if len(tags) == 1 else None
    chosen = choice.get(x) if x else next((i for i, c in enumerate(curve) if c == choice), None)
    out = [img(figures.candidates_figure(curve, x, chosen), "scored candidates")]
    kept = ", ".join(f"{k} {choice[k]:g}" for k in tags if isinstance(choice.get(k), (int, float)))
    return out + [f"<p>{len(curve)} candidates scored on the calibration images and the held-out forget images; kept: "
                  f"{e(kept or '–')} (calibration accuracy {_num(100 * choice['utility'] if 'utility' in choice else None)}%, "
                  f"forget accuracy {_num(100 * choice['forget_acc'] if 'forget_acc' in choice else None)}%).</p>"]


def _fisher(run: RunFiles) -> list[str]:
    f = run.fisher
    rel, selected = f["relative"], f["selected"]
    out = [f"<p>{len(selected)} of {len(rel)} candidate layers tuned, ranked by relative Fisher information "
           "F(forget) / F(retain):</p>"]
    if (run.dir / "plots" / "fisher.png").is_file():
        out.append(img((run.dir / "plots" / "fisher.png").read_bytes(), "Fisher ranking"))
    rows = [(n, f"{rel[n]:.3g}", f"{f['forget'].get(n, float('nan')):.3g}", f"{f['retain'].get(n, float('nan')):.3g}")
            for n in selected]
    return out + [table(["tuned layer", "relative", "F(forget)", "F(retain)"], rows)]


def _alpha(run: RunFiles) -> list[str]:
    a = run.alpha or {}
    out = [f"<p>Chosen α = {e(a.get('chosen'))} (0 = the original weights, 1 = the unlearned ones).</p>"]
    if (run.dir / "plots" / "alpha.png").is_file():
        out.append(img((run.dir / "plots" / "alpha.png").read_bytes(), "alpha curve"))
    return out


def _audit(run: RunFiles) -> list[str]:
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


def run_page(run: RunFiles) -> str:
    """The whole HTML page of one run."""
    title = f"clipforget report: {run.info.get('scenario', '?')} on {run.info.get('model', '?')}"
    sub = (f"method <code>{e(run.info.get('method', '?'))}</code>, seed {e(run.info.get('seed', '?'))}, "
           f"Target {run.metrics['original']['target']:.1f} → {run.metrics['unlearned']['target']:.1f}, "
           f"Score {run.metrics['score']:.1f}")
    nav = "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in (("forgotten", "what was forgotten"), ("config", "config"),
                            ("results", "accuracy"), ("confusion", "where they went"), ("examples", "examples"),
                            ("stages", "stages"), ("audit", "audit"))) + "</nav>"
    body = [f"<h1>{e(title)}</h1>", f'<p class="sub">{sub}</p>', nav, _banner(run_warnings(run)),
            *_forgotten(run), *_config(run), *_results(run), *_confusion(run), *_examples(run), *_stages(run), *_audit(run),
            '<p class="muted">Generated by clipforget from this run directory\'s JSON files '
            "(report.md says the same in Markdown).</p>"]
    return page(title, body)


def write_run_html(run_dir: str | Path) -> Path:
    """``report.html`` of a finished run directory."""
    run = RunFiles.load(run_dir)
    return atomic_write_text(run.dir / "report.html", run_page(run))


# -- the bench ----------------------------------------------------------------------------------------
def write_bench_html(out: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``report.html`` of a bench: per scenario its table (as table.md), a figure, each cell's warnings,
    and a link to each cell's own report."""
    from clipforget.app.bench import scenario_tables

    out = Path(out)
    body = ["<h1>clipforget bench</h1>",
            f'<p class="sub">{len(rows)} finished cells; methods ranked by mean Score. Each cell links to its own report.</p>']
    for scenario, head, lines, note in scenario_tables(rows):
        cells = [r for r in rows if r["scenario"] == scenario]
        methods = [line[0] for line in lines[1:]]
        body += [f"<h2>{e(scenario)}</h2>", table(head, lines)]
        if note:
            body.append(f'<p class="muted">{e(note)}</p>')
        means = {col: [_mean([r[key] for r in cells if r["method"] == m]) for m in methods]
                 for col, key in (("Target", "target"), ("Retain", "retain"), ("Score", "score"))}
        body.append(img(figures.bench_figure(scenario, methods, means), f"bench {scenario}"))
        items = []
        for r in sorted(cells, key=lambda r: (r["method"], r["seed"])):
            cell = out / r["cell"]
            warnings = run_warnings(RunFiles.load(cell))
            link = f'<a href="{e(r["cell"])}/report.html">{e(r["method"])}, seed {r["seed"]}</a>'
            status = (f'<span class="bad">{len(warnings)} warning(s)</span>: ' + e(" ".join(warnings))) if warnings else '<span class="ok">nothing flagged</span>'
            items.append(f"<li>{link}: {status}</li>")
        body += ["<h3>Cells</h3>", "<ul>" + "".join(items) + "</ul>"]
    return atomic_write_text(out / "report.html", page("clipforget bench", body))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
