"""Markdown report and plots generated from a run's JSON outputs (never hand-edited)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clipforget.io import atomic_write_text, atomic_write_with


def _fmt(x: Any) -> str:
    return f"{x:.1f}" if isinstance(x, (int, float)) else str(x)


def metrics_table(rows: Mapping[str, Mapping[str, Any]], heldout: Sequence[str]) -> str:
    """A table in the paper's columns: Target, Retain, each held-out set, Score."""
    head = ["Model", "Target ↓", "Retain ↑", *heldout, "Score ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows.items():
        cells = [name, _fmt(m["target"]), _fmt(m["retain"]), *(_fmt(m["heldout"].get(h, "–")) for h in heldout)]
        cells.append(_fmt(m["score"]) if m.get("score") is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def label_bars(ax, bars, values: Sequence[float], fmt: str = "{:.1f}", horizontal: bool = False) -> None:
    """Write each bar's value next to it, and mark a bar of height 0 by a stroke on the axis in its colour."""
    for bar, v in zip(bars, values):
        colour = bar.get_facecolor()
        if horizontal:
            y = bar.get_y() + bar.get_height() / 2
            ax.annotate(fmt.format(v), (bar.get_width(), y), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=7)
            if v == 0:
                ax.plot([0, 0], [bar.get_y(), bar.get_y() + bar.get_height()], color=colour, lw=3, solid_capstyle="butt")
        else:
            x = bar.get_x() + bar.get_width() / 2
            ax.annotate(fmt.format(v), (x, bar.get_height()), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
            if v == 0:
                ax.plot([bar.get_x(), bar.get_x() + bar.get_width()], [0, 0], color=colour, lw=3, solid_capstyle="butt",
                        clip_on=False)


def plot_metrics(rows: Mapping[str, Mapping[str, Any]], heldout: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["target", "retain", *heldout]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(cols)), 3.5))
    width = 0.8 / max(1, len(rows))
    for i, (name, m) in enumerate(rows.items()):
        vals = [m["target"], m["retain"], *(m["heldout"].get(h, 0.0) for h in heldout)]
        bars = ax.bar([c + i * width for c in range(len(cols))], vals, width, label=name)
        label_bars(ax, bars, vals)
    ax.set_xticks([c + width * (len(rows) - 1) / 2 for c in range(len(cols))], cols, rotation=20)
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_ylim(0, 112)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(rows), frameon=False, fontsize=9)
    ax.set_title("Forgotten subgroup (target) vs everything kept", pad=24)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_fisher(scores: Mapping[str, float], selected: Sequence[str], path: Path, top: int = 25) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:top]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(items) + 1.2))
    names = [k for k, _ in items][::-1]
    vals = [v for _, v in items][::-1]
    colors = ["tab:red" if n in selected else "tab:gray" for n in names]
    bars = ax.barh(names, vals, color=colors)
    label_bars(ax, bars, vals, fmt="{:.3g}", horizontal=True)
    if vals and min(vals) > 0 and max(vals) / min(vals) > 10:
        ax.set_xscale("log")  # linear reads better when the scores span less than a decade
    ax.margins(x=0.15)
    ax.set_xlabel("relative Fisher information (forget / retain)")
    ax.set_title(f"Top {len(items)} layers; red = tuned")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_alpha(curve: Sequence[Mapping[str, float]], chosen: float | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [p["alpha"] for p in curve]
    fig, ax = plt.subplots(figsize=(5.5, 3.3))
    ax.plot(alphas, [100 * p["utility"] for p in curve], "o-", label="calibration accuracy")
    ax.plot(alphas, [100 * p["forget_acc"] for p in curve], "s-", label="forget-set accuracy")
    if chosen is not None:
        ax.axvline(chosen, color="k", ls="--", lw=1, label=f"chosen α={chosen:g}")
        for p in curve:
            if p["alpha"] == chosen:
                for key, dy in (("utility", 6), ("forget_acc", -12)):
                    ax.annotate(f"{100 * p[key]:.1f}", (chosen, 100 * p[key]), xytext=(4, dy), textcoords="offset points",
                                fontsize=7)
    ax.set_ylim(-5, 105)
    ax.set_xlabel("α (0 = original, 1 = unlearned)")
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    ax.set_title("Restore by souping")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def write_report(run_dir: str | Path) -> Path:
    """Build ``report.md``, ``report.html``, plots/ and the model card (``model/README.md``, when the
    run saved its model) from the JSON files of a finished run directory; returns report.html."""
    from clipforget.app.modelcard import write_model_card
    from clipforget.app.report_html import write_run_html
    from clipforget.app.runfiles import RunFiles, run_warnings

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    rows = {"original": {**metrics["original"], "score": None}, "unlearned": {**metrics["unlearned"], "score": metrics.get("score")}}
    heldout = list(metrics["original"]["heldout"])
    plots = run_dir / "plots"
    out = [f"# clipforget report: {info.get('scenario', '?')} on {info.get('model', '?')}", ""]
    out += [f"Method `{info.get('method', '?')}`, seed {info.get('seed', '?')}, device {info.get('device', '?')}, "
            f"commit `{info.get('git_commit')}`. The same with example images, loss curves and the confusion row: "
            "[report.html](report.html).", ""]
    warnings = run_warnings(RunFiles.load(run_dir))
    if warnings:
        out += ["## Warning: a questionable result", "", *(f"- {w}" for w in warnings), ""]
    out += ["## Zero-shot top-1 accuracy (%)", "", metrics_table(rows, heldout), ""]
    out += [f"Score = 100/(1+K)·[max(0, 1−T/T₀) + Σ min(1, A/A₀)] with K = {1 + len(heldout)} utility columns.", ""]
    plot_metrics(rows, heldout, plots / "metrics.png")
    out += ["![accuracies](plots/metrics.png)", ""]
    fisher_path = run_dir / "fisher.json"
    if fisher_path.exists():
        fisher = json.loads(fisher_path.read_text())
        relative = fisher["relative"]
        plot_fisher(relative, fisher["selected"], plots / "fisher.png")
        out += ["## Layers chosen by relative Fisher information", ""]
        out += [f"{len(fisher['selected'])} of {len(relative)} candidate layers tuned "
                "(relative Fisher = F(forget) / F(retain)):", ""]
        out += [f"- `{n}`: {relative[n]:.3g}" for n in fisher["selected"]]
        out += ["", "![fisher](plots/fisher.png)", ""]
    alpha_path = run_dir / "alpha_curve.json"
    if alpha_path.exists():
        alpha = json.loads(alpha_path.read_text())
        plot_alpha(alpha["curve"], alpha.get("chosen"), plots / "alpha.png")
        out += ["## Souping coefficient", "", f"Chosen α = {alpha.get('chosen')}", "", "![alpha](plots/alpha.png)", ""]
    audit_path = run_dir / "audit.json"
    if audit_path.exists():
        out += audit_section(json.loads(audit_path.read_text()))
    if info.get("timings"):
        out += ["## Wall time per stage (s)", ""]
        out += [f"- {k}: {v:.1f}" for k, v in info["timings"].items()]
        out.append("")
    atomic_write_text(run_dir / "report.md", "\n".join(out))
    write_model_card(run_dir)
    return write_run_html(run_dir)


# -- the audit ----------------------------------------------------------------------------------
def _f(x: Any, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "–"


AuditRow = tuple[str, str, str, str, str]
"""One figure of the audit: road, figure, original, unlearned, reference (formatted)."""


def _row(road: str, figure: str, original: Any, unlearned: Any, reference: str = "", digits: int = 1) -> AuditRow:
    return (road, figure, _f(original, digits), _f(unlearned, digits), reference)


def audit_rows(parts: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[AuditRow]:
    """The audit's figures, one row each, in the order of the report's table."""
    rows = []
    if "names" in parts:
        n = parts["names"]
        rows.append(_row("other names", f"Target, worst of {len(n['prompts'])} prompts (%)", n["target_worst"]["original"],
                         n["target_worst"]["unlearned"], f"closed at ≤ {thresholds['max_target_worst']:g}"))
        for p in n["prompts"]:
            rows.append(_row("other names", f"Target as \"{p['name']}\", {n['template_counts'][p['templates']]} "
                             f"{p['templates']} templates (%)", p["original"], p["unlearned"]))
        for alias, share in n.get("fine_grained", {}).get("aliases", {}).items():
            rows.append(_row("other names", f"1000-way top-1 \"{alias}\" (%)", share["original"], share["unlearned"]))
    if "search" in parts:
        s = parts["search"]
        ref = f"chance {s['chance']:.1f}; closed at ≤ {thresholds['max_search_ratio']:g}× chance"
        rows.append(_row("search", f"subgroup share of the top {s['subgroup']} of {s['gallery']}, worst query (%)",
                         s["worst"]["original"]["share"], s["worst"]["unlearned"]["share"], ref))
        for q in s["queries"]:
            rows.append(_row("search", f"share for \"{q['query']}\" (%)", q["original"]["share"], q["unlearned"]["share"]))
            rows.append(_row("search", f"mean rank for \"{q['query']}\"", q["original"]["mean_rank"], q["unlearned"]["mean_rank"],
                             f"chance {s['chance_mean_rank']:.1f}"))
    if "image" in parts:
        i = parts["image"]
        rows.append(_row("image side", "cosine to the original, Target images (mean)", None, i["cosine_target"]["mean"],
                         f"moved at < {thresholds['max_image_cosine']:g}; min {i['cosine_target']['min']:.3f}", 3))
        rows.append(_row("image side", "cosine to the original, Retain images (mean)", None, i["cosine_retain"]["mean"], "", 3))
        pr = i["probe"]
        rows.append(_row("image side", f"linear probe, subgroup vs {pr['test']['kind']} (balanced acc., %)",
                         pr["original"], pr["unlearned"], "chance 50"))
    if "relearn" in parts:
        r = parts["relearn"]
        rows.append(_row("relearning", "Target before fine-tuning (%)", r["before"]["original"], r["before"]["unlearned"]))
        for setting, entry in r["settings"].items():
            if "skipped" in entry:
                rows.append(("relearning", f"{setting}: skipped ({entry['skipped']})", "–", "–", ""))
                continue
            for steps in r["steps"]:
                rows.append(_row("relearning", f"Target after {steps} steps on {r['k']} images, {setting} "
                                 f"({entry['parameters']} tensors) (%)", entry.get("original", {}).get(str(steps)),
                                 entry["unlearned"][str(steps)]))
    if "membership" in parts:
        m = parts["membership"]
        for score in ("similarity", "loss"):
            o, u = m[score]["original"], m[score]["unlearned"]
            rows.append(("membership", f"AUC, D_f ({m['members']}) vs unseen ({m['non_members']}), by {score}",
                         f"{o['auc']:.2f} [{o['low']:.2f}, {o['high']:.2f}]", f"{u['auc']:.2f} [{u['low']:.2f}, {u['high']:.2f}]",
                         "0.5 = indistinguishable"))
    return rows


def audit_section(audit: Mapping[str, Any], level: int = 2) -> list[str]:
    """The audit as Markdown lines (from an audit.json dict): the figures, the flags, what each cannot see."""
    h = "#" * level
    parts, verdict = audit["parts"], audit["verdict"]
    out = [f"{h} Audit: can the subgroup still be found?", "",
           f"Every road tested on the original and the unlearned model, on images no method saw (seed {audit['seed']}). "
           f"The flags are {verdict['kind']}.", "",
           "| road | figure | original | unlearned | reference |", "|---|---|---|---|---|",
           *("| " + " | ".join(row) + " |" for row in audit_rows(parts, verdict["thresholds"])), ""]
    flags = verdict["flags"]
    out += [f"Flags ({', '.join(f'{k} {v:g}' for k, v in verdict['thresholds'].items())}):", ""]
    out += [f"- {k}: {'–' if v is None else ('yes' if v else 'no')}" for k, v in flags.items()]
    out += [f"- closed on every road tested: {'–' if verdict['every_road_closed'] is None else ('yes' if verdict['every_road_closed'] else 'no')}", ""]
    out += [f"{h}# What each figure measures, and what it cannot see", ""]
    out += [f"- **{p}**: {note['measures']} Cannot see: {note['cannot_see']}" for p, note in audit["notes"].items()]
    out += ["", "Seconds per part: " + ", ".join(f"{k} {v:.1f}" for k, v in audit["seconds"].items()), ""]
    return out


def write_audit_report(directory: str | Path, title: str) -> Path:
    """``audit.md`` from the ``audit.json`` in ``directory``."""
    directory = Path(directory)
    audit = json.loads((directory / "audit.json").read_text())
    return atomic_write_text(directory / "audit.md", "\n".join([f"# {title}", "", *audit_section(audit)]))
