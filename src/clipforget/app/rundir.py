"""Output directories that never eat a user's files, and the key a run directory resumes by.

- :func:`check_output_dir`: before anything is loaded, refuse an ``--out`` that is a file, lies
  under one, cannot be written, overlaps an input checkpoint (either nesting, symlinks resolved), or
  holds files clipforget did not write (a directory is clipforget's when it holds :data:`MARKER`,
  the first file a run writes).
- :func:`open_run_dir`: the run's life in the directory: a lock (a second process on the same
  directory is refused), the resume key compared with the one stored in the marker, ``restart``
  discarding what an earlier run wrote.
- :class:`ResumeError`: a stored stage or run does not match; the message says what differs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from clipforget.config import ConfigError
from clipforget.io import atomic_write_json

log = logging.getLogger(__name__)

MARKER = ".clipforget-run.json"
"""Written first into every run (and bench) directory: its kind and, for a run, its resume key."""
LOCK = ".clipforget.lock"
RUN_OUTPUTS = ("config.yaml", "scenario.yaml", "run.json", "stages", "metrics.json", "events.jsonl", "fisher.json",
               "alpha_curve.json", "sets.json", "examples", "audit.json", "model", "report.md", "report.html", "plots")
"""What a run writes (and ``restart`` removes); nothing else in a run directory is touched."""
BENCH_OUTPUTS = ("runs", "results.csv", "results.json", "table.md", "report.html")
RESTART_HINT = "pass --restart (restart=True in the API) to discard it and start again, or choose another --out"


class ResumeError(ConfigError):
    """A run directory holds results that do not belong to this run, or that are damaged."""


# -- before loading anything -------------------------------------------------------------------------
def checkpoint_paths(model_id: str) -> list[Path]:
    """The local files or folders a model id reads (any backend): weights file, checkpoint folder."""
    from clipforget.models.base import ModelSpec

    try:
        spec = ModelSpec.parse(model_id)
    except ValueError:
        return []
    candidates = {spec.weights, spec.name, spec.name.removeprefix("local-dir:")}
    return sorted({Path(p).expanduser().resolve() for p in candidates if p and Path(p).expanduser().exists()})


def refuse_overlap(out: Path, model_ids: Iterable[str]) -> None:
    """Refuse ``out`` inside an input checkpoint, or an input checkpoint inside ``out`` (symlinks resolved)."""
    target = Path(out).expanduser().resolve()
    for model_id in model_ids:
        for ckpt in checkpoint_paths(model_id):
            if ckpt == target or ckpt in target.parents:
                raise ConfigError(f"--out {out} would write inside the input checkpoint {ckpt} (of {model_id}); "
                                  "choose a directory outside it")
            if target in ckpt.parents:
                raise ConfigError(f"the input checkpoint {ckpt} (of {model_id}) lies inside --out {out}, which the run "
                                  "writes into; choose an --out that does not contain it")


def check_writable(out: Path, what: str = "a directory") -> None:
    """Refuse ``out`` when it, or a folder above it, is a file, or when its nearest existing folder is read-only."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                where = "is a file" if p == out else f"lies under {p}, which is a file"
                raise ConfigError(f"--out {out} {where}; the output is {what}: give a directory path")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"--out {out}: cannot write in {p} (permission denied); choose a writable directory")
            return


def check_output_file(path: str | Path) -> None:
    """Refuse an output file path that is a directory, lies under a file, or cannot be written: before any work."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; give a file path (e.g. {path / 'metrics.json'})")
    for p in path.parents:
        if p.exists() and not p.is_dir():
            raise ConfigError(f"--out {path} lies under {p}, which is a file; give a path in a directory")
    check_writable(path.parent, what="a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"--out {path}: the file is read-only; choose another path")


def _marker(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stored_key(out: str | Path) -> dict[str, Any] | None:
    """The resume key a run directory's marker holds (None: no marker, or none recorded)."""
    marker = _marker(Path(out))
    return marker.get("key") if marker else None


def same_key(stored: Mapping[str, Any] | None, key: Mapping[str, Any]) -> bool:
    """Whether a stored (JSON-read) resume key is ``key``."""
    return stored == json.loads(json.dumps(dict(key)))


def _legacy(out: Path, kind: str) -> bool:
    """A directory an older clipforget (before the marker) wrote: a run's run.json, or a bench's outputs only."""
    if kind == "bench":
        return (out / "runs").is_dir() and all(p.name in BENCH_OUTPUTS or p.name.startswith(".") for p in out.iterdir())
    try:
        info = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "clipforget" in info.get("versions", {}) and "status" in info


def _foreign_entries(out: Path) -> list[str]:
    return sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()
                  if p.name != LOCK and not p.name.startswith(f".{MARKER}."))  # the marker's temporary file


