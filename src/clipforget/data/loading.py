"""Turn records into image tensors: a torch Dataset, a one-call stacked loader, and a streamed set."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clipforget.config import ConfigError
from clipforget.data.sources import UNREADABLE_HINT, ImageLoadError, ImageSource
from clipforget.data.types import Record
from clipforget.progress import progress

Transform = Callable[[Image.Image], Tensor]


class RecordDataset(Dataset):
    """``dataset[i] -> (transform(image of records[i]), i)``; images are read on access."""

    def __init__(self, records: Sequence[Record], sources: Mapping[str, ImageSource], transform: Transform):
        missing = sorted({r.source for r in records} - set(sources))
        if missing:
            raise KeyError(f"records name source(s) {missing} that are not among {sorted(sources)}")
        self.records = tuple(records)
        self.sources = sources
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        r = self.records[index]
        try:
            image = self.sources[r.source].load(r.key)
        except ImageLoadError:
            raise
        except Exception as e:  # a source-specific failure: still name the image
            raise ImageLoadError(f"cannot read image {r.key!r} of source {r.source!r} ({e}); {UNREADABLE_HINT}") from e
        return self.transform(image), index


def load_images(
    records: Sequence[Record],
    sources: Mapping[str, ImageSource],
    transform: Transform,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    desc: str = "images",
) -> Tensor:
    """All ``records`` as one stacked tensor ``(N, ...)`` in record order, with a progress bar."""
    dataset = RecordDataset(records, sources, transform)
    if len(dataset) == 0:
        raise ValueError(f"{desc}: no records to load")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out = None  # filled in place: the set is held once, not once in batches and again stacked
    for images, index in progress(loader, desc=desc, unit="batches"):
        if out is None:
            out = torch.empty((len(dataset), *images.shape[1:]), dtype=images.dtype)
        out[index] = images
    return out


class StreamedImages:
    """Images of ``records`` read, decoded and preprocessed at every pass, in DataLoader workers.

    Stands where an image tensor (N, C, H, W) would, for a set too large to keep in memory: memory
    holds one batch per worker, not the set. ``then`` adds a per-batch step run in the main process
    (a frozen prefix of the image tower); ``identity`` names the content (records, the first
    preprocessed image, the steps) for resume keys and embedding memos.
    """

    def __init__(self, records: Sequence[Record], sources: Mapping[str, ImageSource], transform: Transform, *,
                 workers: int = 0, steps: tuple[tuple[str, Callable[[Tensor], Tensor]], ...] = ()):
        if workers < 0:
            raise ValueError(f"workers must be 0 or more (0 reads in the main process); got {workers}")
        self.dataset = RecordDataset(records, sources, transform)
        if len(self.dataset) == 0:
            raise ValueError("no records to stream")
        self.workers, self.steps = workers, steps
        self._identity: str | None = None

    @property
    def records(self) -> tuple[Record, ...]:
        return self.dataset.records

    def __len__(self) -> int:
        return len(self.dataset)

    def then(self, tag: str, step: Callable[[Tensor], Tensor]) -> "StreamedImages":
        """The same images with ``step`` applied to every batch after preprocessing; ``tag`` names it."""
        return self._with(self.records, (*self.steps, (tag, step)))

    def subset(self, index: slice) -> "StreamedImages":
        return self._with(self.records[index], self.steps)

    def _with(self, records, steps) -> "StreamedImages":
        return StreamedImages(records, self.dataset.sources, self.dataset.transform, workers=self.workers, steps=steps)

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """Every image once, in record order, ``batch_size`` at a time, with the steps applied."""
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=self.workers)
        for images, _ in loader:
            for _, step in self.steps:
                images = step(images)
            yield images

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def load(self, batch_size: int = 64) -> Tensor:
        """The whole set as one tensor (what streaming avoids; for small subsets)."""
        return torch.cat(list(self.batches(batch_size)))

    @functools.cached_property
    def _first(self) -> Tensor:
        """The first image, preprocessed (what the identity and the size are read from)."""
        return self.dataset[0][0].contiguous()

    def identity(self) -> str:
        if self._identity is None:
            h = hashlib.sha256()
            for r in self.records:
                h.update(f"{r.source}|{r.key}|{r.label}\n".encode())
            first = self._first
            h.update(f"{first.dtype}|{tuple(first.shape)}\n".encode())
            h.update(first.reshape(-1).view(torch.uint8).numpy())  # hashed in place, no copy
            h.update("|".join(tag for tag, _ in self.steps).encode())
            self._identity = h.hexdigest()
        return self._identity

    def decoded_bytes(self) -> int:
        """What the set would take in memory as one preprocessed tensor."""
        return len(self) * self._first.numel() * self._first.element_size()


@dataclass(frozen=True)
class Streaming:
    """Which held-out sets are streamed (:class:`StreamedImages`) instead of kept in memory.

    ``above_mib``: a held-out set whose preprocessed images would take more than this many MiB is
    streamed (0: every held-out set). ``workers``: DataLoader workers that read and preprocess a
    streamed set (None: :func:`default_workers`; 0: the main process).
    """

    above_mib: float = 1024.0
    workers: int | None = None

    def __post_init__(self) -> None:
        if not self.above_mib >= 0:  # NaN too
            raise ConfigError(f"the streaming threshold must be 0 MiB or more (0 streams every held-out set); "
                             f"got {self.above_mib}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"DataLoader workers must be 0 or more (0 reads in the main process); got {self.workers}")

    def worker_count(self) -> int:
        return default_workers() if self.workers is None else self.workers


def default_workers() -> int:
    """DataLoader workers for streamed sets: one core is left to the main process, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))
