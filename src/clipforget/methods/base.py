"""What every unlearning method shares: its inputs, its result, the stage store, and the registry.

A method is a :class:`Method` subclass registered under a name with :func:`register_method`; the
pipeline finds it with :func:`get_method`, builds its config with ``method.config_class.from_dict``
and calls ``method.run(model, data, config, store=..., seed=...)``. Methods never read files, parse
flags or print: tensors and modules in, a :class:`MethodResult` out.
"""

from __future__ import annotations

import abc
import copy
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import Tensor

from clipforget.config import Config, ConfigError, require
from clipforget.models.base import DualEncoder

StateDict = dict[str, Tensor]
ScoreFn = Callable[[Mapping[str, Tensor]], tuple[float, float]]
"""``score_fn(state_dict) -> (utility, forget_acc)``: higher utility is better, forget_acc in [0, 1]."""


@dataclass(frozen=True, eq=False)
class UnlearnData:
    """One forgetting task in memory (the pipeline builds it from a scenario).

    - ``forget_images``: (N, 3, H, W) preprocessed images of the subgroup to forget (D_f).
    - ``forget_text``: the text the forget images are paired with (e.g. "a photo of a marmoset").
    - ``retain_images``, ``retain_labels``: (M, 3, H, W) sibling-subgroup images (D_r) and their
      class indices into ``classnames``.
    - ``calibration_images``: (K, 3, H, W) images for distillation targets and for choosing the
      souping alpha (D_m); ``calibration_labels`` index into ``calibration_classnames`` when that is
      given, else into ``classnames``; without labels, utility is agreement with the original model.
    - ``classnames``, ``templates``: the scenario's label space and prompt templates (with ``{}``).
    - ``forget_label``: index into ``classnames`` of the class the forgotten subgroup belongs to.
    """

    forget_images: Tensor
    forget_text: str
    retain_images: Tensor
    retain_labels: Tensor
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    forget_label: int
    calibration_images: Tensor | None = None
    calibration_labels: Tensor | None = None
    calibration_classnames: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        require(self.forget_images.ndim == 4 and len(self.forget_images) > 0, "forget_images must be a non-empty (N, 3, H, W) tensor")
        require(self.retain_images.ndim == 4 and len(self.retain_images) > 0, "retain_images must be a non-empty (M, 3, H, W) tensor")
        require(
            self.retain_labels.shape == (len(self.retain_images),),
            f"retain_labels must have shape ({len(self.retain_images)},), got {tuple(self.retain_labels.shape)}",
        )
        require(len(self.classnames) > 0, "classnames is empty")
        require(bool(self.templates) and all("{}" in t for t in self.templates), "every template must contain '{}'")
        require(0 <= self.forget_label < len(self.classnames), f"forget_label {self.forget_label} is not an index into classnames")
        require(
            bool(((self.retain_labels >= 0) & (self.retain_labels < len(self.classnames))).all()),
            "retain_labels must index into classnames",
        )
        if self.calibration_labels is not None:
            require(self.calibration_images is not None, "calibration_labels given without calibration_images")
            require(len(self.calibration_labels) == len(self.calibration_images), "calibration labels and images differ in length")
        if self.calibration_classnames is not None:
            require(self.calibration_labels is not None, "calibration_classnames given without calibration_labels")

    def retain_prompts(self) -> list[str]:
        """The text each retain image is paired with: the first template filled with its class."""
        return [self.templates[0].format(self.classnames[int(i)]) for i in self.retain_labels]


@dataclass
class MethodResult:
    """The unlearned model (same backend, same parameter names and shapes) and per-stage diagnostics.

    ``diagnostics`` maps a stage name to JSON-serialisable values (Fisher scores, selected layers,
    loss curves, the alpha curve), in the order the stages ran.
    """

    model: DualEncoder
    diagnostics: dict[str, dict[str, Any]] = field(default_factory=dict)


# -- stage store ------------------------------------------------------------------------------


class StageStore(Protocol):
    """Where finished stages are kept so a killed run resumes from its last finished stage.

    A payload is ``{"state": {param name: Tensor}, "info": {JSON-serialisable}}``; ``state`` holds
    only the parameters the stage changed (keys as in the backend model's state dict).
    """

    def load(self, stage: str) -> dict[str, Any] | None: ...

    def save(self, stage: str, payload: dict[str, Any]) -> None: ...


