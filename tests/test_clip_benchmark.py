"""CLIP_benchmark: its datasets as a clipforget source, and its own command on a model clipforget saved."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from synthetic import tiny_scenario_dict, write_image
from tiny import register_tiny_openclip

pytest.importorskip("clip_benchmark", reason="the clip_benchmark package is not installed: pip install 'clipforget[benchmark]'")

from clipforget.app.cli import main  # noqa: E402
from clipforget.data.sources import SourceConfig, open_source  # noqa: E402
from clipforget.models import load_model  # noqa: E402

CLASSES = ("red square", "green field", "blue sky")
PER_CLASS = 8
TEMPLATES = ("a photo of a {c}.", "itap of a {c}.")


def write_webdataset(root: Path) -> Path:
    """CLIP_benchmark's webdataset layout: test/0.tar (+ nshards.txt), classnames.txt, templates."""
    (root / "test").mkdir(parents=True)
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for label, cls in enumerate(CLASSES):
            for i in range(PER_CLASS):
                key = f"{label:02d}{i:04d}"
                png = io.BytesIO()
                Image.open(write_image(root / "src" / f"{key}.png", cls, i)).save(png, "PNG")
                for ext, data in (("png", png.getvalue()), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return root


def test_clip_benchmark_source_reads_a_local_webdataset(tmp_path):
    root = write_webdataset(tmp_path / "wds")
    src = open_source(SourceConfig(kind="clip_benchmark", dataset="wds/tiny", root=str(root)))
    entries = src.entries()
    assert [e.classname for e in entries] == [c for c in CLASSES for _ in range(PER_CLASS)]
    assert {e.split for e in entries} == {"test"}  # no train/ folder: a test-only set
    first = src.load(entries[0].key)
    assert first.mode == "RGB" and list(first.getdata()) == list(Image.open(root / "src" / "000000.png").getdata())


def test_clip_benchmark_source_without_its_data_names_the_folder(tmp_path):
    from clipforget.data.locations import DataNotFoundError

    with pytest.raises(DataNotFoundError, match=rf"clip_benchmark dataset 'wds/none' under {tmp_path / 'none'}"):
        open_source(SourceConfig(kind="clip_benchmark", dataset="wds/none", root=str(tmp_path / "none")))


@torch.no_grad()
def test_saved_model_scores_the_same_under_clipforget_eval_and_the_clip_benchmark_command(tmp_path):
    register_tiny_openclip(tmp_path)
    torch.manual_seed(3)
    model = load_model("openclip:tiny-RN")
    model.save(tmp_path / "model")
    root = write_webdataset(tmp_path / "wds")
    scenario = tiny_scenario_dict(tmp_path / "scenario")
    scenario["sources"]["bench"] = {"kind": "clip_benchmark", "dataset": "wds/tiny", "root": str(root)}
    scenario["heldout"].append({"name": "bench", "source": "bench", "classes": "all", "per_class": PER_CLASS,
                                "split": "test", "templates": list(TEMPLATES)})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    ours = tmp_path / "metrics.json"
    assert main(["eval", "--model", f"openclip:local-dir:{tmp_path / 'model'}", "--scenario", str(tmp_path / "s.yaml"),
                 "--out", str(ours)]) == 0
    # CLIP_benchmark's own pipeline (its webdataset builder, open_clip loader, classifier and loop), in-process.
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier
    from clip_benchmark.models.open_clip import load_open_clip

    net, transform, tokenizer = load_open_clip(f"local-dir:{tmp_path / 'model'}", pretrained=None)
    ds = build_dataset("wds/tiny", root=str(root), transform=transform, split="test")
    loader = torch.utils.data.DataLoader(ds.batched(8), batch_size=None, num_workers=0)
    classifier = zero_shot_classifier(net.eval(), tokenizer, ds.classes, ds.templates, "cpu", amp=False)
    logits, target = run_classification(net, classifier, loader, "cpu", amp=False)
    acc1 = (logits.argmax(1) == target).float().mean().item()
    assert json.loads(ours.read_text())["heldout"]["bench"] == pytest.approx(100 * acc1)
    # A random tiny model may put every image in one class, so compare the scores themselves: clipforget's
    # classifier over the source's images and CLIP_benchmark's agree logit by logit.
    from clipforget.zeroshot import build_zero_shot_classifier

    saved = load_model(f"openclip:local-dir:{tmp_path / 'model'}")
    src = open_source(SourceConfig(kind="clip_benchmark", dataset="wds/tiny", root=str(root)))
    images = torch.stack([saved.preprocess(src.load(e.key)) for e in src.entries()])
    ours_logits = 100 * saved.encode_image(images) @ build_zero_shot_classifier(
        saved, CLASSES, [t.replace("{c}", "{}") for t in TEMPLATES])
    torch.testing.assert_close(ours_logits, logits, rtol=1e-4, atol=1e-3)
    assert target.tolist() == [CLASSES.index(e.classname) for e in src.entries()]


def test_the_documented_clip_benchmark_command_scores_a_saved_model(tmp_path):
    register_tiny_openclip(tmp_path)
    load_model("openclip:tiny-RN").save(tmp_path / "model")
    root = write_webdataset(tmp_path / "wds")
    out = tmp_path / "clip_benchmark.json"
    # README, "Standard evaluation", verbatim but for the paths (and CPU-only flags).
    command = [str(Path(sys.executable).parent / "clip_benchmark"), "eval", "--model_type", "open_clip",
               "--model", f"local-dir:{tmp_path / 'model'}", "--pretrained", "saved", "--dataset", "wds/tiny",
               "--dataset_root", str(root), "--task", "zeroshot_classification", "--output", str(out),
               "--num_workers", "0", "--no_amp"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 0.0 <= json.loads(out.read_text())["metrics"]["acc1"] <= 1.0
