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
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from clipforget import __version__
from clipforget.audit import AuditConfig
from clipforget.audit import audit as run_audit
from clipforget.config import Config, require
from clipforget.data import (
    ScenarioConfig,
    ScenarioSplits,
    build_scenario,
    StreamedImages,
    Streaming,
    load_images,
    load_scenario_config,
    open_sources,
)
from clipforget.evaluation import (
    LabelledImages,
    ScenarioImages,
    evaluate_scenario,
    label_indices,
)
from clipforget.app.examples import write_sets
from clipforget.io import (
    atomic_save_safetensors,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)
from clipforget.app import ledger as ledgers
from clipforget import parallel
from clipforget.methods import get_method
from clipforget.methods.base import MethodResult, UnlearnData
from clipforget.metrics import ScenarioMetrics, paper_score
from clipforget.models import DualEncoder, check_device, load_model
from clipforget.models.prefix import FrozenImagePrefix
from clipforget.precision import autocast, resolve_precision
from clipforget.app.report import write_report
from clipforget.app.rundir import RESTART_HINT, ResumeError, check_output_dir, open_run_dir
from clipforget.app.runinfo import Timer, git_commit, package_versions
from clipforget.zeroshot import state_dict_digest

log = logging.getLogger(__name__)


# -- scenario -> tensors -------------------------------------------------------------------------
def load_scenario_images(splits: ScenarioSplits, sources: Mapping[str, Any], preprocess, *, batch_size: int = 64,
                         streaming: Streaming = Streaming()) -> ScenarioImages:
    """Every split of ``splits`` preprocessed for one model: as tensors, except the held-out sets that
    ``streaming`` streams (:class:`~clipforget.data.StreamedImages`, read again at every pass). The
    training sets, Target and Retain are the scenario's own classes and are always kept in memory."""

    def labelled(records, classnames, templates, desc) -> LabelledImages:
        index = {c: i for i, c in enumerate(classnames)}
        labels = torch.tensor([index[r.label] for r in records], dtype=torch.long)
        return LabelledImages(load_images(records, sources, preprocess, batch_size=batch_size, desc=desc), labels,
                              tuple(classnames), tuple(templates))

    def eval_set(s, may_stream: bool = False) -> LabelledImages:
        images: Any = StreamedImages(s.records, sources, preprocess, workers=streaming.worker_count()) if may_stream else None
        size = images.decoded_bytes() if images is not None else 0
        if size > streaming.above_mib * 2**20:
            log.info("held-out set %s (%d images, %.0f MiB preprocessed) is streamed at every pass", s.name,
                     len(images), size / 2**20)
        else:
            images = load_images(s.records, sources, preprocess, batch_size=batch_size, desc=s.name)
        return LabelledImages(images, label_indices(s), s.classnames, s.templates)

    calib_names = list(splits.classnames) + sorted({r.label for r in splits.calibration} - set(splits.classnames))
    return ScenarioImages(
        forget_train=load_images(splits.forget_train, sources, preprocess, batch_size=batch_size, desc="forget set"),
        retain_train=labelled(splits.retain_train, splits.classnames, splits.templates, "retain set"),
        calibration=labelled(splits.calibration, calib_names, splits.templates, "calibration set"),
        target=eval_set(splits.target),
        retain=eval_set(splits.retain),
        heldout={s.name: eval_set(s, may_stream=True) for s in splits.heldout},
    )


def unlearn_data(splits: ScenarioSplits, images: ScenarioImages) -> UnlearnData:
    """What a method may see: D_f, D_r and D_m (never the test or held-out images)."""
    return UnlearnData(
        forget_images=images.forget_train,
        forget_text=splits.forget_text,
        retain_images=images.retain_train.images,
        retain_labels=images.retain_train.labels,
        classnames=splits.classnames,
        templates=splits.templates,
        forget_label=splits.classnames.index(splits.forget_label),
        calibration_images=images.calibration.images,
        calibration_labels=images.calibration.labels,
        calibration_classnames=images.calibration.classnames,
    )


