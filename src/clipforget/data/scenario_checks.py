"""The checks and preset expansions the scenario file's configs share (:mod:`clipforget.data.scenario_config`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clipforget.config import require
from clipforget.data.presets import resolve_label_space, resolve_templates


def check_templates(templates: tuple[str, ...], where: str) -> None:
    require(bool(templates), f"{where}: give at least one prompt template, e.g. 'a photo of a {{}}.'")
    for t in templates:
        require(isinstance(t, str), f"{where}: template {t!r} is not a string; callables are converted when "
                "the config is built from a mapping (load_scenario_config, from_dict)")  # fmt: skip
        require("{}" in t, f"{where}: template {t!r} has no '{{}}' where the class name goes; add one")


def resolve_presets(data: Mapping[str, Any], where: str, label_space: bool) -> dict[str, Any]:
    """``data`` with preset names (data/presets.py) expanded in ``templates`` and, when ``label_space``,
    ``classnames``; callable and ``{c}`` templates become ``{}`` strings."""
    at = f"{where}." if where else ""
    data = dict(data)
    if "templates" in data:
        data["templates"] = resolve_templates(data["templates"], f"{at}templates")
    if label_space and "classnames" in data:
        data["classnames"] = resolve_label_space(data["classnames"], f"{at}classnames")
    return data


ALL = "all"  # `classes: all`: every class of the set's source, in its order (less `drop`)


def resolve_classes(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A sample's ``classes`` given as ``all`` (kept as ``("all",)``) or as a label-space name (its names)."""
    data = dict(data)
    classes = data.get("classes")
    if isinstance(classes, str):
        data["classes"] = (ALL,) if classes == ALL else resolve_label_space(classes, f"{where}.classes" if where else "classes")
    return data


def names_brief(names: tuple[str, ...]) -> str:
    return str(list(names)) if len(names) <= 12 else f"{len(names)} names: {', '.join(names[:3])}, ..., {names[-1]}"


def check_nonempty_names(names: tuple[str, ...], where: str) -> None:
    require(bool(names), f"{where}: the list is empty; name at least one class")
    require(len(set(names)) == len(names), f"{where}: {list(names)} names a class twice")


def check_aliases(aliases: tuple[str, ...], classnames: tuple[str, ...]) -> None:
    """An alias may not be a class of the label space (case and spaces aside): scoring Target under
    "hound" in a scenario with a class "hound" would test that class, not the subgroup's other name."""
    by_name = {c.strip().casefold(): c for c in classnames}
    for a in aliases:
        clash = by_name.get(a.strip().casefold())
        require(clash is None, f"forget.aliases: {a!r} is the class {clash!r} of classnames; an alias must be "
                "another name of the subgroup, not a class the label space already scores; drop it")  # fmt: skip
