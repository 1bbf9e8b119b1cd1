"""``clipforget mine``: a scenario YAML built from an unlabeled pool of images and a description.

Reads the pool (a folder of images, at any depth, or a CSV/JSONL manifest with a ``path`` column),
embeds every image with the original model, mines the sets (:mod:`clipforget.mining`) and writes,
each file atomically and none over an existing one:

- ``<out>``: a normal scenario YAML (one ``manifest`` source, the label space, the forget subgroup,
  one retain group per class, one calibration sample per class), to read and edit before ``forget``;
- ``<out stem>.pool.csv``: the manifest it reads: every mined image with its role as its class
  (``forget``, ``retain:<class>``, ``calibration:<class>``), its split, its query margin, and the
  pool's own labels where the pool has them;
- ``<out stem>.mining.json``: what was mined, with precision / recall against the pool's labels
  when ``truth`` names the subgroup there.

The pool's labels (a manifest's ``class`` / ``subgroup`` columns, a folder's sub-folder names) are
never used for mining: only for the label space when none is given, and for the comparison.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from clipforget.config import ConfigError, require
from clipforget.data.sources import IMAGE_EXTENSIONS, Entry, FileSource, _read_manifest_rows
from clipforget.data.types import Record
from clipforget.io import atomic_write_json, atomic_write_text
from clipforget.mining import MineConfig, MinedSets, compare_with_truth, held_for_test, mine_sets
from clipforget.models.base import DualEncoder

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("a photo of a {}.", "a blurry photo of a {}.", "a low resolution photo of a {}.",
                     "a photo of the small {}.", "a good photo of a {}.", "itap of a {}.")
CHUNK = 256  # images read, preprocessed and embedded at a time (a pool need not fit in memory)


@dataclass(frozen=True)
class PoolImage:
    """One pool image: its absolute path and the pool's own labels for it (None where it has none)."""

    path: str
    pool_class: str | None
    pool_subgroup: str | None


