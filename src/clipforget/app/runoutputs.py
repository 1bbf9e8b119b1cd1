"""What one run writes into its run directory once the method has run: events, artifacts, the audit,
the re-check of earlier requests, and run.json with the report (see :mod:`clipforget.app.runner`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipforget.app import ledger as ledgers
from clipforget.app.prepare import Prepared
from clipforget.app.report import write_report
from clipforget.app.runinfo import Timer
from clipforget.audit import AuditConfig, AuditResult
from clipforget.audit import audit as run_audit
from clipforget.config import require
from clipforget.data import ScenarioSplits
from clipforget.evaluation import ScenarioImages
from clipforget.io import atomic_write_json, atomic_write_text
from clipforget.methods.base import MethodResult
from clipforget.models import DualEncoder

log = logging.getLogger(__name__)


def recheck_earlier(out: Path, prepared: Prepared, unlearned: DualEncoder, audit_cfg: AuditConfig | None, seed: int,
                     timer: Timer) -> list[dict[str, Any]]:
    """Re-check the earlier requests of the model's ledger into ledger_check.json (none: no file)."""
    if not prepared.ledger.requests:
        (out / "ledger_check.json").unlink(missing_ok=True)
        return []
    log.info("re-checking %d earlier forgotten subgroup(s)", len(prepared.earlier.reachable))
    with timer("recheck"):
        results = ledgers.recheck(prepared.model, unlearned, prepared.earlier, audit_cfg, seed=seed)
    atomic_write_json(out / "ledger_check.json", {"rechecked": results, "unreachable": prepared.earlier.unreachable,
                                                  "tolerance": ledgers.RECHECK_TOLERANCE})
    return results


def write_events(out: Path, diagnostics: Mapping[str, Mapping[str, Any]]) -> None:
    """events.jsonl: one line per stage with its diagnostics (the bulky layer scores left out)."""
    events = [{"stage": stage, **{k: v for k, v in diag.items() if k != "scores"}} for stage, diag in diagnostics.items()]
    atomic_write_text(out / "events.jsonl", "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in events))


def write_audit(out: Path, original: DualEncoder, unlearned: DualEncoder, splits: ScenarioSplits,
                 images: ScenarioImages, audit_cfg: AuditConfig | None, seed: int, timer: Timer) -> AuditResult | None:
    """The audit into audit.json; switched off, no audit.json (never a stale one)."""
    if audit_cfg is None:
        (out / "audit.json").unlink(missing_ok=True)
        return None
    log.info("audit: %s", ", ".join(audit_cfg.parts))
    with timer("audit"):
        audited = run_audit(original, unlearned, splits, images, audit_cfg, seed=seed)
    atomic_write_json(out / "audit.json", audited.to_dict())
    return audited


def finish(out: Path, info: dict[str, Any], timer: Timer, result: MethodResult, wall: float,
            saved: str | None) -> Path:
    """Record the timings in run.json, write the report, then mark the run finished (last: a run is
    finished only once every output is written); the report's path."""
    stage_times = _stage_times(result.diagnostics)
    resumed = [k for k, v in result.diagnostics.items() if v.get("resumed")]  # their seconds are from the first attempt
    info.update(unlearned_model=saved, timings={**timer.seconds, **stage_times},
                wall_seconds=wall, resumed_stages=resumed,
                compute_seconds=wall + sum(stage_times.get(f"stage/{k}", 0.0) for k in resumed))
    atomic_write_json(out / "run.json", info)  # the report reads the timings
    report = write_report(out)
    info["status"] = "finished"
    atomic_write_json(out / "run.json", info)
    return report


def _stage_times(diagnostics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    return {f"stage/{k}": float(v["seconds"]) for k, v in diagnostics.items() if isinstance(v.get("seconds"), (int, float))}


def write_artifacts(out: Path, artifacts: Mapping[str, Any]) -> None:
    """Each artifact a method returned, as JSON under its own file name."""
    for name, payload in artifacts.items():
        require(Path(name).name == name and name.endswith(".json"), f"method artifact {name!r}: give a plain *.json file name")
        atomic_write_json(out / name, payload)