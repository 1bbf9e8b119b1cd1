"""The model protocol, for every backend: embeddings, layers, saving and loading, errors."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from tiny import plain_load_testbed, register_tiny_openclip

from clipforget.models import DualEncoder, ModelSpec, load_model
from clipforget.models.base import TOWERS, normalize

TEXTS = ["a photo of a marmoset.", "Boeing airplanes on the runway", "a dog"]


def _images(model: DualEncoder, n: int = 3) -> torch.Tensor:
    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(n)]
    return torch.stack([model.preprocess(p) for p in pics])


@torch.no_grad()
def _outputs(model: DualEncoder, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return model.encode_image(images), model.encode_text(model.tokenize(TEXTS))


def _perturb(model: DualEncoder) -> None:
    """Change every weight and BatchNorm statistic, so a round trip cannot pass on init values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in model.weights().values():
            if t.is_floating_point():  # weights, biases, BatchNorm running statistics
                t.add_(0.01 * torch.randn(t.shape, generator=g))


# -- ModelSpec ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model_id, expected",
    [
        ("openclip:RN50@openai", ModelSpec("openclip", "RN50", "openai")),
        ("openclip:ViT-B-32@/ckpt/x.safetensors", ModelSpec("openclip", "ViT-B-32", "/ckpt/x.safetensors")),
        ("openclip:RN50", ModelSpec("openclip", "RN50", None)),
        ("hf:openai/clip-vit-base-patch32", ModelSpec("hf", "openai/clip-vit-base-patch32", None)),
        ("hf:/local/dir", ModelSpec("hf", "/local/dir", None)),
        ("  hf:/local/dir ", ModelSpec("hf", "/local/dir", None)),
        ("testbed", ModelSpec("testbed", "testbed", None)),
        ("testbed@/run/dir", ModelSpec("testbed", "testbed", "/run/dir")),
    ],
)
def test_model_spec_parse_and_print_round_trip(model_id, expected):
    spec = ModelSpec.parse(model_id)
    assert spec == expected
    assert ModelSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("model_id", ["", "   ", "openclip:", "hf:@main"])
def test_model_spec_rejects_ids_without_a_model(model_id):
    with pytest.raises(ValueError, match="model id"):
        ModelSpec.parse(model_id)


# -- clear errors -------------------------------------------------------------------------------
def test_unknown_backend_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model backend 'nope'.*openclip"):
        load_model("nope:RN50")


def test_unknown_openclip_architecture():
    with pytest.raises(ValueError, match="unknown open_clip architecture 'RN-nonexistent'"):
        load_model("openclip:RN-nonexistent")


def test_missing_openclip_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(f"openclip:RN50@{tmp_path}/missing.safetensors")


def test_missing_hf_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(f"hf:{tmp_path}/missing")


def test_hf_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        load_model(f"hf:{tmp_path}")


# -- the protocol, for every backend ------------------------------------------------------------
@torch.no_grad()
def test_embeddings_are_normalised_and_deterministic(tiny_models):
    images = _images(tiny_models)
    img, txt = _outputs(tiny_models, images)
    assert img.shape[0] == len(images) and txt.shape[0] == len(TEXTS) and img.shape[1] == txt.shape[1]
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(len(images)))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(len(TEXTS)))
    img2, txt2 = _outputs(tiny_models, images)
    torch.testing.assert_close(img, img2, rtol=0, atol=0)
    torch.testing.assert_close(txt, txt2, rtol=0, atol=0)
    assert tiny_models.logit_scale.item() > 0
    sim = tiny_models.similarity(images, tiny_models.tokenize(TEXTS))
    torch.testing.assert_close(sim, img @ txt.T)


def test_preprocess_gives_the_model_input_size(tiny_models):
    x = tiny_models.preprocess(Image.new("L", (50, 37), 128))  # grey, not square: converted and cropped
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_tokenize_pads_every_text_to_one_length(tiny_models):
    batch = tiny_models.tokenize(["a", "a much longer text " * 20])
    assert isinstance(batch, dict) and "input_ids" in batch
    assert batch["input_ids"].shape[0] == 2 and all(v.shape == batch["input_ids"].shape for v in batch.values())


