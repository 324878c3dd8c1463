"""Per-rank index batches for one epoch.

Every rank computes the same permutation (seeded by seed and epoch, no communication needed)
and takes its own disjoint shard of it. All shards have the same length, dropping the last
`num_examples % world_size` examples of the permutation, because DDP hangs if one rank runs
a step the others do not. As the permutation changes each epoch, different examples are
dropped each time.
"""

from __future__ import annotations

import numpy as np
import torch


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch): nearby seeds give unrelated orders."""
    state = np.random.SeedSequence([seed % 2**64, epoch % 2**64]).generate_state(1, np.uint64)
    return int(state[0]) & (2**63 - 1)


def _shard_size(num_examples: int, batch_size: int, world_size: int) -> int:
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    per_rank = num_examples // world_size
    if per_rank == 0:
        raise ValueError(
            f"{num_examples} examples cannot be shared among {world_size} ranks: "
            "every rank needs at least one"
        )
    return per_rank


def steps_per_epoch(num_examples: int, batch_size: int, world_size: int = 1) -> int:
    """Number of batches each rank gets from `epoch_batches` (the same on every rank)."""
    per_rank = _shard_size(num_examples, batch_size, world_size)
    return -(-per_rank // batch_size)


def epoch_batches(
    num_examples: int,
    batch_size: int,
    *,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
) -> list[torch.Tensor]:
    """This rank's int64 index batches for `epoch`; the last batch may be smaller.

    Rank r gets positions [r * n_r, (r + 1) * n_r) of the epoch's permutation, with
    n_r = num_examples // world_size. `shuffle=False` uses the identity order (evaluation).
    Raises ValueError if a rank's shard would be empty.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    per_rank = _shard_size(num_examples, batch_size, world_size)
    if shuffle:
        generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        order = torch.randperm(num_examples, generator=generator)
    else:
        order = torch.arange(num_examples)
    shard = order[rank * per_rank : (rank + 1) * per_rank]
    return list(torch.split(shard, batch_size))
