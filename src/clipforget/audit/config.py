"""What the audit runs and the thresholds of its verdict flags; what each road measures and cannot see."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from clipforget.config import Config, require
from clipforget.data import presets

Part = Literal["names", "search", "image", "relearn", "membership"]
PARTS: tuple[Part, ...] = ("names", "search", "image", "relearn", "membership")
RelearnSetting = Literal["changed", "towers"]
SIDES = ("original", "unlearned")

NOTES: dict[str, dict[str, str]] = {
    "names": {
        "measures": "Target re-scored with the label's class name replaced by each alias, under the scenario's "
                    "templates and the 80 OpenAI ImageNet templates; the worst prompt is the largest Target.",
        "cannot_see": "names and prompts nobody listed; a label space other than the scenario's (except the "
                      "1000-way fine-grained check of aliases that are ImageNet names).",
    },
    "search": {
        "measures": "text-to-image retrieval: the subgroup's share of the top n gallery images (n = its size) "
                    "for the forget text and each alias, against chance n / gallery size.",
        "cannot_see": "other queries, a larger or different gallery; the share is over this small test gallery.",
    },
    "image": {
        "measures": "how far the subgroup's image embeddings moved (cosine to the original's), and the balanced "
                    "accuracy of a linear probe separating the subgroup from its siblings on frozen embeddings.",
        "cannot_see": "a cosine near 1 means the image side is unchanged and the subgroup stays recoverable from "
                      "the embeddings; a low probe accuracy says one linear probe on few images failed, not that "
                      "none can succeed; the probe may separate image sources rather than subgroups (read it "
                      "against the original's).",
    },
    "relearn": {
        "measures": "Target after a few steps of fine-tuning on k subgroup images from D_f under their label, on "
                    "the parameters the run changed and on their whole towers; the same budget on the original "
                    "for scale.",
        "cannot_see": "other learning rates, more images, other losses or parameter sets; one seeded draw of "
                      "the k images.",
    },
    "membership": {
        "measures": "AUC of telling D_f (seen by the method) from unseen subgroup test images by similarity to "
                    "the forget text and by the label loss; 0.5 = indistinguishable.",
        "cannot_see": "D_f and the test images may come from different sources or splits (the original's AUC "
                      "shows that baseline); stronger attacks (shadow models, per-image calibration).",
    },
}


@dataclass(frozen=True)
class AuditThresholds(Config):
    """The thresholds of the verdict flags (evidence, not a pass mark).

    max_target_worst: the worst-prompt Target (%) at or below which the names road counts as closed.
    max_search_ratio: the worst query's share of the top n at or below this multiple of chance.
    max_image_cosine: a mean Target image cosine (unlearned vs original) below this counts as moved.
    max_relearn_recovery: after the smallest relearning budget (the first setting run), the Target at
        or below this fraction of the original model's Target counts as resisting relearning.
    max_membership_shift: |AUC(unlearned) - AUC(original)| at or below this, for both scores, counts
        as leaving no membership trace.
    """

    max_target_worst: float = 5.0
    max_search_ratio: float = 2.0
    max_image_cosine: float = 0.99
    max_relearn_recovery: float = 0.5
    max_membership_shift: float = 0.1

    def __post_init__(self) -> None:
        require(0 <= self.max_target_worst <= 100, f"max_target_worst is a percentage, got {self.max_target_worst}")
        require(self.max_search_ratio > 0, f"max_search_ratio must be > 0, got {self.max_search_ratio}")
        require(-1 <= self.max_image_cosine <= 1, f"max_image_cosine is a cosine in [-1, 1], got {self.max_image_cosine}")
        require(self.max_relearn_recovery >= 0, f"max_relearn_recovery must be >= 0, got {self.max_relearn_recovery}")
        require(0 <= self.max_membership_shift <= 1, f"max_membership_shift must be in [0, 1], got {self.max_membership_shift}")


@dataclass(frozen=True)
class AuditConfig(Config):
    """What the audit runs (each part switchable) and how.

    parts: the tests to run, any of names, search, image, relearn, membership.
    templates: the wider template set of the names test: a preset of :mod:`clipforget.data.presets`
        ("openai_imagenet": open_clip's 80 OpenAI ImageNet prompts) or a list of templates with ``{}``.
    fine_grained_templates: templates of the 1000-way ImageNet classifier for aliases that are ImageNet names.
    search_template: how an alias becomes a search query (the forget text is searched as it is).
    relearn_k: subgroup images from D_f the relearning fine-tunes on (at most |D_f|).
    relearn_steps: step counts after which the relearned Target is read, increasing (one run per setting).
    relearn_lr: Adam learning rate. Default 1e-4: the scale of rates used to fine-tune CLIP-style towers
        (1e-5 to 1e-4), at the upper end because an attacker with ten images and fifty steps wants speed;
        one point of the attacker's choices, not a bound.
    relearn_settings: "changed" tunes the parameters the run changed; "towers" every parameter of the
        towers those belong to (the logit scale stays fixed in both).
    relearn_original: also fine-tune the original with the same budget (the scale to read against).
    probe_steps: L-BFGS iterations of the linear probe.  probe_l2: its L2 penalty on standardised features.
    batch_size: images (and prompts) per forward pass.
    thresholds: the verdict flags' thresholds (:class:`AuditThresholds`).
    """

    parts: tuple[Part, ...] = PARTS
    templates: str | tuple[str, ...] = "openai_imagenet"
    fine_grained_templates: tuple[str, ...] = ("a photo of a {}.",)
    search_template: str = "a photo of a {}."
    relearn_k: int = 10
    relearn_steps: tuple[int, ...] = (10, 50)
    relearn_lr: float = 1e-4
    relearn_settings: tuple[RelearnSetting, ...] = ("changed", "towers")
    relearn_original: bool = True
    probe_steps: int = 100
    probe_l2: float = 1e-2
    batch_size: int = 64
    thresholds: AuditThresholds = field(default_factory=AuditThresholds)

    def __post_init__(self) -> None:
        unknown = [p for p in self.parts if p not in PARTS]
        require(not unknown, f"parts: unknown part(s) {unknown}; known parts: {list(PARTS)}")
        require(bool(self.parts) and len(set(self.parts)) == len(self.parts),
                f"parts must name each part at most once and at least one, got {list(self.parts)}; to skip the audit, switch it off")
        if isinstance(self.templates, str):
            require(self.templates in presets.TEMPLATE_PRESETS, f"templates: {self.templates!r} is not a template "
                    f"preset; known: {sorted(presets.TEMPLATE_PRESETS)} (or give a list of templates with '{{}}')")
        else:
            require(bool(self.templates) and all("{}" in t for t in self.templates),
                    f"templates: every template must contain '{{}}', got {list(self.templates)}")
        require(bool(self.fine_grained_templates) and all("{}" in t for t in self.fine_grained_templates),
                f"fine_grained_templates: every template must contain '{{}}', got {list(self.fine_grained_templates)}")
        require("{}" in self.search_template, f"search_template must contain '{{}}', got {self.search_template!r}")
        require(self.relearn_k >= 1, f"relearn_k must be >= 1 image, got {self.relearn_k}")
        steps = list(self.relearn_steps)
        require(bool(steps) and all(s >= 1 for s in steps) and steps == sorted(set(steps)),
                f"relearn_steps must be positive step counts in increasing order, got {steps}")
        require(self.relearn_lr > 0, f"relearn_lr must be > 0, got {self.relearn_lr}")
        bad = [s for s in self.relearn_settings if s not in ("changed", "towers")]
        require(not bad and bool(self.relearn_settings) and len(set(self.relearn_settings)) == len(self.relearn_settings),
                f"relearn_settings: give 'changed' and/or 'towers' once each, got {list(self.relearn_settings)}")
        require(self.probe_steps >= 1, f"probe_steps must be >= 1, got {self.probe_steps}")
        require(self.probe_l2 >= 0, f"probe_l2 must be >= 0, got {self.probe_l2}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")


def template_set(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The templates a preset name stands for (:mod:`clipforget.data.presets`), or the given templates."""
    return presets.template_preset(spec, "templates") if isinstance(spec, str) else tuple(spec)
