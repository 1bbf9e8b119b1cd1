"""The paper's composite Score and the metric record of one model on one scenario."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScenarioMetrics:
    """Zero-shot top-1 accuracies in percent: Target (forgotten subgroup), Retain, each held-out set."""

    target: float
    retain: float
    heldout: Mapping[str, float] = field(default_factory=dict)
    details: Mapping[str, object] = field(default_factory=dict)  # per set: top-5, per-class, count, predictions

    def utilities(self) -> dict[str, float]:
        """The K utility columns of the Score, in table order: Retain, then each held-out set."""
        return {"retain": self.retain, **dict(self.heldout)}

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "retain": self.retain, "heldout": dict(self.heldout), "details": dict(self.details)}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> ScenarioMetrics:
        return cls(float(d["target"]), float(d["retain"]), dict(d.get("heldout", {})), dict(d.get("details", {})))


def paper_score(metrics: ScenarioMetrics, original: ScenarioMetrics) -> float:
    """``100/(1+K) · [max(0, 1 − T/T₀) + Σ_k min(1, A_k/A₀_k)]`` (PAPER.md; reproduces its main table).

    A column whose original value is 0 counts as fully kept (1); so does a Target of 0 for T₀ = 0.
    """
    forget_term = 1.0 if original.target <= 0 else max(0.0, 1.0 - metrics.target / original.target)
    ours, base = metrics.utilities(), original.utilities()
    if set(ours) != set(base):
        raise ValueError(f"metrics cover different columns: {sorted(ours)} vs original {sorted(base)}")
    kept = sum(1.0 if base[k] <= 0 else min(1.0, ours[k] / base[k]) for k in base)
    return 100.0 / (1 + len(base)) * (forget_term + kept)
