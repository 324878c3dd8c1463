"""A real 2-process torchrun job (gloo): one DDP job, not two independent runs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from recjobs.config.resolver import Overrides, resolve
from recjobs.data import load_task_data, steps_per_epoch
from recjobs.models import build_model
from recjobs.training import metrics
from recjobs.training.tasks import make_task

from runs import shard_sizes, table_pairs

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "dataset.synth.users=300",
    "dataset.synth.items=80",
    "dataset.synth.interactions=4001",  # odd: one example is dropped so both ranks run equal steps
    "model.embedding_dim=8",
    "model.hidden_dims=[16]",
    "training.batch_size=128",
    "training.log_steps=5",
    "training.max_epochs=2",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, negatives", [("retrieval", "local"), ("retrieval", "global"), ("ranking", None)]
)
def test_two_process_ddp_job(tmp_path, task, negatives):
    sets = TINY + ([f"training.negatives={negatives}"] if negatives else [])
    config = resolve(task, ROOT / "config" / "quickstart.yaml", Overrides(sets=sets))
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [
        str(ROOT / "tests" / "ddp_worker.py"),
        task,
        json.dumps(config.to_dict()),
        str(tmp_path / "run"),
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    weights = [torch.load(out / f"weights{r}.pt") for r in (0, 1)]
    # Gradients were averaged: both ranks end with identical weights.
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    data = load_task_data(config)
    per_rank = min(shard_sizes(config, 2))
    table = table_pairs(config)
    for epoch in range(2):
        a, b = (Counter(map(tuple, ranks[r]["seen"][epoch])) for r in (0, 1))
        assert not {u for u, _ in a} & {u for u, _ in b}, "a user's rows on both ranks"
        assert a.total() == b.total() == per_rank
        assert not (a + b) - table, "an example trained twice in an epoch"
        assert (a + b).total() >= 0.98 * table.total()  # the ranks' shards are dealt evenly
    assert ranks[0]["seen"][0] != ranks[0]["seen"][1]  # reshuffled per epoch

    # Each rank validated its own users and the pieces were joined: the same numbers on both
    # ranks, and the same as evaluating these weights in one process (world size 1), but for
    # retrieval's val/loss, whose batches (of the global batch, 2 x 128, with global negatives)
    # each rank makes of its own pairs (tests/test_distributed.py checks it exactly).
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    model = build_model(task, config.model, data.user_cardinalities, data.item_cardinalities)
    model.load_state_dict(weights[0])
    model.eval()
    if negatives == "global":
        sets = [*TINY, "training.batch_size=256"]
        config = resolve(task, ROOT / "config" / "quickstart.yaml", Overrides(sets=sets))
    single = make_task(config, data, torch.device("cpu")).evaluate(model)
    got = dict(ranks[0]["metrics"])
    if task == "retrieval":
        assert got.pop("val/loss") == pytest.approx(single.pop("val/loss"), rel=0.1)
    assert single == pytest.approx(got, rel=1e-6)

    # The export's seen items are every rank's training pairs (gathered on rank 0), not rank 0's.
    catalogue = torch.load(tmp_path / "run" / "model" / "catalogue.pt")
    expected_seen = metrics.csr_from_pairs(
        data.train_users, data.train_items, len(data.user_features)
    )
    assert torch.equal(catalogue["seen_indptr"], expected_seen[0])
    assert torch.equal(catalogue["seen_indices"], expected_seen[1])
    assert torch.equal(catalogue["item_counts"], data.item_counts)

    # One job: one metrics file, written by rank 0, with steps counted once for the whole job.
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    per_epoch = steps_per_epoch(per_rank, 128)
    assert max(r["step"] for r in records) == 2 * per_epoch
    assert [r["epoch"] for r in records if "val/loss" in r] == [0, 1]
