"""The baselines, each behind the one :class:`~clipforget.methods.base.Method` interface.

Importing this package registers: "ga", "neggrad+", "ft", "rl", "salun" (fine-tuning losses),
"emmn", "lip" (input perturbations), "ssd", "task-vector", "slug" (weight-space edits).
Their CLIP port and tuning are described in :mod:`.common` and ``docs/baselines.md``.
"""

from clipforget.methods.baselines import finetuning, perturbation, weightspace  # noqa: F401  (register)
