"""Shared pieces of the tests that train for real: tiny settings and a scripted SIGTERM."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from recjobs.data import load_task_data
from recjobs.data.shards import assign_users
from recjobs.training import trainer

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "config" / "quickstart.yaml"
# Tiny data and model: each run takes a second or two on 2 CPU cores.
TINY = [
    "dataset.synth.users=300",
    "dataset.synth.items=80",
    "dataset.synth.interactions=4000",
    "model.embedding_dim=8",
    "model.hidden_dims=[16]",
    "training.batch_size=256",
    "training.log_steps=1",
]


def shard_sizes(cfg: Any, world: int) -> list[int]:
    """The training examples each rank of a `world`-process job of `cfg` holds
    (`recjobs.data.shards`), worked out in this process; on data without unknown ids."""
    data = load_task_data(cfg)
    users = data.train_users.long().numpy()
    counts = np.bincount(users, minlength=data.n_users + 1)
    owner = assign_users(counts, data.eval_users.numpy(), world)
    return np.bincount(owner[users], minlength=world).tolist()


def table_pairs(cfg: Any) -> Counter:
    """The (user row, item row) pairs of the training table, with their counts."""
    data = load_task_data(cfg)
    return Counter(zip(data.train_users.tolist(), data.train_items.tolist(), strict=True))


class StopAfter(trainer.StopSignal):
    """A SIGTERM that "arrives" after `n` checks (a single process checks once per step)."""

    n = 0

    def __init__(self):
        super().__init__()
        self.checks = 0

    @property
    def requested(self):
        self.checks += 1
        return self.checks > StopAfter.n

    @requested.setter
    def requested(self, value):
        pass  # the real handler is never needed here


def missing(reason: str) -> None:
    """Skip loudly where a test's real input is absent; in CI (CI=true) that is a failure."""
    import os

    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: this must not be skipped)")
    pytest.skip(reason)


def resolve_printed(*overrides: str) -> dict[str, Any]:
    """What `recjobs resolve retrieval --config config/quickstart.yaml OVERRIDES` prints."""
    done = subprocess.run(
        [sys.executable, "-m", "recjobs", "resolve", "retrieval", "--config"]
        + ["config/quickstart.yaml", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
