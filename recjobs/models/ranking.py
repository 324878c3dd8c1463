"""Ranking models: DLRM and DCN-v2, each scoring a (user, item) pair with one logit.

Each categorical column is an embedding, each multi-valued column a pooled EmbeddingBag vector
(both take part in DLRM's pairwise interactions as "sparse features"), and the numeric columns
(standardized values and missing indicators) are the dense input. DLRM's bottom MLP reads the
dense input, as in the DLRM paper, together with the concatenated embeddings: without numeric
columns (the default) it reads the embeddings alone and its output plays the dense vector's role,
so adding numeric columns adds to what it sees instead of replacing it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recjobs.models.two_tower import (
    FeatureRows,
    make_bags,
    make_mlp,
    make_tables,
    side_input,
)


def _pair_input(
    model: nn.Module, user_feats: Tensor | FeatureRows, item_feats: Tensor | FeatureRows
) -> tuple[Tensor, Tensor | None]:
    """(embeddings [B, F, D] of both sides' columns, dense [B, N] of both sides or None)."""
    user_embs, user_dense = side_input(model.user_tables, model.user_bags, user_feats)
    item_embs, item_dense = side_input(model.item_tables, model.item_bags, item_feats)
    embs = torch.cat([user_embs, item_embs], dim=1)
    denses = [d for d in (user_dense, item_dense) if d is not None]
    dense = torch.cat(denses, dim=1).to(embs.dtype) if denses else None
    return embs, dense


class DLRM(nn.Module):
    """DLRM (Naumov et al. 2019).

    Bottom MLP: concat(column embeddings, dense input) → hidden_dims → D.
    Vectors: the bottom MLP's output plus one embedding per categorical or multi-valued column,
    F = 1 + Cu + Ci + Mu + Mi in all.
    Interactions: the F(F-1)/2 dot products of distinct pairs (strict upper triangle).
    Top MLP: concat(dense vector, interactions) → scorer_hidden_dims → 1 logit.
    """

    def __init__(
        self,
        user_cardinalities: Sequence[int],
        item_cardinalities: Sequence[int],
        embedding_dim: int,
        hidden_dims: Sequence[int],
        scorer_hidden_dims: Sequence[int],
        dropout: float,
        *,
        sparse: bool = False,
        user_dense: int = 0,
        item_dense: int = 0,
        user_multi: Sequence[int] = (),
        item_multi: Sequence[int] = (),
        multi_pooling: str = "mean",
    ):
        super().__init__()
        self.user_tables = make_tables(user_cardinalities, embedding_dim, sparse=sparse)
        self.item_tables = make_tables(item_cardinalities, embedding_dim, sparse=sparse)
        self.user_bags = make_bags(user_multi, embedding_dim, multi_pooling, sparse=sparse)
        self.item_bags = make_bags(item_multi, embedding_dim, multi_pooling, sparse=sparse)
        n_cols = (
            len(user_cardinalities) + len(item_cardinalities) + len(user_multi) + len(item_multi)
        )
        self.bottom_mlp = make_mlp(
            n_cols * embedding_dim + user_dense + item_dense,
            hidden_dims,
            dropout,
            out_dim=embedding_dim,
        )
        self.num_vectors = n_cols + 1
        rows, cols = torch.triu_indices(self.num_vectors, self.num_vectors, offset=1)
        # Not persistent: derived from the shapes, so checkpoints need not carry it.
        self.register_buffer("_pair_rows", rows, persistent=False)
        self.register_buffer("_pair_cols", cols, persistent=False)
        self.num_interactions = int(rows.numel())
        self.top_mlp = make_mlp(
            embedding_dim + self.num_interactions, scorer_hidden_dims, dropout, out_dim=1
        )

    def interactions(self, dense: Tensor, embs: Tensor) -> Tensor:
        """dense [B, D], embs [B, C, D] → [B, F(F-1)/2] pairwise dot products, F = C + 1."""
        vectors = torch.cat([dense.unsqueeze(1), embs], dim=1)
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        return gram[:, self._pair_rows, self._pair_cols]

    def forward(self, user_feats: Tensor | FeatureRows, item_feats: Tensor | FeatureRows) -> Tensor:
        embs, numeric = _pair_input(self, user_feats, item_feats)
        bottom_in = embs.flatten(1)
        if numeric is not None:
            bottom_in = torch.cat([bottom_in, numeric], dim=1)
        dense = self.bottom_mlp(bottom_in)
        top_in = torch.cat([dense, self.interactions(dense, embs)], dim=1)
        return self.top_mlp(top_in).squeeze(-1)


class CrossLayer(nn.Module):
    """One full-rank DCN-v2 cross layer: x_{l+1} = x0 ⊙ (W x_l + b) + x_l."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.linear(x) + x


class DCN(nn.Module):
    """DCN-v2 (Wang et al. 2021), parallel form.

    x0 = concat(column embeddings, pooled multi-valued columns, dense input); `cross_layers`
    cross layers and a deep MLP (hidden_dims) both read x0; concat(cross output, deep output)
    → scorer MLP (scorer_hidden_dims) → 1 logit.
    """

    def __init__(
        self,
        user_cardinalities: Sequence[int],
        item_cardinalities: Sequence[int],
        embedding_dim: int,
        hidden_dims: Sequence[int],
        scorer_hidden_dims: Sequence[int],
        dropout: float,
        *,
        cross_layers: int = 3,
        sparse: bool = False,
        user_dense: int = 0,
        item_dense: int = 0,
        user_multi: Sequence[int] = (),
        item_multi: Sequence[int] = (),
        multi_pooling: str = "mean",
    ):
        super().__init__()
        if cross_layers < 0:
            raise ValueError(f"cross_layers must be >= 0, got {cross_layers}")
        self.user_tables = make_tables(user_cardinalities, embedding_dim, sparse=sparse)
        self.item_tables = make_tables(item_cardinalities, embedding_dim, sparse=sparse)
        self.user_bags = make_bags(user_multi, embedding_dim, multi_pooling, sparse=sparse)
        self.item_bags = make_bags(item_multi, embedding_dim, multi_pooling, sparse=sparse)
        n_cols = (
            len(user_cardinalities) + len(item_cardinalities) + len(user_multi) + len(item_multi)
        )
        x0_dim = n_cols * embedding_dim + user_dense + item_dense
        self.cross = nn.ModuleList(CrossLayer(x0_dim) for _ in range(cross_layers))
        self.deep = make_mlp(x0_dim, hidden_dims, dropout)
        deep_dim = int(hidden_dims[-1]) if hidden_dims else x0_dim
        self.scorer = make_mlp(x0_dim + deep_dim, scorer_hidden_dims, dropout, out_dim=1)

    def forward(self, user_feats: Tensor | FeatureRows, item_feats: Tensor | FeatureRows) -> Tensor:
        embs, numeric = _pair_input(self, user_feats, item_feats)
        x0 = embs.flatten(1)
        if numeric is not None:
            x0 = torch.cat([x0, numeric], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.scorer(torch.cat([x, self.deep(x0)], dim=1)).squeeze(-1)
