"""Markdown report and plots generated from a run's JSON outputs (never hand-edited)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clipforget.io import atomic_write_text


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


def plot_metrics(rows: Mapping[str, Mapping[str, Any]], heldout: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["target", "retain", *heldout]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(cols)), 3.5))
    width = 0.8 / max(1, len(rows))
    for i, (name, m) in enumerate(rows.items()):
        vals = [m["target"], m["retain"], *(m["heldout"].get(h, 0.0) for h in heldout)]
        ax.bar([c + i * width for c in range(len(cols))], vals, width, label=name)
    ax.set_xticks([c + width * (len(rows) - 1) / 2 for c in range(len(cols))], cols, rotation=20)
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("Forgotten subgroup (target) vs everything kept")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
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
    ax.barh(names, vals, color=colors)
    if vals and min(vals) > 0 and max(vals) / min(vals) > 10:
        ax.set_xscale("log")  # linear reads better when the scores span less than a decade
    ax.set_xlabel("relative Fisher information (forget / retain)")
    ax.set_title(f"Top {len(items)} layers; red = tuned")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
    ax.set_xlabel("α (0 = original, 1 = unlearned)")
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    ax.set_title("Restore by souping")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: str | Path) -> Path:
    """Build ``report.md`` (and plots/) from the JSON files of a finished run directory."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    rows = {"original": {**metrics["original"], "score": None}, "unlearned": {**metrics["unlearned"], "score": metrics.get("score")}}
    heldout = list(metrics["original"]["heldout"])
    plots = run_dir / "plots"
    out = [f"# clipforget report: {info.get('scenario', '?')} on {info.get('model', '?')}", ""]
    out += [f"Method `{info.get('method', '?')}`, seed {info.get('seed', '?')}, device {info.get('device', '?')}, "
            f"commit `{info.get('git_commit')}`.", ""]
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
    if info.get("timings"):
        out += ["## Wall time per stage (s)", ""]
        out += [f"- {k}: {v:.1f}" for k, v in info["timings"].items()]
        out.append("")
    return atomic_write_text(run_dir / "report.md", "\n".join(out))
