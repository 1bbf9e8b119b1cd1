"""Mixed precision (clipforget.precision): autocast on the CPU, on tiny random models of every backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic import build_tiny_scenario
from test_method_stages import make_data

from clipforget.methods import TrainConfig, get_method, train_loop
from clipforget.methods.scoring import forget_progress
from clipforget.models import load_model
from clipforget.app.runner import run_forget
from clipforget.precision import autocast, resolve_precision
from clipforget.app.rundir import ResumeError

# the paper's forget stage by gradient, long enough to move: the stage whose behaviour precision could change
FORGET_ONLY = ["use_souping=false", "use_remind=false", "forget.train.steps=40", "forget.train.lr=1e-3", "forget.delta=-0.5"]
TOLERANCE = 0.03  # measured: the final forget similarity of bf16 and fp16 runs differs from fp32 by <= 0.012


@pytest.fixture
def model(tiny_model_id):
    torch.manual_seed(0)
    return load_model(tiny_model_id)


def _forget(model, precision: str):
    method = get_method("ours-paper")
    with autocast(precision, "cpu"):
        result = method.run(model, make_data(), method.smoke_config().with_overrides(FORGET_ONLY), seed=0)
    return result.model


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_forgets_as_fp32_does_and_keeps_fp32_weights(model, precision):
    reference, mixed = _forget(model, "fp32"), _forget(model, precision)
    before = forget_progress(model, make_data())
    ref, got = forget_progress(reference, make_data()), forget_progress(mixed, make_data())
    assert ref["forget_similarity"] < before["forget_similarity"] - 0.1, "the fp32 reference did not forget"
    assert abs(got["forget_similarity"] - ref["forget_similarity"]) <= TOLERANCE
    assert got["forget_acc"] == ref["forget_acc"]
    assert all(v.dtype == torch.float32 for v in mixed.weights().values() if v.is_floating_point())


def test_autocast_runs_the_forward_passes_in_the_lower_precision(model):
    seen: dict[str, set] = {"fp32": set(), "bf16": set()}
    phase = ["fp32"]
    hooks = [m.register_forward_hook(lambda module, args, output: seen[phase[0]].add(output.dtype))
             for m in model.network.modules() if isinstance(m, torch.nn.Linear)]
    images, texts = make_data().forget_images, model.tokenize(["a photo of a cat."])
    with torch.no_grad():
        model.encode_image(images), model.encode_text(texts)
        phase[0] = "bf16"
        with autocast("bf16", "cpu"):
            model.encode_image(images), model.encode_text(texts)
    for h in hooks:
        h.remove()
    assert seen["fp32"] == {torch.float32} and seen["bf16"] == {torch.bfloat16}


def test_fp16_training_scales_the_loss_and_still_learns():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 1)
    x, y = torch.randn(64, 8), torch.randn(64, 1)

    def loss_fn(step):
        return {"loss": ((layer(x) - y) ** 2).mean()}

    with autocast("fp16", "cpu"):
        first = float(loss_fn(0)["loss"].detach())
        log = train_loop(layer.parameters(), loss_fn, TrainConfig(steps=60, lr=0.05, grad_clip=1.0))
    assert log.curves["loss"][-1] < 0.7 * first
    assert layer.weight.dtype == torch.float32


def test_auto_is_fp32_on_the_cpu_and_unknown_names_are_refused():
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision(None, "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown precision 'fp8'; use one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", "cpu")


def test_a_bf16_run_records_its_precision_saves_fp32_and_is_not_resumed_as_fp32(tmp_path):
    from tiny import register_tiny_openclip

    register_tiny_openclip(tmp_path / "cfg")
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    load_model("openclip:tiny-RN").save(ckpt)
    model_id, scenario = f"openclip:local-dir:{ckpt}", build_tiny_scenario(tmp_path / "scenario")
    smoke = get_method("ours").smoke_config()
    out = tmp_path / "run"
    run_forget(model_id, scenario, out, config=smoke, audit=False, precision="bf16")
    config = (out / "config.yaml").read_text()
    assert "precision: bf16" in config
    weights = load_file(Path(out / "model" / "open_clip_model.safetensors"))
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    with pytest.raises(ResumeError, match="precision"):
        run_forget(model_id, scenario, out, config=smoke, audit=False, precision="fp32")
    fp32 = tmp_path / "fp32"
    run_forget(model_id, scenario, fp32, config=smoke, audit=False, precision="fp32")
    assert "precision" not in (fp32 / "config.yaml").read_text()  # fp32 runs keep the keys they always had
