"""The ledger of a model folder: every forget request clipforget applied to those weights, in order.

A model folder written by ``clipforget forget`` holds ``clipforget_ledger.json``::

    {"format": 1, "weights_sha256": <digest of the weights it describes>, "checksum": <sha256>,
     "requests": [{"scenario": ..., "scenario_fingerprint": ..., "scenario_config": {...},
                   "forget_text": ..., "forget_label": ..., "aliases": [...], "method": ...,
                   "method_config": {...}, "seed": ..., "model": <the model id it was applied to>,
                   "metrics": {...}, "score": ..., "audit": {...}, "recheck": [...]}, ...]}

``checksum`` is the sha256 of the requests and ``weights_sha256`` together; ``weights_sha256`` is
:func:`clipforget.zeroshot.state_dict_digest` of the backend model's state dict. A ledger whose
checksum does not match its content (edited) or whose weights digest is not the loaded model's
(copied from another folder, or weights changed after it was written) is refused with
:class:`LedgerError`. The checksum detects edits and foreign ledgers; it is not a signature.

A new request on a model with a ledger (:func:`read_ledger`) continues it: the run keeps every
earlier subgroup forgotten while choosing its weights (:class:`clipforget.methods.scoring.Forgotten`),
re-checks each one whose data is still reachable (:func:`recheck`), and writes the ledger with its
own entry appended next to the new weights (:func:`write_ledger`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipforget.config import ConfigError
from clipforget.io import atomic_write_json
from clipforget.models.base import DualEncoder
from clipforget.zeroshot import state_dict_digest

log = logging.getLogger(__name__)

LEDGER_FILE = "clipforget_ledger.json"
FORMAT = 1
#: Percentage points an earlier subgroup's Target (or worst-prompt Target) may rise over the model as
#: received before the re-check says it came back (one image of a 50-image Target set is 2 points).
RECHECK_TOLERANCE = 2.0


class LedgerError(ConfigError):
    """A ledger that does not describe the weights beside it (edited, foreign, damaged)."""


@dataclass(frozen=True)
class Ledger:
    """The requests applied to one set of weights, oldest first (JSON-ready dicts, see the module doc)."""

    requests: tuple[Mapping[str, Any], ...] = ()

    def extended(self, entry: Mapping[str, Any]) -> Ledger:
        return Ledger((*self.requests, dict(entry)))

    def to_dict(self, weights_sha256: str) -> dict[str, Any]:
        requests = [dict(r) for r in self.requests]
        return {"format": FORMAT, "weights_sha256": weights_sha256, "checksum": checksum(requests, weights_sha256),
                "requests": requests}


def checksum(requests: Sequence[Mapping[str, Any]], weights_sha256: str) -> str:
    """sha256 of the requests (canonical JSON) and the weights digest together."""
    blob = json.dumps({"requests": list(requests), "weights_sha256": weights_sha256}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def weights_digest(model: DualEncoder) -> str:
    return state_dict_digest(model.weights())


def ledger_path(model_id: str) -> Path | None:
    """The ledger file of the folder a model id reads, if it has one."""
    from clipforget.app.rundir import checkpoint_paths

    for p in checkpoint_paths(model_id):
        folder = p if p.is_dir() else p.parent
        if (folder / LEDGER_FILE).is_file():
            return folder / LEDGER_FILE
    return None


def read_ledger(model_id: str, model: DualEncoder) -> Ledger:
    """The ledger of ``model_id``'s folder, checked against ``model`` (its loaded weights); an empty
    ledger when the folder has none (a model clipforget never unlearned)."""
    path = ledger_path(model_id)
    if path is None:
        return Ledger()
    fix = (f"restore the folder's original {LEDGER_FILE}, or delete it to treat the weights as a new base model "
           "(the earlier requests are then neither kept nor re-checked)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        requests, recorded, stored = data["requests"], data["weights_sha256"], data["checksum"]
        ok = data.get("format") == FORMAT and isinstance(requests, list) and all(isinstance(r, dict) for r in requests)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise LedgerError(f"the ledger {path} is damaged or not a clipforget ledger (format {FORMAT}); {fix}")
    if checksum(requests, recorded) != stored:
        raise LedgerError(f"the ledger {path} was edited after clipforget wrote it (its checksum does not match its "
                          f"content); {fix}")
    if recorded != weights_digest(model):
        raise LedgerError(f"the ledger {path} describes other weights than the model beside it (copied from another "
                          f"model folder, or the weights changed after it was written); {fix}")
    return Ledger(tuple(requests))


def write_ledger(model_dir: str | Path, ledger: Ledger, model: DualEncoder) -> Path:
    """Write ``ledger`` for ``model``'s weights into the saved model folder ``model_dir`` (atomically)."""
    return atomic_write_json(Path(model_dir) / LEDGER_FILE, ledger.to_dict(weights_digest(model)))


