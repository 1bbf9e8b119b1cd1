"""Why a result is questionable, in words: the checks a run applies to what a method returned."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from clipforget.metrics import ScenarioMetrics
from clipforget.models import DualEncoder


def same_weights(a: DualEncoder, b: DualEncoder) -> bool:
    """Whether two models hold the same tensors under the same names (wherever they live)."""
    sa, sb = a.weights(), b.weights()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def result_warnings(original: DualEncoder, unlearned: DualEncoder, diagnostics: Mapping[str, Mapping[str, Any]],
                    forget_target: float | None = None) -> list[str]:
    """Why a result is questionable, in words: it is the original model, or no candidate met the forget target."""
    from clipforget.methods.base import WeightChoice

    target = WeightChoice().forget_target if forget_target is None else forget_target
    out = []
    for stage, diag in diagnostics.items():
        choice = diag.get("choice")
        if isinstance(choice, Mapping) and isinstance(choice.get("forget_acc"), (int, float)) and choice["forget_acc"] > target:
            out.append(f"stage {stage}: no candidate reached the forget target (forget accuracy <= {target:g}); the one "
                       f"that forgets most was taken (forget accuracy {choice['forget_acc']:.3f})")
    if same_weights(original, unlearned):
        alpha = diagnostics.get("restore", {}).get("choice", {}).get("alpha")
        why = (" (the souping chose alpha = 0, the original weights)" if alpha == 0 else
               " (a training budget of zero, a souping grid offering only the original, or no feasible candidate)")
        out.append(f"the result is the original model: no weight changed{why}; nothing was forgotten")
    return out


def target_warnings(original: ScenarioMetrics, unlearned: ScenarioMetrics) -> list[str]:
    """A warning when the Target test images are recognised under their label as often as before."""
    if original.target > 0 and unlearned.target >= original.target:
        return [f"Target did not fall ({original.target:.1f} -> {unlearned.target:.1f}): the subgroup's test images are "
                "still classified under their label; try another method (e.g. ours-paper) or a stronger forget config"]
    return []
