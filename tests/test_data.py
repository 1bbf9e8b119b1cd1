"""Image sources, archive extraction and record loading, on synthetic files."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import (
    make_fashion_mnist,
    make_image_tree,
    write_idx,
    write_image,
    write_manifest,
)

from clipforget.config import ConfigError
from clipforget.data import locations
from clipforget.data.loading import RecordDataset, load_images
from clipforget.data.locations import DataNotFoundError, extract_archive, find_archive
from clipforget.data.sources import (
    FASHION_MNIST_CLASSES,
    OPENCLIPART_DIR,
    ImageLoadError,
    SourceConfig,
    cifar10_jpeg_source,
    clipart_source,
    mapping_rows,
    imagenette_source,
    open_source,
    read_idx,
    register_source_kind,
    source_kinds,
)
from clipforget.data.types import Record

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((16, 16)), dtype=np.float32)).permute(2, 0, 1) / 255


def test_registry_lists_kinds_and_refuses_duplicates_and_unknown_kinds():
    assert {"imagefolder", "manifest", "fashion_mnist", "cifar10_jpeg", "imagenette", "torchvision"} <= set(
        source_kinds()
    )
    with pytest.raises(ValueError, match="already registered"):
        register_source_kind("imagefolder")(lambda config: None)
    with pytest.raises(ConfigError, match="'webdataset' is unknown; known kinds"):
        open_source(SourceConfig(kind="webdataset"))
    with pytest.raises(ConfigError, match=r"only to kinds \['torchvision', 'clip_benchmark'\], not 'imagefolder'"):
        open_source(SourceConfig(kind="imagefolder", root="x", dataset="CIFAR10"))


def test_imagefolder_lists_classes_and_loads_rgb(tmp_path):
    make_image_tree(tmp_path / "tree", {"cat": 3, "dog": 2})
    (tmp_path / "tree" / "cat" / "notes.txt").write_text("not an image")
    Image.new("L", (10, 12), 7).save(tmp_path / "tree" / "dog" / "gray.jpg")
    src = open_source(SourceConfig(kind="imagefolder", root=str(tmp_path / "tree")))
    entries = src.entries()
    assert [e.key for e in entries] == [f"cat/{i:04d}.png" for i in range(3)] + [
        "dog/0000.png", "dog/0001.png", "dog/gray.jpg"
    ]  # fmt: skip
    assert {e.classname for e in entries} == {"cat", "dog"} and all(e.split is None for e in entries)
    img = src.load("dog/gray.jpg")
    assert img.mode == "RGB" and img.size == (10, 12)


def test_imagefolder_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        open_source(SourceConfig(kind="imagefolder", root=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_resolves_relative_paths_and_reads_optional_columns(tmp_path, suffix):
    write_image(tmp_path / "data" / "imgs" / "a.png", "a", 0)
    absolute = write_image(tmp_path / "elsewhere" / "b.png", "b", 0)
    rows = [
        {"path": "imgs/a.png", "class": "dog", "subgroup": "springer", "split": "train"},
        {"path": str(absolute), "class": "cat", "subgroup": "", "split": ""},
    ]
    src = open_source(SourceConfig(kind="manifest", root=str(write_manifest(tmp_path / "data" / f"m{suffix}", rows))))
    a, b = src.entries()
    assert (a.classname, a.subgroup, a.split) == ("dog", "springer", "train")
    assert (b.classname, b.subgroup, b.split) == ("cat", "cat", None)
    assert src.load(a.key).size == (32, 32) and src.load(b.key).mode == "RGB"


def test_manifest_refuses_bad_rows(tmp_path):
    bad_split = write_manifest(tmp_path / "a.csv", [{"path": "x.png", "class": "c", "split": "val"}])
    with pytest.raises(ConfigError, match="row 1: split 'val'"):
        open_source(SourceConfig(kind="manifest", root=str(bad_split)))
    no_class = write_manifest(tmp_path / "b.jsonl", [{"path": "x.png"}])
    with pytest.raises(ConfigError, match="'path' and 'class' are required"):
        open_source(SourceConfig(kind="manifest", root=str(no_class)))


def test_corrupt_or_missing_image_raises_naming_the_file(tmp_path):
    make_image_tree(tmp_path / "tree", {"cat": 2})
    corrupt = tmp_path / "tree" / "cat" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    truncated = tmp_path / "tree" / "cat" / "truncated.png"
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, format="PNG")
    truncated.write_bytes(good.getvalue()[:60])
    src = open_source(SourceConfig(kind="imagefolder", root=str(tmp_path / "tree")))
    for bad in (corrupt, truncated):
        with pytest.raises(ImageLoadError, match=bad.name):
            src.load(f"cat/{bad.name}")
    records = [Record("tree", "cat/0000.png", "cat", "cat"), Record("tree", "cat/broken.jpg", "cat", "cat")]
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        load_images(records, {"tree": src}, to_tensor)
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "gone.png", "class": "c"}])
    src = open_source(SourceConfig(kind="manifest", root=str(manifest)))
    with pytest.raises(ImageLoadError, match="gone.png"):
        src.load("gone.png")


def test_read_idx_round_trips_and_rejects_garbage(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        assert np.array_equal(read_idx(write_idx(tmp_path / name, array)), array)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ImageLoadError, match="bad"):
        read_idx(tmp_path / "bad")
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ImageLoadError, match="holds 2 bytes"):
        read_idx(short)


def test_fashion_mnist_lists_both_splits_and_loads_rgb(tmp_path):
    root = make_fashion_mnist(tmp_path / "fm", {"train": 3, "t10k": 2})
    src = open_source(SourceConfig(kind="fashion_mnist", root=str(root)))
    entries = src.entries()
    assert len(entries) == 50 and sum(e.split == "test" for e in entries) == 20
    assert {e.classname for e in entries} == set(FASHION_MNIST_CLASSES)
    assert entries[7].key == "train/7" and entries[7].classname == FASHION_MNIST_CLASSES[2]
    img = src.load("test/13")
    assert img.mode == "RGB" and img.size == (28, 28) and img.getpixel((5, 5)) == (13, 13, 13)
    with pytest.raises(ImageLoadError, match="no image 'test/99'"):
        src.load("test/99")


def test_fashion_mnist_missing_files_says_how_to_install(tmp_path):
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist"):
        open_source(SourceConfig(kind="fashion_mnist", root=str(tmp_path)))


def test_torchvision_source_reads_local_data_without_download(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    make_fashion_mnist(raw, {"train": 2, "t10k": 1}, gz=False)
    src = open_source(SourceConfig(kind="torchvision", root=str(tmp_path), dataset="FashionMNIST"))
    entries = src.entries()
    assert len(entries) == 30 and entries[0].classname == "T-shirt/top" and entries[-1].split == "test"
    img = src.load("train/3")
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (3, 3, 3)
    with pytest.raises(DataNotFoundError, match="CIFAR10"):
        open_source(SourceConfig(kind="torchvision", root=str(tmp_path / "none"), dataset="CIFAR10"))


def _tarball(path: Path, folder: Path, arcname: str) -> str:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_extract_archive_checks_sha_and_extracts_once(tmp_path):
    make_image_tree(tmp_path / "src" / "train", {"cat": 2, "dog": 1}, ext=".jpg")
    make_image_tree(tmp_path / "src" / "test", {"cat": 1, "dog": 1}, ext=".jpg")
    sha = _tarball(tmp_path / "cifar10-jpg.tar.gz", tmp_path / "src", "cifar10")
    with pytest.raises(DataNotFoundError, match="sha256"):
        extract_archive(tmp_path / "cifar10-jpg.tar.gz", "0" * 64, tmp_path / "cache")
    out = extract_archive(tmp_path / "cifar10-jpg.tar.gz", sha, tmp_path / "cache")
    assert out == tmp_path / "cache" / f"cifar10-jpg-{sha[:12]}" and (out / ".complete").is_file()
    (out / "cifar10" / "train" / "cat" / "0000.jpg").unlink()  # a second call must not re-extract
    assert extract_archive(tmp_path / "cifar10-jpg.tar.gz", sha, tmp_path / "cache") == out
    assert not (out / "cifar10" / "train" / "cat" / "0000.jpg").exists()
    src = cifar10_jpeg_source(out / "cifar10", "test")
    listed = [(e.key, e.split) for e in src.entries()]
    assert listed[:2] == [("train/cat/0001.jpg", "train"), ("train/dog/0000.jpg", "train")]
    assert len(src.entries()) == 4 and src.load("test/dog/0000.jpg").size == (32, 32)


def test_imagenette_maps_wnids_splits_and_clean_flag(tmp_path):
    root = tmp_path / "imagenette"
    make_image_tree(root / "train", {"n02102040": 2}, ext=".JPEG", prefix="n02102040_")
    make_image_tree(root / "train", {"n02102040": 1}, ext=".JPEG", prefix="ILSVRC2012_val_")
    make_image_tree(root / "val", {"n01440764": 1}, ext=".JPEG", prefix="ILSVRC2012_val_")
    src = imagenette_source(root, "test")
    by_key = {e.key: e for e in src.entries()}
    clean = by_key["train/n02102040/ILSVRC2012_val_0000.JPEG"]
    assert clean.classname == "English springer" and clean.flags == {"clean"} and clean.split == "train"
    assert not by_key["train/n02102040/n02102040_0001.JPEG"].flags
    assert by_key["val/n01440764/ILSVRC2012_val_0000.JPEG"].split == "test"
    assert by_key["val/n01440764/ILSVRC2012_val_0000.JPEG"].classname == "tench"
    make_image_tree(root / "val", {"n99999999": 1})
    with pytest.raises(DataNotFoundError, match="unknown wnid 'n99999999'"):
        imagenette_source(root, "test")


def test_archive_and_cache_locations_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPFORGET_CACHE", str(tmp_path / "c"))
    assert locations.cache_dir() == tmp_path / "c"
    monkeypatch.setenv("CLIPFORGET_SHARED_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="CLIPFORGET_SHARED_DATA"):
        find_archive("imagenette-224.tar.gz")
    (tmp_path / "imagenette-224.tar.gz").write_bytes(b"")
    assert find_archive("imagenette-224.tar.gz") == (tmp_path / "imagenette-224.tar.gz").resolve()
    monkeypatch.delenv("CLIPFORGET_SHARED_DATA")
    monkeypatch.chdir(tmp_path)
    assert locations.shared_data_candidates()[0] == tmp_path / ".." / "shared" / "data"


def test_record_dataset_and_load_images_keep_record_order(tmp_path):
    make_image_tree(tmp_path / "tree", {"cat": 2, "dog": 2})
    src = open_source(SourceConfig(kind="imagefolder", root=str(tmp_path / "tree")))
    records = [Record("t", e.key, e.classname, e.subgroup) for e in reversed(src.entries())]
    ds = RecordDataset(records, {"t": src}, to_tensor)
    image, index = ds[1]
    assert index == 1 and image.shape == (3, 16, 16)
    batch = load_images(records, {"t": src}, to_tensor, batch_size=3)
    assert batch.shape == (4, 3, 16, 16)
    assert torch.equal(batch[0], to_tensor(src.load(records[0].key)))
    with pytest.raises(KeyError, match="'other'"):
        RecordDataset([Record("other", "x", "c", "c")], {"t": src}, to_tensor)


def _clipart_tree(root: Path) -> list[dict[str, str]]:
    """Two drawings in a category tree: a red square on a transparent ground, and a palette image."""
    (root / "animals" / "birds").mkdir(parents=True)
    drawing = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black, as many clip-art PNGs store it
    drawing.paste((255, 0, 0, 255), (2, 2, 6, 6))
    drawing.save(root / "animals" / "birds" / "red.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(root / "animals" / "crow.png", transparency=0)
    rows = [{"path": p, "class": c} for p, c in (("animals/birds/red.png", "bird"), ("animals/crow.png", "bird"))]
    return [r | {"sha256": hashlib.sha256((root / r["path"]).read_bytes()).hexdigest()} for r in rows]


def test_clipart_lists_mapped_drawings_with_their_folder_and_composites_onto_white(tmp_path):
    rows = _clipart_tree(tmp_path)
    src = clipart_source(tmp_path, rows, "clipart:test")
    assert [(e.key, e.classname, e.subgroup, e.split) for e in src.entries()] == [
        ("animals/birds/red.png", "bird", "animals/birds", None), ("animals/crow.png", "bird", "animals", None)]
    red = np.asarray(src.load("animals/birds/red.png"))
    assert red.shape == (8, 8, 3)
    assert (red[0, 0] == 255).all() and tuple(red[3, 3]) == (255, 0, 0)  # ground white, drawing kept
    assert tuple(np.asarray(src.load("animals/crow.png"))[0, 0]) == (0, 0, 255)


def test_clipart_refuses_a_missing_folder_file_or_changed_drawing_by_name(tmp_path):
    rows = _clipart_tree(tmp_path)
    with pytest.raises(DataNotFoundError, match="no/such does not exist; install Debian's 'openclipart-png'"):
        clipart_source(tmp_path / "no" / "such", rows, "x")
    with pytest.raises(DataNotFoundError, match=r"lacks 1 of the 3 mapped drawings \(first: animals/gone.png\)"):
        clipart_source(tmp_path, rows + [{"path": "animals/gone.png", "class": "bird", "sha256": "0"}], "x")
    (tmp_path / "animals" / "crow.png").write_bytes(b"\x89PNG another drawing")
    with pytest.raises(DataNotFoundError, match=r"1 drawings differ .*first: animals/crow.png.*openclipart-png \(Debian"):
        clipart_source(tmp_path, rows, "x")


def test_shipped_clipart_mapping_names_each_drawing_once_by_cifar10_class():
    rows = mapping_rows()
    assert len({r["path"] for r in rows}) == len(rows)
    assert len({r["sha256"] for r in rows}) == len(rows)  # the package repeats drawings in several folders
    assert {r["class"] for r in rows} <= set(CIFAR10_NAMES)
    assert sum(r["class"] == "bird" for r in rows) == 44
    if not OPENCLIPART_DIR.is_dir():
        pytest.skip(f"clip art not installed at {OPENCLIPART_DIR} (apt-get install openclipart-png, or make data)")
    src = open_source(SourceConfig(kind="openclipart"))
    assert len(src.entries()) == len(rows) and all(e.subgroup.split("/")[0] for e in src.entries())
    assert src.load(src.entries()[0].key).mode == "RGB"
