"""pyproject.toml says what the package needs and ships, and nothing more."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMPORT_NAME = {"open_clip_torch": "open_clip", "pyyaml": "yaml", "pillow": "PIL"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_every_declared_dependency_is_imported_by_the_package():
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "clipforget").rglob("*.py"))
    for requirement in PYPROJECT["project"]["dependencies"]:
        module = IMPORT_NAME.get(_name(requirement), _name(requirement))
        assert re.search(rf"^\s*(import|from) {module}\b", source, re.MULTILINE), f"{requirement} is declared but never imported"


def test_every_dependency_line_says_why_it_is_there():
    text = (ROOT / "pyproject.toml").read_text()
    block = text[text.index("dependencies = [") : text.index("]", text.index("dependencies = ["))]
    for line in block.splitlines()[1:]:
        assert "#" in line and line.split("#", 1)[1].strip(), f"no reason given: {line.strip()}"


def test_every_package_data_pattern_ships_a_file():
    package = ROOT / "src" / "clipforget"
    for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["clipforget"]:
        assert any(p.is_file() for p in package.glob(pattern)), f"package-data {pattern!r} matches no file"
