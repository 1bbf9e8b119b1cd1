"""Work shared by the processes of one launch: ``accelerate launch`` (or ``torchrun``).

A launch with more than one process (``WORLD_SIZE`` > 1) splits the work the same way on every
process: image embeddings (evaluation, the audit, the stop checks) take a contiguous share of the
images each and gather the rows back in order; the Fisher takes a share of the samples and sums
them; each training batch is drawn the same on every process and each takes its share, and the
gradients are averaged before every optimizer step. Every process then holds the same numbers.
The collectives are accelerate's (``PartialState``: gloo on CPU, NCCL on GPUs); there is no
process-group code here. One process, the default, imports nothing and every function is the
identity.

:func:`alone` lets a process work by itself for a while, e.g. on a bench cell that is its alone;
inside it nothing is split or gathered.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

_alone_depth = 0


def launched() -> int:
    """How many processes the launcher started (1 when there is no launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@functools.cache
def _state():
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def start() -> None:
    """Join the launch now (a no-op without one), before any model is placed: on GPUs accelerate then
    makes this process's own GPU the current one, so ``--device cuda`` means that GPU."""
    if launched() > 1:
        _state()


def process_index() -> int:
    """This process's rank in the launch (0 without one), whether or not it works alone now."""
    return _state().process_index if launched() > 1 else 0


def is_main() -> bool:
    return process_index() == 0


def world_size() -> int:
    """How many processes share the current work: 1 alone or without a launcher."""
    return 1 if _alone_depth or launched() <= 1 else _state().num_processes


@contextmanager
def alone() -> Iterator[None]:
    """Inside, this process splits nothing with the others (no collective is entered)."""
    global _alone_depth
    _alone_depth += 1
    try:
        yield
    finally:
        _alone_depth -= 1


def share(n: int) -> slice:
    """This process's contiguous share of ``n`` items (all of them when it works alone)."""
    w = world_size()
    if w == 1:
        return slice(0, n)
    r = _state().process_index
    return slice(n * r // w, n * (r + 1) // w)


def gather_rows(rows: Tensor) -> Tensor:
    """Every process's ``rows`` (its share, on the CPU), concatenated in rank order."""
    if world_size() == 1:
        return rows
    from accelerate.utils import gather_object

    return torch.cat([part for part in gather_object([rows.cpu()]) if part.numel()])


def sum_all(values: Tensor) -> Tensor:
    """The element-wise sum of ``values`` over the processes."""
    if world_size() == 1:
        return values
    from accelerate.utils import reduce

    return reduce(values, reduction="sum")


def mean_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the processes (in place; a missing one counts as zero)."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    flat = sum_all(flat) / world_size()
    start = 0
    for p in params:
        p.grad.copy_(flat[start : start + p.numel()].view_as(p.grad))
        start += p.numel()


def barrier() -> None:
    """Wait until every process sharing the current work is here (nothing alone or without a launcher)."""
    if world_size() > 1:
        _state().wait_for_everyone()
