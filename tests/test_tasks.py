"""Task adapters: what the loop gets from retrieval and ranking, checked against direct computations."""

from __future__ import annotations

import pytest
import torch

from recjobs.config.resolver import Overrides, resolve
from recjobs.data import load_task_data
from recjobs.errors import ConfigError
from recjobs.models import build_model
from recjobs.training import metrics
from recjobs.training.tasks import make_task

from runs import TINY


def setup(task: str, *sets: str):
    cfg = resolve(task, None, Overrides(sets=[*TINY, *sets]))
    data = load_task_data(cfg)
    torch.manual_seed(0)
    model = build_model(task, cfg.model, data.user_cardinalities, data.item_cardinalities).eval()
    return cfg, data, model


def test_eval_max_users_scores_a_fixed_sample():
    cfg, data, model = setup("retrieval")
    everyone = make_task(cfg, data, torch.device("cpu"))
    n = len(everyone.eval_users)
    assert n == len(torch.unique(data.val_users))
    # The sample is drawn when the data loads (every rank draws the same, then scores its own).
    cfg_all, data_all, _ = setup("retrieval", f"training.eval_max_users={n + 10}")
    got_all = make_task(cfg_all, data_all, torch.device("cpu")).evaluate(model)
    assert got_all == everyone.evaluate(model)

    cfg_s, data_s, _ = setup("retrieval", "training.eval_max_users=40")
    _, data_s2, _ = setup("retrieval", "training.eval_max_users=40")
    a, b = (
        make_task(cfg_s, data_s, torch.device("cpu")),
        make_task(cfg_s, data_s2, torch.device("cpu")),
    )
    assert len(a.eval_users) == 40 and torch.equal(a.eval_users, b.eval_users)
    # The sample's metrics are the full computation restricted to those users.
    with torch.no_grad():
        users = a.eval_users
        pos = torch.full((len(data.user_features),), -1)
        pos[users] = torch.arange(40)
        v, t = pos[data.val_users.long()], pos[data.train_users.long()]
        expected = metrics.retrieval_metrics(
            model.user_embeddings(data.user_features[users]),
            model.item_embeddings(data.item_features),
            *metrics.csr_from_pairs(v[v >= 0], data.val_items[v >= 0], 40),
            *metrics.csr_from_pairs(t[t >= 0], data.train_items[t >= 0], 40),
            (10, 50),
        )
    got = a.evaluate(model)
    assert {k: got[f"val/{k}"] for k in expected} == pytest.approx(expected)


def test_eval_max_users_must_be_positive():
    with pytest.raises(ConfigError, match="eval_max_users: must be greater than 0 or null, got 0"):
        resolve("retrieval", None, Overrides(sets=["training.eval_max_users=0"]))


def test_ranking_batches_hold_the_configured_negatives():
    cfg, data, _ = setup("ranking", "training.negatives_per_pos=3")
    task = make_task(cfg, data, torch.device("cpu"))
    idx = torch.arange(10)
    batch = task.batch(idx)
    assert len(batch["users"]) == len(batch["items"]) == len(batch["labels"]) == 40
    assert batch["labels"].sum() == 10 and torch.equal(batch["items"][:10], data.train_items[:10])
    negatives = batch["items"][10:]
    assert negatives.min() >= 1 and negatives.max() <= data.n_items  # never the OOV row
    # Each user's negatives belong to that user.
    assert torch.equal(batch["users"][10:], data.train_users[:10].repeat_interleave(3))


def _known_pairs(data) -> set[tuple[int, int]]:
    users = torch.cat([data.train_users, data.val_users]).tolist()
    items = torch.cat([data.train_items, data.val_items]).tolist()
    return set(zip(users, items))


