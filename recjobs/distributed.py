"""How a task splits its work over the ranks of a job, and the collectives that join it again.

Each rank holds the interactions of its own users (`recjobs.data.shards`): a task validates
its own users and joins the pieces with a sum (`all_reduce_sum`) or a gather in rank order
(`all_gather_rows`); global negatives gather the item embeddings with autograd
(`all_gather_with_grad`); the export gathers every rank's training pairs on rank 0
(`gather_rows_to_main`). At world size 1 every function here is
the identity and calls nothing in torch.distributed, so a one-process run needs no process
group. Collectives run on the default group, on the tensor's own device: the trainer picks
NCCL exactly when it trains on CUDA, so a task's tensors are always on the right device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank `rank` of `world_size`. `cpu_group`: the process
    group for collectives on CPU tensors when the default one is NCCL (None: the default)."""

    rank: int = 0
    world_size: int = 1
    cpu_group: Any = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} of world size {self.world_size}")


def all_reduce_sum(values: Tensor, ranks: Ranks, group: Any = None) -> Tensor:
    """The element-wise sum of `values` over the ranks; the same tensor on every rank."""
    if ranks.world_size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, group=group)
    return values


def all_gather_equal(rows: Tensor, ranks: Ranks) -> Tensor:
    """Every rank's `rows`, the same shape on every rank, concatenated in rank order (no
    gradient; one collective)."""
    if ranks.world_size == 1:
        return rows
    pieces = [torch.empty_like(rows) for _ in range(ranks.world_size)]
    dist.all_gather(pieces, rows.contiguous())
    return torch.cat(pieces)


def all_gather_rows(rows: Tensor, ranks: Ranks) -> Tensor:
    """Every rank's `rows` concatenated along dim 0 in rank order (no gradient).

    The ranks may hold different numbers of rows (an uneven share): the lengths are gathered
    first, every piece is padded to the longest, and the padding is cut off again.
    """
    if ranks.world_size == 1:
        return rows
    padded, counts = _padded_to_longest(rows, ranks, None)
    return _unpadded(all_gather_equal(padded, ranks).split(len(padded)), counts)


def gather_rows_to_main(rows: Tensor, ranks: Ranks) -> Tensor | None:
    """Every rank's `rows` concatenated along dim 0 in rank order, on rank 0 only (None on the
    others: only rank 0 holds them all), through the CPU (`ranks.cpu_group`). Uneven lengths as
    in `all_gather_rows`."""
    if ranks.world_size == 1:
        return rows
    padded, counts = _padded_to_longest(rows.cpu(), ranks, ranks.cpu_group)
    pieces = [torch.empty_like(padded) for _ in counts] if ranks.rank == 0 else None
    dist.gather(padded, pieces, dst=0, group=ranks.cpu_group)
    return None if pieces is None else _unpadded(pieces, counts)


def _padded_to_longest(rows: Tensor, ranks: Ranks, group: Any) -> tuple[Tensor, list[int]]:
    """`rows` padded with zeros to the longest rank's length, and every rank's length."""
    device = rows.device
    lengths = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(ranks.world_size)]
    dist.all_gather(lengths, torch.tensor([len(rows)], device=device), group=group)
    counts = [int(n) for n in lengths]
    padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[: len(rows)] = rows
    return padded, counts


def _unpadded(pieces: Sequence[Tensor], counts: list[int]) -> Tensor:
    return torch.cat([piece[:n] for piece, n in zip(pieces, counts, strict=True)])


def all_gather_with_grad(rows: Tensor, ranks: Ranks) -> Tensor:
    """Every rank's `rows` (the same shape on every rank) concatenated in rank order, with
    autograd: the backward pass sends each rank the sum over all ranks of the gradient of its
    piece, so the losses of the other ranks train this rank's rows too."""
    if ranks.world_size == 1:
        return rows
    return _GatherWithGrad.apply(rows, ranks.rank, ranks.world_size)


class _GatherWithGrad(torch.autograd.Function):
    """torch.distributed.nn.functional.all_gather does this too, but torch 2.13 deprecates it
    for a private module; this is the same two collectives on the public API."""

    @staticmethod
    def forward(ctx: Any, rows: Tensor, rank: int, world_size: int) -> Tensor:
        ctx.rank, ctx.rows = rank, len(rows)
        pieces = [torch.empty_like(rows) for _ in range(world_size)]
        dist.all_gather(pieces, rows.contiguous())
        return torch.cat(pieces)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous()
        if dist.get_backend() == dist.Backend.NCCL:  # reduce-scatter: each rank its own piece
            mine = torch.empty((ctx.rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(mine, grad)
            return mine, None, None
        # gloo has no reduce-scatter: the sum of the whole gradient, then this rank's piece.
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None
