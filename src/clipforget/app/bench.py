"""The benchmark runner: every method on every scenario and seed, same splits, same evaluation.

Layout under ``out``: ``runs/<scenario>/<method>/seed<k>/`` (one run directory per cell, as written
by :func:`clipforget.app.runner.run_method`, plus ``bench.json`` naming the cell), ``results.csv``,
``results.json``, ``table.md`` and ``report.html``. Folder names carry no shell glob or quoting
characters: a variant ``ours[use_lora=false,select.top_k=4]`` lives in ``ours+use_lora=false+select.top_k=4``.
A finished cell (its ``run.json`` says so) whose resume key is this run's is never redone, so a killed
benchmark resumes; one that finished under another key (an edited scenario, other weights, another
config) is refused, or redone with ``restart``.
Cells with an ``audit.json`` add the audit's headline figures (``audit/*`` columns).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import re
import shutil
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clipforget import parallel
from clipforget.audit import audit_summary
from clipforget.data import Streaming
from clipforget.io import atomic_write_json, atomic_write_text
from clipforget.methods import get_method, list_methods
from clipforget.precision import resolve_precision

log = logging.getLogger(__name__)


SAVE_MODELS = ("none", "ours", "best", "all")
"""Which cells keep their unlearned model folder: none; the cells of :data:`OURS` and their variants (the
default: baselines' models are rarely wanted, and a ViT-L bench of full copies fills a disk); per
scenario only the cell with the best Score so far; every cell."""
OURS = ("ours", "ours-paper")

_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@%-]")


def folder_name(text: str) -> str:
    """A folder name for a scenario or method variant that a shell takes unquoted: ``name[a=1,b=2]``
    becomes ``name+a=1+b=2``; any other character outside ``A-Za-z0-9._,=+@%-`` becomes ``_``."""
    name, overrides = parse_variant(text) if "[" in text else (text, [])
    return _UNSAFE.sub("_", "+".join([name, *overrides])).lstrip("-") or "_"


def cell_dir(out: Path, scenario: str, method: str, seed: int) -> Path:
    return out / "runs" / folder_name(scenario) / folder_name(method) / f"seed{seed}"


def _finished(cell: Path) -> bool:
    """Whether a cell's run wrote every output (its run.json says so last)."""
    try:
        return json.loads((cell / "run.json").read_text()).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
        return False


def parse_variant(entry: str) -> tuple[str, list[str]]:
    """``"ours"`` -> ("ours", []); ``"ours[use_lora=false,restore.grid=[0.0,1.0]]"`` -> ("ours", [overrides])."""
    name, bracket, rest = entry.partition("[")
    if not bracket:
        return entry, []
    if not rest.endswith("]") or not rest[:-1].strip():
        raise ValueError(f"method variant {entry!r}: write name[field=value,...]")
    return name, [o.strip() for o in _split_top_level(rest[:-1])]


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and quotes (``a=[0.0,1.0],b=2`` -> two parts)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def run_bench(
    model_id: str,
    scenarios: Sequence[str],
    *,
    out: str | Path,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    configs: Mapping[str, Any] | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    image_prefix: str | None = "auto",
    audit: Any = True,
    save_models: str = "ours",
    restart: bool = False,
    precision: str | None = "auto",
    streaming: Streaming = Streaming(),
) -> str:
    """Run the grid and return the Markdown table.

    ``methods`` are registered names, optionally with overrides as ``name[field=value,...]`` (an
    ablation is a variant); ``configs`` maps a method name to its base config (or YAML file);
    ``audit`` as for :func:`clipforget.app.runner.run_method` (every cell is audited by default);
    ``save_models`` one of :data:`SAVE_MODELS`; ``restart`` redoes the cells whose stored stages
    or results belong to another run (else such a cell is refused); ``precision`` and ``streaming`` as
    for :func:`clipforget.app.runner.run_forget`.
    """
    if save_models not in SAVE_MODELS:
        raise ValueError(f"save_models {save_models!r}: choose one of {', '.join(SAVE_MODELS)}")
    from clipforget.data import load_scenario_config
    from clipforget.app.runner import (
        prepare,
        resolve_audit_config,
        resolve_method_config,
        run_config,
        run_method,
    )
    from clipforget.app.rundir import RESTART_HINT, ResumeError, check_output_dir, describe_key_change, open_bench_dir, same_key, stored_key

    audit = resolve_audit_config(audit)
    precision = resolve_precision(precision, device)

    out = Path(out)
    methods = list(methods or list_methods())
    variants = {m: parse_variant(m) for m in methods}
    for name, _ in variants.values():
        get_method(name)  # an unknown name fails before any work
    folders: dict[str, str] = {}
    for m in methods:
        if folders.setdefault(folder_name(m), m) != m:
            raise ValueError(f"methods {folders[folder_name(m)]!r} and {m!r} would share the folder {folder_name(m)!r}; "
                             "rename one")
    resolved = {m: resolve_method_config(name, (configs or {}).get(name), overrides)
                for m, (name, overrides) in variants.items()}
    # Under a launch of several processes each takes every world-th cell of the whole grid (the same
    # assignment on every process, whatever has finished) and runs it alone; the main one holds the
    # bench directory's lock and writes the tables once every process is done.
    grid = [(sc, m, s) for sc in scenarios for m in methods for s in seeds]
    rank, world = parallel.process_index(), parallel.world_size()
    mine = {cell for i, cell in enumerate(grid) if i % world == rank}
    if rank == 0:
        check_output_dir(out, [model_id], kind="bench")
    with open_bench_dir(out) if rank == 0 else contextlib.nullcontext(), parallel.alone():
        if world > 1:
            log.info("process %d of %d: %d of the %d cells", rank, world, len(mine), len(grid))
        for scenario in scenarios:
            if not any(c[0] == scenario for c in mine):
                continue
            name = load_scenario_config(scenario).name
            prepared = prepare(model_id, scenario, device=device, batch_size=batch_size, precision=precision,
                               streaming=streaming)
            todo = []
            for m, s in ((m, s) for m in methods for s in seeds if (scenario, m, s) in mine):
                cell = cell_dir(out, name, m, s)
                if _finished(cell):
                    key = prepared.resume_key(run_config(prepared, method=variants[m][0], config=resolved[m], seed=s,
                                                         device=device, image_prefix=image_prefix))
                    stored = stored_key(cell)
                    if stored is None:
                        log.warning("bench cell %s was written before resume keys: kept without checking it", cell)
                    elif not same_key(stored, key):
                        if not restart:
                            raise ResumeError(f"bench cell {cell} finished a different run: "
                                              f"{describe_key_change(stored, key)}; {RESTART_HINT}")
                        todo.append((m, s))
                    continue
                todo.append((m, s))
            if not todo:
                log.info("%s: every cell already finished, each for this run's key", name)
                continue
            for i, (m, s) in enumerate(todo, 1):
                log.info("bench cell %d/%d: %s / %s / seed %d", i, len(todo), name, m, s)
                cell = cell_dir(out, name, m, s)
                keep = save_models in ("all", "best") or (save_models == "ours" and variants[m][0] in OURS)
                run_method(prepared, cell, method=variants[m][0], config=resolved[m], seed=s, device=device,
                           batch_size=batch_size, image_prefix=image_prefix, audit=audit, save_model=keep,
                           restart=restart)
                atomic_write_json(cell / "bench.json", {"scenario": name, "method": m, "seed": s})
                if save_models == "best" and world == 1:
                    _keep_best_model(out / "runs" / folder_name(name))
    parallel.barrier()  # every process's cells are finished
    if rank == 0:
        with open_bench_dir(out):
            if save_models == "best" and world > 1:
                for scenario in scenarios:
                    _keep_best_model(out / "runs" / folder_name(load_scenario_config(scenario).name))
            write_tables(out, collect(out))
    parallel.barrier()  # the tables are written
    return (out / "table.md").read_text()


def _keep_best_model(scenario_dir: Path) -> None:
    """Remove the model folder of every finished cell under ``scenario_dir`` but the best-scoring one
    (holding each cell's lock while it changes, as a run would)."""
    from clipforget.app.report import write_report
    from clipforget.app.rundir import lock_dir

    cells = [c for c in (m.parent for m in scenario_dir.glob("*/seed*/metrics.json")) if _finished(c)]
    best = max(cells, key=lambda c: json.loads((c / "metrics.json").read_text())["score"])
    for cell in cells:
        if cell != best and (cell / "model").is_dir():
            with lock_dir(cell):
                shutil.rmtree(cell / "model")
                info = json.loads((cell / "run.json").read_text())
                atomic_write_json(cell / "run.json", {**info, "unlearned_model": None})
                write_report(cell)
            log.info("removed the model of %s (its Score is below that of %s)", cell, best)


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
        if not _finished(cell):
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


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`scenario_tables` as Markdown, one ``###`` section per scenario."""
    parts = []
    for scenario, head, lines, note in scenario_tables(rows):
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
