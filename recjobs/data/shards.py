"""Which rank of a job holds which interactions: each user belongs to one rank, with all of the
user's training and validation interactions.

Owning whole users keeps everything a rank needs about its users on that rank: the items to
mask when it scores its validation users, the known pairs its ranking negatives avoid, the
seen items of the export. Users are dealt to the ranks so that both the validation users and
the training interactions come out even: the validation users first, in decreasing order of
their training interactions, then the other users likewise, each group in "snake" order (ranks
0..N-1, then N-1..0, ...) starting from the least loaded rank. Each rank then owns at most
ceil(U / N) of the U validation users, and the ranks' training interactions differ by about
the largest user's count. Every rank computes the same assignment from the same counts: no
communication.
"""

from __future__ import annotations

import numpy as np


def assign_users(train_counts: np.ndarray, eval_users: np.ndarray, world_size: int) -> np.ndarray:
    """The owning rank of each user row (int32, [n_users + 1]; row 0, the OOV user, owns no
    interaction and is given to rank 0).

    `train_counts[u]`: training interactions of user row u; `eval_users`: the rows of the users
    that validation scores (distinct).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    owner = np.zeros(len(train_counts), dtype=np.int32)
    if world_size == 1:
        return owner
    counts = np.asarray(train_counts, dtype=np.int64)
    is_eval = np.zeros(len(counts), dtype=bool)
    is_eval[eval_users] = True
    is_eval[0] = False
    others = np.flatnonzero(~is_eval)
    others = others[others > 0]
    load = np.zeros(world_size, dtype=np.int64)
    for group in (np.flatnonzero(is_eval), others):
        # Largest first; ties by row, so the order (and the assignment) is fixed.
        order = group[np.argsort(-counts[group], kind="stable")]
        lap, place = np.divmod(np.arange(len(order)), world_size)
        snake = np.where(lap % 2 == 0, place, world_size - 1 - place)
        by_load = np.argsort(load, kind="stable")  # the least loaded rank gets the largest user
        owner[order] = by_load[snake]
        load += np.bincount(owner[order], weights=counts[order], minlength=world_size).astype(
            np.int64
        )
    return owner


def index_dtype(n_rows: int) -> np.dtype:
    """The smallest signed integer type that holds the row indices 0..n_rows-1 (signed: torch
    indexes with int16/32/64 after a cast, and reads uint8 as a mask)."""
    for dtype in (np.int16, np.int32):
        if n_rows <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int64)
