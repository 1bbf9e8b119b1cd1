"""Pretrain the testbed's heads: bridge initialisation, then contrastive alignment with the towers frozen.

1. Bridge (:mod:`.bridge`): ridge regression from the text feature of "a photo of a {name}." onto the
   image tower's classifier row, for the 1000 ImageNet names; it gives the initial heads.
2. Alignment: on cached features of a few hundred training images per class of CIFAR-10 (JPEG copy),
   Fashion-MNIST and Imagenette (its ImageNet-train photos only), minimise
   - a contrastive cross-entropy of each image against its *own data set's* class prompts (a random
     template per class and step; data sets are never negatives of each other, since "dog" and
     "English springer" or "truck" and "garbage truck" overlap),
   - a distillation term keeping the 1000-way ImageNet prompt distribution of every image close to
     the image tower's own 1000-way head (so names never trained on still transfer),
   - an anchor pulling the heads towards the bridge (squared distance relative to each head's
     bridge weight norm).

Command line: ``python -m clipforget.app.testbed.pretrain --out DIR [--seed N]`` writes ``DIR/heads.safetensors``,
``DIR/testbed.json`` (loadable as model id ``testbed@DIR``) and ``DIR/pretrain.json`` (config, metrics).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from clipforget.config import Config, require
from clipforget.io import atomic_write_json
from clipforget.models.testbed import (
    TEXT_DIM,
    TestbedConfig,
    TestbedModel,
    load_package_image_tower,
    save_heads,
)
from clipforget.app.testbed.bridge import bridge_heads, ridge_holdout_top1
from clipforget.app.testbed.features import image_features, text_features
from clipforget.app.testbed.names import (
    BRIDGE_TEMPLATE,
    ImageSet,
    imagenet_classnames,
    standard_sets,
)
from clipforget.zeroshot import state_dict_digest

log = logging.getLogger(__name__)

TRAIN_SETS = ("cifar10-train", "fashion-mnist-train", "imagenette-train")
RIDGE_GRID = (1e-2, 1e-1, 1.0, 10.0)


@dataclass(frozen=True)
class PretrainConfig(Config):
    """Pretraining of the testbed heads.

    - ``seed``: the one seed (batch order, template choice). Image selection does not depend on it.
    - ``image_size``: input resolution of the image tower (pixels, square).
    - ``train_per_class``: training images per class of each training set.
    - ``steps`` / ``batch_size``: optimisation steps; images per data set per step.
    - ``lr``: AdamW learning rate (cosine decay to zero).
    - ``ridge``: bridge regularisation (relative to the mean Gram eigenvalue); None picks it from
      ``RIDGE_GRID`` by top-1 on 200 held-out ImageNet classes (see ``ridge_holdout_top1``).
    - ``distill_weight`` / ``distill_temperature``: weight and teacher temperature of the 1000-way
      distillation term.
    - ``anchor_weight``: weight of the relative squared distance of the heads to the bridge.
    - ``init_logit_scale``: starting value of the (learned, capped at 100) logit scale.
    """

    seed: int = 0
    image_size: int = 160
    train_per_class: int = 200
    steps: int = 400
    batch_size: int = 128
    lr: float = 1e-3
    ridge: float | None = None
    distill_weight: float = 0.1
    distill_temperature: float = 1.0
    anchor_weight: float = 1.0
    init_logit_scale: float = 30.0

    def __post_init__(self) -> None:
        require(self.image_size >= 32, f"image_size must be >= 32 pixels, got {self.image_size}")
        require(self.train_per_class >= 1, "train_per_class must be >= 1")
        require(self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be >= 1")
        require(self.lr > 0, "lr must be > 0")
        require(self.ridge is None or self.ridge > 0, "ridge must be > 0 (or null to choose it)")
        require(min(self.distill_weight, self.anchor_weight) >= 0, "loss weights must be >= 0")
        require(self.distill_temperature > 0, "distill_temperature must be > 0")
        require(1.0 <= self.init_logit_scale <= 100.0, "init_logit_scale must be in [1, 100]")


@dataclass(frozen=True)
class AlignData:
    """One training set as tensors: image features (N, 1280), labels (N,), class prompt features
    (C, T, 384), and the image tower's own 1000-way logits (N, 1000) as the distillation teacher."""

    name: str
    features: Tensor
    labels: Tensor
    prompts: Tensor
    teacher_logits: Tensor


