"""Zero-shot classification: class names x prompt templates -> classifier weights -> accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from clipforget.models.base import DualEncoder, to_device


@torch.no_grad()
def build_zero_shot_classifier(
    model: DualEncoder,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    device: torch.device | str | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Classifier weights (D, C): the normalised mean of each class's template embeddings.

    Templates contain ``{}`` where the class name goes (open_clip's template-ensemble recipe).
    """
    if not classnames:
        raise ValueError("no class names given for the zero-shot classifier")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every template must contain '{{}}' where the class name goes; got {list(templates)}")
    device = device or model.device
    texts = [t.format(c) for c in classnames for t in templates]
    embs = []
    for i in range(0, len(texts), batch_size):
        embs.append(model.encode_text(to_device(model.tokenize(texts[i : i + batch_size]), device)).float())
    emb = torch.cat(embs).view(len(classnames), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1).T.contiguous()
