"""Measured quality of a testbed: zero-shot top-1 beside a linear probe on the same frozen features.

``python -m clipforget.app.testbed.evaluate [--model testbed|testbed@DIR]`` prints a Markdown table. Test
images are never used by pretraining: CIFAR-10 (JPEG copy) and Fashion-MNIST test subsets
(``--test-per-class``, hash-selected) and the 500 clean Imagenette photos (``ILSVRC2012_val_*``). The
probe (multinomial logistic regression on standardised 1280-d tower features, L2 chosen on a 20%
split of the probe's training images) trains on the same training subsets pretraining used; for the
1000-way row the ceiling is the image tower's own ImageNet head.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforget.models import load_model
from clipforget.models.testbed import TestbedModel, load_package_image_tower
from clipforget.app.testbed.features import image_features
from clipforget.app.testbed.names import (
    PHOTO_TEMPLATES,
    ImageSet,
    imagenet_classnames,
    standard_sets,
)
from clipforget.zeroshot import build_zero_shot_classifier, state_dict_digest

log = logging.getLogger(__name__)

# (row label, test set, probe training set)
ROWS = (
    ("CIFAR-10 (JPEG copy) test, 10-way", "cifar10-test", "cifar10-train"),
    ("Fashion-MNIST test, 10-way", "fashion-mnist-test", "fashion-mnist-train"),
    ("Imagenette clean photos, 10-way", "imagenette-clean", "imagenette-train"),
)


def fit_logistic(x: Tensor, y: Tensor, n_classes: int, l2: float, iters: int = 200) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression (full-batch L-BFGS); returns ``(weight, bias)``."""
    w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, seed: int = 0) -> float:
    """Top-1 of a logistic-regression probe; L2 picked from a small grid on a 20% validation split."""
    mu, sd = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xtr, xte = (train_x - mu) / sd, (test_x - mu) / sd
    c = int(train_y.max()) + 1
    perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))
    val, fit = perm[: len(perm) // 5], perm[len(perm) // 5 :]
    scores = {}
    for l2 in (1e-4, 1e-3, 1e-2, 1e-1):
        w, b = fit_logistic(xtr[fit], train_y[fit], c, l2)
        scores[l2] = float(((xtr[val] @ w.T + b).argmax(1) == train_y[val]).float().mean())
    l2 = max(scores, key=scores.get)
    w, b = fit_logistic(xtr, train_y, c, l2)
    return float(((xte @ w.T + b).argmax(1) == test_y).float().mean())


@torch.no_grad()
def zero_shot_top1(model: TestbedModel, feats: Tensor, labels: Tensor, classnames: Sequence[str], templates: Sequence[str]) -> float:
    classifier = build_zero_shot_classifier(model, classnames, templates, device="cpu")
    emb = F.normalize(model.model.image_head(feats.to(model.device)).float().cpu(), dim=-1)
    return float(((emb @ classifier).argmax(1) == labels).float().mean())


def _features(model: TestbedModel, image_set: ImageSet, digest: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    source = image_set.open()
    entries, classes = image_set.select(source)
    index = {c: i for i, c in enumerate(sorted({e.classname for e in entries}))}
    feats = image_features(model, source, [e.key for e in entries], tower_digest=digest)
    return feats, torch.tensor([index[e.classname] for e in entries]), classes


def measure_quality(model: TestbedModel, train_per_class: int = 200, test_per_class: int = 100) -> list[dict]:
    """One record per row: name, images, classes, zero-shot top-1, ceiling top-1 and what the ceiling is."""
    sets = standard_sets(train_per_class, test_per_class)
    digest = state_dict_digest(model.model.image_tower.state_dict())
    rows = []
    for label, test_name, train_name in ROWS:
        xte, yte, classes = _features(model, sets[test_name], digest)
        xtr, ytr, _ = _features(model, sets[train_name], digest)
        zs = zero_shot_top1(model, xte, yte, classes, sets[test_name].templates)
        probe = linear_probe(xtr, ytr, xte, yte)
        rows.append({"row": label, "images": len(yte), "classes": len(classes), "zero_shot": zs, "ceiling": probe,
                     "ceiling_kind": f"linear probe ({len(ytr)} train images)"})  # fmt: skip
        log.info("%s: zero-shot %.3f, probe %.3f", label, zs, probe)
    # 1000-way over the ImageNet names; ceiling: the tower's own ImageNet head.
    nette = sets["imagenette-clean"]
    source = nette.open()
    entries, _ = nette.select(source)
    names = imagenet_classnames()
    from clipforget.data.sources import IMAGENETTE_CLASSES

    wnid_index = {w: i for i, w in enumerate(_synsets())}
    name_to_wnid = {v: k for k, v in IMAGENETTE_CLASSES.items()}
    y = torch.tensor([wnid_index[name_to_wnid[e.classname]] for e in entries])
    feats = image_features(model, source, [e.key for e in entries], tower_digest=digest)
    zs = zero_shot_top1(model, feats, y, names, PHOTO_TEMPLATES)
    _, head = load_package_image_tower()
    own = float(((feats @ head["weight"].T + head["bias"]).argmax(1) == y).float().mean())
    rows.append({"row": "Imagenette clean photos, 1000-way (ImageNet names)", "images": len(y), "classes": 1000,
                 "zero_shot": zs, "ceiling": own, "ceiling_kind": "the tower's own ImageNet head"})  # fmt: skip
    # Transfer across data sets (the springer-in-dog scenario needs it): springer photos as "dog"
    # among the CIFAR-10 names, a pairing pretraining never showed.
    springer = torch.tensor([e.classname == "English springer" for e in entries])
    cifar = sets["cifar10-test"]
    cifar_names = tuple(sorted({e.classname for e in cifar.select(cifar.open())[0]}))
    y_dog = torch.full((int(springer.sum()),), cifar_names.index("dog"))
    zs = zero_shot_top1(model, feats[springer], y_dog, cifar_names, cifar.templates)
    rows.append({"row": "Imagenette clean English springer photos as \"dog\" among CIFAR-10 names", "images": len(y_dog),
                 "classes": 10, "zero_shot": zs, "ceiling": None, "ceiling_kind": "none"})  # fmt: skip
    return rows


def tower_report(sizes: Sequence[int], batch_size: int = 32, repeats: int = 3) -> list[dict]:
    """The image tower alone at several input sizes: its own 1000-way top-1 on the 500 clean
    Imagenette photos, and forward / forward+backward throughput (best of ``repeats`` batches of
    random input, so other load on the machine biases it least)."""
    import time

    from clipforget.data.sources import IMAGENETTE_CLASSES
    from clipforget.models.testbed import TestbedConfig

    base = TestbedModel.from_packages(config=TestbedConfig())
    _, head = load_package_image_tower()
    nette = standard_sets(1, 1)["imagenette-clean"]
    source = nette.open()
    entries, _ = nette.select(source)
    wnid_index = {w: i for i, w in enumerate(_synsets())}
    name_to_wnid = {v: k for k, v in IMAGENETTE_CLASSES.items()}
    y = torch.tensor([wnid_index[name_to_wnid[e.classname]] for e in entries])
    tower = base.model.image_tower.eval()
    digest = state_dict_digest(tower.state_dict())
    rows = []
    for size in sizes:
        model = TestbedModel(base.model, base.spec, TestbedConfig(image_size=size), base.tokenizer)
        feats = image_features(model, source, [e.key for e in entries], tower_digest=digest)
        top1 = float(((feats @ head["weight"].T + head["bias"]).argmax(1) == y).float().mean())
        x = torch.randn(batch_size, 3, size, size)
        fwd, bwd = [], []
        for _ in range(repeats + 1):  # the first round warms up
            t = time.perf_counter()
            with torch.no_grad():
                tower(x)
            fwd.append(batch_size / (time.perf_counter() - t))
            t = time.perf_counter()
            tower.zero_grad()
            tower(x).sum().backward()
            bwd.append(batch_size / (time.perf_counter() - t))
        rows.append({"size": size, "top1": top1, "fwd": max(fwd[1:]), "fwd_bwd": max(bwd[1:])})
        log.info("%d px: top-1 %.3f, %.0f img/s forward, %.0f img/s forward+backward", size, top1, rows[-1]["fwd"], rows[-1]["fwd_bwd"])
    tower.zero_grad(set_to_none=True)
    return rows


def tower_markdown(rows: Sequence[dict]) -> str:
    lines = [
        f"Image tower alone (EfficientNet-Lite0, its own ImageNet head), 500 clean Imagenette photos, {torch.get_num_threads()} threads",
        "",
        "| input px | 1000-way top-1 | forward img/s | forward+backward img/s |",
        "| ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['size']} | {100 * r['top1']:.1f} | {r['fwd']:.0f} | {r['fwd_bwd']:.0f} |" for r in rows]
    return "\n".join(lines)


def _synsets() -> list[str]:
    from importlib import resources

    return (resources.files("timm") / "data" / "_info" / "imagenet_synsets.txt").read_text().split()


def markdown(rows: Sequence[dict], model: TestbedModel) -> str:
    lines = [
        f"Testbed `{model.spec}` ({model.config.image_size} px; not CLIP: EfficientNet-Lite0 + all-MiniLM-L6-v2 + linear heads)",
        "",
        "| test set | images | classes | zero-shot top-1 | ceiling top-1 | gap | ceiling |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        ceiling = "n/a" if r["ceiling"] is None else f"{100 * r['ceiling']:.1f}"
        gap = "n/a" if r["ceiling"] is None else f"{100 * (r['ceiling'] - r['zero_shot']):+.1f}"
        lines.append(
            f"| {r['row']} | {r['images']} | {r['classes']} | {100 * r['zero_shot']:.1f} | {ceiling} | {gap} | {r['ceiling_kind']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clipforget.app.testbed.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="testbed", help="model id: 'testbed' (shipped heads) or 'testbed@DIR'")
    p.add_argument("--train-per-class", type=int, default=200, help="probe training images per class")
    p.add_argument("--test-per-class", type=int, default=100, help="CIFAR-10 / Fashion-MNIST test images per class")
    p.add_argument("--tower-sizes", type=int, nargs="+", metavar="PX",
                   help="instead: the image tower alone at these input sizes (accuracy and throughput)")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.tower_sizes:
        print(tower_markdown(tower_report(args.tower_sizes)))
        return 0
    model = load_model(args.model)
    if not isinstance(model, TestbedModel):
        p.error(f"{args.model!r} is not a testbed model")
    print(markdown(measure_quality(model, args.train_per_class, args.test_per_class), model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
