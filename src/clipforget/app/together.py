"""Several forget requests in one run: ``clipforget forget --scenario A --scenario B ...``.

Each scenario is prepared as for a single run (its splits, images and the original's figures); the
closed-form edit of ``ours`` (:func:`clipforget.methods.ours.forget_together`) then solves one
least-squares problem whose terms are every request's, so one edit of the image projection forgets
every subgroup. Other methods and ``ours`` with remind or souping train on one forget set and are
refused with the way out (the requests one after another, each continuing the ledger).

Run directory layout (every file written atomically)::

    .clipforget-run.json, .clipforget.lock   as for a single run (:mod:`clipforget.app.rundir`)
    config.yaml        the resolved run config; ``scenario`` lists every request in order
    run.json           versions, git commit, seed, timings, status
    metrics.json       per scenario: the original's and the unlearned figures and the Score; the edit;
                       warnings; whether any weight changed
    <scenario>/        per request: scenario.yaml, audit.json (unless switched off), sets.json, examples/
    model/             the unlearned weights; its ledger holds one request per scenario, in order
    ledger_check.json  when the model came with a ledger: each earlier subgroup re-checked

A rerun recomputes everything (the edit takes seconds; the audits are the slow part). There is no
report.html: a report describes one scenario, and ``clipforget audit`` or ``clipforget eval`` on the
saved model gives each scenario's figures on their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from clipforget import parallel
from clipforget.app import ledger as ledgers
from clipforget.app.checks import same_weights
from clipforget.app.examples import write_sets
from clipforget.app.prepare import (
    Prepared,
    TrainingView,
    brief_metrics,
    headline_metrics,
    prepare,
)
from clipforget.app.rundir import check_output_dir, open_run_dir
from clipforget.app.runinfo import Timer, git_commit, package_versions
from clipforget.app.runner import (
    ForgetResult,
    resolve_audit_config,
    resolve_method_config,
    run_config,
)
from clipforget.app.runoutputs import recheck_earlier, write_audit
from clipforget.audit import AuditConfig, audit_summary
from clipforget.config import Config, ConfigError
from clipforget.data import Streaming, load_scenario_config, open_sources
from clipforget.evaluation import evaluate_scenario
from clipforget.io import atomic_write_json, atomic_write_text
from clipforget.methods.base import WeightChoice
from clipforget.methods.ours import forget_together, joins_requests
from clipforget.metrics import ScenarioMetrics, paper_score
from clipforget.models import DualEncoder, check_device, load_model
from clipforget.models.prefix import FrozenImagePrefix
from clipforget.precision import autocast, resolve_precision

log = logging.getLogger(__name__)


def _joinable(method: str, method_cfg: Config, scenarios: Sequence[str | Path]) -> Config:
    """``method_cfg`` when ``method`` with it can forget these scenarios in one edit; else one clear error."""
    if len(scenarios) < 2:
        raise ConfigError("forgetting together needs at least two scenarios; for one, run clipforget forget as usual")
    if method not in ("ours",) or not joins_requests(method_cfg):
        raise ConfigError(f"method {method!r} with this config cannot forget several scenarios in one run: only ours "
                          "at its closed-form defaults (one retain weight, no remind, no souping) can; run the requests one after another "
                          "(each continuing the model's ledger) instead")
    return method_cfg


def _distinct_names(scenarios: Sequence[str | Path]) -> list[str]:
    """The scenarios' names; one clear error when a scenario comes twice."""
    names = [load_scenario_config(s).name for s in scenarios]
    if len(set(names)) < len(names):
        raise ConfigError(f"a scenario is named twice among {', '.join(names)}; give each request once")
    return names


def run_forget_together(
    model_id: str,
    scenarios: Sequence[str | Path],
    out: str | Path,
    *,
    method: str = "ours",
    config: str | Path | Mapping[str, Any] | Config | None = None,
    overrides: Sequence[str] = (),
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 64,
    image_prefix: str | None = "auto",
    audit: Any = True,
    restart: bool = False,
    precision: str | None = "auto",
    streaming: Streaming = Streaming(),
) -> list[ForgetResult]:
    """Forget every scenario's subgroup from ``model_id`` in one edit; one :class:`ForgetResult` per scenario
    (all sharing the one unlearned model and run directory)."""
    method_cfg = _joinable(method, resolve_method_config(method, config, overrides), scenarios)
    audit_cfg = resolve_audit_config(audit)
    check_device(device)
    precision = resolve_precision(precision, device)
    if parallel.world_size() > 1:  # one solve: the main process does it all, the others wait
        results = []
        if parallel.is_main():
            with parallel.alone():
                results = run_forget_together(model_id, scenarios, out, method=method, config=method_cfg, seed=seed,
                                              device=device, batch_size=batch_size, image_prefix=image_prefix,
                                              audit=audit_cfg, restart=restart, precision=precision,
                                              streaming=streaming)
        parallel.barrier()
        return results
    names = _distinct_names(scenarios)
    check_output_dir(out, [model_id])
    out = Path(out)
    timer, started = Timer(), time.time()
    model = load_model(model_id, device=device).eval()
    with timer("load"):
        prepared = [prepare(model_id, s, device=device, batch_size=batch_size, model=model, precision=precision,
                            streaming=streaming) for s in scenarios]
    resolved = {**run_config(prepared[0], method=method, config=method_cfg, seed=seed, device=device,
                             image_prefix=image_prefix), "scenario": names}
    key = {"together": [p.resume_key(resolved) for p in prepared]}
    with open_run_dir(out, key, model_ids=[model_id], restart=restart):
        atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        info = {"model": model_id, "scenario": names, "method": method, "seed": seed, "device": device,
                "git_commit": git_commit(), "versions": package_versions(), "status": "running"}
        atomic_write_json(out / "run.json", info)
        results = _edit_and_write(out, model, prepared, names, resolved["image_prefix"], method, method_cfg, seed,
                                  batch_size, audit_cfg, timer)
        info.update(unlearned_model=results[0].model.saved_id(out / "model"), timings=timer.seconds,
                    wall_seconds=time.time() - started, status="finished")
        atomic_write_json(out / "run.json", info)
    return results


