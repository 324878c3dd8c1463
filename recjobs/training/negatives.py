"""Sampled negative items for ranking: from which distribution, and which items are off limits.

A ranking model trained with BCE sees each positive (user, item) next to `negatives_per_pos`
items drawn here. Validation draws its negatives here too, once, with a fixed seed (each from a
hash of the seed, its row's position in the validation table and the draw's number, so that a
row gets the same negatives on whichever rank holds it), and never an item the user is known
to like (a training or validation interaction): such a "negative" is a
positive labelled 0, and it caps the AUC a perfect model could reach.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# Draws of items the user already has are redrawn at most this many times. A user who has all
# but a handful of the catalogue may still hold one after that: `sample` says which.
MAX_REDRAWS = 64


class NegativeSampler:
    """Items 1..n_items (0 is the OOV row), uniform or by training popularity ** alpha.

    `known_users`/`known_items` are (user, item) pairs a draw must avoid for that user.
    """

    def __init__(
        self,
        n_items: int,
        item_counts: Tensor,
        distribution: str = "uniform",
        alpha: float = 0.75,
        known_users: Tensor | None = None,
        known_items: Tensor | None = None,
        device: torch.device | None = None,
    ):
        self.n_items = n_items
        self.device = device or torch.device("cpu")
        self.weights = None
        if distribution == "popularity":
            # +1: an item without training interactions stays drawable.
            counts = item_counts[1:].to(device=self.device, dtype=torch.float64)
            self.weights = ((counts + 1.0) ** alpha).to(torch.float32)
        self.known = None
        if known_users is not None and known_items is not None:
            keys = self._keys(known_users.to(self.device), known_items.to(self.device))
            self.known = torch.unique(keys)  # sorted

    def _keys(self, users: Tensor, items: Tensor) -> Tensor:
        return users.long() * (self.n_items + 1) + items.long()

    def _draw(self, n: int, gen: torch.Generator) -> Tensor:
        if self.weights is None:
            return torch.randint(1, self.n_items + 1, (n,), generator=gen, device=self.device)
        return torch.multinomial(self.weights, n, replacement=True, generator=gen) + 1

    def is_known(self, users: Tensor, items: Tensor) -> Tensor:
        if self.known is None or len(self.known) == 0:
            return torch.zeros(len(users), dtype=torch.bool, device=users.device)
        keys = self._keys(users, items)
        at = torch.searchsorted(self.known, keys).clamp_max(len(self.known) - 1)
        return self.known[at] == keys

    def sample(self, users: Tensor, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """`k` items per user (user-major: user 0's k, then user 1's, ...) and a mask of the
        draws that are still known items after MAX_REDRAWS (all False without known pairs)."""
        owners = users.to(self.device).repeat_interleave(k)
        items = self._draw(len(owners), gen)
        if self.known is None:
            return items, torch.zeros(len(items), dtype=torch.bool, device=items.device)
        bad = self.is_known(owners, items)
        for _ in range(MAX_REDRAWS):
            where = bad.nonzero().flatten()
            if len(where) == 0:
                break
            items[where] = self._draw(len(where), gen)
            bad[where] = self.is_known(owners[where], items[where])
        return items, bad

    def sample_keyed(self, users: Tensor, rows: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
        """As `sample`, uniform, but draw j of row `rows[i]` (redraw a) is a hash of (seed,
        rows[i], j, a): the same items for a row whichever other rows are drawn with it, and
        in whichever process."""
        owners = users.to(self.device).repeat_interleave(k)
        keys = (rows.long().repeat_interleave(k) * k + torch.arange(k).repeat(len(rows))).numpy()
        keys = keys.astype(np.uint64)
        items = torch.from_numpy(self._hashed_items(keys, seed, 0)).to(self.device)
        bad = self.is_known(owners, items)
        for attempt in range(1, MAX_REDRAWS + 1):
            where = bad.nonzero().flatten()
            if len(where) == 0:
                break
            redrawn = self._hashed_items(keys[where.cpu().numpy()], seed, attempt)
            items[where] = torch.from_numpy(redrawn).to(self.device)
            bad[where] = self.is_known(owners[where], items[where])
        return items, bad

    def _hashed_items(self, keys: np.ndarray, seed: int, attempt: int) -> np.ndarray:
        """Items 1..n_items from splitmix64 of the keys, salted by seed and attempt (the modulo's
        bias is below n_items / 2**64)."""
        salt = _splitmix64(np.array([seed % 2**64, attempt], dtype=np.uint64))
        mixed = _splitmix64(_splitmix64(keys ^ salt[0]) ^ salt[1])
        return (mixed % np.uint64(self.n_items)).astype(np.int64) + 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, element-wise (uint64 arithmetic wraps, as it must here)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