def check_output_dir(out: str | Path, model_ids: Iterable[str] = (), kind: str = "run") -> None:
    """All the checks of an output directory that need nothing loaded (see the module doc)."""
    out = Path(out)
    check_writable(out)
    refuse_overlap(out, model_ids)
    if not out.is_dir():
        return
    marker = _marker(out)
    if marker is not None:
        if marker.get("kind") != kind:
            raise ConfigError(f"--out {out} is a clipforget {marker.get('kind')} directory, not a {kind} directory; "
                              "choose another --out")
        return
    foreign = _foreign_entries(out)
    if foreign and not _legacy(out, kind):
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(f"--out {out} already holds files that clipforget did not write ({listed}); "
                          "give a new or empty directory")


# -- the lock -------------------------------------------------------------------------------------------
_HELD: dict[Path, list[Any]] = {}  # resolved directory -> [open lock file, depth] (re-entrant in one process)


@contextlib.contextmanager
def lock_dir(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the block; another process holding it is refused.

    The lock is an ``flock`` on ``out/.clipforget.lock`` (an empty file, never rewritten): the system
    releases it when the holder exits, however it exits (a killed run never leaves a stale lock).
    """
    key = Path(out).resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK, "a+")  # noqa: SIM115 - held for the block
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"--out {out} is in use by another clipforget process; wait for it to finish or "
                                  "choose another --out") from None
        _HELD[key] = [f, 1]
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        f.close()


# -- a run's directory ------------------------------------------------------------------------------
_KEY_NAMES = {"clipforget": "the clipforget version", "config": "the run config", "scenario": "the scenario",
              "images": "the scenario's images", "weights": "the model's weights"}


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "(unset)"), new.get(k, "(unset)")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def describe_key_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What differs between a stored resume key and this run's, in words."""
    if not old:
        return "it was written by an earlier clipforget that recorded no resume key"
    parts = []
    for k in new:
        if old.get(k) == new[k]:
            continue
        if k == "config" and isinstance(old.get(k), Mapping):
            changes = _differences(old[k], new[k])
            parts.append(f"the run config ({'; '.join(changes[:4])}{' ...' if len(changes) > 4 else ''})")
        elif k == "clipforget":
            parts.append(f"the clipforget version ({old.get(k)} -> {new[k]})")
        elif k == "scenario":
            parts.append("the scenario (its file was edited, or it resolves differently)")
        elif k == "images":
            parts.append("the scenario's images (their content changed)")
        elif k == "weights":
            parts.append("the model's weights (the checkpoint's content changed)")
        else:
            parts.append(_KEY_NAMES.get(k, k))
    return "it differs in " + ", ".join(parts)


def _has_results(out: Path) -> bool:
    stages = out / "stages"
    return (out / "metrics.json").exists() or (stages.is_dir() and any(stages.glob("*.json")))


def _status(out: Path) -> str | None:
    try:
        return json.loads((out / "run.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def clear_run_outputs(out: Path) -> None:
    """Remove what a run writes (:data:`RUN_OUTPUTS`, temporary files), nothing else."""
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    for p in out.glob(".*.tmp"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


@contextlib.contextmanager
def open_run_dir(out: str | Path, key: Mapping[str, Any], *, model_ids: Iterable[str] = (),
                 restart: bool = False) -> Iterator[Path]:
    """Claim ``out`` for a run whose resume key is ``key`` and hold its lock for the block.

    A directory holding a run with another key is refused (:class:`ResumeError`, naming what
    differs) unless ``restart``; one whose earlier run failed (an exception, recorded in run.json)
    or finished no stage is simply started again (a killed run is refused: its command resumes it).
    The marker (with ``key``) is the first file written.
    """
    out = Path(out)
    check_output_dir(out, model_ids)
    with lock_dir(out):
        check_output_dir(out, model_ids)  # again: another process may have written before we held the lock
        marker = _marker(out)
        stored = marker.get("key") if marker else None
        if marker is None and not _legacy(out, "run"):
            pass  # a new or empty directory
        elif restart:
            log.info("--restart: discarding the earlier run in %s", out)
            clear_run_outputs(out)
        elif stored != dict(key):
            if _status(out) != "failed" and _has_results(out):
                raise ResumeError(f"{out} holds a different run: {describe_key_change(stored, key)}, so its results do "
                                  f"not belong to this one; {RESTART_HINT}")
            log.info("%s holds an earlier run that failed or finished no stage: starting again", out)
            clear_run_outputs(out)
        if _marker(out) != {"kind": "run", "key": json.loads(json.dumps(dict(key)))}:
            atomic_write_json(out / MARKER, {"kind": "run", "key": dict(key)})
        yield out


@contextlib.contextmanager
def open_bench_dir(out: str | Path) -> Iterator[Path]:
    """Claim ``out`` for a benchmark (empty, or a benchmark's) and hold its lock for the block."""
    out = Path(out)
    check_output_dir(out, kind="bench")
    with lock_dir(out):
        check_output_dir(out, kind="bench")
        if _marker(out) is None:
            atomic_write_json(out / MARKER, {"kind": "bench"})
        yield out
