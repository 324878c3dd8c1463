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
    cfg_all, _, _ = setup("retrieval", f"training.eval_max_users={n + 10}")
    assert make_task(cfg_all, data, torch.device("cpu")).evaluate(model) == everyone.evaluate(model)

    cfg_s, _, _ = setup("retrieval", "training.eval_max_users=40")
    a, b = (make_task(cfg_s, data, torch.device("cpu")) for _ in range(2))
    assert len(a.eval_users) == 40 and torch.equal(a.eval_users, b.eval_users)
    # The sample's metrics are the full computation restricted to those users.
    with torch.no_grad():
        users = a.eval_users
        pos = torch.full((data.user_features.shape[0],), -1)
        pos[users] = torch.arange(40)
        v, t = pos[data.val_users], pos[data.train_users]
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
