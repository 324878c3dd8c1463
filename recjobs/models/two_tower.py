"""Two-tower retrieval model and its in-batch sampled-softmax loss.

Also home of the building blocks every model shares (per-column embedding tables, their
lookup, the bags of multi-valued columns, the split of a side's feature rows, and the MLP
stack). They live here rather than in a helpers module because the two-tower
model is the first user of each; `recjobs.models.ranking` imports them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Small enough that dot products of fresh embeddings start near zero (no saturated softmax or
# sigmoid at step 0), large enough that the towers' first layers see a non-degenerate input.
EMBEDDING_INIT_STD = 0.05


def make_tables(cardinalities: Sequence[int], dim: int, *, sparse: bool) -> nn.ModuleList:
    """One `nn.Embedding(card, dim)` per categorical column, initialised from the global seed.

    A ModuleList (not a dict keyed by column name) so the model only needs cardinalities, and so
    optimisers and the trainer can find every table with `isinstance(m, nn.Embedding)`.
    """
    if len(cardinalities) == 0:
        raise ValueError("need at least one categorical column (the id column)")
    tables = nn.ModuleList()
    for col, card in enumerate(cardinalities):
        card = int(card)
        if card < 1:
            raise ValueError(f"column {col}: embedding table size must be >= 1, got {card}")
        table = nn.Embedding(card, dim, sparse=sparse)
        nn.init.normal_(table.weight, mean=0.0, std=EMBEDDING_INIT_STD)
        tables.append(table)
    return tables


class FeatureRows(Protocol):
    """One side's feature rows as `recjobs.data.Features` holds them (models import nothing
    from the data layer): categorical indices [B, C], dense floats [B, N2] or None, and one
    padded index matrix [B, L] per multi-valued column (0: padding)."""

    cat: Tensor
    dense: Tensor | None
    multi: tuple[Tensor, ...]


def feature_parts(feats: Tensor | FeatureRows) -> tuple[Tensor, Tensor | None, tuple[Tensor, ...]]:
    """(categorical, dense, multi) of `feats`; a plain tensor is categorical columns only."""
    if isinstance(feats, Tensor):
        return feats, None, ()
    return feats.cat, feats.dense, feats.multi


def make_bags(cardinalities: Sequence[int], dim: int, mode: str, *, sparse: bool) -> nn.ModuleList:
    """One `nn.EmbeddingBag(card, dim, mode)` per multi-valued column; index 0 is padding (and
    unknown values), left out of the pooling, so an empty list pools to a zero vector."""
    bags = nn.ModuleList()
    for col, card in enumerate(cardinalities):
        card = int(card)
        if card < 1:
            raise ValueError(f"multi-valued column {col}: table size must be >= 1, got {card}")
        bag = nn.EmbeddingBag(card, dim, mode=mode, sparse=sparse, padding_idx=0)
        nn.init.normal_(bag.weight, mean=0.0, std=EMBEDDING_INIT_STD)
        with torch.no_grad():
            bag.weight[0].zero_()
        bags.append(bag)
    return bags


def pool_bags(bags: nn.ModuleList, multi: Sequence[Tensor]) -> list[Tensor]:
    """Bag j pools the padded index matrix `multi[j]` [B, L]; returns one [B, D] per column."""
    if len(multi) != len(bags):
        raise ValueError(f"expected {len(bags)} multi-valued inputs, got {len(multi)}")
    return [bag(m) for bag, m in zip(bags, multi, strict=True)]


def side_width(n_cat: int, n_multi: int, dense: int, embedding_dim: int) -> int:
    """Width of a side's flattened input: its embeddings, its pooled bags, its dense values."""
    return (n_cat + n_multi) * embedding_dim + dense


def side_input(
    tables: nn.ModuleList, bags: nn.ModuleList, feats: Tensor | FeatureRows
) -> tuple[Tensor, Tensor | None]:
    """(embeddings [B, C + M, D] of the categorical and multi-valued columns, dense [B, N2])."""
    cat, dense, multi = feature_parts(feats)
    embs = embed_columns(tables, cat)
    if len(bags):
        embs = torch.cat([embs, torch.stack(pool_bags(bags, multi), dim=1)], dim=1)
    return embs, dense


