"""Progress of long loops: a tqdm bar on a terminal, periodic log lines with counts and ETA elsewhere.

A batch job's stderr is a file, where a bar is either nothing (tqdm's ``disable=None``) or a wall of
carriage returns; there :func:`progress` logs ``desc: 40/200 (20%), 12 s, ETA 48 s`` once
``interval`` seconds have passed since the last such line of any loop (and a last line when a loop
took longer than that), through the ``clipforget.progress`` logger.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

INTERVAL_S = 30.0
"""Seconds between two progress lines when stderr is not a terminal."""


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class _Heartbeat:
    """When the last progress line was logged, by any loop: many short loops in a row still report
    every ``interval`` seconds, where each alone would be too short to."""

    last = time.monotonic()


def _lines(iterable: Iterable[T], desc: str, total: int | None, unit: str, interval: float) -> Iterator[T]:
    start = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - _Heartbeat.last >= interval:
            _Heartbeat.last = now
            elapsed = now - start
            if total:
                eta = elapsed / done * (total - done)
                log.info("%s: %d/%d %s (%.0f%%), %s, ETA %s", desc, done, total, unit, 100 * done / total,
                         _seconds(elapsed), _seconds(eta))
            else:
                log.info("%s: %d %s, %s", desc, done, unit, _seconds(elapsed))
    elapsed = time.monotonic() - start
    if elapsed >= interval:
        _Heartbeat.last = time.monotonic()
        log.info("%s: %d %s done in %s", desc, done, unit, _seconds(elapsed))


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "items",
             interval: float | None = None, terminal: bool | None = None) -> Iterable[T]:
    """``iterable`` with a progress bar (stderr a terminal) or periodic log lines (not a terminal).

    ``total`` defaults to ``len(iterable)`` where it has one; ``terminal`` overrides the check of stderr.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if terminal is None:
        terminal = sys.stderr.isatty()
    if terminal:
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
    return _lines(iterable, desc, total, unit, INTERVAL_S if interval is None else interval)