def read_pool(pool: str | Path) -> tuple[PoolImage, ...]:
    """Every image of a folder (sorted, at any depth; labels: the first and the last sub-folder) or of a
    CSV/JSONL manifest (``path`` required; ``class`` and ``subgroup`` optional); refuses an empty pool."""
    pool = Path(pool)
    if pool.is_dir():
        out = []
        for dirpath, dirnames, filenames in os.walk(pool):
            dirnames.sort()
            for f in sorted(filenames):
                if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                    rel = Path(dirpath, f).relative_to(pool)
                    parts = rel.parts[:-1]
                    out.append(PoolImage(str(Path(dirpath, f).resolve()), parts[0] if parts else None,
                                         parts[-1] if parts else None))
        require(bool(out), f"--pool {pool}: the folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "give a folder of images or a CSV/JSONL manifest with a 'path' column")
        return tuple(out)
    if not pool.is_file():
        raise FileNotFoundError(f"--pool {pool}: no such folder or manifest file")
    rows = _read_manifest_rows(pool)
    out = []
    for n, row in enumerate(rows, 1):
        require(isinstance(row, dict) and bool(row.get("path")), f"--pool {pool} row {n}: the column 'path' is required")
        path = Path(str(row["path"])).expanduser()
        path = path if path.is_absolute() else pool.parent / path
        cls = row.get("class") or None
        out.append(PoolImage(str(path.resolve()), cls, row.get("subgroup") or cls))
    require(bool(out), f"--pool {pool}: the manifest lists no images; add rows with a 'path' column")
    paths = [p.path for p in out]
    require(len(set(paths)) == len(paths), f"--pool {pool}: an image is listed twice; list each once")
    return tuple(out)


def _label_space(images: Sequence[PoolImage], classnames: Sequence[str] | None, label: str) -> tuple[str, ...]:
    if classnames:
        names = tuple(classnames)
        require(len(set(names)) == len(names), f"--classnames {list(names)} names a class twice")
    else:
        names = tuple(sorted({p.pool_class for p in images if p.pool_class}))
        require(len(names) >= 2, "the pool has no class labels to take the label space from; give it with "
                "--classnames (e.g. --classnames dog cat car)")
    if label not in names:
        close = difflib.get_close_matches(label, names, n=3)
        raise ConfigError(f"--label {label!r} is not in the label space ({', '.join(names)})"
                          f"{'; close: ' + ', '.join(close) if close else ''}; give a label of it, or add it with --classnames")
    return names


@torch.no_grad()
def embed_pool(model: DualEncoder, images: Sequence[PoolImage], *, batch_size: int = 64) -> torch.Tensor:
    """Normalised image embeddings (N, D) of the pool under ``model``, read in chunks."""
    from clipforget.data.loading import load_images
    from clipforget.zeroshot import compute_image_embeddings

    source = FileSource(Path("/"), tuple(Entry(p.path, "pool", "pool", None) for p in images), "pool")
    out = []
    for start in range(0, len(images), CHUNK):
        records = [Record("pool", p.path, "pool", "pool") for p in images[start : start + CHUNK]]
        x = load_images(records, {"pool": source}, model.preprocess, batch_size=batch_size,
                        desc=f"pool images {start + 1}-{start + len(records)} of {len(images)}")
        out.append(compute_image_embeddings(model, x, batch_size=batch_size, progress=False).float().cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class MineResult:
    """What :func:`mine_scenario` wrote and found."""

    scenario: Path
    manifest: Path
    report: Path
    summary: dict[str, Any]


def _contrast(spec: str | Sequence[str], classnames: Sequence[str], aliases: Sequence[str]) -> list[str]:
    """The contrast vocabulary's names, less the classes and the aliases (case and spaces aside)."""
    from clipforget.data.presets import resolve_label_space

    names = resolve_label_space(spec, "contrast") if spec else ()
    drop = {n.strip().casefold() for n in (*classnames, *aliases)}
    return list(dict.fromkeys(n for n in names if n.strip().casefold() not in drop))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "query"


def mine_scenario(model: DualEncoder, pool: str | Path, query: str, label: str, out: str | Path, *,
                  aliases: Sequence[str] = (), classnames: Sequence[str] | None = None,
                  templates: Sequence[str] = DEFAULT_TEMPLATES, truth: str | None = None,
                  config: MineConfig | None = None, seed: int = 0, model_id: str = "",
                  batch_size: int = 64) -> MineResult:
    """Mine a scenario for forgetting ``query`` (inside ``label``) from ``pool``; see the module doc.

    ``truth``: the pool's class or subgroup name of the true subgroup (for precision / recall).
    """
    config = config or MineConfig()
    out = Path(out)
    manifest, report = out.with_name(out.stem + ".pool.csv"), out.with_name(out.stem + ".mining.json")
    require(bool(query.strip()), "--query is empty; describe the subgroup, e.g. 'photos of English springer spaniels'")
    require(bool(templates) and all("{}" in t for t in templates), "--templates: every template needs a '{}'")
    for p in (out, manifest, report):
        if p.exists():
            raise ConfigError(f"{p} exists; mining never overwrites a file (it may be an edited scenario): "
                              "choose another --out or remove it")
    images = read_pool(pool)
    if Path(pool).is_file() and Path(pool).resolve() in {p.resolve() for p in (out, manifest, report)}:
        raise ConfigError(f"--out {out} would overwrite the pool manifest {pool}; choose another --out")
    names = _label_space(images, classnames, label)
    clash = [a for a in aliases if a.strip().casefold() in {c.casefold() for c in names}]
    require(not clash, f"--alias {clash}: an alias must be another name of the subgroup, not a class of the label "
            "space; drop it")
    if truth is not None:
        require(any(truth in (p.pool_class, p.pool_subgroup) for p in images),
                f"--truth {truth!r} is no class or subgroup of the pool's labels; give the pool's name of the subgroup")
    log.info("embedding %d pool images", len(images))
    image_emb = embed_pool(model, images, batch_size=batch_size)
    class_emb, texts, contrast_emb = _text_embeddings(model, names, query, aliases, templates, config, batch_size)
    sets = mine_sets(image_emb, texts, class_emb, names.index(label), config, contrast_emb)
    _check_mined(sets, config, names, label, query, len(images))
    rows, scenario = _scenario(images, sets, names, label, query, aliases, templates, config, seed)
    scenario["sources"]["pool"]["root"] = manifest.name  # relative: resolves against the scenario's folder
    comparison = None
    if truth is not None:
        comparison = compare_with_truth(sets, [truth in (p.pool_class, p.pool_subgroup) for p in images])
    summary = {"model": model_id, "pool": str(pool), "pool_images": len(images), "query": query, "aliases": list(aliases),
               "label": label, "classnames": list(names), "config": config.to_dict(), "forget": len(sets.forget),
               "retain": {names[c]: len(v) for c, v in sets.retain.items()},
               "calibration": {names[c]: len(v) for c, v in sets.calibration.items()},
               "truth": truth, "comparison": comparison}
    _write_mined(out, manifest, report, rows, scenario, summary, f"{pool} ({len(images)} images)", model_id, query, label)
    return MineResult(out, manifest, report, summary)


def _text_embeddings(model: DualEncoder, names: Sequence[str], query: str, aliases: Sequence[str],
                     templates: Sequence[str], config: MineConfig, batch_size: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """The class vectors (C, D), the query's and aliases' text rows and the contrast names' vectors."""
    from clipforget.zeroshot import build_zero_shot_classifier

    with torch.no_grad():
        class_emb = build_zero_shot_classifier(model, names, templates, batch_size=batch_size).float().cpu().T
        texts = model.encode_text({k: v.to(model.device) for k, v in model.tokenize([query]).items()}).float().cpu()
        if aliases:
            texts = torch.cat([texts, build_zero_shot_classifier(model, list(aliases), templates,
                                                                 batch_size=batch_size).float().cpu().T])
        contrast = _contrast(config.contrast, names, aliases)
        contrast_emb = (build_zero_shot_classifier(model, contrast, templates, batch_size=batch_size).float().cpu().T
                        if contrast else None)
    return class_emb, texts, contrast_emb


def _check_mined(sets: MinedSets, config: MineConfig, names: Sequence[str], label: str, query: str, pool_size: int) -> None:
    """One clear error when the mined sets cannot make a scenario."""
    if not sets.forget and config.forget_rule == "label":
        raise ConfigError(f"no image of the pool is classified as {label!r} ({pool_size} images, label space "
                          f"{', '.join(names)}); check the pool and --label, or use the query rule")
    if not sets.forget:
        raise ConfigError(f"--query {query!r} matches nothing: it is the nearest text for no image of the pool "
                          f"({pool_size} images, label space {', '.join(names)}); rephrase it, add --alias names, or "
                          "take the images nearest it with --forget-count N")
    if len(sets.forget) < 2:
        raise ConfigError(f"--query {query!r} matches one image only; a forget set needs a train and a test image: "
                          "rephrase it, add --alias names, or take more with --forget-count N")
    own = names.index(label)
    if config.forget_rule == "query" and len(sets.retain.get(own, ())) < 2:
        raise ConfigError(f"the pool has fewer than 2 images of {label!r} far from the query to retain (the siblings "
                          "the label must keep); add such images to the pool, lower guard in --config, or, when the "
                          "subgroup is the whole class, use --forget-rule label")


def _write_mined(out: Path, manifest: Path, report: Path, rows: list[dict[str, Any]], scenario: dict[str, Any],
                 summary: dict[str, Any], pool: str, model_id: str, query: str, label: str) -> None:
    """The pool manifest, the mining report and the scenario file (each atomically), checked to build."""
    from clipforget.data import build_scenario, load_scenario_config

    load_scenario_config({**scenario, "sources": {"pool": {"kind": "manifest", "root": str(manifest)}}})  # a bug if it fails
    atomic_write_text(manifest, _csv(rows))
    atomic_write_json(report, summary)
    header = (f"# Mined by clipforget mine from {pool} under {model_id or 'the model'}:\n"
              f"#   query {query!r}, label {label!r}. Read and edit before running forget; the images and their\n"
              f"#   roles are in {manifest.name} (class column), what was mined in {report.name}.\n"
              "# The hierarchy puts every class under one superclass so that every class may be retained.\n")
    atomic_write_text(out, header + yaml.safe_dump(scenario, sort_keys=False, allow_unicode=True))
    build_scenario(out)  # the written scenario builds as it is


def _scenario(images: Sequence[PoolImage], sets: MinedSets, names: tuple[str, ...], label: str, query: str,
              aliases: Sequence[str], templates: Sequence[str], config: MineConfig, seed: int):
    """The manifest rows and the scenario dict for the mined sets."""
    rows = []

    def add(indices: Sequence[int], role: str, split_test: bool) -> tuple[int, int]:
        tests = held_for_test(len(indices), config.test_fraction) if split_test else set()
        for pos, i in enumerate(indices):
            p = images[i]
            rows.append({"path": p.path, "class": role, "subgroup": role,
                         "split": "test" if pos in tests else "train", "query_margin": f"{float(sets.margin[i]):.5f}",
                         "pool_class": p.pool_class or "", "pool_subgroup": p.pool_subgroup or ""})
        return len(indices) - len(tests), len(tests)

    n_train, n_test = add(sets.forget, "forget", True)
    forget_name = f"mined: {query}"
    forget = {"name": forget_name, "label": label, "text": templates[0].format(label), "aliases": list(aliases),
              "select": {"source": "pool", "classes": ["forget"]},
              "train": {"split": "train", "count": n_train}, "test": {"split": "test", "count": n_test}}
    retain, calibration = [], []
    for c, members in sorted(sets.retain.items()):
        if len(members) < 2:
            continue
        role = f"retain:{names[c]}"
        r_train, r_test = add(members, role, True)
        group = f"{names[c]} (not the query)" if names[c] == label else names[c]
        retain.append({"name": group, "label": names[c], "select": {"source": "pool", "classes": [role]},
                       "train": {"split": "train", "count": r_train}, "test": {"split": "test", "count": r_test}})
    for c, members in sorted(sets.calibration.items()):
        role = f"calibration:{names[c]}"
        add(members, role, False)
        calibration.append({"source": "pool", "classes": [role], "rename": {role: names[c]},
                            "per_class": len(members), "split": "train"})
    require(bool(calibration), "the pool leaves no image for the calibration set after the forget and retain sets; "
            "add images to the pool or lower retain_per_class in --config")
    scenario = {"name": f"mined-{_slug(query)}", "seed": seed,
                "sources": {"pool": {"kind": "manifest", "root": None}},
                "classnames": list(names), "templates": list(templates), "hierarchy": {"mined": list(names)},
                "forget": forget, "retain": retain, "calibration": calibration}
    return rows, scenario


def _csv(rows: Sequence[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "class", "subgroup", "split", "query_margin", "pool_class",
                                             "pool_subgroup"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
