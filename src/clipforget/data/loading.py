"""Turn records into image tensors: a torch Dataset and a one-call stacked loader."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

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
    batches = [images for images, _ in progress(loader, desc=desc, unit="batches")]
    return torch.cat(batches)