class InMemoryStore:
    """A :class:`StageStore` in a dict; payload tensors are copied in and out (no aliasing)."""

    def __init__(self) -> None:
        self.payloads: dict[str, dict[str, Any]] = {}

    def load(self, stage: str) -> dict[str, Any] | None:
        payload = self.payloads.get(stage)
        return None if payload is None else _copy_payload(payload)

    def save(self, stage: str, payload: dict[str, Any]) -> None:
        self.payloads[stage] = _copy_payload(payload)


def _copy_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in payload.get("state", {}).items()},
        "info": dict(payload.get("info", {})),
    }


def run_stage(
    store: StageStore, stage: str, model: DualEncoder, fn: Callable[[], tuple[dict[str, Any], StateDict]]
) -> dict[str, Any]:
    """Run ``fn() -> (info, changed_state)`` once: on a later call, load its saved result instead
    (its info then says ``resumed``; ``seconds`` stays the time the stage took when it ran)."""
    cached = store.load(stage)
    if cached is not None:
        load_partial_state(model, cached["state"])
        return {**cached["info"], "resumed": True}
    start = time.perf_counter()
    info, state = fn()
    info = {**info, "seconds": time.perf_counter() - start}
    store.save(stage, {"state": state, "info": info})
    return info


def load_partial_state(model: DualEncoder, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` into the backend model, checking every key and shape."""
    own = model.model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise KeyError(f"stored state has keys the model lacks: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    with torch.no_grad():
        for k, v in state.items():
            if own[k].shape != v.shape:
                raise ValueError(f"stored state {k!r} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
            own[k].copy_(v)


def clone_model(model: DualEncoder) -> DualEncoder:
    """A deep copy of the weights that shares the read-only helpers (tokenizer, preprocess, spec)."""
    shared = {
        id(v): v for v in vars(model).values() if not isinstance(v, (torch.nn.Module, Tensor, dict, list, set, int, float, str, bool))
    }
    return copy.deepcopy(model, memo=shared)


def stage_generator(seed: int, stage: str) -> torch.Generator:
    """A CPU generator for one stage, derived from the run seed (so resumed runs match fresh ones)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(stage.encode())) % 2**63)


# -- the interface ----------------------------------------------------------------------------

C = TypeVar("C", bound=Config)


class Method(abc.ABC):
    """An unlearning method. Subclasses set ``config_class`` and implement :meth:`run`.

    ``run`` leaves ``model`` unchanged and returns a new model in the result; every random draw
    comes from ``seed``; finished stages are saved to and resumed from ``store``.
    ``score_fn`` (used by methods that choose among weight sets) scores a backend state dict; when
    None, a method builds one from ``data``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[Config]]

    @abc.abstractmethod
    def run(
        self,
        model: DualEncoder,
        data: UnlearnData,
        config: Config,
        *,
        store: StageStore | None = None,
        seed: int = 0,
        score_fn: ScoreFn | None = None,
    ) -> MethodResult: ...

    @classmethod
    def smoke_config(cls) -> Config:
        """A config that runs in about a second on a tiny model (for tests and smoke runs)."""
        return cls.config_class()

    def check_config(self, config: Config) -> None:
        if not isinstance(config, self.config_class):
            raise ConfigError(f"method {self.name!r} needs a {self.config_class.__name__}, got {type(config).__name__}")


# -- the registry -----------------------------------------------------------------------------

_METHODS: dict[str, type[Method]] = {}


def register_method(name: str, method: type[Method] | None = None):
    """Register ``method`` under ``name`` (usable as ``@register_method("name")``); duplicates fail."""

    def add(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}): {cls!r} is not a Method subclass")
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered (by {_METHODS[name].__qualname__})")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add if method is None else add(method)


def unregister_method(name: str) -> None:
    """Remove a registration (for tests that register temporary methods)."""
    _METHODS.pop(name, None)


def get_method(name: str) -> Method:
    """A fresh instance of the method registered as ``name``."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS)) or '(none)'}")
    return _METHODS[name]()


def list_methods() -> list[str]:
    return sorted(_METHODS)
