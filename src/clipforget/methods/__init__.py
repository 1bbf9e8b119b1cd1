"""Unlearning methods behind one interface, in one explicit registry.

Importing this package registers the shipped methods (each module registers itself with
``@register_method``); add a baseline by writing its module and importing it here.
"""

from clipforget.methods import ours  # noqa: F401  (registers "ours")
from clipforget.methods.base import (
    InMemoryStore,
    Method,
    MethodResult,
    ScoreFn,
    StageStore,
    UnlearnData,
    get_method,
    list_methods,
    register_method,
)
from clipforget.methods.ours import OursConfig
from clipforget.methods.training import NonFiniteLossError, TrainConfig, train_loop

__all__ = [
    "InMemoryStore",
    "Method",
    "MethodResult",
    "NonFiniteLossError",
    "OursConfig",
    "ScoreFn",
    "StageStore",
    "TrainConfig",
    "UnlearnData",
    "get_method",
    "list_methods",
    "register_method",
    "train_loop",
]
from clipforget.methods import baselines  # noqa: F401,E402  (registers the baselines)
