"""The types every method shares and the weight helpers below them: one task's data, state dicts,
scoring functions, partial loading, cloning, per-stage random generators."""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from clipforget.config import require
from clipforget.data.loading import Images
from clipforget.models.base import DualEncoder

StateDict = dict[str, Tensor]
ScoreFn = Callable[[Mapping[str, Tensor]], tuple[float, float]]
"""``score_fn(state_dict) -> (utility, forget_acc)``: higher utility is better, forget_acc in [0, 1]."""


@dataclass(frozen=True, eq=False)
class UnlearnData:
    """One forgetting task in memory (the pipeline builds it from a scenario).

    - ``forget_images``: (N, 3, H, W) preprocessed images of the subgroup to forget (D_f). Every image
      set here is a tensor or a :class:`~clipforget.data.StreamedImages` (indexed like one, read
      from its files a batch at a time).
    - ``forget_text``: the text the forget images are paired with (e.g. "a photo of a marmoset").
    - ``retain_images``, ``retain_labels``: (M, 3, H, W) sibling-subgroup images (D_r) and their
      class indices into ``classnames``.
    - ``calibration_images``: (K, 3, H, W) images for distillation targets and for choosing the
      souping alpha (D_m); ``calibration_labels`` index into ``calibration_classnames`` when that is
      given, else into ``classnames``; without labels, utility is agreement with the original model.
    - ``classnames``, ``templates``: the scenario's label space and prompt templates (with ``{}``).
    - ``forget_label``: index into ``classnames`` of the class the forgotten subgroup belongs to.
    """

    forget_images: Images
    forget_text: str
    retain_images: Images
    retain_labels: Tensor
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    forget_label: int
    calibration_images: Images | None = None
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


def clone_model(model: DualEncoder) -> DualEncoder:
    """A deep copy of the weights that shares the read-only helpers (tokenizer, preprocess, spec)."""
    shared = {
        id(v): v for v in vars(model).values() if not isinstance(v, (torch.nn.Module, Tensor, dict, list, set, int, float, str, bool))
    }
    return copy.deepcopy(model, memo=shared)


def stage_generator(seed: int, stage: str) -> torch.Generator:
    """A CPU generator for one stage, derived from the run seed (so resumed runs match fresh ones)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(stage.encode())) % 2**63)
