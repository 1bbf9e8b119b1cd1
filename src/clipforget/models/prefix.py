"""Run on a frozen prefix of the image tower once, then train only the rest.

On a CPU the image tower dominates every step of every method. When a run may change only the
image stages from ``start`` on (plus the text tower), the activations entering that stage are the
same for every step: :class:`FrozenImagePrefix` is a view of a model whose "images" are those
activations. Parameters of the prefix belong to no tower in the view, so no method selects,
tunes or aligns them (they receive no gradient), and the view's ``model`` is the full backend model:
``unwrap()`` gives back the ordinary model with whatever the method changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from clipforget.models.base import DualEncoder, ImageProjection, TextBatch, Tower, normalize
from clipforget.progress import progress


class FrozenImagePrefix(DualEncoder):
    """``model`` seen from image stage ``start`` on; feed it :meth:`prefix` outputs as images."""

    def __init__(self, inner: DualEncoder, start: str):
        stages = inner.image_stages()
        if stages is None:
            raise ValueError(f"the {inner.backend} backend does not expose image stages; run without a frozen prefix")
        names = [stage.name for stage in stages]
        if start not in names:
            raise ValueError(f"unknown image stage {start!r}; the stages are {names}")
        super().__init__(inner.model, inner.spec, inner.preprocess)
        self.backend = inner.backend
        self.start = names.index(start)
        self.frozen = tuple(stages[: self.start])
        object.__setattr__(self, "inner", inner)  # not a submodule: it shares self.model
        self.train(inner.model.training)  # a new module starts in training mode; the view shares the model's

    def _stages(self):
        return self.inner.image_stages()

    @torch.no_grad()
    def prefix(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Activations entering stage ``start`` (computed once, without gradient); a progress bar when
        there is more than one batch."""
        head = self._stages()[: self.start]
        out = []
        starts = range(0, len(images), batch_size)
        for i in progress(starts, desc="frozen image stages", unit="batches") if len(starts) > 1 else starts:
            x = images[i : i + batch_size].to(self.device)
            for stage in head:
                x = stage.fn(x)
            out.append(x.cpu())
        return torch.cat(out)

    def encode_image(self, images: Tensor) -> Tensor:
        return normalize(self.image_outputs(images))

    def image_projection(self) -> ImageProjection | None:
        return self.inner.image_projection()

    def image_outputs(self, images: Tensor) -> Tensor:
        x = images
        for stage in self._stages()[self.start :]:
            x = stage.fn(x)
        return x

    def encode_text(self, text: TextBatch) -> Tensor:
        return self.inner.encode_text(text)

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        return self.inner.tokenize(texts)

    @property
    def logit_scale(self) -> Tensor:
        return self.inner.logit_scale

    def tower_of(self, param_name: str) -> Tower | None:
        if any(stage.owns(param_name) for stage in self.frozen):
            return None
        return self.inner.tower_of(param_name)

    def save(self, directory: str | Path) -> Path:
        return self.inner.save(directory)

    def saved_id(self, directory: str | Path) -> str:
        return self.inner.saved_id(directory)

    def unwrap(self) -> DualEncoder:
        return self.inner