def request_entry(*, model_id: str, scenario: Any, splits: Any, method: str, method_config: Mapping[str, Any],
                  seed: int, metrics: Mapping[str, Any], score: float, audit: Mapping[str, Any] | None,
                  recheck: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One ledger entry (see the module doc); ``scenario`` is the resolved :class:`ScenarioConfig`."""
    return {"scenario": splits.name, "scenario_fingerprint": splits.fingerprint, "scenario_config": scenario.to_dict(),
            "forget_text": splits.forget_text, "forget_label": splits.forget_label,
            "aliases": list(splits.forget_aliases), "method": method, "method_config": dict(method_config),
            "seed": seed, "model": model_id, "metrics": dict(metrics), "score": score,
            "audit": dict(audit) if audit is not None else None, "recheck": [dict(r) for r in recheck]}


# -- earlier requests ----------------------------------------------------------------------------
@dataclass
class EarlierRequest:
    """An earlier request whose scenario still builds here: its splits and preprocessed images of its
    D_f (what the run's weight choice keeps forgotten) and its Target test images (what is re-checked)."""

    index: int
    entry: Mapping[str, Any]
    splits: Any
    forget_images: torch.Tensor
    target_images: torch.Tensor

    @property
    def name(self) -> str:
        return f"request {self.index + 1} ({self.entry['scenario']})"


@dataclass
class EarlierRequests:
    """The ledger's requests split into those whose data is reachable and those whose is not (why)."""

    reachable: list[EarlierRequest] = field(default_factory=list)
    unreachable: list[dict[str, Any]] = field(default_factory=list)


def load_earlier(ledger: Ledger, preprocess, *, batch_size: int = 64) -> EarlierRequests:
    """Rebuild every earlier request's scenario from its stored config and read its D_f and Target images.

    A request whose data cannot be read here (a missing archive or folder, a source that changed
    so the scenario no longer builds) is listed as unreachable with the reason, never guessed at.
    """
    from clipforget.data import DataNotFoundError, ScenarioConfig, build_scenario, load_images, open_sources

    out = EarlierRequests()
    for i, entry in enumerate(ledger.requests):
        try:
            config = ScenarioConfig.from_dict(entry["scenario_config"], where=f"ledger request {i + 1}")
            splits = build_scenario(config)
            sources = open_sources(config)
            forget = load_images(splits.forget_train, sources, preprocess, batch_size=batch_size,
                                 desc=f"request {i + 1} forget set")
            target = load_images(splits.target.records, sources, preprocess, batch_size=batch_size,
                                 desc=f"request {i + 1} target")
        except (DataNotFoundError, ConfigError, OSError) as e:
            log.warning("earlier request %d (%s): its data is not reachable here (%s); it is not re-checked",
                        i + 1, entry.get("scenario"), e)
            out.unreachable.append({"request": i + 1, "scenario": entry.get("scenario"), "reason": str(e)})
            continue
        if splits.fingerprint != entry.get("scenario_fingerprint"):
            log.warning("earlier request %d (%s): its sources changed since it was applied; re-checked on what they hold now",
                        i + 1, entry.get("scenario"))
        out.reachable.append(EarlierRequest(i, entry, splits, forget, target))
    return out


def forgotten_sets(earlier: EarlierRequests, view=None, *, batch_size: int = 64):
    """The earlier subgroups as :class:`clipforget.methods.scoring.Forgotten` (their D_f), through a frozen
    image prefix ``view`` when the method runs on one."""
    from clipforget.methods.scoring import Forgotten

    out = []
    for r in earlier.reachable:
        s = r.splits
        images = r.forget_images if view is None else view.prefix(r.forget_images, batch_size)
        out.append(Forgotten(r.name, images, s.classnames, s.templates, s.classnames.index(s.forget_label)))
    return out


def recheck(received: DualEncoder, unlearned: DualEncoder, earlier: EarlierRequests, audit_config, *, seed: int,
            tolerance: float = RECHECK_TOLERANCE) -> list[dict[str, Any]]:
    """Target and worst-prompt Target of every reachable earlier subgroup, under the model as received and
    the new one; ``came_back`` lists the figures that rose by more than ``tolerance`` points."""
    import dataclasses

    from clipforget.audit import AuditConfig
    from clipforget.audit import audit as run_audit
    from clipforget.audit import label_target
    from clipforget.evaluation import LabelledImages, ScenarioImages

    config = dataclasses.replace(audit_config or AuditConfig(), parts=("names",))
    out = []
    for r in earlier.reachable:
        s = r.splits
        empty = LabelledImages(r.target_images[:0], torch.zeros(0, dtype=torch.long), s.classnames, s.templates)
        target = LabelledImages(r.target_images, torch.full((len(r.target_images),), s.classnames.index(s.forget_label)),
                                s.classnames, s.templates)
        images = ScenarioImages(r.forget_images, empty, empty, target, empty, {})
        names = run_audit(received, unlearned, s, images, config, seed=seed, tuned=()).parts["names"]
        figures = {"target": {side: label_target(m, r.target_images, s, config.batch_size)
                              for side, m in (("received", received), ("unlearned", unlearned))},
                   "target_worst": {"received": names["target_worst"]["original"],
                                    "unlearned": names["target_worst"]["unlearned"]}}
        recorded = r.entry.get("metrics", {}).get("unlearned", {}).get("target")
        came_back = {k: round(v["unlearned"] - v["received"], 2) for k, v in figures.items()
                     if v["unlearned"] - v["received"] > tolerance}
        entry = {"request": r.index + 1, "scenario": s.name, **figures, "target_when_applied": recorded,
                 "worst_prompt": names["worst_prompt"]["unlearned"], "tolerance": tolerance, "came_back": came_back}
        out.append(entry)
        log.info("earlier %s: Target %.1f -> %.1f, worst prompt %.1f -> %.1f%s", r.name,
                 figures["target"]["received"], figures["target"]["unlearned"], figures["target_worst"]["received"],
                 figures["target_worst"]["unlearned"], "" if not came_back else " (came back)")
    return out


def recheck_warnings(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per earlier subgroup that came back: which figure, from what to what."""
    label = {"target": "Target", "target_worst": "Target, worst prompt"}
    out = []
    for r in results:
        for k, rise in r["came_back"].items():
            out.append(f"earlier request {r['request']} ({r['scenario']}) came back: {label[k]} "
                       f"{r[k]['received']:.1f} -> {r[k]['unlearned']:.1f} (+{rise:.1f} points over the model as received)")
    return out
