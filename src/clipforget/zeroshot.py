"""Zero-shot classification: class names x prompt templates -> classifier weights -> accuracy.

Pure tensor code. The one file it touches is the optional classifier cache, keyed by the content of
the model weights, the class names and the templates (never by a model name), so a changed weight,
class or template can never be answered from a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from clipforget import parallel
from clipforget.data.loading import StreamedImages
from clipforget.io import atomic_save_safetensors
from clipforget.models.base import DualEncoder, to_device
from clipforget.progress import progress as progress_of

log = logging.getLogger(__name__)

_CACHE_FORMAT = "clipforget-zeroshot-v1"


# -- classifier ---------------------------------------------------------------------------------
def class_head(model: DualEncoder, classnames: Sequence[str], templates: Sequence[str], *,
               batch_size: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """The zero-shot class head (D, C): the normalised mean of each class's template embeddings
    (open_clip's template ensemble), in float32, with gradient wherever gradient is enabled.
    ``batch_size``: prompts per text-tower pass (default: all at once)."""
    device = device or model.device
    texts = [t.format(c) for c in classnames for t in templates]
    step = batch_size or len(texts)
    emb = torch.cat([model.encode_text(to_device(model.tokenize(texts[i : i + step]), device)).float()
                     for i in range(0, len(texts), step)])
    emb = emb.view(len(classnames), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1).T


@torch.no_grad()
def build_zero_shot_classifier(
    model: DualEncoder,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    device: torch.device | str | None = None,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
) -> Tensor:
    """Classifier weights (D, C): the normalised mean of each class's template embeddings.

    Templates contain ``{}`` where the class name goes (open_clip's template-ensemble recipe). With
    ``cache_dir``, the weights are read from / written to ``cache_dir/<key>.safetensors``, where
    ``key`` is :func:`classifier_cache_key` (a hash of the weights, class names and templates).
    """
    if not classnames:
        raise ValueError("no class names given for the zero-shot classifier")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every template must contain '{{}}' where the class name goes; got {list(templates)}")
    device = device or model.device
    memo_key = None
    if len(classnames) * len(templates) >= _MEMO_MIN_PROMPTS:  # large label spaces: worth hashing the text side
        memo_key = _memo_key(model, classnames, templates)
        if memo_key in _MEMO:
            _MEMO.move_to_end(memo_key)
            return _MEMO[memo_key].to(device)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{classifier_cache_key(model, classnames, templates)}.safetensors"
        if cache_file.is_file():
            from safetensors.torch import load_file

            log.info("zero-shot classifier from cache %s", cache_file)
            return load_file(cache_file)["classifier"].to(device)
    classifier = class_head(model, classnames, templates, batch_size=batch_size, device=device).contiguous()
    if cache_file is not None:
        atomic_save_safetensors({"classifier": classifier}, cache_file, metadata={"format": _CACHE_FORMAT})
        log.info("zero-shot classifier cached at %s", cache_file)
    if memo_key is not None:
        _MEMO[memo_key] = classifier.detach().cpu()
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return classifier


#: Classifiers of large label spaces kept in memory, keyed by the content of every weight outside the
#: image tower (what a classifier is computed from), the names, templates and autocast precision, so
#: that scoring a model whose text tower did not change (the original and an image-side edit; every
#: α of a soup over image layers) encodes its 1000-way prompts once.
_MEMO: OrderedDict[str, Tensor] = OrderedDict()
_MEMO_SIZE = 8
_MEMO_MIN_PROMPTS = 256


def clear_memos() -> None:
    """Forget every remembered classifier and image embedding (the next call computes them again)."""
    _MEMO.clear()
    _EMB_MEMO.clear()


def _memo_key(model: DualEncoder, classnames: Sequence[str], templates: Sequence[str]) -> str:
    text_side = {k: v for k, v in model.weights().items() if model.tower_of(k) != "image"}
    payload = json.dumps({"text_side": state_dict_digest(text_side), "classnames": list(classnames),
                          "templates": list(templates), "autocast": _autocast_tag(model)})
    return hashlib.sha256(payload.encode()).hexdigest()


def _autocast_tag(model: DualEncoder) -> str | None:
    """The autocast dtype on the model's device, None outside autocast."""
    device_type = model.device.type
    return str(torch.get_autocast_dtype(device_type)) if torch.is_autocast_enabled(device_type) else None


def state_dict_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 of a state dict's content: every key, dtype, shape and byte, in key order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # hashed in place: no copy of a large tensor
    return h.hexdigest()


def classifier_cache_key(model: DualEncoder, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """The cache key of a classifier: a hash of the model weights, the class names, the templates and
    the autocast precision it is computed at."""
    autocast = _autocast_tag(model)
    payload = json.dumps(
        {
            "format": _CACHE_FORMAT,
            **({"autocast": autocast} if autocast else {}),
            "weights": state_dict_digest(model.weights()),
            "classnames": list(classnames),
            "templates": list(templates),
        }
    )
    return hashlib.sha256(payload.encode()).hexdigest()


# -- image embeddings ---------------------------------------------------------------------------
Images = Tensor | StreamedImages | Iterable[Tensor]
"""What :func:`compute_image_embeddings` takes: a tensor (N, C, H, W), a streamed set, or batches."""


@torch.no_grad()
def compute_image_embeddings(
    model: DualEncoder,
    images: Images,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "image embeddings",
) -> Tensor:
    """Normalised image embeddings (N, D) on the CPU, for a tensor (N, C, H, W), a
    :class:`~clipforget.data.StreamedImages` or an iterable of batches.

    An iterable yields image tensors only; from a loader of (image, label) pairs pass
    ``(x for x, _ in loader)``. Sets of :data:`_EMB_MEMO_MIN_IMAGES` or more are remembered in memory,
    keyed by the set and the content of every weight outside the text tower, so scoring a model whose
    image side did not change (the original and a text-side edit, every α of a soup over text
    layers) passes those images through the image tower once.
    """
    device = device or model.device
    memo_key = _embedding_memo_key(model, images)
    if memo_key is not None and memo_key in _EMB_MEMO:
        ref, emb = _EMB_MEMO[memo_key]
        if ref is None or ref() is images:
            _EMB_MEMO.move_to_end(memo_key)
            return emb.clone()
    if isinstance(images, (Tensor, StreamedImages)) and parallel.world_size() > 1:  # each its share, gathered in order
        share = parallel.share(len(images))
        with parallel.alone():  # a share is empty when there are fewer images than processes
            mine = (_embed(model, images[share] if isinstance(images, Tensor) else images.subset(share), device,
                           batch_size, progress, desc) if share.stop > share.start else torch.empty(0))
        emb = parallel.gather_rows(mine)
    else:
        emb = _embed(model, images, device, batch_size, progress, desc)
    if memo_key is not None:
        _EMB_MEMO[memo_key] = (weakref.ref(images) if isinstance(images, Tensor) else None, emb.clone())
        while len(_EMB_MEMO) > _EMB_MEMO_SIZE:
            _EMB_MEMO.popitem(last=False)
    return emb


def _embed(model: DualEncoder, images: Images, device, batch_size: int, progress: bool, desc: str) -> Tensor:
    if isinstance(images, Tensor):
        batches: Iterable[Tensor] = images.split(batch_size)
        total: int | None = -(-len(images) // batch_size)
    elif isinstance(images, StreamedImages):
        batches, total = images.batches(batch_size), images.num_batches(batch_size)
    else:
        batches, total = images, (len(images) if hasattr(images, "__len__") else None)
    size = len(images) if isinstance(images, (Tensor, StreamedImages)) else None
    out: list[Tensor] = []  # a set of known size fills one tensor: no per-batch pieces left between the batches' buffers
    filled = 0
    for batch in progress_of(batches, desc=desc, total=total, unit="batches") if progress else batches:
        if not isinstance(batch, Tensor):
            raise TypeError(f"expected batches of image tensors, got {type(batch).__name__}; pass (x for x, _ in loader)")
        emb = model.encode_image(batch.to(device)).float().cpu()
        if size is None:
            out.append(emb)
            continue
        if not out:
            out.append(torch.empty((size, *emb.shape[1:]), dtype=emb.dtype))
        out[0][filled:filled + len(emb)] = emb
        filled += len(emb)
    if not out:
        raise ValueError("no images given")
    return out[0] if size is not None else torch.cat(out)


#: Embeddings of large sets (see :func:`compute_image_embeddings`): an in-memory tensor is known by
#: its identity and version counter (checked against a weak reference, so a freed tensor's reused id
#: never matches), a streamed set by its content identity.
_EMB_MEMO: OrderedDict[str, tuple[weakref.ref | None, Tensor]] = OrderedDict()
_EMB_MEMO_SIZE = 16
_EMB_MEMO_MIN_IMAGES = {"cpu": 32}
"""Per device type, the smallest set worth a hash of the image-side weights (which costs about what a
forward pass of a few images costs on a CPU, and of thousands on a GPU, where the weights are copied
to the host to be hashed); other device types: :data:`_EMB_MEMO_MIN_IMAGES_ELSEWHERE`."""
_EMB_MEMO_MIN_IMAGES_ELSEWHERE = 1024


def _memo_min_images(model: DualEncoder) -> int:
    return _EMB_MEMO_MIN_IMAGES.get(model.device.type, _EMB_MEMO_MIN_IMAGES_ELSEWHERE)


def _embedding_memo_key(model: DualEncoder, images: Images) -> str | None:
    if isinstance(images, (Tensor, StreamedImages)) and len(images) < _memo_min_images(model):
        return None
    if isinstance(images, Tensor):
        which = f"tensor|{id(images)}|{images._version}|{images.data_ptr()}|{tuple(images.shape)}|{images.dtype}"
    elif isinstance(images, StreamedImages):
        which = f"streamed|{images.identity()}"
    else:
        return None
    if any(m.training for m in model.network.modules()):  # dropout, batch statistics: not a function of the weights
        return None
    image_side = {k: v for k, v in model.weights().items() if model.tower_of(k) != "text"}
    payload = json.dumps({"images": which, "model": type(model).__qualname__, "image_side": state_dict_digest(image_side),
                          "autocast": _autocast_tag(model), "device": str(model.device),
                          "world": parallel.world_size()})
    return hashlib.sha256(payload.encode()).hexdigest()


# -- accuracy -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZeroShotAccuracy:
    """Accuracies in percent (as in :class:`clipforget.metrics.ScenarioMetrics`).

    ``top5`` is top-min(5, C) accuracy, None when only predictions (no logits) were given.
    ``per_class[c]`` is the top-1 accuracy on the samples labelled ``c``, None when there are none;
    ``mean_per_class`` averages it over the classes that have samples. ``count`` is the sample count.
    """

    top1: float
    top5: float | None
    per_class: tuple[float | None, ...]
    mean_per_class: float
    count: int

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["per_class"] = list(self.per_class)
        return d


def zero_shot_accuracy(logits_or_preds: Tensor, labels: Tensor, num_classes: int) -> ZeroShotAccuracy:
    """Top-1, top-5 and per-class accuracy from logits (N, C) or predicted labels (N,)."""
    labels = labels.detach().cpu().long().reshape(-1)
    scores = logits_or_preds.detach().cpu()
    n = labels.numel()
    if n == 0:
        raise ValueError("no samples to score")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}]")
    if scores.dim() == 2 and scores.shape == (n, num_classes):
        topk = scores.topk(min(5, num_classes), dim=1).indices
        preds = topk[:, 0]
        top5: float | None = 100.0 * (topk == labels[:, None]).any(dim=1).float().mean().item()
    elif scores.dim() == 1 and scores.numel() == n and not scores.is_floating_point():
        preds, top5 = scores.long(), None
    else:
        raise ValueError(
            f"expected logits of shape ({n}, {num_classes}) or integer predictions of shape ({n},); "
            f"got {tuple(scores.shape)} {scores.dtype}"
        )
    correct = (preds == labels).float()
    hits = torch.zeros(num_classes).index_add_(0, labels, correct)
    counts = torch.bincount(labels, minlength=num_classes).float()
    per_class = tuple(100.0 * (h / c).item() if c > 0 else None for h, c in zip(hits, counts))
    present = [a for a in per_class if a is not None]
    return ZeroShotAccuracy(
        top1=100.0 * correct.mean().item(),
        top5=top5,
        per_class=per_class,
        mean_per_class=sum(present) / len(present),
        count=n,
    )
