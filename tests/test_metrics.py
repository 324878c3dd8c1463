"""Metrics against brute-force Python references and hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from recjobs.training.metrics import (
    auc,
    binary_logloss,
    csr_from_pairs,
    mae,
    retrieval_metrics,
    rmse,
)

# --- reference implementations -----------------------------------------------------------------


def reference_retrieval(user_emb, item_emb, val, train, ks):
    """One user at a time, plain Python: rank every allowed item, then count."""
    scores = (user_emb @ item_emb.T).tolist()
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hit")}
    n = 0
    for u, row in enumerate(scores):
        positives = set(val[u])
        if not positives:
            continue
        n += 1
        allowed = [i for i in range(len(row)) if i != 0 and i not in set(train[u])]
        ranked = sorted(allowed, key=lambda i: -row[i])
        for k in ks:
            top = ranked[:k]
            hits = [i in positives for i in top]
            dcg = sum(1 / math.log2(p + 2) for p, h in enumerate(hits) if h)
            idcg = sum(1 / math.log2(p + 2) for p in range(min(k, len(positives))))
            sums[f"recall@{k}"] += sum(hits) / len(positives)
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"hit@{k}"] += float(any(hits))
    return {key: v / n for key, v in sums.items()}


def to_csr(lists):
    rows = torch.tensor([u for u, items in enumerate(lists) for _ in items], dtype=torch.long)
    cols = torch.tensor([i for items in lists for i in items], dtype=torch.long)
    return csr_from_pairs(rows, cols, len(lists))


def random_case(n_users=37, n_items=50, dim=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    user_emb = torch.randn(n_users, dim, generator=gen)
    item_emb = torch.randn(n_items, dim, generator=gen)
    val, train = [], []
    for u in range(n_users):
        # Every 5th user has no validation positives; val may include item 0 and train items
        # (both unreachable), exercising the masks.
        n_val = 0 if u % 5 == 0 else int(torch.randint(1, 6, (1,), generator=gen))
        val.append(torch.randint(0, n_items, (n_val,), generator=gen).tolist())
        train.append(
            torch.randint(
                0, n_items, (int(torch.randint(0, 10, (1,), generator=gen)),), generator=gen
            ).tolist()
        )
    return user_emb, item_emb, val, train


# --- csr_from_pairs ---------------------------------------------------------------------------


def test_csr_from_pairs_sorts_and_deduplicates():
    rows = torch.tensor([2, 0, 2, 0, 2, 3])
    cols = torch.tensor([5, 1, 3, 1, 5, 0])
    indptr, indices = csr_from_pairs(rows, cols, 5)
    assert indptr.tolist() == [0, 1, 1, 3, 4, 4]
    assert indices.tolist() == [1, 3, 5, 0]


def test_csr_from_pairs_empty_and_errors():
    indptr, indices = csr_from_pairs(
        torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 3
    )
    assert indptr.tolist() == [0, 0, 0, 0] and indices.numel() == 0
    with pytest.raises(ValueError):
        csr_from_pairs(torch.tensor([3]), torch.tensor([0]), 3)


# --- retrieval_metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_metrics_match_brute_force(seed):
    user_emb, item_emb, val, train = random_case(seed=seed)
    ks = [1, 3, 10, 60]  # 60 > catalogue size: everything allowed is ranked
    expected = reference_retrieval(user_emb, item_emb, val, train, ks)
    vi, vx = to_csr(val)
    ti, tx = to_csr(train)
    for chunk in (1, 7, 1000):
        got = retrieval_metrics(user_emb, item_emb, vi, vx, ti, tx, ks, chunk_size=chunk)
        assert got.keys() == expected.keys()
        for key in expected:
            assert isinstance(got[key], float)
            assert got[key] == pytest.approx(expected[key], abs=1e-9), (chunk, key)


def test_retrieval_metrics_hand_made_case():
    # Item scores are the second coordinate: ranking before masks is 4, 3, 2, 1, 0.
    item_emb = torch.tensor([[1.0, 10.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0], [1.0, 4.0]])
    user_emb = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    # user 0: no train, positives {3, 1} → top-2 is [4, 3]: one hit at rank 2.
    # user 1: train {4}, positive {3} → top-2 is [3, 2]: hit at rank 1.
    # user 2: no positives → skipped.
    vi, vx = to_csr([[3, 1], [3], []])
    ti, tx = to_csr([[], [4], []])
    # Embeddings straight from a model (requiring grad) are accepted: evaluation runs no_grad.
    got = retrieval_metrics(user_emb.requires_grad_(), item_emb, vi, vx, ti, tx, [1, 2])
    d2 = 1 / math.log2(3)
    assert got["recall@1"] == pytest.approx((0 + 1) / 2)
    assert got["hit@1"] == pytest.approx((0 + 1) / 2)
    assert got["ndcg@1"] == pytest.approx((0 + 1) / 2)
    assert got["recall@2"] == pytest.approx((0.5 + 1) / 2)
    assert got["hit@2"] == pytest.approx(1.0)
    assert got["ndcg@2"] == pytest.approx((d2 / (1 + d2) + 1) / 2)


def test_oov_item_is_never_recommended():
    # Item 0 has by far the highest score and is the only positive: a model that recommended it
    # would get recall 1; with the OOV mask nothing can hit.
    item_emb = torch.tensor([[100.0], [1.0], [2.0]])
    user_emb = torch.ones(1, 1)
    vi, vx = to_csr([[0]])
    ti, tx = to_csr([[]])
    got = retrieval_metrics(user_emb, item_emb, vi, vx, ti, tx, [1, 3])
    assert got["recall@1"] == 0.0 and got["hit@3"] == 0.0
    vi, vx = to_csr([[2]])
    assert retrieval_metrics(user_emb, item_emb, vi, vx, ti, tx, [1])["recall@1"] == 1.0


def test_train_items_are_masked_even_when_they_are_positives():
    item_emb = torch.tensor([[0.0], [5.0], [4.0], [3.0]])
    user_emb = torch.ones(1, 1)
    vi, vx = to_csr([[1, 3]])
    # Item 1 (best score, a positive) is a training item: it is skipped, 2 then 3 come next.
    ti, tx = to_csr([[1]])
    got = retrieval_metrics(user_emb, item_emb, vi, vx, ti, tx, [1, 2])
    assert got["hit@1"] == 0.0
    assert got["recall@2"] == pytest.approx(0.5)
    # Without the mask item 1 would be a hit at rank 1.
    ti, tx = to_csr([[]])
    assert retrieval_metrics(user_emb, item_emb, vi, vx, ti, tx, [1])["hit@1"] == 1.0


def test_masked_items_in_a_short_ranking_are_not_hits():
    # Only item 1 is allowed; k=3 pulls masked items into the top-k; positive 2 is a training
    # item and must not count as a hit at rank 2 or 3.
    item_emb = torch.tensor([[0.0], [1.0], [2.0]])
    user_emb = torch.ones(1, 1)
    vi, vx = to_csr([[2]])
    ti, tx = to_csr([[2]])
    got = retrieval_metrics(user_emb, item_emb, vi, vx, ti, tx, [3])
    assert got == {"recall@3": 0.0, "ndcg@3": 0.0, "hit@3": 0.0}


def test_users_without_positives_are_skipped_and_all_empty_gives_nan():
    user_emb = torch.ones(3, 1)
    item_emb = torch.tensor([[0.0], [2.0], [1.0]])
    ti, tx = to_csr([[], [], []])
    vi, vx = to_csr([[], [1], []])
    assert retrieval_metrics(user_emb, item_emb, vi, vx, ti, tx, [1])["recall@1"] == 1.0
    vi, vx = to_csr([[], [], []])
    got = retrieval_metrics(user_emb, item_emb, vi, vx, ti, tx, [1])
    assert all(math.isnan(v) for v in got.values())


def test_retrieval_metrics_rejects_bad_arguments():
    user_emb, item_emb = torch.ones(2, 1), torch.ones(3, 1)
    vi, vx = to_csr([[1], [2]])
    with pytest.raises(ValueError):
        retrieval_metrics(user_emb, item_emb, vi, vx, vi, vx, [])
    with pytest.raises(ValueError):
        retrieval_metrics(user_emb, item_emb, vi[:-1], vx, vi, vx, [1])
    with pytest.raises(ValueError):
        retrieval_metrics(user_emb, item_emb, vi, vx, vi, vx, [1], chunk_size=0)


# --- ranking metrics --------------------------------------------------------------------------


def reference_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(3))
def test_auc_matches_pairwise_reference_with_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (200,), generator=gen).float()  # many ties
    labels = torch.randint(0, 2, (200,), generator=gen)
    assert auc(scores, labels) == pytest.approx(
        reference_auc(scores.tolist(), labels.tolist()), abs=1e-12
    )


def test_auc_special_cases():
    labels = torch.tensor([0, 1, 0, 1, 1])
    assert auc(torch.zeros(5), labels) == 0.5
    assert auc(torch.tensor([0.1, 0.9, 0.2, 0.8, 0.7]), labels) == 1.0
    assert auc(torch.tensor([0.9, 0.1, 0.8, 0.2, 0.3]), labels) == 0.0
    assert auc(torch.tensor([0.9, 0.1, 0.8, 0.2, 0.3]), labels.bool()) == 0.0
    assert math.isnan(auc(torch.rand(4), torch.ones(4)))
    with pytest.raises(ValueError):
        auc(torch.rand(3), torch.tensor([0, 1, 2]))


def test_binary_logloss_closed_form():
    logits = torch.tensor([0.0, 2.0, -1.0, 50.0, -50.0])
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    sigmoid = [1 / (1 + math.exp(-x)) for x in logits.tolist()]
    expected = (
        -sum(
            y * math.log(p) + (1 - y) * math.log(1 - p) if 0 < p < 1 else 0.0
            for p, y in zip(sigmoid, labels.tolist(), strict=True)
        )
        / 5
    )
    assert binary_logloss(logits, labels) == pytest.approx(expected, rel=1e-9)
    # Confidently wrong at |logit| = 1000 is a finite loss of 1000, not inf.
    assert binary_logloss(torch.tensor([1000.0]), torch.tensor([0.0])) == pytest.approx(1000.0)


def test_rmse_and_mae_closed_form():
    pred = torch.tensor([1.0, 2.0, 4.0, 0.0])
    target = torch.tensor([1.0, 4.0, 1.0, 1.0])
    assert rmse(pred, target) == pytest.approx(math.sqrt((0 + 4 + 9 + 1) / 4))
    assert mae(pred, target) == pytest.approx((0 + 2 + 3 + 1) / 4)
    with pytest.raises(ValueError):
        rmse(pred, target[:3])