def test_ranking_validation_negatives_are_never_an_item_the_user_has():
    """A validation "negative" the user rated is a positive labelled 0: it caps the AUC. On the
    tiny synthetic data (80 items, ~13 per user) about one uniform draw in six would be one."""
    cfg, data, model = setup("ranking")
    task = make_task(cfg, data, torch.device("cpu"))
    users, items, labels = task.val
    known = _known_pairs(data)
    negatives = set(zip(users[labels == 0].tolist(), items[labels == 0].tolist()))
    assert negatives and not negatives & known
    # Every positive is there, with its 4 negatives (no user here has nearly every item).
    assert int(labels.sum()) == len(data.val_users) and len(labels) == 5 * len(data.val_users)
    # The old uniform draw would have hit known items: the test data can tell the difference.
    g = torch.Generator().manual_seed(cfg.shared.seed + 2)
    uniform = torch.randint(1, data.n_items + 1, (4 * len(data.val_users),), generator=g)
    hits = sum(
        (u, i) in known
        for u, i in zip(data.val_users.repeat_interleave(4).tolist(), uniform.tolist())
    )
    assert hits > 0.05 * len(uniform)
    # The same rows in every run with this seed, whatever the training sampler; the baseline
    # scores those rows.
    cfg_pop, _, _ = setup("ranking", "training.negatives_distribution=popularity")
    again = make_task(cfg_pop, data, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(task.val, again.val))
    expected = metrics.auc(task.item_counts[items], labels)
    assert task.baseline()["val/baseline/auc"] == expected == again.baseline()["val/baseline/auc"]


def test_validation_rows_of_a_user_who_has_every_item_keep_the_positives_only():
    cfg, data, _ = setup("ranking")
    user = int(data.val_users[0])
    everything = torch.arange(1, data.n_items + 1)
    data.train_users = torch.cat([data.train_users, torch.full_like(everything, user)])
    data.train_items = torch.cat([data.train_items, everything])
    users, items, labels = make_task(cfg, data, torch.device("cpu")).val
    assert not ((users == user) & (labels == 0)).any()  # no negative exists for this user
    assert int(((users == user) & (labels == 1)).sum()) == int((data.val_users == user).sum())


def test_training_negatives_by_default_are_the_uniform_draws_of_before():
    """A config that trained yesterday draws the same negatives today (bit-identical runs)."""
    cfg, data, _ = setup("ranking")
    task = make_task(cfg, data, torch.device("cpu"))
    idx = torch.arange(50)
    batch = task.batch(idx)
    g = torch.Generator().manual_seed(cfg.shared.seed + 1)
    assert torch.equal(batch["items"][50:], torch.randint(1, data.n_items + 1, (200,), generator=g))


def test_training_negatives_can_exclude_the_users_training_items():
    cfg, data, _ = setup("ranking", "training.negatives_exclude_seen=true")
    task = make_task(cfg, data, torch.device("cpu"))
    seen = set(zip(data.train_users.tolist(), data.train_items.tolist()))
    batch = task.batch(torch.arange(len(data.train_users)))
    n = len(data.train_users)
    negatives = zip(batch["users"][n:].tolist(), batch["items"][n:].tolist())
    assert not [pair for pair in negatives if pair in seen]


def test_popularity_negatives_follow_counts_plus_one_to_the_alpha():
    cfg, data, _ = setup(
        "ranking", "training.negatives_distribution=popularity", "training.negatives_alpha=1.0"
    )
    task = make_task(cfg, data, torch.device("cpu"))
    negs, _ = task.sampler.sample(torch.zeros(200_000, dtype=torch.long), 1, task.generator)
    freq = torch.bincount(negs, minlength=data.n_items + 1)[1:].double() / len(negs)
    weights = data.item_counts[1:].double() + 1
    expected = weights / weights.sum()
    assert freq.sum() == 1 and negs.min() >= 1
    # 200k draws over 80 items: each frequency within 4 standard deviations (seeded: no flake).
    sd = (expected * (1 - expected) / len(negs)).sqrt()
    assert ((freq - expected).abs() <= 4 * sd).all()
    # alpha 0 is uniform.
    cfg0, _, _ = setup(
        "ranking", "training.negatives_distribution=popularity", "training.negatives_alpha=0"
    )
    flat = make_task(cfg0, data, torch.device("cpu")).sampler.weights
    assert torch.equal(flat, torch.ones_like(flat))


def test_negatives_options_are_checked_at_resolve_time():
    with pytest.raises(ConfigError, match="negatives_distribution: expected one of"):
        resolve("ranking", None, Overrides(sets=["training.negatives_distribution=zipf"]))
    with pytest.raises(ConfigError, match=r"negatives_alpha: must be in \[0, 2\], got 2.5"):
        resolve("ranking", None, Overrides(sets=["training.negatives_alpha=2.5"]))
    with pytest.raises(ConfigError, match="only applies to ranking, not retrieval"):
        resolve("retrieval", None, Overrides(sets=["training.negatives_exclude_seen=true"]))
