"""The bench's tables: every finished cell of a bench folder collected into ``results.csv``,
``results.json``, one Markdown table per scenario (``table.md``, the paper's columns and the audit's)
and ``report.html``."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clipforget.audit import audit_summary
from clipforget.io import atomic_write_json, atomic_write_text


def finished(cell: Path) -> bool:
    """Whether a cell's run wrote every output (its run.json says so last)."""
    try:
        return json.loads((cell / "run.json").read_text()).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
        return False


def collect(out: str | Path) -> list[dict[str, Any]]:
    """One row per finished cell, read from the run directories.

    ``seconds`` is the run's compute time without its audit (the method's cost); cells with an
    audit.json gain ``audit/target_worst``, ``audit/search_share`` (worst query), ``audit/search_chance``
    and ``audit/relearn@<steps>`` (Target after the smallest relearning budget), the original's in
    ``original``.
    """
    rows, out = [], Path(out)
    for metrics_file in sorted(out.glob("runs/*/*/seed*/metrics.json")):
        cell = metrics_file.parent
        if not finished(cell):
            continue
        metrics = json.loads(metrics_file.read_text())
        info = json.loads((cell / "run.json").read_text())
        u, o = metrics["unlearned"], metrics["original"]
        seconds = info.get("compute_seconds", info.get("wall_seconds"))
        if seconds is not None:
            seconds -= info.get("timings", {}).get("audit", 0.0)
        audited = _audit_columns(cell / "audit.json")
        named = json.loads((cell / "bench.json").read_text()) if (cell / "bench.json").is_file() else {}
        rows.append({
            "scenario": named.get("scenario", cell.parent.parent.name), "method": named.get("method", cell.parent.name),
            "seed": int(cell.name[4:]), "cell": cell.relative_to(out).as_posix(),
            "target": u["target"], "retain": u["retain"], **{f"heldout/{k}": v for k, v in u["heldout"].items()},
            "score": metrics["score"], "seconds": seconds, **audited.get("unlearned", {}), **audited.get("shared", {}),
            "original": {"target": o["target"], "retain": o["retain"], **{f"heldout/{k}": v for k, v in o["heldout"].items()},
                         **audited.get("original", {})},
        })
    return rows


def _audit_columns(path: Path) -> dict[str, dict[str, float]]:
    """The audit's headline figures as row columns: per model, and the chance level they share."""
    if not path.is_file():
        return {}
    summary = audit_summary(json.loads(path.read_text()))
    cols: dict[str, dict[str, float]] = {"original": {}, "unlearned": {}, "shared": {}}
    for side in ("original", "unlearned"):
        if "target_worst" in summary:
            cols[side]["audit/target_worst"] = summary["target_worst"][side]
        if "search_share" in summary:
            cols[side]["audit/search_share"] = summary["search_share"][side]
        if side in summary.get("relearn", {}):
            cols[side][f"audit/relearn@{summary['relearn_steps']}"] = summary["relearn"][side]
    if "search_chance" in summary:
        cols["shared"]["audit/search_chance"] = summary["search_chance"]
    return cols


def _mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _audit_heads(cols: Sequence[str], cells: Sequence[Mapping[str, Any]]) -> list[str]:
    chance = next((r["audit/search_chance"] for r in cells if "audit/search_chance" in r), None)
    heads = {"audit/target_worst": "Target worst prompt ↓",
             "audit/search_share": "search share ↓" + (f" (chance {chance:.1f})" if chance is not None else "")}
    return [heads[c] if c in heads else f"relearn Target @{c.split('@')[1]} steps ↓" for c in cols]


AUDIT_NOTE = ("Audit columns (`audit.json` of each cell): the largest Target over the label, its aliases and "
              "two template sets; the subgroup's share of the top n in text-to-image search for its worst "
              "query, chance n / gallery size; the Target after the smallest relearning budget of the first "
              "setting run (by default: on the parameters the run changed; the original row: the same budget on "
              "the original). Time excludes the audit.")


def scenario_tables(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str], list[list[str]], str]]:
    """Per scenario ``(scenario, head, lines, note)``: the original model, then each method as mean ± std
    over seeds (best mean Score first), in the paper's columns, then the audit's columns where cells
    were audited ("–" where a cell was not); ``note`` explains the audit columns ("" without them)."""
    tables = []
    for scenario in sorted({r["scenario"] for r in rows}):
        cells = [r for r in rows if r["scenario"] == scenario]
        cols = ["target", "retain"] + sorted({k for r in cells for k in r if k.startswith("heldout/")})
        audit_cols = [c for c in ("audit/target_worst", "audit/search_share") if any(c in r for r in cells)]
        audit_cols += sorted({k for r in cells for k in r if k.startswith("audit/relearn@")}, key=lambda k: int(k.split("@")[1]))[:1]
        head = ["Method", "Target ↓", "Retain ↑", *(c.split("/", 1)[1] for c in cols[2:]), "Score ↑",
                *_audit_heads(audit_cols, cells), "seeds", "time (s)"]
        orig = next((r["original"] for r in cells if any(c in r["original"] for c in audit_cols)), cells[0]["original"])
        lines = [["original", *(f"{orig.get(c, float('nan')):.1f}" for c in cols), "–",
                  *(_mean_std([orig[c]]) if c in orig else "–" for c in audit_cols), "–", "–"]]
        by_method: dict[str, list[Mapping[str, Any]]] = {}
        for r in cells:
            by_method.setdefault(r["method"], []).append(r)
        ranked = sorted(by_method.items(), key=lambda kv: -statistics.mean(r["score"] for r in kv[1]))
        for method, rs in ranked:
            secs = [r["seconds"] for r in rs if r["seconds"] is not None]
            lines.append([method, *(_mean_std([r[c] for r in rs]) for c in cols), _mean_std([r["score"] for r in rs]),
                          *(_mean_std([r[c] for r in rs if c in r]) if any(c in r for r in rs) else "–" for c in audit_cols),
                          str(len(rs)), f"{statistics.mean(secs):.0f}" if secs else "–"])
        tables.append((scenario, head, lines, AUDIT_NOTE if audit_cols else ""))
    return tables


def markdown_table(rows: Sequence[Mapping[str, Any]], *, times: bool = True) -> str:
    """:func:`scenario_tables` as Markdown, one ``###`` section per scenario; ``times`` False leaves the
    time column out (cells that ran under different loads)."""
    parts = []
    for scenario, head, lines, note in scenario_tables(rows):
        if not times:
            head, lines, note = head[:-1], [line[:-1] for line in lines], note.replace(" Time excludes the audit.", "")
        md = [f"### {scenario}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        md += ["| " + " | ".join(line) + " |" for line in lines]
        if note:
            md += ["", note]
        parts.append("\n".join(md))
    return "\n\n".join(parts) + "\n"


def write_tables(out: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    out = Path(out)
    flat = [{k: v for k, v in r.items() if k != "original"} for r in rows]
    first = ["scenario", "method", "seed", "target", "retain"]
    fields = first + sorted({k for r in flat for k in r} - set(first) - {"score", "seconds"}) + ["score", "seconds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_json(out / "results.json", list(rows))
    atomic_write_text(out / "table.md", markdown_table(rows))
    from clipforget.app.report_html import write_bench_html

    write_bench_html(out, rows)
