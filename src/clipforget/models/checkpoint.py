"""Reading checkpoint files defensively: tensors only, damage named, a wrong architecture described.

- :func:`check_checkpoint`: a safetensors file's header is complete, a PyTorch file loads with
  ``weights_only=True`` (clipforget never unpickles anything but tensors); else ``ValueError``
  naming the file and what to do.
- :func:`read_state`: the tensors of a checkpoint file, through the same checks.
- :func:`describe_checkpoint`: what architecture a file's key names and shapes look like, for the
  message when a checkpoint does not fit the architecture it was given to.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
CONVERT_HINT = ("convert it to safetensors where you trust it: "
                "safetensors.torch.save_file(state_dict, 'model.safetensors'), then pass that file")


def _safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - a safe_open handle
    except Exception as e:  # noqa: BLE001 - SafetensorError is not importable by a stable name
        raise ValueError(f"checkpoint {path} is damaged (truncated or not a safetensors file: {e}); "
                         "copy or download it again") from None


def _torch_load(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found or "weights_only" in str(e) and zipfile.is_zipfile(path):
            what = f" (e.g. {found.group(1)})" if found else ""
            raise ValueError(f"checkpoint {path} holds Python objects besides tensors{what}; clipforget never "
                             f"unpickles those, as loading them can run code: {CONVERT_HINT}") from None
        raise ValueError(f"checkpoint {path} is damaged or not a PyTorch checkpoint; copy or download it again") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is damaged or not a PyTorch checkpoint ({e}); copy or download it again") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    return state


def check_checkpoint(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The key -> shape table of a checkpoint file, or ``ValueError`` when it is damaged or unsafe."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _safetensors_header(path)
    state = _torch_load(path)
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, Tensor)}


def read_state(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (safetensors, or a PyTorch file loaded with ``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        _safetensors_header(path)
        from safetensors.torch import load_file

        return load_file(path)
    return _torch_load(path)


def check_checkpoint_dir(directory: str | Path) -> None:
    """:func:`check_checkpoint` on every weights file of a folder (safetensors and PyTorch files)."""
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", *PICKLE_SUFFIXES):
            check_checkpoint(path)


# -- what a checkpoint looks like -------------------------------------------------------------------
def _count(keys: Iterable[str], pattern: str) -> int:
    found = {m.group(1) for k in keys if (m := re.match(pattern, k))}
    return len(found)


def _openclip_signature(shapes: Mapping[str, tuple[int, ...]]) -> dict | None:
    keys = list(shapes)
    sig: dict = {}
    if "visual.conv1.weight" in shapes and any(k.startswith("visual.transformer.") for k in keys):
        width, _, patch, _ = shapes["visual.conv1.weight"]
        sig["vision"] = ("ViT", width, _count(keys, r"visual\.transformer\.resblocks\.(\d+)\."), patch)
    elif any(k.startswith("visual.layer1.") for k in keys):
        layers = tuple(_count(keys, rf"visual\.layer{i}\.(\d+)\.") for i in range(1, 5))
        sig["vision"] = ("ResNet", shapes["visual.conv1.weight"][0] * 2, layers, None)
    else:
        return None
    if "token_embedding.weight" in shapes:
        sig["text"] = (shapes["token_embedding.weight"][1], _count(keys, r"transformer\.resblocks\.(\d+)\."))
    if "text_projection" in shapes:
        sig["embed_dim"] = shapes["text_projection"][-1]
    return sig


def _openclip_names(sig: Mapping) -> list[str]:
    """open_clip architectures whose config gives the same tower shapes as ``sig``."""
    import open_clip

    out = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        kind = "ResNet" if isinstance(v.get("layers"), (list, tuple)) else "ViT"
        layers = tuple(v["layers"]) if kind == "ResNet" else v.get("layers")
        vision = (kind, v.get("width"), layers, v.get("patch_size") if kind == "ViT" else None)
        if vision == sig["vision"] and (t.get("width"), t.get("layers")) == sig.get("text", (t.get("width"), t.get("layers"))) \
                and cfg.get("embed_dim") == sig.get("embed_dim", cfg.get("embed_dim")):
            out.append(name)
    return out


def describe_checkpoint(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """What architecture a checkpoint's keys and shapes look like, in words."""
    sig = _openclip_signature(shapes)
    if sig is not None:
        kind, width, layers, patch = sig["vision"]
        vision = f"{kind} image tower of width {width}, layers {layers}" + (f", patch {patch}" if patch else "")
        text = f", text width {sig['text'][0]} with {sig['text'][1]} layers" if "text" in sig else ""
        names = _openclip_names(sig)
        like = f", like open_clip {', '.join(names[:3])}" if names else ", like no registered open_clip architecture"
        return f"an open_clip model ({vision}{text}{like})"
    keys = list(shapes)
    if any(k.startswith("vision_model.") for k in keys):
        hidden = shapes.get("vision_model.embeddings.patch_embedding.weight", (None,))[0]
        layers = _count(keys, r"vision_model\.encoder\.layers\.(\d+)\.")
        return f"a Hugging Face CLIPModel (vision hidden size {hidden}, {layers} vision layers)"
    if any(k.startswith(("conv_stem.", "blocks.")) for k in keys):
        blocks = _count(keys, r"blocks\.(\d+)\.")
        return f"a timm EfficientNet-style image tower ({blocks} blocks)"
    if any(k.startswith(("image_tower.", "text_tower.")) for k in keys):
        return "a whole clipforget testbed model"
    return f"an unknown layout ({len(keys)} tensors, e.g. {', '.join(keys[:3])})"