def test_layers_cover_every_parameter_but_the_logit_scale_exactly_once(tiny_models):
    names = {n for n, _ in tiny_models.named_weights()}
    logit = {n for n in names if tiny_models.tower_of(n) is None}
    assert logit == {"logit_scale"}
    per_tower = {tower: tiny_models.layers([tower]) for tower in TOWERS}
    assert per_tower["image"] and per_tower["text"]
    assert not set(per_tower["image"]) & set(per_tower["text"])
    listed = [p for tower in TOWERS for params in per_tower[tower].values() for p in params]
    assert len(listed) == len(set(listed))
    assert set(listed) == names - logit
    for tower in TOWERS:
        assert all(tiny_models.tower_of(p) == tower for params in per_tower[tower].values() for p in params)
    assert tiny_models.layers() == {**per_tower["image"], **per_tower["text"]}


def test_save_and_load_round_trip_gives_identical_outputs(tiny_models, tmp_path):
    _perturb(tiny_models)
    images = _images(tiny_models)
    before = _outputs(tiny_models, images)
    main_file = tiny_models.save(tmp_path / "weights")
    assert main_file.is_file() and main_file.parent == tmp_path / "weights"
    reloaded = load_model(tiny_models.saved_id(tmp_path / "weights"))
    after = _outputs(reloaded, images)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(reloaded.logit_scale, tiny_models.logit_scale)


def _plain_openclip(model: DualEncoder, main_file, images):
    plain = open_clip.create_model(model.spec.name, pretrained=str(main_file)).eval()
    tokens = open_clip.get_tokenizer(model.spec.name)(TEXTS)
    return normalize(plain.encode_image(images)), normalize(plain.encode_text(tokens))


def _plain_hf(model: DualEncoder, main_file, images):
    from transformers import AutoTokenizer, CLIPModel

    plain = CLIPModel.from_pretrained(main_file.parent).eval()
    tokens = AutoTokenizer.from_pretrained(main_file.parent)(TEXTS, padding=True, return_tensors="pt")
    out = plain(pixel_values=images, **tokens)
    return out.image_embeds, out.text_embeds


# backend -> outputs of the saved weights loaded without clipforget
def _plain_testbed(model: DualEncoder, main_file, images):
    encode_image, encode_text, _ = plain_load_testbed(main_file.parent)
    return encode_image(images), encode_text(TEXTS)


PLAIN_LOADERS = {"openclip": _plain_openclip, "hf": _plain_hf, "testbed": _plain_testbed}


@torch.no_grad()
def test_saved_weights_load_with_the_backends_own_loader(tiny_models, tmp_path):
    if tiny_models.backend not in PLAIN_LOADERS:
        pytest.skip(f"no plain loader for backend {tiny_models.backend!r} in PLAIN_LOADERS")
    _perturb(tiny_models)
    images = _images(tiny_models)
    ours = _outputs(tiny_models, images)
    plain = PLAIN_LOADERS[tiny_models.backend](tiny_models, tiny_models.save(tmp_path / "weights"), images)
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- Hugging Face specifics ---------------------------------------------------------------------
@pytest.fixture
def hf_model(tiny_models):
    if tiny_models.backend != "hf":
        pytest.skip("Hugging Face only")
    return tiny_models


def test_hf_tokenizer_matches_open_clip_and_truncates_to_an_end_token(hf_model):
    texts = [*TEXTS, "it's a dog's life, isn't it?", "a very long text " * 20]
    ours = hf_model.tokenize(texts)
    ref = open_clip.tokenize(texts, context_length=hf_model.context_length)
    mask = ours["attention_mask"].bool()
    assert ours["input_ids"].shape == ref.shape
    assert torch.equal(ours["input_ids"][mask], ref[ref != 0])  # same ids; only the padding differs
    assert ours["input_ids"][-1, -1].item() == hf_model._tokenizer.eos_token_id and mask[-1].all()


def test_hf_preprocess_matches_the_image_processor(hf_model):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    ref = hf_model._image_processor(images=picture, return_tensors="pt")["pixel_values"][0]
    # torchvision resizes a PIL image in PIL, the processor as a tensor: a few grey levels apart.
    torch.testing.assert_close(hf_model.preprocess(picture), ref, rtol=0, atol=0.1)