# -- the pure part: tensors in, head weights out ---------------------------------------------------
def _embed(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return F.normalize(x @ w.T + b, dim=-1)


def train_heads(
    init: dict[str, Tensor],
    data: Sequence[AlignData],
    imagenet_prompts: Tensor,
    config: PretrainConfig,
) -> tuple[dict[str, Tensor], list[dict[str, float]]]:
    """Train the head weights from ``init``; returns the new heads (plus ``logit_scale``) and a log."""
    g = torch.Generator().manual_seed(config.seed)
    params = {k: torch.nn.Parameter(v.detach().clone()) for k, v in init.items()}
    params["logit_scale"] = torch.nn.Parameter(torch.tensor(math.log(config.init_logit_scale)))
    anchor = {k: v.detach().clone() for k, v in init.items()}
    opt = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / config.steps)))
    history = []
    for step in tqdm(range(config.steps), desc="align heads", mininterval=5):
        scale = params["logit_scale"].exp()
        inet = _embed(imagenet_prompts, params["text_head.weight"], params["text_head.bias"])
        ce = kd = torch.zeros(())
        for d in data:
            idx = torch.randint(len(d.labels), (config.batch_size,), generator=g)
            img = _embed(d.features[idx], params["image_head.weight"], params["image_head.bias"])
            pick = torch.randint(d.prompts.shape[1], (d.prompts.shape[0],), generator=g)
            txt = _embed(d.prompts[torch.arange(d.prompts.shape[0]), pick], params["text_head.weight"], params["text_head.bias"])
            ce = ce + F.cross_entropy(scale * img @ txt.T, d.labels[idx])
            teacher = F.softmax(d.teacher_logits[idx] / config.distill_temperature, dim=-1)
            kd = kd + F.kl_div(F.log_softmax(scale * img @ inet.T, dim=-1), teacher, reduction="batchmean")
        anc = sum(
            (((params[f"{h}.weight"] - anchor[f"{h}.weight"]) ** 2).sum() + ((params[f"{h}.bias"] - anchor[f"{h}.bias"]) ** 2).sum())
            / (anchor[f"{h}.weight"] ** 2).sum()
            for h in ("image_head", "text_head")
        )
        loss = (ce + config.distill_weight * kd) / len(data) + config.anchor_weight * anc
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            params["logit_scale"].clamp_(0, math.log(100))
        if step % 50 == 0 or step == config.steps - 1:
            rec = {"step": step, "loss": loss.item(), "ce": ce.item() / len(data), "distill": kd.item() / len(data),
                   "anchor": anc.item(), "logit_scale": scale.item()}  # fmt: skip
            history.append(rec)
            log.info("step %(step)d loss %(loss).4f ce %(ce).4f distill %(distill).4f anchor %(anchor).4f scale %(logit_scale).1f", rec)
    return {k: v.detach().clone() for k, v in params.items()}, history


def rescale_heads(heads: dict[str, Tensor]) -> dict[str, Tensor]:
    """Scale each head (weight and bias together) so its weight's RMS entry is ``1/sqrt(fan_in)``.

    Cosine scores do not change, but the entries get the size of a default ``nn.Linear`` init, so
    that an optimiser step of ``lr`` is a small relative change (the raw bridge entries are ~1e-3,
    which one Adam step at lr 1e-3 would wipe out).
    """
    out = dict(heads)
    for side in ("image", "text"):
        w, b = heads[f"{side}_head.weight"], heads[f"{side}_head.bias"]
        s = w.pow(2).mean().sqrt() * math.sqrt(w.shape[1])
        out[f"{side}_head.weight"], out[f"{side}_head.bias"] = w / s, b / s
    return out


# -- the application part: data, caches, files ------------------------------------------------------
def _align_data(model: TestbedModel, image_set: ImageSet, classifier: dict[str, Tensor], digest: str) -> AlignData:
    source = image_set.open()
    entries, classes = image_set.select(source)
    index = {c: i for i, c in enumerate(sorted({e.classname for e in entries}))}
    feats = image_features(model, source, [e.key for e in entries], tower_digest=digest)
    texts = [t.format(c) for c in classes for t in image_set.templates]
    prompts = text_features(model, texts).view(len(classes), len(image_set.templates), -1)
    labels = torch.tensor([index[e.classname] for e in entries])
    teacher = feats @ classifier["weight"].T + classifier["bias"]
    return AlignData(image_set.name, feats, labels, prompts, teacher)


def pretrain(config: PretrainConfig) -> tuple[TestbedModel, dict]:
    """Build a testbed with freshly trained heads; returns the model and a summary (metrics, timings)."""
    torch.manual_seed(config.seed)
    t0 = time.time()
    model = TestbedModel.from_packages(config=TestbedConfig(image_size=config.image_size, embed_dim=TEXT_DIM)).eval()
    _, classifier = load_package_image_tower()
    digest = state_dict_digest(model.model.image_tower.state_dict())
    inet = text_features(model, [BRIDGE_TEMPLATE.format(n) for n in imagenet_classnames()])
    ridge = config.ridge
    r2 = {r: ridge_holdout_top1(inet, classifier["weight"], r) for r in RIDGE_GRID}
    if ridge is None:
        ridge = max(r2, key=r2.get)
    log.info("bridge ridge %.0e (held-out top-1 by ridge: %s)", ridge, {f"{k:.0e}": round(v, 4) for k, v in r2.items()})
    sets = standard_sets(config.train_per_class, test_per_class=0)
    data = [_align_data(model, sets[name], classifier, digest) for name in TRAIN_SETS]
    t_feats = time.time() - t0
    init = bridge_heads(inet, classifier["weight"], ridge)
    init = rescale_heads(init)
    heads, history = train_heads(init, data, inet, config)
    model.model.load_state_dict(heads, strict=False)
    summary = {
        "config": config.to_dict(), "ridge": ridge, "ridge_holdout_top1": {str(k): v for k, v in r2.items()},
        "train_images": {d.name: len(d.labels) for d in data}, "history": history,
        "seconds": {"features_and_setup": round(t_feats, 1), "total": round(time.time() - t0, 1)},
    }  # fmt: skip
    return model, summary


def write_pretrained(model: TestbedModel, summary: dict, out: str | Path) -> Path:
    """Write heads + ``testbed.json`` (model id ``testbed@out``) and ``pretrain.json``."""
    out = Path(out)
    path = save_heads(model.model, model.config, out)
    atomic_write_json(out / "pretrain.json", summary)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clipforget.app.testbed.pretrain", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for heads.safetensors, testbed.json, pretrain.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="PretrainConfig overrides, e.g. steps=200")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    config = PretrainConfig(seed=args.seed).with_overrides(args.set)
    model, summary = pretrain(config)
    path = write_pretrained(model, summary, args.out)
    log.info("wrote %s (load it as model id 'testbed@%s')", path, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