def embed_columns(tables: nn.ModuleList, feats: Tensor) -> Tensor:
    """Look up column i of `feats` [B, C] in table i; returns [B, C, D].

    A plain lookup per column (C is a handful) keeps sparse gradients possible; a single fused
    table with offsets would make every column share one optimiser state and one sparse grad.
    """
    if feats.dim() != 2 or feats.shape[1] != len(tables):
        raise ValueError(
            f"expected feature indices of shape [batch, {len(tables)}], got {tuple(feats.shape)}"
        )
    return torch.stack([table(feats[:, i]) for i, table in enumerate(tables)], dim=1)


def make_mlp(
    in_dim: int,
    hidden_dims: Sequence[int],
    dropout: float,
    *,
    out_dim: int | None = None,
    activate_last: bool = True,
) -> nn.Sequential:
    """Linear → ReLU → Dropout for each of `hidden_dims`, then an optional Linear to `out_dim`.

    With `activate_last=False` the last hidden layer is a bare Linear (tower outputs, which are
    normalised next, must be able to take negative values). Dropout is always present, even at
    p=0, so state_dict keys do not depend on the dropout setting.
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *[int(d) for d in hidden_dims]]
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        is_last = i == len(dims) - 2 and out_dim is None
        if activate_last or not is_last:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    if out_dim is not None:
        layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class TwoTower(nn.Module):
    """User tower and item tower, each: concat(column embeddings, pooled multi-valued columns,
    dense numeric inputs) → MLP → L2 normalise.

    The outputs are unit vectors, so u·v is a cosine similarity in [-1, 1] and the softmax
    temperature alone sets how peaked the in-batch softmax is.
    """

    def __init__(
        self,
        user_cardinalities: Sequence[int],
        item_cardinalities: Sequence[int],
        embedding_dim: int,
        hidden_dims: Sequence[int],
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
        user_in = side_width(len(user_cardinalities), len(user_multi), user_dense, embedding_dim)
        item_in = side_width(len(item_cardinalities), len(item_multi), item_dense, embedding_dim)
        if hidden_dims:
            self.output_dim = int(hidden_dims[-1])
        elif user_in == item_in:
            self.output_dim = user_in
        else:
            # Without an MLP the towers' widths are their column counts times D; a dot product
            # needs them equal.
            raise ValueError(
                "two_tower with empty hidden_dims needs as many user columns as item columns"
            )
        self.user_mlp = make_mlp(user_in, hidden_dims, dropout, activate_last=False)
        self.item_mlp = make_mlp(item_in, hidden_dims, dropout, activate_last=False)

    def user_embeddings(self, user_feats: Tensor | FeatureRows) -> Tensor:
        """[B, Cu] indices (or a side's feature rows) → [B, output_dim] unit vectors."""
        return F.normalize(
            self.user_mlp(_tower_input(self.user_tables, self.user_bags, user_feats)), dim=-1
        )

    def item_embeddings(self, item_feats: Tensor | FeatureRows) -> Tensor:
        """[N, Ci] indices (or a side's feature rows) → [N, output_dim] unit vectors."""
        return F.normalize(
            self.item_mlp(_tower_input(self.item_tables, self.item_bags, item_feats)), dim=-1
        )

    def forward(
        self, user_feats: Tensor | FeatureRows, item_feats: Tensor | FeatureRows
    ) -> tuple[Tensor, Tensor]:
        return self.user_embeddings(user_feats), self.item_embeddings(item_feats)


def _tower_input(tables: nn.ModuleList, bags: nn.ModuleList, feats: Tensor | FeatureRows) -> Tensor:
    embs, dense = side_input(tables, bags, feats)
    x = embs.flatten(1)
    return x if dense is None else torch.cat([x, dense.to(x.dtype)], dim=1)


def in_batch_softmax_loss(
    user_emb: Tensor,
    item_emb: Tensor,
    temperature: float,
    *,
    item_ids: Tensor | None = None,
    log_q: Tensor | None = None,
    extra_emb: Tensor | None = None,
    extra_ids: Tensor | None = None,
    extra_log_q: float | None = None,
    positive_offset: int = 0,
) -> Tensor:
    """Sampled softmax with the other items of the batch as negatives; mean over the batch.

    Row b's positive is item b (the diagonal). `log_q` [B] is the log probability that each
    in-batch item was sampled; subtracting it from that item's column (logQ correction, Yi et al.
    2019) stops popular items, which show up as negatives far more often than uniform sampling
    would make them, from being pushed down for their popularity alone. `item_ids` [B] marks
    accidental hits: where item j is the same item as row b's positive (j ≠ b), column j is
    removed from row b's softmax, since a positive must not also be a negative.

    Mixed negative sampling (Yang et al. 2020): `extra_emb` [M, D] are M more candidates shared
    by every row, drawn uniformly from the catalogue (`extra_ids` [M] for their accidental hits).
    Each column is corrected by the log of the expected number of times its sampler puts that
    item in: `log_q` is then log(B * popularity share), `extra_log_q` log(M / catalogue size).

    Global negatives (the batches of every rank): `item_emb` [C, D] (with `item_ids` and
    `log_q` [C]) may hold more candidates than there are rows (whole batches: C a multiple of
    B); row b's positive is then column `positive_offset + b`, the other columns its negatives,
    accidental hits masked alike.
    """
    batch = user_emb.shape[0]
    if user_emb.dim() != 2 or item_emb.dim() != 2 or item_emb.shape[1] != user_emb.shape[1]:
        raise ValueError(
            "user_emb must be [B, D] and item_emb [C, D], got "
            f"{tuple(user_emb.shape)} and {tuple(item_emb.shape)}"
        )
    # Candidates come in whole batches (one per rank), the rows' own batch among them.
    n_cand = item_emb.shape[0]
    if n_cand % max(batch, 1) or positive_offset % max(batch, 1):
        raise ValueError(
            f"item_emb must hold whole batches of {batch} rows and positive_offset start one, "
            f"got {n_cand} candidates and offset {positive_offset}"
        )
    if not 0 <= positive_offset <= n_cand - batch:
        raise ValueError(
            f"rows' positives at columns {positive_offset}..{positive_offset + batch - 1} "
            f"lie outside the {n_cand} candidates"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    target = torch.arange(positive_offset, positive_offset + batch, device=user_emb.device)
    for name, value in (("log_q", log_q), ("item_ids", item_ids)):
        if value is not None and value.shape != (n_cand,):
            raise ValueError(f"{name} must be [{n_cand}], got {tuple(value.shape)}")
    # The extra candidates join as more columns: one matmul, one bias, one mask for all.
    candidates, candidate_ids = item_emb, item_ids
    if extra_emb is not None:
        candidates = torch.cat([item_emb, extra_emb])
        if item_ids is not None:
            # Without extra_ids the extra columns are never masked: -1 is no item id.
            extra = extra_ids if extra_ids is not None else torch.full_like(item_ids[:1], -1)
            candidate_ids = torch.cat([item_ids, extra.expand(len(extra_emb))])
    # 1/temperature scales the [B, D] user side, not the [B, C] logits: one pass less.
    # Softmax in float32 even under autocast: logits of unit vectors / 0.05 reach ±20, and bf16
    # logsumexp over thousands of columns loses the differences the loss is made of.
    logits = ((user_emb / temperature) @ candidates.T).float()
    if log_q is not None or (extra_emb is not None and extra_log_q is not None):
        bias = torch.zeros(len(candidates), device=logits.device, dtype=logits.dtype)
        if log_q is not None:
            bias[:n_cand] = log_q.to(bias.dtype)
        if extra_emb is not None and extra_log_q is not None:
            bias[n_cand:] = extra_log_q
        # In place: the matmul's backward does not need its output, and a [B, C] copy is
        # what this loss spends its time on.
        logits = logits.sub_(bias)
    if candidate_ids is not None:
        rows, cols = _accidental_hits(candidate_ids[target], candidate_ids, target)
        # -inf, not a large negative number: exp(-inf) is exactly 0 and the target is never
        # masked, so every row's logsumexp stays finite.
        logits = logits.index_put_((rows, cols), torch.tensor(float("-inf"), device=logits.device))
    return F.cross_entropy(logits, target)


def _accidental_hits(
    positive_ids: Tensor, candidate_ids: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """(row, column) of every candidate that is the same item as the row's positive, the
    positive's own column excepted. Found by sorting the C candidate ids and looking each row's
    positive up (O(C log C + hits)), not by comparing a [B, C] matrix: a batch holds few
    repeats, and the dense comparison and fill cost more than the softmax's matmul."""
    order = torch.argsort(candidate_ids)
    ordered = candidate_ids[order]
    first = torch.searchsorted(ordered, positive_ids)
    counts = torch.searchsorted(ordered, positive_ids, right=True) - first
    rows = torch.repeat_interleave(torch.arange(len(positive_ids), device=counts.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(len(rows), device=counts.device) - starts.repeat_interleave(counts)
    cols = order[first.repeat_interleave(counts) + within]
    keep = cols != target[rows]
    return rows[keep], cols[keep]