def test_hf_save_into_an_existing_folder_keeps_other_files_and_leaves_no_temp(hf_model, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("{}\n")
    hf_model.save(run_dir)
    hf_model.save(run_dir)  # a second save replaces the first
    assert (run_dir / "metrics.jsonl").read_text() == "{}\n"
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_hf_refuses_a_checkpoint_with_missing_weights(hf_model, tmp_path):
    from safetensors.torch import load_file, save_file

    main_file = hf_model.save(tmp_path / "weights")
    state = load_file(main_file)
    del state["text_projection.weight"]
    save_file(state, main_file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing.*text_projection.weight"):
        load_model(f"hf:{main_file.parent}")


# -- open_clip pretrained tags and QuickGELU ------------------------------------------------------
def _fake_tag(monkeypatch, tmp_path, arch: str, like: tuple[str, str]) -> torch.nn.Module:
    """Register ``arch@openai`` with the pretrained config of the real tag ``like`` (its quick_gelu flag
    included) and make its download return local weights; return the model those weights came from."""
    from safetensors.torch import save_file

    register_tiny_openclip(tmp_path)
    torch.manual_seed(0)
    trained = open_clip.create_model(arch, force_quick_gelu=bool(open_clip.get_pretrained_cfg(*like).get("quick_gelu")))
    file = tmp_path / f"{arch}-tag.safetensors"
    save_file(trained.state_dict(), file)
    tag_cfg = {**open_clip.get_pretrained_cfg(*like), "url": "", "hf_hub": ""}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, arch, {"openai": tag_cfg})
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, **kw: str(file))
    return trained.eval()


def _activation(module: torch.nn.Module) -> type:
    return type(module.transformer.resblocks[0].mlp.gelu)


@pytest.mark.parametrize("like, quick", [(("RN50", "openai"), True), (("ViT-B-32", "laion2b_e16"), False)])
def test_pretrained_tag_builds_the_activation_it_was_trained_with(monkeypatch, tmp_path, recwarn, like, quick):
    from open_clip.transformer import QuickGELU

    assert bool(open_clip.get_pretrained_cfg(*like).get("quick_gelu")) is quick  # the real table's flag
    trained = _fake_tag(monkeypatch, tmp_path, "tiny-RN-gelu", like)
    model = load_model("openclip:tiny-RN-gelu@openai")
    assert (_activation(model.model) is QuickGELU) is quick
    assert not [w for w in recwarn if "QuickGELU" in str(w.message)]  # open_clip saw no mismatch
    images, tokens = _images(model), model.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), normalize(trained.encode_image(images)))
        torch.testing.assert_close(model.encode_text(tokens), normalize(trained.encode_text(tokens["input_ids"])))
        if quick:  # the weights under exact GELU give other text embeddings: the check above can fail
            gelu = open_clip.create_model("tiny-RN-gelu", pretrained=str(tmp_path / "tiny-RN-gelu-tag.safetensors"))
            assert not torch.allclose(normalize(gelu.eval().encode_text(tokens["input_ids"])),
                                      model.encode_text(tokens), atol=1e-4)


@torch.no_grad()
def test_quick_gelu_model_saves_a_config_plain_open_clip_loads_as_quick_gelu(monkeypatch, tmp_path):
    from open_clip.transformer import QuickGELU

    _fake_tag(monkeypatch, tmp_path, "tiny-RN-gelu", ("RN50", "openai"))
    model = load_model("openclip:tiny-RN-gelu@openai")
    _perturb(model)
    model.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "open_clip_config.json").read_text())["model_cfg"]["quick_gelu"] is True
    plain = open_clip.create_model(f"local-dir:{tmp_path / 'saved'}").eval()
    assert _activation(plain) is QuickGELU
    tokens = model.tokenize(TEXTS)
    torch.testing.assert_close(normalize(plain.encode_text(tokens["input_ids"])), model.encode_text(tokens))
    reloaded = load_model(model.saved_id(tmp_path / "saved"))
    assert _activation(reloaded.model) is QuickGELU
