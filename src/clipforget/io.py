"""Small I/O helpers: atomic writes, so an interrupted run never leaves a half-written file.

Every file and folder written gets the mode a plain ``open`` / ``mkdir`` would give it under the
process's umask (the temporary files they start as are private to the owner).
"""

from __future__ import annotations

import hashlib

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask sets as it reads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh folder in ``parent`` with the mode ``mkdir`` gives under the umask (``mkdtemp`` makes it 0700)."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=".tmp"))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def apply_umask(folder: Path) -> None:
    """Give every file and folder under ``folder`` the mode the umask gives a new one (for what other
    libraries write privately: transformers' ``save_pretrained`` leaves its weights 0600)."""
    mask = _umask()
    for p in Path(folder).rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_with(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write ``path`` through ``write(tmp_path)`` (e.g. a plot's ``savefig``) and move it into place in one step."""
    return _atomic(Path(path), write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return _atomic(Path(path), write)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return _atomic(Path(path), write)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save_safetensors(state: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    # safetensors refuses shared storage and non-contiguous tensors: store independent copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    return _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def atomic_replace_dir(directory: str | Path, write: Callable[[Path], None]) -> Path:
    """Make ``directory`` exactly what ``write(tmp_dir)`` puts in a temporary sibling, by renames only:
    a reader sees the old folder or the new one, never half of one. An existing folder is moved aside
    and removed once the new one is in place; on any error nothing of the new one remains."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(directory.parent, f".{directory.name}.")
    old = directory.parent / f".{directory.name}.old"
    try:
        write(tmp)
        apply_umask(tmp)
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return directory


def atomic_write_dir(directory: str | Path, write: Callable[[Path], None], last: Sequence[str] = ()) -> Path:
    """Fill ``directory`` through ``write(tmp_dir)`` so that no reader sees a half-written file.

    ``write`` fills a temporary sibling folder. A new ``directory`` then appears by one rename; into
    an existing one (say a run directory that holds other files too) each written file moves by its
    own ``os.replace``, the files named in ``last`` (e.g. ``config.json``) after all the others.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(directory.parent, f".{directory.name}.")
    try:
        write(tmp)
        if not directory.exists():
            os.replace(tmp, directory)
            return directory
        files = sorted((p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file()), key=lambda r: str(r) in last)
        for rel in files:
            (directory / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, directory / rel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
