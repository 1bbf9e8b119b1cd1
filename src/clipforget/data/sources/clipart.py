"""``openclipart``: public-domain clip art from Debian's ``openclipart-png``, labelled by a shipped mapping.

The package sorts its drawings into a category tree (``animals/birds``, ``transportation``, ...) that
does not name classes, so the classes come from ``assets/openclipart.csv``: one row per distinct image
(``path`` under the package's ``png`` folder, ``class``, ``sha256``), chosen by eye from the tree and the
file names, and only drawings a person would call that class (no road signs, icons, food or toys).
The package holds some drawings more than once under different folders; the mapping lists each image
once, so a scenario cannot put one drawing in two sets. Every file's sha256 is checked when the source
opens, so a different version of the package is refused instead of silently relabelled.

Entries have no split; their subgroup is the drawing's folder in the tree (``animals/birds/penguin``).
Transparent drawings are composited onto white before they reach the model.
"""

from __future__ import annotations

import csv
import hashlib
from importlib import resources
from pathlib import Path, PurePosixPath

from PIL import Image

from clipforget.data.locations import DataNotFoundError
from clipforget.data.sources.base import (
    UNREADABLE_HINT,
    Entry,
    FileSource,
    ImageLoadError,
    ImageSource,
    SourceConfig,
    register_source_kind,
)
from clipforget.io import sha256_file

OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
PACKAGE = "openclipart-png (Debian 1:0.18+dfsg-19)"
INSTALL_HINT = ("install Debian's 'openclipart-png' (make data does, as root; or: sudo apt-get install -y openclipart-png), "
                "or set the source's 'root' to a copy of its png folder")


def mapping_rows() -> list[dict[str, str]]:
    """The shipped mapping: one ``{path, class, sha256}`` per reviewed drawing."""
    text = resources.files("clipforget").joinpath("assets/openclipart.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


class ClipArtSource(FileSource):
    """Drawings under ``root`` named by a mapping; each loads as RGB on a white ground."""

    def load(self, key: str) -> Image.Image:
        path = self.root / key
        try:
            with Image.open(path) as img:
                img = img.convert("RGBA")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ImageLoadError(f"cannot read image {path} ({e}); {UNREADABLE_HINT}") from e
        ground = Image.new("RGBA", img.size, (255, 255, 255, 255))
        ground.alpha_composite(img)
        return ground.convert("RGB")


def clipart_source(root: Path, rows: list[dict[str, str]], identity: str) -> ClipArtSource:
    """The mapped drawings under ``root``; a missing or changed file is refused by name."""
    if not root.is_dir():
        raise DataNotFoundError(f"clip art folder {root} does not exist; {INSTALL_HINT}")
    missing = [r["path"] for r in rows if not (root / r["path"]).is_file()]
    if missing:
        raise DataNotFoundError(f"clip art folder {root} lacks {len(missing)} of the {len(rows)} mapped drawings "
                                f"(first: {missing[0]}); the mapping was made for {PACKAGE}: {INSTALL_HINT}")
    changed = [r["path"] for r in rows if sha256_file(root / r["path"]) != r["sha256"]]
    if changed:
        raise DataNotFoundError(f"clip art folder {root}: {len(changed)} drawings differ from the ones the mapping "
                                f"names (first: {changed[0]}); the mapping was made for {PACKAGE}: {INSTALL_HINT}")
    entries = tuple(Entry(r["path"], r["class"], str(PurePosixPath(r["path"]).parent), None) for r in rows)
    return ClipArtSource(root, entries, identity)


@register_source_kind("openclipart")
def _openclipart(config: SourceConfig) -> ImageSource:
    root = Path(config.root) if config.root is not None else OPENCLIPART_DIR
    rows = mapping_rows()
    mapping = hashlib.sha256("\n".join(f"{r['path']},{r['class']},{r['sha256']}" for r in rows).encode())
    return clipart_source(root, rows, f"openclipart:{mapping.hexdigest()[:16]}")
