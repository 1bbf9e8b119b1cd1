"""Where data lives: the shared archives, the extraction cache, and extraction itself.

- Archives (``cifar10-jpg.tar.gz``, ``imagenette-224.tar.gz``) are looked for in
  ``$CLIPFORGET_SHARED_DATA``, else ``../shared/data`` relative to the current directory, else
  ``../shared/data`` relative to the repository.
- They are extracted once, after a sha256 check, into ``$CLIPFORGET_CACHE`` (default
  ``~/.cache/clipforget``) under ``<archive stem>-<sha256[:12]>/``; a ``.complete`` marker written
  last makes an interrupted extraction start over, and a file lock lets parallel processes share it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tarfile
from pathlib import Path

from clipforget.io import atomic_replace_dir, sha256_file

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
_MARKER = ".complete"


class DataNotFoundError(FileNotFoundError):
    """A data file or folder the scenario needs is absent; the message says where it was looked for."""


def cache_dir() -> Path:
    """The folder archives are extracted into: ``$CLIPFORGET_CACHE`` or ``~/.cache/clipforget``."""
    env = os.environ.get("CLIPFORGET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clipforget"


def shared_data_candidates() -> list[Path]:
    """The folders searched for the shared archives, in order."""
    env = os.environ.get("CLIPFORGET_SHARED_DATA")
    if env:
        return [Path(env).expanduser()]
    return [Path.cwd() / ".." / "shared" / "data", REPO_ROOT / ".." / "shared" / "data"]


def find_archive(filename: str, folder: str | Path | None = None) -> Path:
    """The path of a shared archive, from ``folder`` if given, else from the default locations."""
    places = [Path(folder).expanduser()] if folder is not None else shared_data_candidates()
    for place in places:
        if (place / filename).is_file():
            return (place / filename).resolve()
    raise DataNotFoundError(
        f"archive {filename!r} not found in {[str(p) for p in places]}; set CLIPFORGET_SHARED_DATA to "
        "the folder holding it, or give the source a 'root'"
    )


def extract_archive(archive: Path, sha256: str, cache: Path | None = None) -> Path:
    """Extract ``archive`` (after checking its sha256) once into the cache; return the folder.

    Safe against interruption (extract to a temporary folder, rename, then write the marker) and
    against parallel callers (an exclusive lock on ``<folder>.lock``).
    """
    archive = Path(archive)
    cache = Path(cache) if cache is not None else cache_dir()
    stem = archive.name.split(".")[0]
    target = cache / f"{stem}-{sha256[:12]}"
    if (target / _MARKER).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _MARKER).is_file():  # another process finished it while we waited
            return target
        actual = sha256_file(archive)
        if actual != sha256:
            raise DataNotFoundError(
                f"{archive}: sha256 is {actual}, expected {sha256}; the archive is damaged or a different "
                "version: replace it with the one described in shared/data/README.md"
            )
        log.info("extracting %s into %s (once)", archive, target)

        def extract(tmp: Path) -> None:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")

        atomic_replace_dir(target, extract)
        (target / _MARKER).write_text(sha256 + "\n")
    return target
