"""Scenario YAML -> :class:`ScenarioSplits`: one forgetting task defined with no code.

The format is documented field by field in ``docs/scenarios.md``; the shipped scenarios live in
``src/clipforget/scenarios/`` and resolve by name (``cifar10-cat``) as well as by path.

The builder draws every set without replacement from one pool of images, so no image is in two sets,
and seeds each draw from ``(seed, set name, class)`` so the result is deterministic for a seed.
Test sets are drawn first, then held-out sets, then training and calibration sets.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from clipforget.config import ConfigError, load_yaml, require
from clipforget.data.scenario_config import (
    Draw,
    GroupConfig,
    SampleConfig,
    ScenarioConfig,
)
from clipforget.data.sources import Entry, ImageSource, open_source
from clipforget.data.types import EvalSet, Record, ScenarioSplits


# --- loading ------------------------------------------------------------------------------------

def bundled_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package."""
    folder = resources.files("clipforget").joinpath("scenarios")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def scenario_path(name_or_path: str | Path) -> Path:
    """A scenario file from a path, or from the name of a bundled scenario."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = resources.files("clipforget").joinpath("scenarios", f"{name_or_path}.yaml")
    if bundled.is_file():
        return Path(str(bundled))
    raise ConfigError(
        f"scenario {str(name_or_path)!r} is neither a file nor a bundled scenario ({bundled_scenarios()})"
    )


def load_scenario_config(spec: str | Path | Mapping[str, Any] | ScenarioConfig) -> ScenarioConfig:
    """A validated :class:`ScenarioConfig` from a path, a bundled name, a mapping or a config.

    Relative source roots resolve against the scenario file's folder (for a mapping: the current one).
    """
    if isinstance(spec, ScenarioConfig):
        return spec
    if isinstance(spec, Mapping):
        data, base, where = dict(spec), Path.cwd(), "scenario"
    else:
        path = scenario_path(spec)
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
        require(isinstance(data, Mapping), f"{path}: the top level must be a mapping of fields")
        base, where = path.resolve().parent, path.name
    sources = data.get("sources")
    if isinstance(sources, Mapping):
        data["sources"] = {n: _resolve_root(s, base) for n, s in sources.items()}
    return ScenarioConfig.from_dict(data, where=where)


def _resolve_root(source: Any, base: Path) -> Any:
    if isinstance(source, Mapping) and isinstance(source.get("root"), str):
        root = Path(source["root"]).expanduser()
        return {**source, "root": str(root if root.is_absolute() else (base / root).resolve())}
    return source


def open_sources(spec: str | Path | Mapping[str, Any] | ScenarioConfig) -> dict[str, ImageSource]:
    """The scenario's image sources by name (cached per process)."""
    config = load_scenario_config(spec)
    return {name: open_source(s) for name, s in config.sources.items()}


