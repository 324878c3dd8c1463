"""Per-rank index batches for one epoch.

Each rank trains on its own shard of the interactions (`recjobs.data.shards`) and draws its
epoch order from it: a permutation of the shard seeded by (seed, epoch, rank, world size), no
communication needed. Every rank takes the first `length` positions of its permutation, the
smallest shard's size, because DDP hangs if one rank runs a step the others do not; as the
permutation changes each epoch, a larger shard leaves out different examples each time. At
world size 1 the shard is the whole table and the order that of recjobs before shards.
"""

from __future__ import annotations

import numpy as np
import torch


def _epoch_seed(seed: int, epoch: int, rank: int, world_size: int) -> int:
    """A well-mixed 63-bit seed: nearby seeds give unrelated orders."""
    entropy = [seed % 2**64, epoch % 2**64]
    if world_size > 1:  # world size 1 keeps the seeds (and the orders) of earlier releases
        entropy += [rank, world_size]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
    return int(state[0]) & (2**63 - 1)


def steps_per_epoch(length: int, batch_size: int) -> int:
    """Number of batches each rank gets from `epoch_batches` (the same on every rank)."""
    if length < 1:
        raise ValueError(f"an epoch needs at least one example per rank, got {length}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return -(-length // batch_size)


def epoch_batches(
    shard_size: int,
    batch_size: int,
    *,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    length: int | None = None,
) -> list[torch.Tensor]:
    """This rank's int64 index batches into its shard for `epoch`; the last may be smaller.

    `length` (default: the whole shard) positions of the shard's permutation for this epoch,
    in batches of `batch_size`. Raises ValueError for an empty epoch or a length beyond the
    shard.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    length = shard_size if length is None else length
    steps_per_epoch(length, batch_size)
    if length > shard_size:
        raise ValueError(f"length {length} exceeds the shard's {shard_size} examples")
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch, rank, world_size))
    order = torch.randperm(shard_size, generator=generator)[:length]
    return list(torch.split(order, batch_size))
