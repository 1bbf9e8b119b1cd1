"""What every unlearning method shares: its inputs, its result, the stage store, and the registry.

A method is a :class:`Method` subclass registered under a name with :func:`register_method`; the
pipeline finds it with :func:`get_method`, builds its config with ``method.config_class.from_dict``
and calls ``method.run(model, data, config, store=..., seed=...)``. Methods never read files, parse
flags or print: tensors and modules in, a :class:`MethodResult` out.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from clipforget.config import Config, ConfigError, require
from clipforget.methods.core import (  # noqa: F401  (the shared types, re-exported)
    ScoreFn,
    StateDict,
    UnlearnData,
    clone_model,
    stage_generator,
)
from clipforget.methods.scoring import Forgotten, make_score_fn, split_forget
from clipforget.models.base import DualEncoder

log = logging.getLogger(__name__)


@dataclass
class MethodResult:
    """The unlearned model (same backend, same parameter names and shapes) and per-stage diagnostics.

    ``diagnostics`` maps a stage name to JSON-serialisable values (Fisher scores, selected layers,
    loss curves, the alpha curve), in the order the stages ran. ``artifacts`` maps a file name to a
    JSON-serialisable payload the method wants kept beside its run (``fisher.json``,
    ``alpha_curve.json``); the runner writes each as it is, without reading it.
    """

    model: DualEncoder
    diagnostics: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)


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
        model.load_weights(cached["state"])
        return {**cached["info"], "resumed": True}
    log.info("stage %s", stage)
    start = time.perf_counter()
    info, state = fn()
    info = {**info, "seconds": time.perf_counter() - start}
    store.save(stage, {"state": state, "info": info})
    log.info("stage %s done in %.1f s", stage, info["seconds"])
    return info


# -- the interface ----------------------------------------------------------------------------

C = TypeVar("C", bound=Config)


@dataclass(frozen=True)
class WeightChoice(Config):
    """How every method picks its final weights; :meth:`Method.run` applies it to all methods alike.

    holdout: fraction of D_f kept out of every method's training; its forget accuracy is what
        ``score_fn`` reports, an honest estimate of the Target on unseen subgroup images (the forget
        accuracy of images a method was tuned on is optimistic).
    forget_target: a candidate is feasible when that forget accuracy is at most this
        (see :func:`clipforget.methods.scoring.best_candidate`).
    """

    holdout: float = 0.2
    forget_target: float = 0.0

    def __post_init__(self) -> None:
        require(0 <= self.holdout < 1, f"holdout must be in [0, 1), got {self.holdout}")
        require(0 <= self.forget_target <= 1, f"forget_target must be in [0, 1], got {self.forget_target}")


@dataclass(frozen=True, eq=False)
class MethodRun:
    """What :meth:`Method.run` hands a method: built once here, the same for every method.

    - ``teacher``: the model as received (eval mode; never changed); ``student``: its clone to edit.
    - ``original``: a copy of the teacher's backend state dict.
    - ``data``: the task with the held-out part of D_f removed; ``check``: that held-out part.
    - ``score_fn``, ``forget_target``: the one scoring function and target every method picks by.
    - ``forgotten``: the subgroups earlier requests forgot from the teacher (in the run's view).
    """

    teacher: DualEncoder
    student: DualEncoder
    original: StateDict
    data: UnlearnData
    check: UnlearnData
    score_fn: ScoreFn
    forget_target: float
    store: StageStore
    seed: int
    forgotten: Sequence[Forgotten] = ()


class Method(abc.ABC):
    """An unlearning method. Subclasses set ``config_class`` and implement :meth:`fit`.

    :meth:`run` is the template every method shares: it checks the config, holds out part of D_f
    (``choice``), builds the scoring function, clones the model and snapshots the original, then
    calls :meth:`fit`. ``run`` leaves ``model`` unchanged and returns a new model in the result;
    every random draw comes from ``seed``; finished stages are saved to and resumed from ``store``.
    ``score_fn`` replaces the default scoring function (built from the held-out forget images).
    ``forgotten``: subgroups earlier requests forgot from ``model``; the default scoring function
    then keeps each of them where ``model`` had it (:func:`clipforget.methods.scoring.make_score_fn`).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[Config]]

    def run(
        self,
        model: DualEncoder,
        data: UnlearnData,
        config: Config,
        *,
        store: StageStore | None = None,
        seed: int = 0,
        choice: WeightChoice | None = None,
        score_fn: ScoreFn | None = None,
        forgotten: Sequence[Forgotten] = (),
    ) -> MethodResult:
        self.check_config(config)
        choice = choice if choice is not None else WeightChoice()
        fit, check = split_forget(data, choice.holdout, seed)
        teacher = model.eval()
        student = clone_model(model).eval()
        run = MethodRun(
            teacher=teacher,
            student=student,
            original={k: v.detach().clone() for k, v in teacher.weights().items()},
            data=fit,
            check=check,
            score_fn=score_fn or _built_on_first_call(lambda: make_score_fn(teacher, check, forgotten)),
            forget_target=choice.forget_target,
            store=store if store is not None else InMemoryStore(),
            seed=seed,
            forgotten=tuple(forgotten),
        )
        return self.fit(run, config)

    @abc.abstractmethod
    def fit(self, run: MethodRun, config: Config) -> MethodResult:
        """Unlearn ``run.data`` from ``run.student`` and return it, choosing weights by ``run.score_fn``."""

    @classmethod
    def smoke_config(cls) -> Config:
        """A config that runs in about a second on a tiny model (for tests and smoke runs)."""
        return cls.config_class()

    def check_config(self, config: Config) -> None:
        if not isinstance(config, self.config_class):
            raise ConfigError(f"method {self.name!r} needs a {self.config_class.__name__}, got {type(config).__name__}")


def _built_on_first_call(build: Callable[[], ScoreFn]) -> ScoreFn:
    """A scoring function built only when first called (a resumed run whose choice is stored never builds it)."""
    built: list[ScoreFn] = []

    def score(state):
        if not built:
            built.append(build())
        return built[0](state)

    return score


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
