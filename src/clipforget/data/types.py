"""The data types every part of clipforget shares: one image record, one evaluation set, one scenario's splits."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    """One image: where it lives and what it is.

    ``source`` names an image source of the scenario; ``key`` locates the image inside it (a path
    relative to the source root, or ``<split>/<index>`` for array-backed sources such as IDX files).
    ``label`` is the class name in the label space the image is scored against; ``subgroup`` is the
    finer group inside that class (equal to ``label`` when the source has no finer grouping).
    """

    source: str
    key: str
    label: str
    subgroup: str


@dataclass(frozen=True)
class EvalSet:
    """Images scored by zero-shot classification over ``classnames`` x ``templates``.

    Every record's ``label`` is one of ``classnames``, named there once; ``classnames`` may repeat a
    name no record carries (ImageNet's first lemmas name two synsets ``crane``).
    """

    name: str
    records: tuple[Record, ...]
    classnames: tuple[str, ...]
    templates: tuple[str, ...]


@dataclass(frozen=True)
class ScenarioSplits:
    """A forgetting task, built deterministically from a scenario YAML file.

    - ``forget_train``: the forget set D_f (subgroup images), paired with ``forget_text``.
    - ``retain_train``: the retain set D_r (sibling-subgroup images with their labels).
    - ``calibration``: D_m, images for distillation targets and for choosing the souping alpha.
    - ``target``: test images of the forgotten subgroup (the paper's Target column).
    - ``retain``: test images of the sibling subgroups (the Retain column).
    - ``heldout``: zero-shot sets never used for training or selection.
    ``target`` and ``retain`` share the scenario's label space (``classnames``, ``templates``);
    ``forget_label`` is the class the forgotten subgroup belongs to in that label space;
    ``forget_aliases`` are other names of the subgroup (for the audit only, never for a method).
    No image appears in two splits. ``fingerprint`` is a hash of the resolved scenario config and its
    sources (a cache key; empty when the splits were not built from a config).
    """

    name: str
    seed: int
    forget_text: str
    forget_label: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    forget_train: tuple[Record, ...]
    retain_train: tuple[Record, ...]
    calibration: tuple[Record, ...]
    target: EvalSet
    retain: EvalSet
    heldout: tuple[EvalSet, ...]
    fingerprint: str = ""
    forget_aliases: tuple[str, ...] = ()
