"""The stage store of a run directory: each finished stage's tensors and record on disk, checked on
every load, so that a killed run resumes where it stopped."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from clipforget.app.rundir import (
    RESTART_HINT,
    ResumeError,
)
from clipforget.io import (
    atomic_save_safetensors,
    atomic_write_json,
    sha256_file,
)

log = logging.getLogger(__name__)


class DiskStore:
    """:class:`clipforget.methods.base.StageStore` on disk: ``<dir>/<stage>.safetensors`` + ``.json``.

    The JSON is written last and records the tensor file's sha256 (``stage_file``), so a stage
    counts as finished only when both files are complete; on load a missing or changed tensor file
    raises :class:`clipforget.app.rundir.ResumeError` (it is never read as "the stage changed nothing").
    """

    def __init__(self, directory: str | Path, *, read_only: bool = False):
        self.directory, self.read_only = Path(directory), read_only

    def load(self, stage: str, quiet: bool = False) -> dict[str, Any] | None:
        meta = self.directory / f"{stage}.json"
        if not meta.is_file():
            return None
        from safetensors.torch import load_file

        try:
            info = json.loads(meta.read_text())
            recorded = info.pop("stage_file")
        except (ValueError, KeyError, AttributeError, TypeError):
            raise ResumeError(f"stage {stage!r}: {meta} is damaged or was written without a checksum; {RESTART_HINT}") from None
        state = {}
        if recorded is not None:
            tensors = self.directory / recorded["name"]
            if not tensors.is_file():
                raise ResumeError(f"stage {stage!r}: its tensor file {tensors} is missing; {RESTART_HINT}")
            if sha256_file(tensors) != recorded["sha256"]:
                raise ResumeError(f"stage {stage!r}: {tensors} is damaged or changed (its sha256 differs from the "
                                  f"one recorded in {meta.name}); {RESTART_HINT}")
            state = load_file(tensors)
        if not quiet:
            log.info("resuming: stage %r already finished, loaded from %s", stage, self.directory)
        return {"state": state, "info": info}

    def verify(self) -> None:
        """Check every finished stage's files now (as :meth:`load` would), before a run writes anything."""
        for meta in sorted(self.directory.glob("*.json")):
            self.load(meta.stem, quiet=True)

    def save(self, stage: str, payload: dict[str, Any]) -> None:
        if self.read_only:
            return
        recorded = None
        if payload.get("state"):
            tensors = atomic_save_safetensors(payload["state"], self.directory / f"{stage}.safetensors")
            recorded = {"name": tensors.name, "sha256": sha256_file(tensors)}
        atomic_write_json(self.directory / f"{stage}.json", {**payload.get("info", {}), "stage_file": recorded})
