"""A model and a scenario loaded once: the splits, every image preprocessed for the model (or
streamed), the original's metrics, and the training views a method runs on."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipforget import __version__, parallel
from clipforget.app import ledger as ledgers
from clipforget.data import (
    ScenarioConfig,
    ScenarioSplits,
    StreamedImages,
    Streaming,
    build_scenario,
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
from clipforget.methods.base import UnlearnData
from clipforget.metrics import ScenarioMetrics
from clipforget.models import DualEncoder, load_model
from clipforget.models.prefix import FrozenImagePrefix
from clipforget.precision import autocast
from clipforget.zeroshot import state_dict_digest

log = logging.getLogger(__name__)


def load_scenario_images(splits: ScenarioSplits, sources: Mapping[str, Any], preprocess, *, batch_size: int = 64,
                         streaming: Streaming = Streaming()) -> ScenarioImages:
    """Every split of ``splits`` preprocessed for one model, read by ``streaming``'s DataLoader workers:
    as tensors, except the sets ``streaming`` streams (:class:`~clipforget.data.StreamedImages`, read
    again at every pass; a training set is read a batch at a time as a method draws it)."""
    workers = streaming.worker_count()

    def images_of(records, desc: str) -> Any:
        streamed = StreamedImages(records, sources, preprocess, workers=workers)
        size = streamed.decoded_bytes()
        if size > streaming.above_mib * 2**20:
            log.info("%s (%d images, %.0f MiB preprocessed) is streamed from its files", desc, len(streamed), size / 2**20)
            return streamed
        return load_images(records, sources, preprocess, batch_size=batch_size, num_workers=workers, desc=desc)

    def labelled(records, classnames, templates, desc) -> LabelledImages:
        index = {c: i for i, c in enumerate(classnames)}
        labels = torch.tensor([index[r.label] for r in records], dtype=torch.long)
        return LabelledImages(images_of(records, desc), labels, tuple(classnames), tuple(templates))

    def eval_set(s) -> LabelledImages:
        return LabelledImages(images_of(s.records, s.name), label_indices(s), s.classnames, s.templates)

    calib_names = list(splits.classnames) + sorted({r.label for r in splits.calibration} - set(splits.classnames))
    return ScenarioImages(
        forget_train=images_of(splits.forget_train, "forget set"),
        retain_train=labelled(splits.retain_train, splits.classnames, splits.templates, "retain set"),
        calibration=labelled(splits.calibration, calib_names, splits.templates, "calibration set"),
        target=eval_set(splits.target),
        retain=eval_set(splits.retain),
        heldout={s.name: eval_set(s) for s in splits.heldout},
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
                fn, tag = functools.partial(view.prefix, batch_size=batch_size), f"frozen image stages before {image_prefix}"
                mapped = {k: _mapped(getattr(data, k), fn, tag) for k in
                          ("forget_images", "retain_images", "calibration_images") if getattr(data, k) is not None}
                self._views[image_prefix] = TrainingView(view, dataclasses.replace(data, **mapped), map_images(self.images, fn, tag),
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
        if isinstance(value, StreamedImages):
            content = f"streamed {value.identity()}"
        elif isinstance(value, LabelledImages) and isinstance(value.images, StreamedImages):
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
        return dataclasses.replace(x, images=_mapped(x.images, fn, tag))

    return ScenarioImages(_mapped(images.forget_train, fn, tag), lab(images.retain_train), lab(images.calibration),
                          lab(images.target), lab(images.retain), {k: lab(v) for k, v in images.heldout.items()})


def _mapped(images: Any, fn, tag: str) -> Any:
    """``fn`` of a tensor now, or of a streamed set at every batch (a step named ``tag``)."""
    return images.then(tag, fn) if isinstance(images, StreamedImages) else fn(images)


def prepare(model_id: str, scenario: str | Path | ScenarioConfig, *, device: str = "cpu", batch_size: int = 64,
            model: DualEncoder | None = None, precision: str = "fp32", streaming: Streaming = Streaming()) -> Prepared:
    """Load the model, build the scenario's splits, preprocess every image (streaming the sets
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


def headline_metrics(m: ScenarioMetrics) -> dict[str, Any]:
    return {"target": m.target, "retain": m.retain, "heldout": dict(m.heldout)}