# -- the disk-backed stage store ------------------------------------------------------------------
class DiskStore:
    """:class:`clipforget.methods.base.StageStore` on disk: ``<dir>/<stage>.safetensors`` + ``.json``.

    The JSON is written last and records the tensor file's sha256 (``stage_file``), so a stage
    counts as finished only when both files are complete; on load a missing or changed tensor file
    raises :class:`clipforget.app.rundir.ResumeError` (it is never read as "the stage changed nothing").
    """

    def __init__(self, directory: str | Path, *, read_only: bool = False):
        self.directory, self.read_only = Path(directory), read_only

    def load(self, stage: str, quiet: bool = False) -> dict[str, Any] | None:
        meta = self.directory / f"{stage}.json"
        if not meta.is_file():
            return None
        from safetensors.torch import load_file

        try:
            info = json.loads(meta.read_text())
            recorded = info.pop("stage_file")
        except (ValueError, KeyError, AttributeError, TypeError):
            raise ResumeError(f"stage {stage!r}: {meta} is damaged or was written without a checksum; {RESTART_HINT}") from None
        state = {}
        if recorded is not None:
            tensors = self.directory / recorded["name"]
            if not tensors.is_file():
                raise ResumeError(f"stage {stage!r}: its tensor file {tensors} is missing; {RESTART_HINT}")
            if sha256_file(tensors) != recorded["sha256"]:
                raise ResumeError(f"stage {stage!r}: {tensors} is damaged or changed (its sha256 differs from the "
                                  f"one recorded in {meta.name}); {RESTART_HINT}")
            state = load_file(tensors)
        if not quiet:
            log.info("resuming: stage %r already finished, loaded from %s", stage, self.directory)
        return {"state": state, "info": info}

    def verify(self) -> None:
        """Check every finished stage's files now (as :meth:`load` would), before a run writes anything."""
        for meta in sorted(self.directory.glob("*.json")):
            self.load(meta.stem, quiet=True)

    def save(self, stage: str, payload: dict[str, Any]) -> None:
        if self.read_only:
            return
        recorded = None
        if payload.get("state"):
            tensors = atomic_save_safetensors(payload["state"], self.directory / f"{stage}.safetensors")
            recorded = {"name": tensors.name, "sha256": sha256_file(tensors)}
        atomic_write_json(self.directory / f"{stage}.json", {**payload.get("info", {}), "stage_file": recorded})


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


