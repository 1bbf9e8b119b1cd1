"""The scenario file's typed configs: what to forget, what to keep, what to hold out, and how each set
is sampled; every field checked with one clear error. Built from YAML by
:func:`clipforget.data.scenario.load_scenario_config`; the format is in ``docs/scenarios.md``."""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from clipforget.config import Config, ConfigError, require
from clipforget.data.scenario_checks import (ALL, check_aliases, check_nonempty_names, check_templates, names_brief,
                                              resolve_classes, resolve_presets)
from clipforget.data.sources import SourceConfig

Split = Literal["train", "test", "any"]


@dataclass(frozen=True)
class Selection(Config):
    """Images of one source: its raw ``classes``, optionally only the raw ``subgroups`` listed."""

    source: str
    classes: tuple[str, ...]
    subgroups: tuple[str, ...] = ()

    def check(self, where: str) -> None:
        check_nonempty_names(self.classes, f"{where}.classes")


@dataclass(frozen=True)
class Draw(Config):
    """How many images one set takes (``count`` >= 1), from which ``split`` (``train``, ``test`` or
    ``any``), keeping only images that carry every flag in ``flags`` (e.g. ``[clean]``)."""

    count: int
    split: Split
    flags: tuple[str, ...] = ()

    def check(self, where: str) -> None:
        require(self.count >= 1, f"{where}.count is {self.count}: an empty set; ask for at least 1 image")


@dataclass(frozen=True)
class GroupConfig(Config):
    """A subgroup: ``name`` (written into ``Record.subgroup``), its ``label`` in the label space, the
    images it is drawn from (``select``) and the ``train`` / ``test`` draws."""

    name: str
    label: str
    select: Selection
    train: Draw
    test: Draw

    def check(self, where: str) -> None:
        require(bool(self.name), f"{where}: give the subgroup a 'name'")
        self.select.check(f"{where}.select")
        self.train.check(f"{where}.train")
        self.test.check(f"{where}.test")


@dataclass(frozen=True)
class SubgroupConfig(GroupConfig):
    """The subgroup to forget; ``text`` is the forget text paired with its images.

    ``aliases``: other names of the subgroup (synonyms, its fine-grained name, a plural, a common
    misspelling). Methods never see them; the audit scores the Target under each of them, to check
    that the subgroup is forgotten under more than the one name the label prompt uses.
    """

    text: str = ""
    aliases: tuple[str, ...] = ()

    def check(self, where: str) -> None:
        super().check(where)
        require(bool(self.text.strip()), f"{where}.text: give the text paired with the forget images")
        for a in self.aliases:
            require(isinstance(a, str) and bool(a.strip()), f"{where}.aliases: {a!r} is not a name; give non-empty strings")
        require(len(set(self.aliases)) == len(self.aliases), f"{where}.aliases: {list(self.aliases)} names an alias twice")


