"""The text -> classifier bridge: heads that turn the image tower's 1000-way head into a dual encoder.

Ridge regression maps the text feature of "a photo of a {name}." to the row of the image tower's
classifier for that ImageNet class. With centred regression ``w(t) = mu_w + (t - mu_t) B``, the score
``f . w(t)`` ranks classes for an image exactly as ``(B f) . (t - mu_t)`` does (the ``f . mu_w`` term
is the same for every class), so the bridge *is* a pair of linear heads into the text dimension:
image head ``f -> B f`` (no bias), text head the identity with bias ``-mu_t``. Pure tensors in and out.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fit_ridge(x: Tensor, y: Tensor, ridge: float) -> tuple[Tensor, Tensor, Tensor]:
    """Centred ridge regression ``y ~ mu_y + (x - mu_x) B``; returns ``(B, mu_x, mu_y)``.

    ``ridge`` is relative to the mean eigenvalue of the centred Gram matrix, so it does not depend
    on the scale of ``x``.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"ridge: {x.shape[0]} inputs but {y.shape[0]} targets")
    x, y = x.double(), y.double()
    mu_x, mu_y = x.mean(0), y.mean(0)
    xc, yc = x - mu_x, y - mu_y
    gram = xc.T @ xc
    lam = ridge * gram.diagonal().mean()
    b = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
    return b.float(), mu_x.float(), mu_y.float()


def bridge_heads(text_feats: Tensor, classifier_weight: Tensor, ridge: float) -> dict[str, Tensor]:
    """Head weights (embed_dim = text dim) realising the bridge; keys as in ``TestbedNet``."""
    b, mu_x, _ = fit_ridge(text_feats, classifier_weight, ridge)  # b: (d_text, d_image)
    d_text = b.shape[0]
    return {
        "image_head.weight": b.contiguous(),  # (d_text, d_image): f -> B f
        "image_head.bias": torch.zeros(d_text),
        "text_head.weight": torch.eye(d_text),
        "text_head.bias": -mu_x,
    }


def ridge_holdout_top1(x: Tensor, y: Tensor, ridge: float, holdout: int = 200, seed: int = 0) -> float:
    """Bridge quality on ``holdout`` ImageNet classes left out of the fit (to choose ``ridge``).

    Each held-out class's true classifier row stands in for an image of it; it is scored against
    the bridge's predicted rows of all held-out classes with the cosine ranking the heads use, and
    the result is the top-1 rate. (Held-out R^2 is useless here: it only rewards shrinkage.)
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    test, train = perm[:holdout], perm[holdout:]
    b, mu_x, _ = fit_ridge(x[train], y[train], ridge)
    img = torch.nn.functional.normalize(y[test] @ b.T, dim=-1)
    txt = torch.nn.functional.normalize(x[test] - mu_x, dim=-1)
    return float(((img @ txt.T).argmax(1) == torch.arange(holdout)).float().mean())