@dataclass
class Prepared:
    """A model and a scenario loaded once, so several methods and seeds can share them."""

    model_id: str
    model: DualEncoder
    scenario: ScenarioConfig
    splits: ScenarioSplits
    images: ScenarioImages
    original_metrics: ScenarioMetrics
    load_seconds: float
    ledger: ledgers.Ledger = field(default_factory=ledgers.Ledger)
    earlier: ledgers.EarlierRequests = field(default_factory=ledgers.EarlierRequests)
    precision: str = "fp32"  # of every run on it (clipforget.precision), the original's metrics included
    _views: dict[str | None, TrainingView] = field(default_factory=dict)
    _digests: dict[str, str] = field(default_factory=dict)

    def resume_key(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """What a run's stages are computed from: ``config`` (the resolved run config), the scenario's
        fingerprint, a digest of its image tensors and of the model's weights, the clipforget version."""
        if not self._digests:
            self._digests["scenario"] = self.splits.fingerprint
            self._digests["images"] = images_digest(self.images)
            self._digests["weights"] = state_dict_digest(self.model.weights())
            if self.ledger.requests:
                self._digests["ledger"] = ledgers.checksum(list(self.ledger.requests), self._digests["weights"])
        return {"clipforget": __version__, "config": dict(config), **self._digests}

    def training_view(self, image_prefix: str | None, *, batch_size: int = 64) -> TrainingView:
        """The model, data and evaluation images a method runs on: whole images, or the activations
        after a frozen image prefix (computed once per scenario and prefix)."""
        if image_prefix not in self._views:
            data = unlearn_data(self.splits, self.images)
            if image_prefix is None:
                self._views[None] = TrainingView(self.model, data, self.images,
                                                 ledgers.forgotten_sets(self.earlier, batch_size=batch_size))
            else:
                log.info("image stages before %s are frozen: computing their activations once for every set", image_prefix)
                view = FrozenImagePrefix(self.model, image_prefix)
                mapped = {k: view.prefix(getattr(data, k), batch_size) for k in
                          ("forget_images", "retain_images", "calibration_images") if getattr(data, k) is not None}
                self._views[image_prefix] = TrainingView(view, dataclasses.replace(data, **mapped),
                                                         map_images(self.images, functools.partial(view.prefix, batch_size=batch_size),
                                                                    f"frozen image stages before {image_prefix}"),
                                                         ledgers.forgotten_sets(self.earlier, view, batch_size=batch_size))
        return self._views[image_prefix]


@dataclass(frozen=True)
class TrainingView:
    model: DualEncoder
    data: UnlearnData
    images: ScenarioImages
    forgotten: list = field(default_factory=list)  # earlier requests' subgroups, in the same view


def images_digest(images: ScenarioImages) -> str:
    """SHA-256 of every image tensor and label of a scenario (what a method and the metrics see); a
    streamed set counts by its :meth:`~clipforget.data.StreamedImages.identity`."""
    h = hashlib.sha256()
    sets = {"forget_train": images.forget_train, **{k: getattr(images, k) for k in ("retain_train", "calibration", "target", "retain")},
            **{f"heldout/{k}": v for k, v in images.heldout.items()}}
    for name, value in sets.items():
        if isinstance(value, LabelledImages) and isinstance(value.images, StreamedImages):
            content = f"streamed {value.images.identity()} {state_dict_digest({'labels': value.labels})}"
        else:
            tensors = {"images": value} if isinstance(value, torch.Tensor) else {"images": value.images, "labels": value.labels}
            content = state_dict_digest(tensors)
        h.update(f"{name}|{list(getattr(value, 'classnames', ()))}|{content}\n".encode())
    return h.hexdigest()


def map_images(images: ScenarioImages, fn, tag: str | None = None) -> ScenarioImages:
    """Apply ``fn`` to every image tensor of ``images`` (labels and names unchanged); a streamed set
    takes it as a per-batch step named ``tag`` (default: ``fn``'s qualified name)."""
    tag = tag or getattr(fn, "__qualname__", type(fn).__qualname__)

    def lab(x: LabelledImages) -> LabelledImages:
        mapped = x.images.then(tag, fn) if isinstance(x.images, StreamedImages) else fn(x.images)
        return dataclasses.replace(x, images=mapped)

    return ScenarioImages(fn(images.forget_train), lab(images.retain_train), lab(images.calibration), lab(images.target),
                          lab(images.retain), {k: lab(v) for k, v in images.heldout.items()})


def prepare(model_id: str, scenario: str | Path | ScenarioConfig, *, device: str = "cpu", batch_size: int = 64,
            model: DualEncoder | None = None, precision: str = "fp32", streaming: Streaming = Streaming()) -> Prepared:
    """Load the model, build the scenario's splits, preprocess every image (streaming the held-out sets
    ``streaming`` says), score the original model (at ``precision``, :mod:`clipforget.precision`)."""
    start = time.perf_counter()
    parallel.start()
    scenario_cfg = load_scenario_config(scenario)
    log.info("loading %s", model_id)
    original = (model or load_model(model_id, device=device)).eval()
    ledger = ledgers.read_ledger(model_id, original)
    splits = build_scenario(scenario_cfg)
    log.info("scenario %s: forget %r as %r; D_f %d, D_r %d, D_m %d images; Target %d, Retain %d; held out: %s",
             splits.name, splits.forget_train[0].subgroup if splits.forget_train else "?", splits.forget_label,
             len(splits.forget_train), len(splits.retain_train), len(splits.calibration), len(splits.target.records),
             len(splits.retain.records), ", ".join(f"{s.name} {len(s.records)}" for s in splits.heldout) or "none")
    log.info("reading and preprocessing the images")
    images = load_scenario_images(splits, open_sources(scenario_cfg), original.preprocess, batch_size=batch_size,
                                  streaming=streaming)
    earlier = ledgers.EarlierRequests()
    if ledger.requests:
        log.info("%s carries a ledger of %d earlier request(s): %s", model_id, len(ledger.requests),
                 ", ".join(r["scenario"] for r in ledger.requests))
        earlier = ledgers.load_earlier(ledger, original.preprocess, batch_size=batch_size)
    prepared = Prepared(model_id, original, scenario_cfg, splits, images, None, 0.0, ledger, earlier, precision=precision)
    # Scored in the default training view: its frozen prefix's activations are what a run trains and is
    # scored on, so they are computed once here and the original costs one pass of the rest.
    view = prepared.training_view(original.default_image_prefix, batch_size=batch_size)
    log.info("scoring the original model")
    with autocast(precision, device):
        prepared.original_metrics = evaluate_scenario(view.model, splits, view.images, batch_size=batch_size)
    log.info("original model: %s", brief_metrics(prepared.original_metrics))
    prepared.load_seconds = time.perf_counter() - start
    return prepared


def brief_metrics(m: ScenarioMetrics) -> str:
    return ", ".join([f"Target {m.target:.1f}", f"Retain {m.retain:.1f}", *(f"{k} {v:.1f}" for k, v in m.heldout.items())])


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
    ``streaming``: which held-out sets are read from disk at every pass instead of kept in memory.
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


def _run_in(out: Path, prepared: Prepared, info: dict[str, Any], method: str, config: Config, seed: int,
            batch_size: int, image_prefix: str | None, audit_cfg: AuditConfig | None, save_model: bool,
            store: DiskStore) -> ForgetResult:
    timer = Timer()
    timer.seconds["load"] = prepared.load_seconds
    started = time.time()
    torch.manual_seed(seed)
    log.info("method %s, seed %d, into %s", method, seed, out)
    original_metrics = prepared.original_metrics
    precise = functools.partial(autocast, prepared.precision, prepared.model.device)
    with timer("method"):
        view = prepared.training_view(image_prefix, batch_size=batch_size)
        with precise():
            result: MethodResult = get_method(method).run(view.model, view.data, config, store=store,
                                                          seed=seed, forgotten=view.forgotten)
    events = [{"stage": stage, **{k: v for k, v in diag.items() if k != "scores"}} for stage, diag in result.diagnostics.items()]
    atomic_write_text(out / "events.jsonl", "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in events))
    log.info("scoring the unlearned model")
    with timer("evaluate_unlearned"), precise():
        unlearned_metrics = evaluate_scenario(result.model, prepared.splits, view.images, batch_size=batch_size)
    log.info("unlearned model: %s", brief_metrics(unlearned_metrics))
    unlearned_view = result.model
    if isinstance(result.model, FrozenImagePrefix):
        result.model = result.model.unwrap()
    score = paper_score(unlearned_metrics, original_metrics)
    warnings = result_warnings(prepared.model, result.model, result.diagnostics)
    warnings += target_warnings(original_metrics, unlearned_metrics)
    with precise():
        rechecked = recheck_earlier(out, prepared, result.model, audit_cfg, seed, timer)
    warnings += ledgers.recheck_warnings(rechecked)
    for w in warnings:
        log.warning("%s", w)
    _write_artifacts(out, result.artifacts)
    write_sets(out, prepared.splits, open_sources(prepared.scenario), seed=seed)
    if save_model:
        with timer("save"):
            result.model.save(out / "model")
    if audit_cfg is None:
        (out / "audit.json").unlink(missing_ok=True)  # never report a stale audit
    else:
        log.info("audit: %s", ", ".join(audit_cfg.parts))
        with timer("audit"), precise():  # view.model is the original in the method's view (methods clone it)
            audited = run_audit(view.model, unlearned_view, prepared.splits, view.images, audit_cfg, seed=seed)
        atomic_write_json(out / "audit.json", audited.to_dict())
    if save_model:
        from clipforget.audit import audit_summary

        entry = ledgers.request_entry(
            model_id=prepared.model_id, scenario=prepared.scenario, splits=prepared.splits, method=method,
            method_config=config.to_dict(), seed=seed, metrics={"original": headline_metrics(original_metrics),
                                                                 "unlearned": headline_metrics(unlearned_metrics)},
            score=score, audit=None if audit_cfg is None else audit_summary(audited.to_dict()), recheck=rechecked)
        ledgers.write_ledger(out / "model", prepared.ledger.extended(entry), result.model)
    atomic_write_json(out / "metrics.json", {"original": original_metrics.to_dict(),
                                             "unlearned": unlearned_metrics.to_dict(), "score": score,
                                             "warnings": warnings,
                                             "weights_changed": not same_weights(prepared.model, result.model)})
    wall = time.time() - started
    stage_times = _stage_times(result.diagnostics)
    resumed = [k for k, v in result.diagnostics.items() if v.get("resumed")]  # their seconds are from the first attempt
    saved = result.model.saved_id(out / "model") if save_model else None
    info.update(unlearned_model=saved, timings={**timer.seconds, **stage_times},
                wall_seconds=wall, resumed_stages=resumed,
                compute_seconds=wall + sum(stage_times.get(f"stage/{k}", 0.0) for k in resumed))
    atomic_write_json(out / "run.json", info)  # the report reads the timings
    report = write_report(out)
    info["status"] = "finished"  # last: a run is finished only once every output is written
    atomic_write_json(out / "run.json", info)
    log.info("%s on %s, seed %d: Target %.1f -> %.1f, Retain %.1f -> %.1f, Score %.1f", method,
             prepared.scenario.name, seed, original_metrics.target, unlearned_metrics.target,
             original_metrics.retain, unlearned_metrics.retain, score)
    log.debug("report: %s", report)
    return ForgetResult(out, result.model, original_metrics, unlearned_metrics, score, warnings)


def headline_metrics(m: ScenarioMetrics) -> dict[str, Any]:
    return {"target": m.target, "retain": m.retain, "heldout": dict(m.heldout)}


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


def same_weights(a: DualEncoder, b: DualEncoder) -> bool:
    """Whether two models hold the same tensors under the same names (wherever they live)."""
    sa, sb = a.weights(), b.weights()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def result_warnings(original: DualEncoder, unlearned: DualEncoder, diagnostics: Mapping[str, Mapping[str, Any]],
                    forget_target: float | None = None) -> list[str]:
    """Why a result is questionable, in words: it is the original model, or no candidate met the forget target."""
    from clipforget.methods.base import WeightChoice

    target = WeightChoice().forget_target if forget_target is None else forget_target
    out = []
    for stage, diag in diagnostics.items():
        choice = diag.get("choice")
        if isinstance(choice, Mapping) and isinstance(choice.get("forget_acc"), (int, float)) and choice["forget_acc"] > target:
            out.append(f"stage {stage}: no candidate reached the forget target (forget accuracy <= {target:g}); the one "
                       f"that forgets most was taken (forget accuracy {choice['forget_acc']:.3f})")
    if same_weights(original, unlearned):
        alpha = diagnostics.get("restore", {}).get("choice", {}).get("alpha")
        why = (" (the souping chose alpha = 0, the original weights)" if alpha == 0 else
               " (a training budget of zero, a souping grid offering only the original, or no feasible candidate)")
        out.append(f"the result is the original model: no weight changed{why}; nothing was forgotten")
    return out


def target_warnings(original: ScenarioMetrics, unlearned: ScenarioMetrics) -> list[str]:
    """A warning when the Target test images are recognised under their label as often as before."""
    if original.target > 0 and unlearned.target >= original.target:
        return [f"Target did not fall ({original.target:.1f} -> {unlearned.target:.1f}): the subgroup's test images are "
                "still classified under their label; try another method (e.g. ours-paper) or a stronger forget config"]
    return []


def _stage_times(diagnostics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    return {f"stage/{k}": float(v["seconds"]) for k, v in diagnostics.items() if isinstance(v.get("seconds"), (int, float))}


def _write_artifacts(out: Path, artifacts: Mapping[str, Any]) -> None:
    """Each artifact a method returned, as JSON under its own file name."""
    for name, payload in artifacts.items():
        require(Path(name).name == name and name.endswith(".json"), f"method artifact {name!r}: give a plain *.json file name")
        atomic_write_json(out / name, payload)