def scenario_fingerprint(spec: str | Path | Mapping[str, Any] | ScenarioConfig) -> str:
    """sha256 of the resolved config and the identity of every source: a cache key for its splits."""
    config = load_scenario_config(spec)
    ids = {name: open_source(s).identity() for name, s in config.sources.items()}
    blob = json.dumps({"config": config.to_dict(), "sources": ids}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- building -----------------------------------------------------------------------------------

class _Pool:
    """The scenario's images, indexed by source and raw class; tracks which are already drawn."""

    def __init__(self, config: ScenarioConfig, sources: Mapping[str, ImageSource]):
        self.sources = sources
        self.used: dict[tuple[str, str], str] = {}  # (source, key) -> the set that took it
        self.by_class: dict[str, dict[str, list[Entry]]] = {}
        for name in config.sources:
            index: dict[str, list[Entry]] = {}
            for e in sources[name].entries():
                index.setdefault(e.classname, []).append(e)
            self.by_class[name] = index

    def chosen(self, s: SampleConfig, where: str) -> tuple[str, ...]:
        """The raw classes a sample takes; ``all`` means every class of its source, in listing order."""
        if not s.takes_all:
            return s.chosen()
        known = tuple(self.by_class[s.source])
        s.check_classes(known, where)
        return s.chosen(known)

    def select(self, source: str, classes: tuple[str, ...], subgroups: tuple[str, ...], where: str) -> list[Entry]:
        index = self.by_class[source]
        for c in classes:
            require(c in index, f"{where}: {c!r} is not a class of source {source!r}; its classes: {sorted(index)}")
        entries = [e for c in classes for e in index[c]]
        if subgroups:
            known = {e.subgroup for e in entries}
            for s in subgroups:
                require(s in known, f"{where}: subgroup {s!r} is not in {list(classes)} of source {source!r}; "
                        f"its subgroups: {sorted(known)}")  # fmt: skip
            entries = [e for e in entries if e.subgroup in subgroups]
        return entries

    def draw(self, source: str, entries: list[Entry], d: Draw | SampleConfig, count: int, rng_key: str,
             where: str) -> list[Entry]:  # fmt: skip
        matching = [
            e for e in entries
            if (d.split == "any" or e.split is None or e.split == d.split) and set(d.flags) <= e.flags
        ]  # fmt: skip
        require(bool(matching), f"{where}: no image matches (split {d.split!r}, flags {list(d.flags)}); "
                "check the split and flags")  # fmt: skip
        free = sorted((e for e in matching if (source, e.key) not in self.used), key=lambda e: e.key)
        if len(free) < count:
            taken = sorted({self.used[(source, e.key)] for e in matching if (source, e.key) in self.used})
            raise ConfigError(
                f"{where}: asks for {count} images but only {len(free)} are available (split {d.split!r}, "
                f"flags {list(d.flags)}{'; the rest went to ' + ', '.join(taken) if taken else ''}); "
                f"lower the count to at most {len(free)}"
            )
        chosen = sorted(random.Random(rng_key).sample(free, count), key=lambda e: e.key)
        for e in chosen:
            self.used[(source, e.key)] = where
        return chosen


def _check_disjoint(pool: _Pool, config: ScenarioConfig) -> None:
    """Refuse selections that overlap the forget subgroup or each other (retain groups)."""

    def keys(source: str, entries: list[Entry]) -> set[tuple[str, str]]:
        return {(source, e.key) for e in entries}

    f = config.forget
    forget = keys(f.select.source, pool.select(f.select.source, f.select.classes, f.select.subgroups, "forget.select"))
    seen: dict[str, set[tuple[str, str]]] = {"the forget subgroup": forget}
    for i, g in enumerate(config.retain):
        where = f"retain[{i}] {g.name!r}"
        mine = keys(g.select.source, pool.select(g.select.source, g.select.classes, g.select.subgroups, where))
        for other, theirs in seen.items():
            require(not mine & theirs, f"{where}: selects images of {other} (overlapping sets); "
                    "narrow its classes or subgroups so the sets are disjoint")  # fmt: skip
        seen[where] = mine
    for i, s in enumerate(config.calibration):
        mine = keys(s.source, pool.select(s.source, pool.chosen(s, f"calibration[{i}]"), (), f"calibration[{i}]"))
        require(not mine & forget, f"calibration[{i}]: selects images of the forget subgroup (overlapping sets); "
                "remove its class from the calibration classes")  # fmt: skip


def build_scenario(spec: str | Path | Mapping[str, Any] | ScenarioConfig) -> ScenarioSplits:
    """Build the scenario's splits; deterministic for its seed, no image in two splits."""
    config = load_scenario_config(spec)
    pool = _Pool(config, open_sources(config))
    _check_disjoint(pool, config)
    seed = config.seed

    def group_records(g: GroupConfig, part: Literal["train", "test"], where: str) -> list[Record]:
        sel, d = g.select, getattr(g, part)
        entries = pool.select(sel.source, sel.classes, sel.subgroups, where)
        chosen = pool.draw(sel.source, entries, d, d.count, f"{seed}:{where}", f"{where}.{part}")
        return [Record(sel.source, e.key, g.label, g.name) for e in chosen]

    def sample_records(s: SampleConfig, where: str) -> list[Record]:
        out = []
        for c in pool.chosen(s, where):
            entries = pool.select(s.source, (c,), (), where)
            chosen = pool.draw(s.source, entries, s, s.per_class, f"{seed}:{where}:{c}", f"{where} class {c!r}")
            out += [Record(s.source, e.key, s.label(c), _subgroup(e, s.label(c))) for e in chosen]
        return out

    retain_where = [f"retain[{i}] {g.name!r}" for i, g in enumerate(config.retain)]
    target = group_records(config.forget, "test", "forget")
    retain = [r for g, w in zip(config.retain, retain_where) for r in group_records(g, "test", w)]
    heldout = []
    for h in config.heldout:
        records = sample_records(h, f"heldout {h.name!r}")
        chosen = pool.chosen(h, f"heldout {h.name!r}")
        if h.takes_all and h.classnames:
            h.check_label_space(chosen, f"heldout {h.name!r}.classnames")
        heldout.append(EvalSet(h.name, tuple(records), h.label_space(chosen), h.templates or config.templates))
    forget_train = group_records(config.forget, "train", "forget")
    retain_train = [r for g, w in zip(config.retain, retain_where) for r in group_records(g, "train", w)]
    calibration = [r for i, s in enumerate(config.calibration) for r in sample_records(s, f"calibration[{i}]")]
    return ScenarioSplits(
        name=config.name,
        seed=seed,
        forget_text=config.forget.text,
        forget_label=config.forget.label,
        forget_aliases=config.forget.aliases,
        classnames=config.classnames,
        templates=config.templates,
        forget_train=tuple(forget_train),
        retain_train=tuple(retain_train),
        calibration=tuple(calibration),
        target=EvalSet("target", tuple(target), config.classnames, config.templates),
        retain=EvalSet("retain", tuple(retain), config.classnames, config.templates),
        heldout=tuple(heldout),
        fingerprint=scenario_fingerprint(config),
    )


def _subgroup(e: Entry, label: str) -> str:
    """The entry's own subgroup, or the (renamed) label when the source has no finer grouping."""
    return label if e.subgroup == e.classname else e.subgroup
