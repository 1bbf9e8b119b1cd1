"""The HTML report's figures that the Markdown report does not draw: where the forgotten images went,
the loss curves of each stage, the bench's scores. Each returns PNG bytes; values are written on the
bars (see :func:`clipforget.app.report.label_bars`)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from clipforget.app.report import label_bars


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def confusion_figure(classnames: Sequence[str], counts: Mapping[str, Sequence[int]], forget_label: str) -> bytes:
    """Grouped horizontal bars: how many Target images each model assigns to each class."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.42 * len(classnames) * max(1, len(counts)) / 2 + 1.3))
    height = 0.8 / max(1, len(counts))
    ys = range(len(classnames))
    for i, (name, values) in enumerate(counts.items()):
        bars = ax.barh([y + i * height for y in ys], values, height, label=name,
                       color=("tab:gray", "tab:red")[i % 2])
        label_bars(ax, bars, values, fmt="{:d}", horizontal=True)
    ax.set_yticks([y + height * (len(counts) - 1) / 2 for y in ys],
                  [f"{c} (forgotten label)" if c == forget_label else c for c in classnames], fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.12)
    ax.set_xlabel("Target images assigned (top-1)")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(counts), frameon=False)
    ax.set_title("Where the forgotten images went", pad=22)
    fig.tight_layout()
    return png(fig)


def curve_panels(groups: Mapping[str, Mapping[str, Sequence[float]]], checks: Mapping[str, Sequence[float]] | None = None
                 ) -> tuple[list[tuple[str, Sequence[float]]], list[str]]:
    """What :func:`curves_figure` draws: (title, values) of each series with a point, and the forget
    checks recorded; both empty for a stage that ran no step."""
    panels = [(f"{g}: {k}" if g else k, v) for g, series in groups.items() for k, v in series.items() if v]
    return panels, [k for k in ("forget_acc", "forget_similarity") if checks and checks.get(k)]


def curves_figure(stage: str, groups: Mapping[str, Mapping[str, Sequence[float]]],
                  checks: Mapping[str, Sequence[float]] | None = None) -> bytes:
    """One small panel per recorded series of a stage (``groups``: part of the stage -> series -> values
    per step), plus the forget checks (forget accuracy and similarity at each check) when given."""
    plt = _pyplot()
    panels, extra = curve_panels(groups, checks)
    n = len(panels) + len(extra)
    cols = min(3, max(1, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.3 * rows), squeeze=False)
    for ax, (title, values) in zip(axes.flat, panels):
        ax.plot(range(len(values)), values, lw=1)
        if len(values) >= 40:
            w = max(2, len(values) // 20)
            smooth = [sum(values[max(0, i - w + 1): i + 1]) / len(values[max(0, i - w + 1): i + 1]) for i in range(len(values))]
            ax.plot(range(len(values)), smooth, lw=1.5, color="k", alpha=0.7)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax, key in zip(list(axes.flat)[len(panels):], extra):
        steps = checks.get("step") or list(range(len(checks[key])))
        ax.plot(steps, checks[key], "o-", ms=3, color="tab:red")
        ax.set_title(f"check: {key}", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"stage {stage}", fontsize=9)
    fig.tight_layout()
    return png(fig)


def candidates_figure(curve: Sequence[Mapping[str, float]], x: str | None, chosen: float | None) -> bytes:
    """Scored candidates (a trained baseline's checkpoints, a weight-space grid): calibration accuracy
    and held-out forget accuracy against ``x`` (a tag of the candidates; None: their index)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    steps = [p[x] if x else i for i, p in enumerate(curve)]
    ax.plot(steps, [100 * p["utility"] for p in curve], "o-", label="calibration accuracy")
    ax.plot(steps, [100 * p["forget_acc"] for p in curve], "s-", label="forget-set accuracy")
    if chosen is not None:
        ax.axvline(chosen, color="k", ls="--", lw=1, label=f"kept {x or 'candidate'} {chosen:g}")
    ax.set_xlabel(x or "candidate")
    ax.set_ylabel("%")
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=8)
    ax.set_title("Scored candidates")
    fig.tight_layout()
    return png(fig)


def bench_figure(scenario: str, methods: Sequence[str], columns: Mapping[str, Sequence[float]]) -> bytes:
    """Grouped bars per method: each of ``columns`` (e.g. Target, Retain, Score), values written on."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(methods) * max(1, len(columns)) / 2 + 2), 3.6))
    width = 0.8 / max(1, len(columns))
    for i, (name, values) in enumerate(columns.items()):
        bars = ax.bar([m + i * width for m in range(len(methods))], values, width, label=name)
        label_bars(ax, bars, values)
    ax.set_xticks([m + width * (len(columns) - 1) / 2 for m in range(len(methods))], methods, rotation=20, fontsize=8)
    ax.set_ylim(0, 112)
    ax.set_ylabel("%")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(columns), frameon=False)
    ax.set_title(scenario, pad=22)
    fig.tight_layout()
    return png(fig)
