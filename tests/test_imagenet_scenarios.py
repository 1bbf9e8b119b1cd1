"""The paper's ImageNet-1K scenarios on a miniature ImageNet folder (synthetic images, real synset ids)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image

from clipforget.data.locations import DataNotFoundError
from clipforget.data.presets import imagenet_clip_classnames, imagenet_synsets, imagenet_wnid_names
from clipforget.data.scenario import build_scenario, scenario_path

# forget wnid, its label, sibling wnids: the synset ids the shipped files name in their comments
PAPER = {
    "imagenet-marmoset": ("n02490219", "marmoset", {"n02492035", "n02492660", "n02493509"}),
    "imagenet-box-turtle": ("n01669191", "box turtle", {"n01667778", "n01667114", "n01664065"}),
}
HELDOUT = ("cifar10", "cifar100", "food101", "stl10")


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def mini_imagenet(tmp_path_factory) -> Path:
    """root/{train,val}/<wnid>/: 200 train images for the forget classes, 100 for their siblings, 1 for
    every other class; 50 val images for each of those 8 classes, 10 for every other."""
    root, data = tmp_path_factory.mktemp("imagenet"), _jpeg()
    big = {w for forget, _, sibs in PAPER.values() for w in (forget, *sibs)}
    forgets = {forget for forget, _, _ in PAPER.values()}
    for wnid in imagenet_synsets():
        for folder, n in (("train", 200 if wnid in forgets else 100 if wnid in big else 1),
                          ("val", 50 if wnid in big else 10)):
            d = root / folder / wnid
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{wnid}_{i}.JPEG").write_bytes(data)
    return root


def _with_local_heldout(name: str, tmp_path: Path, imagenet_root: Path | None) -> dict:
    """The shipped file, its CLIP_benchmark sources replaced by small local folders (no downloads)."""
    data = yaml.safe_load(scenario_path(name).read_text())
    for source in HELDOUT:
        folder = tmp_path / source
        for cls in ("alpha", "beta"):
            (folder / cls).mkdir(parents=True)
            for i in range(100):
                (folder / cls / f"{i}.jpg").write_bytes(_jpeg())
        data["sources"][source] = {"kind": "imagefolder", "root": str(folder)}
    if imagenet_root is not None:
        data["sources"]["imagenet"]["root"] = str(imagenet_root)
    return data


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_scenario_builds_its_splits_on_a_miniature_imagenet(name, mini_imagenet, tmp_path):
    forget, label, siblings = PAPER[name]
    names = imagenet_wnid_names()
    s = build_scenario(_with_local_heldout(name, tmp_path, mini_imagenet))
    assert s.forget_label == label and s.classnames == imagenet_clip_classnames()  # 1000-way Target and Retain

    def wnids(records):
        return Counter(r.key.split("/")[1] for r in records)

    def folders(records):
        return {r.key.split("/")[0] for r in records}

    assert wnids(s.target.records) == {forget: 50} and folders(s.target.records) == {"val"}
    assert wnids(s.forget_train) == {forget: 200} and folders(s.forget_train) == {"train"}
    assert wnids(s.retain.records) == {w: 50 for w in siblings} and folders(s.retain.records) == {"val"}
    assert wnids(s.retain_train) == {w: 100 for w in siblings}
    assert all(r.label == names[r.key.split("/")[1]] for r in (*s.retain.records, *s.retain_train))
    family = {forget, *siblings}
    (inet,) = [h for h in s.heldout if h.name == "imagenet"]
    assert wnids(inet.records) == {w: 10 for w in imagenet_synsets() if w not in family}
    assert inet.classnames == imagenet_clip_classnames() and len(inet.templates) == 80
    assert wnids(s.calibration) == {w: 1 for w in imagenet_synsets() if w not in family}
    assert {h.name for h in s.heldout} == {"imagenet", *HELDOUT}
    assert all(h.classnames == ("alpha", "beta") for h in s.heldout if h.name in HELDOUT)  # classes: all
    keys = [(r.source, r.key) for part in (s.target.records, s.retain.records, s.forget_train, s.retain_train,
                                           s.calibration, *(h.records for h in s.heldout)) for r in part]
    assert len(keys) == len(set(keys)), "no image is in two sets"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_scenario_without_an_imagenet_root_says_which_and_how(name, tmp_path, monkeypatch):
    monkeypatch.delenv("CLIPFORGET_IMAGENET", raising=False)
    with pytest.raises(DataNotFoundError, match=r"ImageNet source: no root given; set CLIPFORGET_IMAGENET to your "
                       r"ImageNet-1K folder \(the ImageFolder layout <root>/train/<wnid>"):
        build_scenario(_with_local_heldout(name, tmp_path, None))
    monkeypatch.setenv("CLIPFORGET_IMAGENET", str(tmp_path / "no-imagenet"))
    with pytest.raises(DataNotFoundError, match=rf"ImageNet root {tmp_path / 'no-imagenet'} \(from \$CLIPFORGET_IMAGENET\) "
                       r"lacks \[.*train', .*val'\]; point \$CLIPFORGET_IMAGENET at an ImageNet-1K folder"):
        build_scenario(name)


def test_cli_names_the_missing_imagenet_root_in_one_line(tmp_path, monkeypatch, caplog):
    from clipforget.app.cli import main

    monkeypatch.delenv("CLIPFORGET_IMAGENET", raising=False)
    assert main(["eval", "--model", "testbed", "--scenario", "imagenet-marmoset"]) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "set CLIPFORGET_IMAGENET" in errors[0].getMessage()


def test_imagenet_source_refuses_a_folder_that_is_not_a_wnid(tmp_path):
    from clipforget.data.sources import SourceConfig, open_source

    for folder in ("train", "val"):
        (tmp_path / folder / "cats").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="'cats' is not an ImageNet-1K wnid"):
        open_source(SourceConfig(kind="imagenet", root=str(tmp_path)))
