"""Sampled negative items for ranking: from which distribution, and which items are off limits.

A ranking model trained with BCE sees each positive (user, item) next to `negatives_per_pos`
items drawn here. Validation draws its negatives here too, once, with a fixed seed, and never
an item the user is known to like (a training or validation interaction): such a "negative" is a
positive labelled 0, and it caps the AUC a perfect model could reach.
"""

from __future__ import annotations

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
