"""``imagefolder`` (``root/<class>/<image>``) and ``manifest`` (a CSV or JSONL list of files)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from clipforget.config import ConfigError, require
from clipforget.data.locations import DataNotFoundError
from clipforget.data.sources.base import (
    SPLITS,
    Entry,
    FileSource,
    ImageSource,
    SourceConfig,
    _list_class_folders,
    _require_dir,
    register_source_kind,
)


@register_source_kind("imagefolder")
def _imagefolder(config: SourceConfig) -> ImageSource:
    require(config.root is not None, "an 'imagefolder' source needs 'root': the folder of class folders")
    root = _require_dir(Path(config.root), "imagefolder source")
    entries = tuple(_list_class_folders(root, "", None))
    if not entries:
        raise DataNotFoundError(f"imagefolder source {root}: no images found under root/<class>/")
    return FileSource(root, entries, f"imagefolder:{root.resolve()}")


def _read_manifest_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"manifest {path} line {n}: not valid JSON ({e})") from e
        return rows
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    raise ConfigError(f"manifest {path}: use a .csv or .jsonl file")


@register_source_kind("manifest")
def _manifest(config: SourceConfig) -> ImageSource:
    require(config.root is not None, "a 'manifest' source needs 'root': the path of the CSV/JSONL file")
    path = Path(config.root)
    if not path.is_file():
        raise DataNotFoundError(f"manifest file {path} does not exist")
    entries = []
    for n, row in enumerate(_read_manifest_rows(path), 1):
        where = f"manifest {path} row {n}"
        require(isinstance(row, dict), f"{where}: expected a mapping of columns")
        require(bool(row.get("path")) and bool(row.get("class")), f"{where}: columns 'path' and 'class' are required")
        split = row.get("split") or None
        require(split in (None, *SPLITS), f"{where}: split {split!r} must be one of {list(SPLITS)} or empty")
        flags = row.get("flags") or ()
        flags = frozenset(flags.split(";") if isinstance(flags, str) else flags)
        cls = str(row["class"])
        entries.append(Entry(str(row["path"]), cls, str(row.get("subgroup") or cls), split, flags))
    require(bool(entries), f"manifest {path} lists no images")
    keys = [e.key for e in entries]
    require(len(set(keys)) == len(keys), f"manifest {path}: a path is listed twice")
    return FileSource(path.parent, tuple(entries), f"manifest:{path.resolve()}:{path.stat().st_mtime_ns}")

