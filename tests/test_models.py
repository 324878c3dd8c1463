"""Models: shapes, normalisation, the in-batch loss against hand computations, sparse grads,
overfitting a tiny batch, build_model dispatch and seed determinism."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recjobs.config.schema import ModelConfig
from recjobs.models import DCN, DLRM, TwoTower, build_model, in_batch_softmax_loss

USER_CARDS = [20, 3, 5]
ITEM_CARDS = [30, 4, 6, 2]


def random_feats(cards: list[int], n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randint(0, c, (n,), generator=gen) for c in cards], dim=1)


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return random_feats(USER_CARDS, n, gen), random_feats(ITEM_CARDS, n, gen)


def make(arch: str, *, sparse: bool = False, dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        model_arch=arch,
        embedding_dim=8,
        hidden_dims=(16, 8),
        scorer_hidden_dims=(16,),
        cross_layers=2,
        dropout=dropout,
    )
    task = "retrieval" if arch == "two_tower" else "ranking"
    return build_model(task, cfg, USER_CARDS, ITEM_CARDS, sparse=sparse)


def embedding_tables(model: nn.Module) -> list[nn.Embedding]:
    return [m for m in model.modules() if isinstance(m, nn.Embedding)]


def model_loss(arch: str, model: nn.Module, users: torch.Tensor, items: torch.Tensor):
    if arch == "two_tower":
        u, v = model(users, items)
        return in_batch_softmax_loss(u, v, 0.1)
    labels = (torch.arange(users.shape[0]) % 2).float()
    return F.binary_cross_entropy_with_logits(model(users, items), labels)


# --- two-tower ---------------------------------------------------------------------------------


def test_two_tower_shapes_and_unit_norm():
    model = make("two_tower")
    users, items = batch(16)
    u, v = model(users, items)
    assert u.shape == (16, 8) and v.shape == (16, 8)
    assert torch.allclose(u.norm(dim=1), torch.ones(16), atol=1e-6)
    assert torch.allclose(v.norm(dim=1), torch.ones(16), atol=1e-6)
    # The item tower alone scores a catalogue of a different size than the user batch.
    catalogue = random_feats(ITEM_CARDS, 40, torch.Generator().manual_seed(1))
    assert model.item_embeddings(catalogue).shape == (40, 8)
    assert torch.equal(model.user_embeddings(users), u)


def test_embedding_tables_one_per_column_and_found_by_type():
    model = make("two_tower")
    tables = embedding_tables(model)
    assert [t.num_embeddings for t in tables] == USER_CARDS + ITEM_CARDS
    assert all(t.embedding_dim == 8 for t in tables)
    assert isinstance(model.user_tables, nn.ModuleList)
    assert isinstance(model.item_tables, nn.ModuleList)
    std = torch.cat([t.weight.flatten() for t in tables]).std().item()
    assert 0.03 < std < 0.07


def test_wrong_column_count_is_rejected():
    model = make("two_tower")
    users, _ = batch(4)
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        model.user_embeddings(users[:, :2])


def test_in_batch_loss_matches_hand_computed_cross_entropy():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    v = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    t = 0.5
    loss = in_batch_softmax_loss(u, v, t)
    expected = 0.0
    for b in range(3):
        logits = [sum(u[b, d].item() * v[j, d].item() for d in range(2)) / t for j in range(3)]
        expected += -logits[b] + math.log(sum(math.exp(x) for x in logits))
    assert loss.item() == pytest.approx(expected / 3, rel=1e-6)


def test_log_q_subtracts_log_q_from_each_column():
    gen = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(5, 4, generator=gen), dim=1)
    v = F.normalize(torch.randn(5, 4, generator=gen), dim=1)
    log_q = torch.log(torch.tensor([0.5, 0.1, 0.2, 0.15, 0.05]))
    t = 0.2
    logits = u @ v.T / t - log_q.unsqueeze(0)  # column j shifted by exactly -log_q[j]
    expected = F.cross_entropy(logits, torch.arange(5))
    got = in_batch_softmax_loss(u, v, t, log_q=log_q)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got.item() != pytest.approx(in_batch_softmax_loss(u, v, t).item(), rel=1e-3)
    # A constant log_q shifts every column equally: softmax is invariant to it.
    same = in_batch_softmax_loss(u, v, t, log_q=torch.full((5,), -3.0))
    assert same.item() == pytest.approx(in_batch_softmax_loss(u, v, t).item(), rel=1e-6)


def test_duplicate_items_are_not_negatives():
    gen = torch.Generator().manual_seed(1)
    u = F.normalize(torch.randn(4, 3, generator=gen), dim=1)
    v = F.normalize(torch.randn(4, 3, generator=gen), dim=1)
    item_ids = torch.tensor([7, 2, 7, 5])  # rows 0 and 2 share their positive item
    t = 0.1
    logits = (u @ v.T / t).tolist()
    expected = 0.0
    for b in range(4):
        # Manual: row b's softmax runs over its own positive plus columns of *other* items.
        cols = [j for j in range(4) if j == b or item_ids[j] != item_ids[b]]
        expected += -logits[b][b] + math.log(sum(math.exp(logits[b][j]) for j in cols))
    got = in_batch_softmax_loss(u, v, t, item_ids=item_ids)
    assert got.item() == pytest.approx(expected / 4, rel=1e-6)
    # Distinct ids mask nothing.
    plain = in_batch_softmax_loss(u, v, t)
    distinct = in_batch_softmax_loss(u, v, t, item_ids=torch.arange(4))
    assert distinct.item() == pytest.approx(plain.item(), rel=1e-6)
    assert got.item() < plain.item()


def test_rows_positives_at_an_offset_among_every_ranks_candidates():
    # Global negatives as rank 1 of 2 sees them: 3 rows, 6 candidates, positives at columns 3..5,
    # item 9 in rank 0's batch too (an accidental hit across ranks), logQ on every column.
    gen = torch.Generator().manual_seed(3)
    u = F.normalize(torch.randn(3, 4, generator=gen), dim=1)
    v = F.normalize(torch.randn(6, 4, generator=gen), dim=1)
    item_ids = torch.tensor([9, 1, 2, 9, 4, 5])
    log_q = torch.tensor([-1.0, -2.0, -3.0, -1.0, -2.5, -0.5])
    t = 0.2
    got = in_batch_softmax_loss(u, v, t, item_ids=item_ids, log_q=log_q, positive_offset=3)
    logits = (u @ v.T / t - log_q).tolist()
    expected = 0.0
    for b in range(3):
        target = 3 + b
        cols = [j for j in range(6) if j == target or item_ids[j] != item_ids[target]]
        expected += -logits[b][target] + math.log(sum(math.exp(logits[b][j]) for j in cols))
    assert got.item() == pytest.approx(expected / 3, rel=1e-6)
    with pytest.raises(ValueError, match="whole batches"):
        in_batch_softmax_loss(u, v, t, positive_offset=2)
    with pytest.raises(ValueError, match="outside"):
        in_batch_softmax_loss(u, v, t, positive_offset=6)


def test_mixed_negatives_join_every_row_with_their_own_log_q_and_accidental_hits_removed():
    gen = torch.Generator().manual_seed(2)
    u = F.normalize(torch.randn(3, 4, generator=gen), dim=1)
    v = F.normalize(torch.randn(3, 4, generator=gen), dim=1)
    e = F.normalize(torch.randn(2, 4, generator=gen), dim=1)
    item_ids, extra_ids = torch.tensor([4, 9, 6]), torch.tensor([9, 1])  # extra 0 is row 1's item
    log_q, extra_log_q, t = torch.log(torch.tensor([0.9, 0.3, 0.6])), math.log(2 / 10), 0.2
    got = in_batch_softmax_loss(
        u, v, t, item_ids=item_ids, log_q=log_q, extra_emb=e, extra_ids=extra_ids,
        extra_log_q=extra_log_q,
    )  # fmt: skip
    expected = 0.0
    for b in range(3):
        cols = [float(u[b] @ v[j]) / t - float(log_q[j]) for j in range(3)]
        cols += [
            float(u[b] @ e[m]) / t - extra_log_q for m in range(2) if extra_ids[m] != item_ids[b]
        ]
        expected += -cols[b] + math.log(sum(math.exp(x) for x in cols))
    assert got.item() == pytest.approx(expected / 3, rel=1e-6)
    # Without the extra columns the loss is the in-batch one: the extra ones change it.
    plain = in_batch_softmax_loss(u, v, t, item_ids=item_ids, log_q=log_q)
    assert got.item() > plain.item()


def test_in_batch_loss_rejects_bad_shapes():
    u = torch.randn(3, 2)
    with pytest.raises(ValueError):
        in_batch_softmax_loss(u, torch.randn(4, 2), 0.1)
    with pytest.raises(ValueError):
        in_batch_softmax_loss(u, u, 0.1, log_q=torch.zeros(2))
    with pytest.raises(ValueError):
        in_batch_softmax_loss(u, u, 0.0)


# --- ranking ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
def test_ranking_output_shape_and_dtype(arch):
    model = make(arch)
    users, items = batch(16)
    logits = model(users, items)
    assert logits.shape == (16,)
    assert logits.dtype == torch.float32


def test_dlrm_interaction_count_and_values():
    model = make("dlrm")
    n_vectors = 1 + len(USER_CARDS) + len(ITEM_CARDS)  # dense vector + one per column
    assert model.num_vectors == n_vectors
    assert model.num_interactions == n_vectors * (n_vectors - 1) // 2
    dense = torch.randn(2, 8)
    embs = torch.randn(2, n_vectors - 1, 8)
    got = model.interactions(dense, embs)
    vectors = torch.cat([dense.unsqueeze(1), embs], dim=1)
    expected = torch.tensor(
        [
            [
                float(vectors[b, i] @ vectors[b, j])
                for i in range(n_vectors)
                for j in range(i + 1, n_vectors)
            ]
            for b in range(2)
        ]
    )
    assert got.shape == (2, model.num_interactions)
    assert torch.allclose(got, expected, atol=1e-5)
    assert model.top_mlp[0].in_features == 8 + model.num_interactions


def test_dcn_cross_layer_formula():
    model = make("dcn")
    assert len(model.cross) == 2
    layer = model.cross[0]
    x0, x = torch.randn(3, layer.linear.in_features), torch.randn(3, layer.linear.in_features)
    expected = x0 * (x @ layer.linear.weight.T + layer.linear.bias) + x
    assert torch.allclose(layer(x0, x), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
def test_ranking_models_overfit_a_tiny_separable_batch(arch):
    model = make(arch)
    users, items = batch(32, seed=3)
    # Label is a function of the item id, so the batch is separable by the model.
    labels = (items[:, 0] % 2).float()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(100):
        loss = F.binary_cross_entropy_with_logits(model(users, items), labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first == pytest.approx(math.log(2), abs=0.1)
    assert loss.item() < 0.1 * first


# --- shared: gradients, sparse, determinism, dispatch -------------------------------------------


@pytest.mark.parametrize("arch", ["two_tower", "dlrm", "dcn"])
def test_gradients_reach_every_embedding_table(arch):
    model = make(arch)
    users, items = batch(16)
    model_loss(arch, model, users, items).backward()
    for table in embedding_tables(model):
        assert table.weight.grad is not None
        assert table.weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name


@pytest.mark.parametrize("arch", ["two_tower", "dlrm", "dcn"])
def test_sparse_embeddings_train_with_sparse_adam(arch):
    model = make(arch, sparse=True)
    users, items = batch(32, seed=5)
    emb_params = [t.weight for t in embedding_tables(model)]
    emb_ids = {id(p) for p in emb_params}
    dense_params = [p for p in model.parameters() if id(p) not in emb_ids]
    sparse_opt = torch.optim.SparseAdam(emb_params, lr=0.01)
    dense_opt = torch.optim.Adam(dense_params, lr=0.01)
    losses = []
    for _ in range(30):
        loss = model_loss(arch, model, users, items)
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        assert all(p.grad.is_sparse for p in emb_params)
        assert not any(p.grad.is_sparse for p in dense_params)
        sparse_opt.step()
        dense_opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("arch", ["two_tower", "dlrm", "dcn"])
def test_same_seed_same_model_and_outputs(arch):
    a, b = make(arch, seed=7), make(arch, seed=7)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    users, items = batch(8)
    out_a, out_b = a(users, items), b(users, items)
    if arch == "two_tower":
        assert torch.equal(out_a[0], out_b[0]) and torch.equal(out_a[1], out_b[1])
    else:
        assert torch.equal(out_a, out_b)
    c = make(arch, seed=8)
    assert not torch.equal(c.user_tables[0].weight, a.user_tables[0].weight)


def test_state_dict_keys_do_not_depend_on_dropout():
    assert (
        make("dcn", dropout=0.0).state_dict().keys() == make("dcn", dropout=0.3).state_dict().keys()
    )


def test_build_model_dispatch():
    assert type(make("two_tower")) is TwoTower
    assert type(make("dlrm")) is DLRM
    assert type(make("dcn")) is DCN


@pytest.mark.parametrize(
    ("task", "arch", "match"),
    [
        ("retrieval", "dlrm", "not available"),
        ("ranking", "two_tower", "not available"),
        ("scoring", "dlrm", "unknown task"),
    ],
)
def test_build_model_errors(task, arch, match):
    cfg = dataclasses.replace(ModelConfig(), model_arch=arch)
    with pytest.raises(ValueError, match=match):
        build_model(task, cfg, USER_CARDS, ITEM_CARDS)


def test_build_model_rejects_empty_tables():
    with pytest.raises(ValueError, match="table size"):
        build_model("ranking", ModelConfig(model_arch="dcn"), [5, 0], ITEM_CARDS)