def _edit_and_write(out: Path, model: DualEncoder, prepared: list[Prepared], names: list[str], image_prefix: str | None,
                    method: str, method_cfg: Config, seed: int, batch_size: int, audit_cfg: AuditConfig | None,
                    timer: Timer) -> list[ForgetResult]:
    """The one edit of every request, then each request's folder, the model with its ledger and metrics.json."""
    precision = prepared[0].precision
    results: list[ForgetResult] = []
    views = [p.training_view(image_prefix, batch_size=batch_size) for p in prepared]
    with timer("method"), autocast(precision, model.device):
        student, edit = forget_together([(v.model, v.data) for v in views], method_cfg, seed=seed,
                                        holdout=WeightChoice().holdout, keep=[f.images for f in views[0].forgotten])
    log.info("one closed-form edit for %d requests (relative size %.3f)", len(views), edit["edit_norm"])
    unlearned = student.unwrap() if isinstance(student, FrozenImagePrefix) else student
    with autocast(precision, model.device):
        rechecked = recheck_earlier(out, prepared[0], unlearned, audit_cfg, seed, timer)
    warnings = ledgers.recheck_warnings(rechecked)
    per: dict[str, Any] = {}
    ledger = prepared[0].ledger
    for p, v in zip(prepared, views):
        together_with = [n for n in names if n != p.scenario.name]
        metrics, score, entry = _score_request(out / p.scenario.name, p, v, student, method, method_cfg,
                                               together_with, seed, batch_size, audit_cfg, rechecked, timer)
        per[p.scenario.name] = {"original": p.original_metrics.to_dict(), "unlearned": metrics.to_dict(), "score": score}
        ledger = ledger.extended(entry)
        results.append(ForgetResult(out, unlearned, p.original_metrics, metrics, score, warnings))
    with timer("save"):
        unlearned.save(out / "model")
    ledgers.write_ledger(out / "model", ledger, unlearned)
    for w in warnings:
        log.warning("%s", w)
    edit_info = {**{k: v for k, v in edit.items() if k != "requests"}, "requests": dict(zip(names, edit["requests"]))}
    atomic_write_json(out / "metrics.json", {"requests": per, "edit": edit_info, "warnings": warnings,
                                             "weights_changed": not same_weights(model, unlearned)})
    return results


def _score_request(folder: Path, p: Prepared, v: TrainingView, student: DualEncoder, method: str, method_cfg: Config,
                   together_with: list[str], seed: int, batch_size: int, audit_cfg: AuditConfig | None,
                   rechecked: list[dict[str, Any]], timer: Timer) -> tuple[ScenarioMetrics, float, dict[str, Any]]:
    """One request's folder (scenario, audit, sets), its metrics and Score, and its ledger entry."""
    atomic_write_text(folder / "scenario.yaml", p.scenario.to_yaml())
    with timer("evaluate_unlearned"), autocast(p.precision, p.model.device):
        metrics = evaluate_scenario(student, p.splits, v.images, batch_size=batch_size)
    score = paper_score(metrics, p.original_metrics)
    log.info("%s: %s (Score %.1f)", p.scenario.name, brief_metrics(metrics), score)
    with autocast(p.precision, p.model.device):
        audited = write_audit(folder, v.model, student, p.splits, v.images, audit_cfg, seed, timer)
    write_sets(folder, p.splits, open_sources(p.scenario), seed=seed)
    headline = {"original": headline_metrics(p.original_metrics), "unlearned": headline_metrics(metrics)}
    entry = ledgers.request_entry(
        model_id=p.model_id, scenario=p.scenario, splits=p.splits, method=method,
        method_config={**method_cfg.to_dict(), "together_with": together_with}, seed=seed, metrics=headline,
        score=score, audit=None if audited is None else audit_summary(audited.to_dict()), recheck=rechecked)
    return metrics, score, entry
