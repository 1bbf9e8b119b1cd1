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
import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipforget import parallel
from clipforget.app.bench_tables import collect, finished, write_tables
from clipforget.data import Streaming
from clipforget.io import atomic_write_json
from clipforget.methods import get_method, list_methods
from clipforget.precision import resolve_precision

if TYPE_CHECKING:
    from clipforget.app.prepare import Prepared
    from clipforget.audit import AuditConfig
    from clipforget.config import Config

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
    from clipforget.app.prepare import prepare
    from clipforget.app.rundir import check_output_dir, open_bench_dir
    from clipforget.app.runner import resolve_audit_config

    methods = list(methods or list_methods())
    plan = _Plan(Path(out), *_resolve_variants(methods, configs), device=device, batch_size=batch_size,
                 image_prefix=image_prefix, audit=resolve_audit_config(audit), save_models=save_models, restart=restart)
    precision = resolve_precision(precision, device)
    # Under a launch of several processes each takes every world-th cell of the whole grid (the same
    # assignment on every process, whatever has finished) and runs it alone; the main one holds the
    # bench directory's lock and writes the tables once every process is done.
    grid = [(sc, m, s) for sc in scenarios for m in methods for s in seeds]
    rank, world = parallel.process_index(), parallel.world_size()
    mine = [cell for i, cell in enumerate(grid) if i % world == rank]
    if rank == 0:
        check_output_dir(plan.out, [model_id], kind="bench")
    with open_bench_dir(plan.out) if rank == 0 else contextlib.nullcontext(), parallel.alone():
        if world > 1:
            log.info("process %d of %d: %d of the %d cells", rank, world, len(mine), len(grid))
        for scenario in scenarios:
            cells = [(m, s) for sc, m, s in mine if sc == scenario]
            if cells:
                prepared = prepare(model_id, scenario, device=device, batch_size=batch_size, precision=precision,
                                   streaming=streaming)
                _run_cells(plan, prepared, cells, keep_best=world == 1)
    parallel.barrier()  # every process's cells are finished
    if rank == 0:
        _write_results(plan, scenarios, gather_best=save_models == "best" and world > 1)
    parallel.barrier()  # the tables are written
    return (plan.out / "table.md").read_text()



def _write_results(plan: _Plan, scenarios: Sequence[str], *, gather_best: bool) -> None:
    """The bench's tables from every finished cell (under the bench directory's lock); with
    ``gather_best``, first drop every model folder but each scenario's best (the processes of a launch
    each kept their own best)."""
    from clipforget.app.rundir import open_bench_dir
    from clipforget.data import load_scenario_config

    with open_bench_dir(plan.out):
        if gather_best:
            for scenario in scenarios:
                _keep_best_model(plan.out / "runs" / folder_name(load_scenario_config(scenario).name))
        write_tables(plan.out, collect(plan.out))

@dataclass(frozen=True)
class _Plan:
    """What every cell of one bench shares: where it writes, each method's resolved variant, how it runs."""

    out: Path
    variants: Mapping[str, tuple[str, list[str]]]  # bench name -> (registered name, overrides)
    resolved: Mapping[str, Config]  # bench name -> its method config
    device: str
    batch_size: int
    image_prefix: str | None
    audit: AuditConfig | None
    save_models: str
    restart: bool


def _resolve_variants(methods: Sequence[str], configs: Mapping[str, Any] | None
                      ) -> tuple[dict[str, tuple[str, list[str]]], dict[str, Config]]:
    """Each method's (registered name, overrides) and resolved config; an unknown name, a bad config or
    two methods sharing a folder fail here, before any work."""
    from clipforget.app.runner import resolve_method_config

    variants = {m: parse_variant(m) for m in methods}
    for name, _ in variants.values():
        get_method(name)
    folders: dict[str, str] = {}
    for m in methods:
        if folders.setdefault(folder_name(m), m) != m:
            raise ValueError(f"methods {folders[folder_name(m)]!r} and {m!r} would share the folder {folder_name(m)!r}; "
                             "rename one")
    resolved = {m: resolve_method_config(name, (configs or {}).get(name), overrides)
                for m, (name, overrides) in variants.items()}
    return variants, resolved


def _todo(plan: _Plan, prepared: Prepared, cells: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The cells of one scenario still to run: not finished, or finished under another key with
    ``restart`` (without it, such a cell is refused)."""
    from clipforget.app.rundir import (
        RESTART_HINT,
        ResumeError,
        describe_key_change,
        same_key,
        stored_key,
    )
    from clipforget.app.runner import run_config

    todo = []
    for m, s in cells:
        cell = cell_dir(plan.out, prepared.splits.name, m, s)
        if finished(cell):
            key = prepared.resume_key(run_config(prepared, method=plan.variants[m][0], config=plan.resolved[m], seed=s,
                                                 device=plan.device, image_prefix=plan.image_prefix))
            stored = stored_key(cell)
            if stored is None:
                log.warning("bench cell %s was written before resume keys: kept without checking it", cell)
            elif not same_key(stored, key):
                if not plan.restart:
                    raise ResumeError(f"bench cell {cell} finished a different run: "
                                      f"{describe_key_change(stored, key)}; {RESTART_HINT}")
                todo.append((m, s))
            continue
        todo.append((m, s))
    return todo


def _run_cells(plan: _Plan, prepared: Prepared, cells: Sequence[tuple[str, int]], *, keep_best: bool) -> None:
    """Run one scenario's unfinished cells on its prepared model and images."""
    from clipforget.app.runner import run_method

    name = prepared.splits.name
    todo = _todo(plan, prepared, cells)
    if not todo:
        log.info("%s: every cell already finished, each for this run's key", name)
    for i, (m, s) in enumerate(todo, 1):
        log.info("bench cell %d/%d: %s / %s / seed %d", i, len(todo), name, m, s)
        cell = cell_dir(plan.out, name, m, s)
        method = plan.variants[m][0]
        keep = plan.save_models in ("all", "best") or (plan.save_models == "ours" and method in OURS)
        run_method(prepared, cell, method=method, config=plan.resolved[m], seed=s, device=plan.device,
                   batch_size=plan.batch_size, image_prefix=plan.image_prefix, audit=plan.audit, save_model=keep,
                   restart=plan.restart)
        atomic_write_json(cell / "bench.json", {"scenario": name, "method": m, "seed": s})
        if plan.save_models == "best" and keep_best:
            _keep_best_model(plan.out / "runs" / folder_name(name))


def _keep_best_model(scenario_dir: Path) -> None:
    """Remove the model folder of every finished cell under ``scenario_dir`` but the best-scoring one
    (holding each cell's lock while it changes, as a run would)."""
    from clipforget.app.report import write_report
    from clipforget.app.rundir import lock_dir

    cells = [c for c in (m.parent for m in scenario_dir.glob("*/seed*/metrics.json")) if finished(c)]
    best = max(cells, key=lambda c: json.loads((c / "metrics.json").read_text())["score"])
    for cell in cells:
        if cell != best and (cell / "model").is_dir():
            with lock_dir(cell):
                shutil.rmtree(cell / "model")
                info = json.loads((cell / "run.json").read_text())
                atomic_write_json(cell / "run.json", {**info, "unlearned_model": None})
                write_report(cell)
            log.info("removed the model of %s (its Score is below that of %s)", cell, best)


