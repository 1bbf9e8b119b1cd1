"""Application layer: scenario files -> tensors -> a registered method -> a self-describing run directory.

Run directory layout (every file written atomically)::

    .clipforget-run.json  written first: marks the folder as a run directory, holds the resume key
    .clipforget.lock      locked while a process runs in the folder (a second one is refused)
    config.yaml        resolved run config (model, scenario, method, method config, seed, device)
    scenario.yaml      the resolved scenario
    run.json           versions, git commit, seed, device, wall time of each stage, status
    stages/            finished stages (the resume points): <stage>.safetensors + <stage>.json (with
                       the tensor file's sha256, checked on load)
    metrics.json       original and unlearned metrics, the paper's Score, warnings about the result,
                       whether any weight changed
    events.jsonl       one JSON line per stage of the method
    fisher.json, alpha_curve.json   diagnostics, when the method has those stages
    sets.json, examples/   what was forgotten, each set's size and labels, example thumbnails
    audit.json         the forgetting audit (:mod:`clipforget.audit`), unless switched off
    model/             the unlearned weights in the backend's own layout, with a model card (README.md)
                       and the ledger of every request applied to them (clipforget_ledger.json, see
                       :mod:`clipforget.app.ledger`); absent when the run was told not to save them
    ledger_check.json  when the model came with a ledger: each earlier subgroup re-checked (Target and
                       worst-prompt Target under the model as received and the new one), and those
                       whose data is not reachable here
    report.md, report.html, plots/   generated from the JSON files

A run resumes only where its key matches: the resolved config, the scenario's fingerprint, a digest
of its images and of the model's weights, the checksum of the model's ledger, and the clipforget
version (:mod:`clipforget.app.rundir`).

A model that clipforget already unlearned carries a ledger; the run continues it: the model as
received is the teacher and the souping endpoint (as for any model), every earlier subgroup whose
data is reachable constrains the weight choice (:class:`clipforget.methods.scoring.Forgotten`) and
is re-checked afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from clipforget import parallel
from clipforget.app import ledger as ledgers
from clipforget.app.checks import result_warnings, same_weights, target_warnings
from clipforget.app.examples import write_sets
from clipforget.app.prepare import Prepared, brief_metrics, headline_metrics, prepare
from clipforget.app.rundir import check_output_dir, open_run_dir
from clipforget.app.runinfo import Timer, git_commit, package_versions
from clipforget.app.runoutputs import finish, recheck_earlier, write_artifacts, write_audit, write_events
from clipforget.app.store import DiskStore
from clipforget.audit import AuditConfig, audit_summary
from clipforget.config import Config
from clipforget.data import Streaming, open_sources
from clipforget.evaluation import ScenarioImages, evaluate_scenario
from clipforget.io import atomic_write_json, atomic_write_text
from clipforget.methods import get_method
from clipforget.methods.base import MethodResult
from clipforget.metrics import ScenarioMetrics, paper_score
from clipforget.models import DualEncoder, check_device
from clipforget.models.prefix import FrozenImagePrefix
from clipforget.precision import autocast, resolve_precision

log = logging.getLogger(__name__)


# -- one run ------------------------------------------------------------------------------------
@dataclass
class ForgetResult:
    run_dir: Path
    model: DualEncoder
    original: ScenarioMetrics
    unlearned: ScenarioMetrics
    score: float
    warnings: list[str] = field(default_factory=list)
    """Why the result is questionable (:func:`result_warnings`); empty for an ordinary run."""


def resolve_method_config(method_name: str, config: str | Path | Mapping[str, Any] | Config | None,
                          overrides: Sequence[str] = ()) -> Config:
    method = get_method(method_name)
    if config is None:
        cfg = method.config_class()
    elif isinstance(config, Config):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = method.config_class.from_dict(config)
    else:
        cfg = method.config_class.from_yaml(config)
    return cfg.with_overrides(list(overrides)) if overrides else cfg


AuditSetting = AuditConfig | str | Path | Mapping[str, Any] | bool | None
"""The audit of a run: True (the default config), False / None (off), a config, a mapping or a YAML file."""


def resolve_audit_config(audit: AuditSetting) -> AuditConfig | None:
    if audit is None or audit is False:
        return None
    if audit is True:
        return AuditConfig()
    if isinstance(audit, AuditConfig):
        return audit
    if isinstance(audit, Mapping):
        return AuditConfig.from_dict(audit)
    return AuditConfig.from_yaml(audit)


def run_forget(
    model_id: str,
    scenario: str | Path,
    out: str | Path,
    *,
    method: str = "ours",
    config: str | Path | Mapping[str, Any] | Config | None = None,
    overrides: Sequence[str] = (),
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 64,
    model: DualEncoder | None = None,
    image_prefix: str | None = "auto",
    audit: AuditSetting = True,
    restart: bool = False,
    precision: str | None = "auto",
    streaming: Streaming = Streaming(),
) -> ForgetResult:
    """Forget ``scenario``'s subgroup from ``model_id``; resumable; see the module doc for the outputs.

    ``restart``: discard what an earlier run wrote into ``out`` (else a run with another key is refused).
    ``precision``: fp32, bf16 or fp16 (autocast; weights stay fp32), "auto" for the device's default.
    ``streaming``: which image sets (training, test, held out) are read from their files as they are
    used instead of kept in memory, and how many DataLoader workers read every set.
    """
    method_cfg = resolve_method_config(method, config, overrides)  # fail on a bad config before loading
    audit_cfg = resolve_audit_config(audit)
    check_device(device)  # and on a bad device, precision or --out
    precision = resolve_precision(precision, device)
    if parallel.is_main():
        check_output_dir(out, [model_id])
    prepared = prepare(model_id, scenario, device=device, batch_size=batch_size, model=model, precision=precision,
                       streaming=streaming)
    if parallel.is_main():
        result = run_method(prepared, out, method=method, config=method_cfg, seed=seed, device=device,
                            batch_size=batch_size, image_prefix=image_prefix, audit=audit_cfg, restart=restart)
        parallel.barrier()
        return result
    # Another process of a launch: the same computation in step with the main one (which writes the run
    # directory), into a scratch folder, resuming from the main one's finished stages.
    with tempfile.TemporaryDirectory(prefix=f"clipforget-rank{parallel.process_index()}-") as scratch:
        result = run_method(prepared, scratch, method=method, config=method_cfg, seed=seed, device=device,
                            batch_size=batch_size, image_prefix=image_prefix, audit=audit_cfg, restart=restart,
                            stages=Path(out) / "stages")
        parallel.barrier()
    return dataclasses.replace(result, run_dir=Path(out))


def run_config(prepared: Prepared, *, method: str, config: Config, seed: int, device: str,
               image_prefix: str | None = "auto") -> dict[str, Any]:
    """The resolved config of one run (``config.yaml``; with the prepared digests, its resume key)."""
    if image_prefix == "auto":
        image_prefix = prepared.model.default_image_prefix
    lower = {} if prepared.precision == "fp32" else {"precision": prepared.precision}  # fp32 runs keep their keys
    return {"model": prepared.model_id, "scenario": prepared.scenario.name, "method": method,
            "method_config": config.to_dict(), "seed": seed, "device": device, "image_prefix": image_prefix, **lower}


def run_method(prepared: Prepared, out: str | Path, *, method: str, config: Config, seed: int = 0,
               device: str = "cpu", batch_size: int = 64, image_prefix: str | None = "auto",
               audit: AuditSetting = True, save_model: bool = True, restart: bool = False,
               stages: str | Path | None = None) -> ForgetResult:
    """Run one registered method on a prepared scenario into the run directory ``out``.

    ``image_prefix``: the first image stage a method may change (see
    :class:`clipforget.models.prefix.FrozenImagePrefix`); "auto" takes the backend's default
    (``DualEncoder.default_image_prefix``), None trains on whole images.
    ``audit``: the forgetting audit of the result (:func:`clipforget.audit.audit`, written to
    audit.json), on the same images and in the same view as the method ran; see :data:`AuditSetting`.
    ``save_model``: write the unlearned weights to ``out/model`` (a bench may keep only some).
    ``restart``: see :func:`run_forget`. The run holds ``out``'s lock throughout.
    ``stages``: resume from another run directory's finished stages, writing none (the other processes
    of a launch read the main one's); default ``out/stages``.
    """
    audit_cfg = resolve_audit_config(audit)
    out = Path(out)
    resolved = run_config(prepared, method=method, config=config, seed=seed, device=device, image_prefix=image_prefix)
    image_prefix = resolved["image_prefix"]
    key = prepared.resume_key(resolved)
    with open_run_dir(out, key, model_ids=[prepared.model_id], restart=restart):
        parallel.barrier()  # the main process has opened (or, restarting, emptied) its run directory
        store = DiskStore(out / "stages") if stages is None else DiskStore(stages, read_only=True)
        store.verify()
        atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        atomic_write_text(out / "scenario.yaml", prepared.scenario.to_yaml())
        info = {"model": prepared.model_id, "scenario": prepared.scenario.name, "method": method, "seed": seed,
                "device": device, "git_commit": git_commit(), "versions": package_versions(), "status": "running"}
        atomic_write_json(out / "run.json", info)
        try:
            return _run_in(out, prepared, info, method, config, seed, batch_size, image_prefix, audit_cfg, save_model, store)
        except BaseException as e:
            atomic_write_json(out / "run.json", {**info, "status": "failed", "error": f"{type(e).__name__}: {e}"})
            raise


@dataclass
class _Outcome:
    """What a run computed before anything but its events is written."""

    result: MethodResult
    view_model: DualEncoder  # the original in the method's view (methods clone it)
    unlearned_view: DualEncoder  # the result in the method's view
    images: ScenarioImages
    unlearned: ScenarioMetrics
    score: float
    warnings: list[str]
    rechecked: list[dict[str, Any]]


def _run_in(out: Path, prepared: Prepared, info: dict[str, Any], method: str, config: Config, seed: int,
            batch_size: int, image_prefix: str | None, audit_cfg: AuditConfig | None, save_model: bool,
            store: DiskStore) -> ForgetResult:
    timer = Timer()
    timer.seconds["load"] = prepared.load_seconds
    started = time.time()
    torch.manual_seed(seed)
    log.info("method %s, seed %d, into %s", method, seed, out)
    precise = functools.partial(autocast, prepared.precision, prepared.model.device)
    with timer("method"):
        view = prepared.training_view(image_prefix, batch_size=batch_size)
        with precise():
            result: MethodResult = get_method(method).run(view.model, view.data, config, store=store,
                                                          seed=seed, forgotten=view.forgotten)
    write_events(out, result.diagnostics)
    log.info("scoring the unlearned model")
    with timer("evaluate_unlearned"), precise():
        unlearned_metrics = evaluate_scenario(result.model, prepared.splits, view.images, batch_size=batch_size)
    log.info("unlearned model: %s", brief_metrics(unlearned_metrics))
    unlearned_view = result.model
    if isinstance(result.model, FrozenImagePrefix):
        result.model = result.model.unwrap()
    warnings = result_warnings(prepared.model, result.model, result.diagnostics)
    warnings += target_warnings(prepared.original_metrics, unlearned_metrics)
    with precise():
        rechecked = recheck_earlier(out, prepared, result.model, audit_cfg, seed, timer)
    warnings += ledgers.recheck_warnings(rechecked)
    for w in warnings:
        log.warning("%s", w)
    outcome = _Outcome(result, view.model, unlearned_view, view.images, unlearned_metrics,
                       paper_score(unlearned_metrics, prepared.original_metrics), warnings, rechecked)
    with precise():
        _write_outputs(out, prepared, method, config, seed, audit_cfg, save_model, outcome, timer)
    report = finish(out, info, timer, result, time.time() - started,
                    result.model.saved_id(out / "model") if save_model else None)
    original = prepared.original_metrics
    log.info("%s on %s, seed %d: Target %.1f -> %.1f, Retain %.1f -> %.1f, Score %.1f", method,
             prepared.scenario.name, seed, original.target, unlearned_metrics.target,
             original.retain, unlearned_metrics.retain, outcome.score)
    log.debug("report: %s", report)
    return ForgetResult(out, result.model, original, unlearned_metrics, outcome.score, warnings)


def _write_outputs(out: Path, prepared: Prepared, method: str, config: Config, seed: int,
                   audit_cfg: AuditConfig | None, save_model: bool, outcome: _Outcome, timer: Timer) -> None:
    """The method's artifacts, the sets, the model with its ledger, the audit and metrics.json."""
    result, original = outcome.result, prepared.original_metrics
    write_artifacts(out, result.artifacts)
    write_sets(out, prepared.splits, open_sources(prepared.scenario), seed=seed)
    if save_model:
        with timer("save"):
            result.model.save(out / "model")
    audited = write_audit(out, outcome.view_model, outcome.unlearned_view, prepared.splits, outcome.images, audit_cfg,
                          seed, timer)
    if save_model:
        entry = ledgers.request_entry(
            model_id=prepared.model_id, scenario=prepared.scenario, splits=prepared.splits, method=method,
            method_config=config.to_dict(), seed=seed, metrics={"original": headline_metrics(original),
                                                                 "unlearned": headline_metrics(outcome.unlearned)},
            score=outcome.score, audit=None if audited is None else audit_summary(audited.to_dict()),
            recheck=outcome.rechecked)
        ledgers.write_ledger(out / "model", prepared.ledger.extended(entry), result.model)
    atomic_write_json(out / "metrics.json", {"original": original.to_dict(), "unlearned": outcome.unlearned.to_dict(),
                                             "score": outcome.score, "warnings": outcome.warnings,
                                             "weights_changed": not same_weights(prepared.model, result.model)})
