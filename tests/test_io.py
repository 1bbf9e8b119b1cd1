"""Atomic writers: files appear whole, with the mode the umask gives an ordinary file."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from clipforget.io import (
    atomic_replace_dir,
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_json,
    atomic_write_text,
)


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_mode_of_an_ordinary_file_under_the_umask(umask, tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    expected = _mode(tmp_path / "plain.txt")
    assert expected == 0o666 & ~umask
    written = [atomic_write_text(tmp_path / "a.txt", "x"), atomic_write_json(tmp_path / "b.json", {"a": 1}),
               atomic_write_bytes(tmp_path / "c.png", b"\x89PNG"),
               atomic_save_safetensors({"w": torch.ones(2)}, tmp_path / "d.safetensors")]
    assert {p.name: _mode(p) for p in written} == {p.name: expected for p in written}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file is left behind"


def test_a_written_folder_gets_the_mode_of_an_ordinary_folder(umask, tmp_path):
    (tmp_path / "plain").mkdir()
    folder = atomic_write_dir(tmp_path / "model", lambda d: (d / "w.txt").write_text("x"))
    assert _mode(folder) == _mode(tmp_path / "plain") == 0o777 & ~umask
    assert _mode(folder / "w.txt") == 0o666 & ~umask


def test_every_backends_saved_folder_is_readable_by_the_group(tiny_models, tmp_path):
    old = os.umask(0o027)
    try:
        tiny_models.save(tmp_path / "model")
    finally:
        os.umask(old)
    for p in [tmp_path / "model", *(tmp_path / "model").rglob("*")]:
        assert _mode(p) & 0o040, f"{p.relative_to(tmp_path)} has mode {oct(_mode(p))}"


def test_atomic_replace_dir_swaps_the_whole_folder_and_keeps_the_old_one_on_error(tmp_path):
    target = tmp_path / "tower"
    atomic_replace_dir(target, lambda d: (d / "a.txt").write_text("first"))
    atomic_replace_dir(target, lambda d: (d / "b.txt").write_text("second"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged

    def fails(d):
        (d / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_replace_dir(target, fails)
    assert (target / "b.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tower"]  # no temporary folder left behind
