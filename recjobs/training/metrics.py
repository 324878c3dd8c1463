"""Evaluation metrics: full-catalogue retrieval metrics and the ranking metrics.

Everything is vectorised torch; results are plain Python floats so they can go straight into
logs, JSON and early-stopping comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Item row 0 of every item table is the out-of-vocabulary item; it is never a recommendation.
OOV_ITEM = 0


def csr_from_pairs(rows: Tensor, cols: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """(row, col) pairs → CSR (indptr [n_rows+1], indices), sorted by row then col, deduplicated.

    Deduplicated so a user who interacted with an item twice counts it once as a positive.
    """
    rows = torch.as_tensor(rows, dtype=torch.long).flatten()
    cols = torch.as_tensor(cols, dtype=torch.long).flatten()
    if rows.shape != cols.shape:
        raise ValueError(f"rows and cols differ in length: {rows.numel()} vs {cols.numel()}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
        raise ValueError(f"row indices must lie in [0, {n_rows})")
    if cols.numel() and int(cols.min()) < 0:
        raise ValueError("column indices must be >= 0")
    # One int64 key per pair: sorting and deduplicating keys sorts by (row, col) in one pass.
    width = int(cols.max()) + 1 if cols.numel() else 1
    keys = torch.unique(rows * width + cols, sorted=True)
    rows, cols = keys // width, keys % width
    indptr = torch.zeros(n_rows + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), dim=0)
    return indptr, cols


def csr_chunk(indptr: Tensor, indices: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """(local row, col) of every entry in rows [start, stop) of a CSR matrix."""
    lengths = indptr[start + 1 : stop + 1] - indptr[start:stop]
    cols = indices[int(indptr[start]) : int(indptr[stop])]
    local_rows = torch.repeat_interleave(torch.arange(stop - start, device=indptr.device), lengths)
    return local_rows, cols


@torch.no_grad()  # evaluation only; callers may pass embeddings that still carry a graph
def retrieval_metrics(
    user_emb: Tensor,
    item_emb: Tensor,
    val_indptr: Tensor,
    val_indices: Tensor,
    train_indptr: Tensor,
    train_indices: Tensor,
    ks: Sequence[int],
    *,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """recall@K, ndcg@K and hit@K over the full item catalogue, averaged over users.

    Row u of `user_emb` is scored against every row of `item_emb`; the user's training items and
    the OOV item are excluded, and the top max(ks) items are compared with the validation CSR row
    u. Users without validation positives are skipped (a recall of 0/0 is not a miss). If no user
    has a positive every value is nan. Users are processed `chunk_size` at a time, so peak memory
    is a few chunk_size × N buffers whatever the number of users.
    """
    sums, n_evaluated = retrieval_metric_sums(
        user_emb,
        item_emb,
        val_indptr,
        val_indices,
        train_indptr,
        train_indices,
        ks,
        chunk_size=chunk_size,
    )
    return metric_means(sums, n_evaluated)


def metric_means(sums: dict[str, float], n_evaluated: float) -> dict[str, float]:
    """Per-user sums → means; every value nan when no user was evaluated."""
    if n_evaluated == 0:
        return {key: math.nan for key in sums}
    return {key: total / n_evaluated for key, total in sums.items()}


@torch.no_grad()
def retrieval_metric_sums(
    user_emb: Tensor,
    item_emb: Tensor,
    val_indptr: Tensor,
    val_indices: Tensor,
    train_indptr: Tensor,
    train_indices: Tensor,
    ks: Sequence[int],
    *,
    chunk_size: int = 1024,
) -> tuple[dict[str, float], int]:
    """`retrieval_metrics` before the averaging: each metric summed over the evaluated users,
    and how many users were evaluated (those with a validation positive). Sums of disjoint
    sets of users add up, which is how the ranks of a job each score a share of the users."""
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be non-empty positive integers, got {list(ks)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"user_emb [U, D] and item_emb [N, D] expected, got {tuple(user_emb.shape)} "
            f"and {tuple(item_emb.shape)}"
        )
    for name, indptr in (("val_indptr", val_indptr), ("train_indptr", train_indptr)):
        if indptr.shape != (n_users + 1,):
            raise ValueError(f"{name} must be [{n_users + 1}], got {tuple(indptr.shape)}")

    device = user_emb.device
    val_indptr, val_indices = val_indptr.to(device), val_indices.to(device)
    train_indptr, train_indices = train_indptr.to(device), train_indices.to(device)
    item_t = item_emb.float().T.contiguous()
    ks = sorted({int(k) for k in ks})
    k_max = min(ks[-1], n_items)
    # Position p (0-based) of the ranking is discounted by 1/log2(p + 2).
    discounts = 1.0 / torch.log2(torch.arange(k_max, device=device, dtype=torch.float64) + 2)
    ideal_dcg = torch.cumsum(discounts, dim=0)  # ideal_dcg[n-1]: DCG of n hits at the top
    sums = {f"{name}@{k}": 0.0 for k in ks for name in ("recall", "ndcg", "hit")}
    n_evaluated = 0

    for start in range(0, n_users, chunk_size):
        stop = min(start + chunk_size, n_users)
        rows = stop - start
        scores = user_emb[start:stop].float() @ item_t
        scores[:, OOV_ITEM] = float("-inf")
        train_rows, train_cols = csr_chunk(train_indptr, train_indices, start, stop)
        scores[train_rows, train_cols] = float("-inf")

        is_pos = torch.zeros(rows, n_items, dtype=torch.bool, device=device)
        val_rows, val_cols = csr_chunk(val_indptr, val_indices, start, stop)
        is_pos[val_rows, val_cols] = True
        # Counted from the dense matrix, not the CSR lengths, so duplicate pairs count once.
        n_pos = is_pos.sum(dim=1)
        keep = n_pos > 0
        if not bool(keep.any()):
            continue

        if not bool(keep.all()):  # copies of the chunk only when some user must be dropped
            scores, is_pos, n_pos = scores[keep], is_pos[keep], n_pos[keep]
        top_scores, top_items = torch.topk(scores, k_max, dim=1)
        # A user with fewer than k_max unmasked items gets masked (-inf) items in the tail of
        # its top-k; those are not recommendations and must not count as hits.
        hits = is_pos.gather(1, top_items) & torch.isfinite(top_scores)
        hits_f = hits.to(torch.float64)
        cum_hits = torch.cumsum(hits_f, dim=1)
        cum_dcg = torch.cumsum(hits_f * discounts, dim=1)
        for k in ks:
            at = min(k, k_max) - 1
            idcg = ideal_dcg[torch.clamp(n_pos, max=at + 1) - 1]
            sums[f"recall@{k}"] += float((cum_hits[:, at] / n_pos).sum())
            sums[f"ndcg@{k}"] += float((cum_dcg[:, at] / idcg).sum())
            sums[f"hit@{k}"] += float((cum_hits[:, at] > 0).sum())
        n_evaluated += int(keep.sum())
    return sums, n_evaluated


def _binary_labels(labels: Tensor, n: int) -> Tensor:
    labels = labels.flatten()
    if labels.numel() != n:
        raise ValueError(f"scores and labels differ in length: {n} vs {labels.numel()}")
    if labels.dtype != torch.bool:
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("labels must be 0/1")
        labels = labels == 1
    return labels


def auc(scores: Tensor, labels: Tensor) -> float:
    """ROC AUC via the Mann–Whitney U statistic; tied scores share their average rank.

    nan when the labels hold a single class (AUC is undefined, not 0.5).
    """
    scores = scores.detach().flatten().to(torch.float64)
    labels = _binary_labels(labels.detach(), scores.numel()).to(scores.device)
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    sorted_scores, order = torch.sort(scores)
    _, counts = torch.unique_consecutive(sorted_scores, return_counts=True)
    # 1-based ranks: a tie group spanning ranks [first, last] gets (first + last) / 2 for all.
    last = torch.cumsum(counts, dim=0).to(torch.float64)
    group_rank = last - (counts.to(torch.float64) - 1) / 2
    ranks = torch.repeat_interleave(group_rank, counts)
    pos_rank_sum = float(ranks[labels[order]].sum())
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def binary_logloss(logits: Tensor, labels: Tensor) -> float:
    """Mean binary cross-entropy from logits (log-sum-exp form, no overflow for large |logit|)."""
    logits = logits.detach().flatten().to(torch.float64)
    labels = labels.detach().flatten().to(device=logits.device, dtype=torch.float64)
    if labels.shape != logits.shape:
        raise ValueError(
            f"logits and labels differ in length: {logits.numel()} vs {labels.numel()}"
        )
    return float(F.binary_cross_entropy_with_logits(logits, labels))


def _pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred = pred.detach().flatten().to(torch.float64)
    target = target.detach().flatten().to(device=pred.device, dtype=torch.float64)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in length: {pred.numel()} vs {target.numel()}")
    return pred, target


def rmse(pred: Tensor, target: Tensor) -> float:
    """Root mean squared error, accumulated in float64."""
    pred, target = _pair(pred, target)
    return math.sqrt(float(torch.mean((pred - target) ** 2)))


def mae(pred: Tensor, target: Tensor) -> float:
    """Mean absolute error, accumulated in float64."""
    pred, target = _pair(pred, target)
    return float(torch.mean(torch.abs(pred - target)))
