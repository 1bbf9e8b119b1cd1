"""Tiny random-initialised models of the real architectures, built inside the tests."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip

TINY_CONFIGS = {
    # open_clip ModifiedResNet (BatchNorm), as in RN50 but a few channels wide.
    "tiny-RN": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None, "head_width": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    # open_clip ViT (LayerNorm).
    "tiny-ViT": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
}


def register_tiny_openclip(tmp_dir: Path) -> list[str]:
    """Write the tiny configs as JSON and register them with open_clip; return their names."""
    for name, cfg in TINY_CONFIGS.items():
        if name not in open_clip.list_models():
            path = Path(tmp_dir) / f"{name}.json"
            path.write_text(json.dumps(cfg))
            open_clip.add_model_config(path)
    return list(TINY_CONFIGS)
