"""Image sources, scenarios and the splits built from them."""

from clipforget.data.types import EvalSet, Record, ScenarioSplits

__all__ = ["EvalSet", "Record", "ScenarioSplits"]
