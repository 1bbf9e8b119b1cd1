"""Turn records into image tensors: a torch Dataset, a one-call stacked loader, and a streamed set."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
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
    holds one batch per worker, not the set. A pass over the set (:meth:`batches`) reads it through a
    DataLoader; indexing (``images[i]``, ``images[a:b]``, ``images[index_tensor]``: a training
    batch) reads those images now, ``workers`` threads at a time, and returns them as one tensor;
    ``len``, ``shape`` and ``ndim`` answer as the tensor's would. ``then`` adds a per-batch step run
    in the main process without gradient (a frozen prefix of the image tower); ``identity`` names
    the content (records, the first preprocessed image, the steps) for resume keys and embedding memos.
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

    def subset(self, index: slice | Sequence[int] | Tensor) -> "StreamedImages":
        """The images at ``index`` (a slice or positions), still streamed."""
        return self._with(self.records[index] if isinstance(index, slice) else tuple(self.records[i] for i in _positions(index)),
                          self.steps)

    def join(self, other: "StreamedImages") -> "StreamedImages":
        """These images followed by ``other``'s, still streamed; both must share sources, transform and steps."""
        if (other.dataset.sources, other.dataset.transform) != (self.dataset.sources, self.dataset.transform) or \
                [t for t, _ in other.steps] != [t for t, _ in self.steps]:
            raise ValueError("only streamed sets of the same sources, transform and steps can be joined")
        return self._with(self.records + other.records, self.steps)

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Tensor:
        if isinstance(index, int):
            return self[[index]][0]
        positions = range(len(self))[index] if isinstance(index, slice) else _positions(index)
        if not positions:
            return torch.empty((0, *self.shape[1:]))
        map_large_allocations()
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            images = torch.stack(list(pool.map(lambda i: self.dataset[i][0], positions)))
        return self._stepped(images)

    def _stepped(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            for _, step in self.steps:
                images = step(images)
        return images

    @functools.cached_property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self[:1].shape[1:]))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _with(self, records, steps) -> "StreamedImages":
        return StreamedImages(records, self.dataset.sources, self.dataset.transform, workers=self.workers, steps=steps)

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """Every image once, in record order, ``batch_size`` at a time, with the steps applied."""
        map_large_allocations()
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=self.workers)
        for images, _ in loader:
            yield self._stepped(images)

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


#: glibc's mallopt parameter for the size from which an allocation is its own mmap, and the size we set.
_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES = -3, 2**20


@functools.cache
def map_large_allocations() -> bool:
    """Have glibc serve every allocation of 1 MiB or more by its own mmap, returned to the system when freed.

    Called when a streamed set is first read (a set only sized for streaming and then kept in memory
    leaves the allocator as it was). glibc otherwise raises its mmap threshold each time a large
    chunk is freed (up to 32 MiB), so the batches of a streamed pass come from the heap and leave
    it fragmented: peak memory then wanders by whole batches from run to run. Setting the threshold
    fixes it and stops the adjustment. Returns whether it was applied (False off glibc: a no-op).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False


def _positions(index: Sequence[int] | Tensor) -> list[int]:
    return [int(i) for i in (index.reshape(-1).tolist() if isinstance(index, Tensor) else index)]


Images = Tensor | StreamedImages
"""A set of preprocessed images: in memory, or streamed from its files."""


def take(images: Images, index: slice | Sequence[int] | Tensor) -> Images:
    """The images at ``index``: a tensor indexed, a streamed set's subset (still streamed)."""
    return images.subset(index) if isinstance(images, StreamedImages) else images[index]


def join(first: Images, second: Images) -> Images:
    """``first`` followed by ``second``: both tensors (concatenated) or both streamed (still streamed)."""
    if isinstance(first, StreamedImages) and isinstance(second, StreamedImages):
        return first.join(second)
    if isinstance(first, Tensor) and isinstance(second, Tensor):
        return torch.cat([first, second.to(first.device)])
    raise ValueError("a set kept in memory and a streamed one cannot be joined; stream both or neither "
                     "(--stream-above applies to every set)")


@dataclass(frozen=True)
class Streaming:
    """Which image sets are streamed (:class:`StreamedImages`) instead of kept in memory.

    ``above_mib``: a set (training, test or held out) whose preprocessed images would take more than
    this many MiB is streamed (0: every set). ``workers``: DataLoader workers that read and preprocess
    every set, kept or streamed (None: :func:`default_workers`; 0: the main process).
    """

    above_mib: float = 1024.0
    workers: int | None = None

    def __post_init__(self) -> None:
        if not self.above_mib >= 0:  # NaN too
            raise ConfigError(f"the streaming threshold must be 0 MiB or more (0 streams every set); "
                             f"got {self.above_mib}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"DataLoader workers must be 0 or more (0 reads in the main process); got {self.workers}")

    def worker_count(self) -> int:
        return default_workers() if self.workers is None else self.workers


def default_workers() -> int:
    """DataLoader workers reading image sets: one core is left to the main process, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))