@dataclass(frozen=True)
class SampleConfig(Config):
    """Images per class from one source (calibration and held-out sets).

    ``classes`` are raw class names of ``source``, a named label space (``imagenet1k_clip``) or ``all``
    (every class of the source, in its order, resolved when the scenario is built); ``drop`` leaves
    classes out of them. ``rename`` maps a raw name to the name used in prompts and in
    ``Record.label`` (unlisted names are kept).
    """

    source: str
    classes: tuple[str, ...]
    per_class: int
    split: Split
    flags: tuple[str, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> SampleConfig:
        return super().from_dict(resolve_classes(data, where), where)

    @property
    def takes_all(self) -> bool:
        return self.classes == (ALL,)

    def check(self, where: str) -> None:
        check_nonempty_names(self.classes, f"{where}.classes")
        require(self.per_class >= 1, f"{where}.per_class is {self.per_class}: an empty set; ask for at least 1")
        if not self.takes_all:
            self.check_classes(self.classes, where)

    def check_classes(self, known: tuple[str, ...], where: str) -> None:
        """Checks of ``drop`` and ``rename`` against the raw classes (``known``: the source's, for ``all``)."""
        stray = sorted(set(self.drop) - set(known))
        require(not stray, f"{where}.drop: {stray} are not among classes {names_brief(known)}")
        chosen = self.chosen(known)
        require(bool(chosen), f"{where}.drop: leaves no class; drop fewer")
        unknown = sorted(set(self.rename) - set(chosen))
        require(not unknown, f"{where}.rename: {unknown} are not among classes {names_brief(chosen)}")
        names = [self.rename.get(c, c) for c in chosen]
        twice = sorted(n for n, k in Counter(names).items() if k > 1)
        require(not twice, f"{where}.rename: two classes get the same name ({twice})")

    def chosen(self, known: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The raw classes taken: ``classes`` (``known`` for ``all``) less ``drop``."""
        classes = known if self.takes_all else self.classes
        require(classes is not None, "classes: all is resolved only against the source's classes")
        return tuple(c for c in classes if c not in self.drop)

    def label(self, raw: str) -> str:
        return self.rename.get(raw, raw)


@dataclass(frozen=True)
class HeldoutConfig(SampleConfig):
    """A held-out zero-shot set: its ``name``, label space and ``templates``.

    ``classnames``: the label space the images are scored over, a named one (``imagenet1k``, see
    data/presets.py) or a list; default: the (renamed) ``classes``. The images are still selected by
    ``classes``, and each (renamed) class must be a name of the label space, named once there.
    ``templates``: a list or a named preset (``openai_imagenet``); default: the scenario's.
    """

    name: str = ""
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> HeldoutConfig:
        return super().from_dict(resolve_presets(data, where, label_space=True), where)

    def check(self, where: str) -> None:
        require(bool(self.name), f"{where}: every held-out set needs a 'name'")
        where = f"{where} {self.name!r}"
        super().check(where)
        if self.templates:
            check_templates(self.templates, f"{where}.templates")
        if self.classnames and not self.takes_all:
            self.check_label_space(self.chosen(), f"{where}.classnames")

    def check_label_space(self, chosen: tuple[str, ...], where: str) -> None:
        """Every chosen class's (renamed) label is named once in ``classnames``."""
        counts = Counter(self.classnames)
        labels = [self.label(c) for c in chosen]
        missing = [n for n in labels if not counts[n]]
        if missing:
            close = {n: difflib.get_close_matches(n, self.classnames, n=3) for n in missing}
            hints = "; ".join(f"{n!r} is close to {m}" for n, m in close.items() if m)
            raise ConfigError(
                f"{where}: the selected classes {missing} are not in the label space ({names_brief(self.classnames)})"
                f"{'; ' + hints if hints else ''}; map each to a name of it under 'rename' or drop it from 'classes'"
            )
        twice = [n for n in labels if counts[n] > 1]
        require(not twice, f"{where}: {twice} name more than one class of the label space, so their images' label "
                "is ambiguous; drop them from 'classes' or give a label space that names them once")  # fmt: skip

    def label_space(self, chosen: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The names the set is scored over: ``classnames``, else the (renamed) chosen classes."""
        return self.classnames or tuple(self.label(c) for c in self.chosen(chosen))


@dataclass(frozen=True)
class ScenarioConfig(Config):
    """One forgetting task (see docs/scenarios.md).

    - ``name``, ``seed``: the scenario's name and the seed of every draw (0 is a seed).
    - ``sources``: image sources by name.
    - ``classnames`` / ``templates``: the label space and prompts that score Target and Retain;
      either may name a preset (data/presets.py).
    - ``hierarchy``: superclass -> its classes; the forget label and every retained label share one.
    - ``forget``: the subgroup to forget; ``retain``: the sibling subgroups kept.
    - ``calibration``: D_m, drawn without any forget-subgroup image.
    - ``heldout``: zero-shot sets never used for training or selection.
    """

    name: str
    seed: int
    sources: dict[str, SourceConfig]
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    hierarchy: dict[str, tuple[str, ...]]
    forget: SubgroupConfig
    retain: tuple[GroupConfig, ...]
    calibration: tuple[SampleConfig, ...]
    heldout: tuple[HeldoutConfig, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> ScenarioConfig:
        return super().from_dict(resolve_presets(data, where, label_space=True), where)

    def __post_init__(self) -> None:
        require(bool(self.name), "name: give the scenario a name")
        require(bool(self.sources), "sources: declare at least one image source")
        for name, source in self.sources.items():
            source.check(f"sources.{name}")
        check_nonempty_names(self.classnames, "classnames")
        check_templates(self.templates, "templates")
        known = set(self.classnames)
        seen: dict[str, str] = {}
        for sup, members in self.hierarchy.items():
            for m in members:
                require(m in known, f"hierarchy.{sup}: {m!r} is not in classnames {list(self.classnames)}")
                require(m not in seen, f"hierarchy: {m!r} is in both {seen.get(m)!r} and {sup!r}; keep one")
                seen[m] = sup
        groups = [("forget", self.forget)] + [(f"retain[{i}] {g.name!r}", g) for i, g in enumerate(self.retain)]
        require(bool(self.retain), "retain: list at least one sibling subgroup to keep")
        for where, g in groups:
            g.check(where)
            require(g.label in known, f"{where}.label: {g.label!r} is not in classnames {list(self.classnames)}")
        require(
            self.forget.label in seen,
            f"forget.label: {self.forget.label!r} is in no superclass of 'hierarchy'; add it to one",
        )
        family = seen[self.forget.label]
        for where, g in groups[1:]:
            require(
                seen.get(g.label) == family,
                f"{where}.label: {g.label!r} is not a sibling of {self.forget.label!r} (superclass "
                f"{family!r} = {list(self.hierarchy[family])}); retain only siblings",
            )
        check_aliases(self.forget.aliases, self.classnames)
        names = [g.name for _, g in groups]
        require(len(set(names)) == len(names), f"forget/retain: subgroup names {names} repeat; make them unique")
        require(bool(self.calibration), "calibration: list at least one calibration sample")
        for i, c in enumerate(self.calibration):
            c.check(f"calibration[{i}]")
        for i, h in enumerate(self.heldout):
            h.check(f"heldout[{i}]")
        hnames = [h.name for h in self.heldout]
        require(len(set(hnames)) == len(hnames), f"heldout: set names {hnames} repeat; make them unique")
        require(
            not {"target", "retain"} & set(hnames), "heldout: the names 'target' and 'retain' are reserved"
        )
        used = [g.select.source for _, g in groups] + [s.source for s in (*self.calibration, *self.heldout)]
        for s in used:
            require(s in self.sources, f"source {s!r} is not declared under 'sources' ({sorted(self.sources)})")
