"""Text anchors: keep the text embeddings of concepts other than the forgotten one where they were.

When the text tower is tuned, a zero-shot classifier on any dataset changes only through the text
embeddings of its class prompts. Forgetting moves the forget label's prompts, and shared weights drag
other prompts along; held-out datasets then lose accuracy that no image-side distillation can see.
The anchor term is ``1 - cos`` between the tuned and the original model's embeddings of a batch of
anchor prompts: generic concept names (a built-in word list, or the user's) plus the scenario's other
class names, minus the concepts nearest the forget text. It needs no images and no held-out data
(beyond the paper).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import torch
from torch import Tensor

from clipforget.config import Config, require
from clipforget.methods.core import UnlearnData
from clipforget.methods.losses import embedding_distance, encode_texts
from clipforget.methods.training import BatchStream
from clipforget.models.base import DualEncoder


def builtin_words() -> tuple[str, ...]:
    """The packaged generic concept list (``assets/anchor_words.txt``)."""
    text = resources.files("clipforget").joinpath("assets/anchor_words.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@dataclass(frozen=True)
class AnchorConfig(Config):
    """The text-anchor term of the forget and remind stages (only active when text layers are tuned).

    weight: weight of the term (0: off).
    stages: the stages that add the term: "forget", "remind" or both.
    The defaults (remind only, weight 5) and the measurements behind them: docs/decisions.md,
    "Defaults of the paper's stages".
    words: concept names to anchor; None: the built-in list of generic nouns, which leaves out the
        class names (and close synonyms) of every shipped scenario's held-out sets.
    template: the prompt each word is put in.
    include_classes: also anchor the scenario's class prompts other than the forget label.
    exclude_nearest: drop this fraction of the words whose original embedding is closest to the
        forget text (the forget concept's neighbours must be free to move with it).
    batch_size: anchor prompts per training step.
    """

    weight: float = 5.0
    stages: tuple[str, ...] = ("remind",)
    words: tuple[str, ...] | None = None
    template: str = "a photo of a {}."
    include_classes: bool = True
    exclude_nearest: float = 0.1
    batch_size: int = 64

    def __post_init__(self) -> None:
        require(self.weight >= 0, f"anchor weight must be >= 0, got {self.weight}")
        unknown = sorted(set(self.stages) - {"forget", "remind"})
        require(not unknown, f"anchor stages must be 'forget' and/or 'remind', got {unknown}")
        require("{}" in self.template, f"anchor template must contain '{{}}', got {self.template!r}")
        require(0 <= self.exclude_nearest < 1, f"exclude_nearest must be in [0, 1), got {self.exclude_nearest}")
        require(self.batch_size >= 1, f"anchor batch_size must be >= 1, got {self.batch_size}")
        require(self.words is None or len(self.words) > 0, "anchor words must be a non-empty list, or null for the built-in list")


def encode_all(model: DualEncoder, prompts: Sequence[str], batch_size: int = 256) -> Tensor:
    """Normalised text embeddings of ``prompts`` in batches (with gradient if enabled)."""
    return torch.cat([encode_texts(model, prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)])


def anchor_prompts(teacher: DualEncoder, data: UnlearnData, config: AnchorConfig) -> list[str]:
    """The prompts to anchor: the kept words in ``config.template`` plus the other classes' prompts."""
    forget_class = data.classnames[data.forget_label].lower()
    words = [w for w in (config.words if config.words is not None else builtin_words()) if w.lower() != forget_class]
    drop = int(config.exclude_nearest * len(words))
    if drop:
        with torch.no_grad():
            forget = encode_texts(teacher, [data.forget_text])[0]
            sims = encode_all(teacher, [config.template.format(w) for w in words]) @ forget
        nearest = set(sims.argsort(descending=True)[:drop].tolist())
        words = [w for i, w in enumerate(words) if i not in nearest]
    prompts = [config.template.format(w) for w in words]
    if config.include_classes:
        prompts += [t.format(c) for i, c in enumerate(data.classnames) if i != data.forget_label for t in data.templates]
    return prompts


class TextAnchor:
    """``loss(student)``: mean ``1 - cos`` to the original embeddings over a batch of anchor prompts."""

    def __init__(self, teacher: DualEncoder, data: UnlearnData, config: AnchorConfig, generator: torch.Generator):
        self.config = config
        self.prompts = anchor_prompts(teacher, data, config)
        with torch.no_grad():
            self.targets = encode_all(teacher, self.prompts)
        self._batches = BatchStream(len(self.prompts), config.batch_size, generator)

    def loss(self, student: DualEncoder) -> Tensor:
        idx = self._batches.next()
        emb = encode_texts(student, [self.prompts[i] for i in idx.tolist()])
        return self.config.weight * embedding_distance(emb, self.targets[idx].to(emb.device, emb.dtype))

    @torch.no_grad()
    def drift(self, student: DualEncoder) -> float:
        """Mean ``1 - cos`` over every anchor prompt (how far the text side moved)."""
        emb = encode_all(student, self.prompts)
        return float(embedding_distance(emb, self.targets.to(emb.device, emb.dtype)))

