"""One line about each registered method and each bundled scenario, without importing torch.

``clipforget methods`` and ``clipforget scenarios`` answer from here in well under a second. The
method lines are kept next to nothing heavy on purpose; ``tests/test_cli.py`` checks that they name
exactly the registered methods.
"""

from __future__ import annotations

import re
from importlib import resources

import yaml

# name -> (what it is, what data it uses). Every method also needs the forget text and the
# calibration images (D_m), on which it chooses its weights.
METHODS: dict[str, tuple[str, str]] = {
    "ours": ("forgets the images: a closed-form edit of the image projection takes the subgroup's text "
             "directions off its images and keeps the retain images' outputs (beyond the paper)", "D_f, D_r, D_m"),
    "ours-paper": ("the paper's method: relative-Fisher layer choice, LoRA forgetting, remind (align + distil), "
                   "restore by souping", "D_f, D_r, D_m"),
    "ga": ("gradient ascent on the forget images (Thudi et al. 2022)", "D_f"),
    "neggrad+": ("gradient ascent on D_f plus cross-entropy on D_r (Kurmanji et al. 2023)", "D_f, D_r"),
    "ft": ("fine-tune on the retain set only; forgetting by drift (Warnecke et al. 2023)", "D_r"),
    "rl": ("random wrong labels for the forget images, plus D_r (Golatkar et al. 2020)", "D_f, D_r"),
    "salun": ("weight saliency, then random labels on the salient weights (Fan et al. 2024)", "D_f, D_r"),
    "emmn": ("error-maximising noise, then impair and repair (Tarun et al. 2023)", "D_f, D_r"),
    "lip": ("Lipschitz regularisation of the forget images and text (Kravets & Namboodiri 2024)", "D_f"),
    "ssd": ("training-free selective synaptic dampening (Foster et al. 2024)", "D_f, D_r"),
    "task-vector": ("negate the task vector of fine-tuning on the forget pairs (Ilharco et al. 2023)", "D_f"),
    "slug": ("one gradient step on the single most forget-important layer (Cai et al. 2024)", "D_f, D_r"),
}

SOURCE_NEEDS = {"fashion_mnist": "Fashion-MNIST (Debian dataset-fashion-mnist)", "cifar10_jpeg": "CIFAR-10 JPEG archive",
                "imagenette": "Imagenette archive", "openclipart": "clip art (Debian openclipart-png)", "imagefolder": "an image folder", "manifest": "a manifest file",
                "torchvision": "a torchvision dataset", "imagenet": "ImageNet-1K folder ($CLIPFORGET_IMAGENET)",
                "clip_benchmark": "CLIP_benchmark {dataset}{download}"}


def _source_needs(source: dict) -> str:
    kind = source.get("kind", "?")
    return SOURCE_NEEDS.get(kind, kind).format(
        dataset=source.get("dataset", "?"),
        download=" (downloads once)" if source.get("download") else f" under {source.get('root', '<cache>')}")


def method_lines() -> list[str]:
    width = max(map(len, METHODS))
    return [f"{name:<{width}}  {what} [uses {data}]" for name, (what, data) in sorted(METHODS.items())]


def _first_sentence(comment_block: str) -> str:
    text = " ".join(line.lstrip("#").strip() for line in comment_block.splitlines() if line.startswith("#"))
    match = re.match(r"(.+?\.)(\s|$)", text)
    return (match.group(1) if match else text).strip()


def scenario_lines() -> list[str]:
    """``name  description [needs: data]`` for each bundled scenario, from its leading comment and sources."""
    folder = resources.files("clipforget").joinpath("scenarios")
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name[:-5])
    width = max((len(p.name) - 5 for p in files), default=0)
    lines = []
    for p in files:
        text = p.read_text()
        head = text.split("\n\n", 1)[0]
        sources = (yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}).get("sources", {})
        needs = ", ".join(dict.fromkeys(_source_needs(s) for s in sources.values()))
        models = re.search(r"^# Models: (.+?)\.?$", text, re.MULTILINE)  # a scenario made for particular models
        models = f" [models: {models.group(1)}]" if models else ""
        lines.append(f"{p.name[:-5]:<{width}}  {_first_sentence(head)} [needs: {needs}]{models}")
    return lines
