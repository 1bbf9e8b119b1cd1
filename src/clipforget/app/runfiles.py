"""A finished run directory's JSON files read once (:class:`RunFiles`), and what follows from them
before any page is built: the warnings that make a result suspect, the order of the sets, the config's changes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clipforget.app.html import num


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class RunFiles:
    """The JSON files of a finished run directory (None / empty where a file is absent)."""

    dir: Path
    metrics: dict[str, Any]
    info: dict[str, Any]
    config: dict[str, Any]
    sets: dict[str, Any] | None
    events: dict[str, dict[str, Any]]
    fisher: dict[str, Any] | None
    alpha: dict[str, Any] | None
    audit: dict[str, Any] | None

    @classmethod
    def load(cls, run_dir: str | Path) -> RunFiles:
        d = Path(run_dir)
        events: dict[str, dict[str, Any]] = {}
        if (d / "events.jsonl").is_file():
            for line in (d / "events.jsonl").read_text().splitlines():
                if line.strip():
                    event = json.loads(line)
                    events[event["stage"]] = event  # a resumed stage's later line replaces its first
        config = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {}
        return cls(d, json.loads((d / "metrics.json").read_text()), read_json(d / "run.json") or {}, config or {},
                   read_json(d / "sets.json"), events, read_json(d / "fisher.json"), read_json(d / "alpha_curve.json"),
                   read_json(d / "audit.json"))

    @property
    def forget(self) -> dict[str, Any]:
        """subgroup, label, text, aliases: from sets.json, else from the run's scenario.yaml."""
        if self.sets:
            return self.sets["forget"]
        path = self.dir / "scenario.yaml"
        f = (yaml.safe_load(path.read_text()) or {}).get("forget", {}) if path.is_file() else {}
        return {"subgroup": f.get("name", "?"), "label": f.get("label", "?"), "text": f.get("text", "?"),
                "aliases": list(f.get("aliases") or [])}

    def predicted(self, model: str, name: str) -> list[int] | None:
        return self.metrics.get(model, {}).get("details", {}).get(name, {}).get("predicted")


def forget_target() -> float:
    from clipforget.methods.base import WeightChoice

    return WeightChoice().forget_target


def run_warnings(run: RunFiles) -> list[str]:
    """What makes this run's result suspect, one sentence each (empty when nothing does)."""
    out = []
    target = forget_target()
    chose_original = False
    for stage, ev in run.events.items():
        choice = ev.get("choice")
        if isinstance(choice, Mapping) and isinstance(choice.get("forget_acc"), (int, float)) and choice["forget_acc"] > target:
            what = "α on the grid" if stage == "restore" else "candidate"
            out.append(f"No {what} met the forget constraint (held-out forget-set accuracy ≤ {100 * target:g}%) in stage "
                       f"{stage}: the one that forgets most was kept (forget accuracy {100 * choice['forget_acc']:.1f}%).")
        if ev.get("chose_original") or (stage == "restore" and isinstance(choice, Mapping) and choice.get("alpha") == 0):
            chose_original = True
            out.append(f"Stage {stage} chose the original weights: the saved model is the model it started from.")
        if "checks" in ev and ev.get("stopped_early") is False and ev.get("stop_target", True):
            final = ev.get("final", {})
            out.append(f"Stage {stage} ran its whole step budget ({ev.get('steps_run')} steps) without reaching its stop "
                       f"target (final forget similarity {num(final.get('forget_similarity'), 3)}, "
                       f"forget accuracy {num(100 * final['forget_acc'] if 'forget_acc' in final else None)}%).")
    if run.metrics.get("weights_changed") is False and not chose_original:  # the run compared the weights
        out.append("No weight changed (a training budget of zero, or a grid offering only the original): the result is "
                   "the original model, and nothing was forgotten.")
    o, u = run.metrics["original"]["target"], run.metrics["unlearned"]["target"]
    if u >= o:
        out.append(f"The Target did not fall: {o:.1f}% → {u:.1f}%.")
    if run.audit and run.audit["verdict"].get("every_road_closed") is False:
        open_roads = [k for k, v in run.audit["verdict"]["flags"].items() if v is False]
        out.append("The audit still finds the subgroup by some road (flags not met: " + ", ".join(open_roads) + ").")
    return out


SET_ROLES = {"target": "Target: test images of the forgotten subgroup", "retain": "Retain: test images of its siblings",
             "forget_train": "D_f, the forget set (the method trains on it)",
             "retain_train": "D_r, the retain set (the method trains on it)",
             "calibration": "D_m, calibration (distillation; choosing α / checkpoints)"}


def set_order(names: Iterable[str]) -> list[str]:
    """The scored sets first (Target, Retain, the held-out ones), then the training sets."""
    names = list(names)
    first = ["target", "retain", *sorted(n for n in names if n.startswith("heldout/")), "forget_train", "retain_train", "calibration"]
    return [n for n in first if n in names] + sorted(set(names) - set(first))


def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(method: str, config: Mapping[str, Any]) -> list[tuple[str, Any, Any]] | None:
    """(field, this run, default) for each field of a method config that differs from the method's
    defaults; None when the method is not registered here."""
    from clipforget.methods import get_method

    try:
        default = get_method(method).config_class().to_dict()
    except ValueError:
        return None
    ours, theirs = flat(config), flat(default)
    return [(k, ours.get(k, "–"), theirs.get(k, "–")) for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
