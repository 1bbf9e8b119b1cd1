"""Small differentiable pieces the stages and baselines share: embeddings, logits, losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforget.models.base import DualEncoder, to_device
from clipforget.zeroshot import class_head, compute_image_embeddings


def encode_texts(model: DualEncoder, texts: Sequence[str]) -> Tensor:
    """Normalised text embeddings (len(texts), D), with gradient."""
    return model.encode_text(to_device(model.tokenize(list(texts)), model.device))


def tunes_text(model: DualEncoder, param_names: Sequence[str]) -> bool:
    """Whether any of ``param_names`` belongs to the text tower (then text embeddings change while tuning)."""
    return any(model.tower_of(n) == "text" for n in param_names)


class ClassHead:
    """The class head of a model under tuning. When the tuned parameters reach the text tower it is
    recomputed with gradient at every call (the prompts move); else it is computed once, without
    gradient, and reused (nothing it depends on trains)."""

    def __init__(self, model: DualEncoder, classnames: Sequence[str], templates: Sequence[str], tuned: Sequence[str]):
        self.model, self.classnames, self.templates = model, list(classnames), list(templates)
        self.trains = tunes_text(model, tuned)
        self._fixed = None
        if not self.trains:
            with torch.no_grad():
                self._fixed = class_head(model, self.classnames, self.templates)

    def __call__(self) -> Tensor:
        return class_head(self.model, self.classnames, self.templates) if self._fixed is None else self._fixed


def forget_loss(similarity: Tensor, delta: float, hinge: bool) -> Tensor:
    """Mean similarity to minimise; with ``hinge``, only the part above ``delta`` counts."""
    return F.relu(similarity - delta).mean() if hinge else similarity.mean()


def forget_class_loss(logits: Tensor, label: int | Sequence[int]) -> Tensor:
    """``-log(1 - p(label))`` over the class prompts, averaged: pushes images off their class, bounded below.

    ``label`` may be several columns; then ``p`` is their joint probability.

    Unlike gradient ascent on the cross-entropy (unbounded, and it wrecks the model), the gradient
    vanishes once the label's probability is small, so it stops by itself.
    """
    columns = [label] if isinstance(label, int) else list(label)
    p = F.softmax(logits.float(), -1)[:, columns].sum(-1)
    return -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()


def kd_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(teacher || student) between the softmax distributions, averaged over the batch."""
    return F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1), log_target=True, reduction="batchmean")


def embedding_distance(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Mean ``1 - cos`` between normalised student and teacher embeddings."""
    return (1 - (student_emb * teacher_emb).sum(-1)).mean()


def embed_images(model: DualEncoder, images: Tensor, batch_size: int = 128) -> Tensor:
    """Normalised image embeddings without gradient (:func:`~clipforget.zeroshot.compute_image_embeddings`,
    quietly), on the model's device."""
    return compute_image_embeddings(model, images, batch_size=batch_size, progress=False).to(model.device)


def basis(directions: Tensor) -> Tensor:
    """An orthonormal basis (columns) of the rows of ``directions``, dropping near-dependent ones."""
    u, s, _ = torch.linalg.svd(directions.T, full_matrices=False)
    return u[:, s > 1e-4 * s[0]]


def projected_targets(embeddings: Tensor, directions: Tensor, overshoot: float = 0.0) -> Tensor:
    """``normalize(e - (1 + overshoot) Q Qᵀ e)`` for each row ``e`` of ``embeddings``; ``Q`` spans ``directions``."""
    q = basis(directions.float())
    e = embeddings.float()
    return F.normalize(e - (1 + overshoot) * (e @ q) @ q.T, dim=-1).to(embeddings.dtype)
