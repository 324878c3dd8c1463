"""Sharded validation and global negatives, with 2 real gloo processes under torchrun.

Each rank validates its own share and the pieces are joined: the result must be that of one
process validating everything. Global negatives: the loss and every parameter's gradient of a
2-rank DDP step must be those of one process computing the softmax over the concatenated batch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recjobs.cli import main
from recjobs.config.resolver import Overrides, resolve
from recjobs.data import load_task_data, write_dataset
from recjobs.models import build_model, in_batch_softmax_loss
from recjobs.training.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
WORKER = ROOT / "tests" / "distributed_worker.py"
TINY = [
    "dataset.synth.users=300",
    "dataset.synth.items=80",
    "dataset.synth.interactions=4001",
    "model.embedding_dim=8",
    "model.hidden_dims=[16]",
    "model.dropout=0",
]
# Tolerance of the gradients: float32, summed in another order (each rank's rows, the
# reduce-scatter of the gathered items, DDP's average) than one process's. Seen: at most 3e-7
# absolute on gradients of up to 0.9; a real error (a rank's items missing, a positive in the
# wrong column, a loss counted twice) moves them by 1e-2 or more.
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-6


def _config(task: str, *sets: str):
    return resolve(task, ROOT / "config" / "quickstart.yaml", Overrides(sets=[*TINY, *sets]))


def _model_weights(config, data, path: Path) -> torch.nn.Module:
    torch.manual_seed(7)
    model = build_model(config.task, config.model, data.user_cardinalities, data.item_cardinalities)
    torch.save(model.state_dict(), path)
    return model


def _torchrun(mode: str, config, weights: Path, out: Path, nproc: int = 2) -> list[dict]:
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), str(WORKER), mode, json.dumps(config.to_dict())]
    cmd += [str(weights), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["retrieval", "ranking"])
def test_each_rank_holds_its_own_users_and_together_the_ranks_hold_the_table(tmp_path, task):
    path = write_dataset(str(tmp_path / "data"), 300, 80, 6001, seed=5)
    sets = ["training.eval_max_users=151"] if task == "retrieval" else []
    config = resolve(task, path, Overrides(sets=sets))
    single = load_task_data(config)
    _torchrun("load", config, Path(os.devnull), tmp_path / "out")
    ranks = [torch.load(tmp_path / "out" / f"data{r}.pt") for r in (0, 1)]

    for split in ("train", "val"):
        users = [set(r[f"{split}_users"].tolist()) for r in ranks]
        assert not users[0] & users[1], f"{split}: a user on both ranks"
        pairs = sorted(
            p
            for r in ranks
            for p in zip(r[f"{split}_users"].tolist(), r[f"{split}_items"].tolist(), strict=True)
        )
        whole = getattr(single, f"{split}_users").tolist(), getattr(single, f"{split}_items")
        assert pairs == sorted(zip(whole[0], whole[1].tolist(), strict=True)), split
    positions = torch.cat([r["val_positions"] for r in ranks]).sort().values
    assert torch.equal(positions, single.val_positions)
    assert all(r["train_users"].dtype == torch.int16 for r in ranks)
    lengths = [len(r["train_users"]) for r in ranks]
    assert all(int(r["train_per_rank"]) == min(lengths) for r in ranks)
    assert all(int(r["train_total"]) == sum(lengths) == single.train_total for r in ranks)
    assert max(lengths) - min(lengths) <= 0.02 * sum(lengths)  # dealt evenly (shards.py)
    assert all(torch.equal(r["item_counts"], single.item_counts) for r in ranks)
    if task == "retrieval":  # the same 151 users as one process, at most 76 on a rank
        eval_users = torch.cat([r["eval_users"] for r in ranks]).sort().values
        assert torch.equal(eval_users, single.eval_users) and len(eval_users) == 151
        assert max(len(r["eval_users"]) for r in ranks) == 76


def _val_loss(task, model, pairs: list[list[list[int]]]) -> float:
    """The mean over all pairs of the loss of batches (of the task's size) of each rank's own."""
    total, step = 0.0, task.eval_loss_batch
    with torch.no_grad():
        for users, items in pairs:
            for s in range(0, len(users), step):
                batch = {
                    "users": torch.tensor(users[s : s + step]),
                    "items": torch.tensor(items[s : s + step]),
                }
                total += task.loss(model, batch, mixed=False).double().item() * len(batch["users"])
    return total / sum(len(u) for u, _ in pairs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, sets",
    [
        ("retrieval", ["training.eval_max_users=151"]),  # odd: the shares differ by one
        ("ranking", []),
        ("ranking", ["training.loss_func=mse"]),
    ],
)
def test_sharded_validation_equals_one_process(tmp_path, task, sets):
    config = _config(task, *sets)
    data = load_task_data(config)
    model = _model_weights(config, data, tmp_path / "weights.pt")
    ranks = _torchrun("evaluate", config, tmp_path / "weights.pt", tmp_path / "out")

    model.eval()
    single = make_task(config, data, torch.device("cpu"))
    expected, baseline = single.evaluate(model), single.baseline()
    # Every rank holds the same numbers (early stopping and the LR schedule agree).
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert ranks[0]["baseline"] == ranks[1]["baseline"]
    if task == "retrieval":
        # val/loss: each rank's batches are made of its own pairs, so it is the mean of the
        # one-process loss over those batches, not over the table's.
        pairs = [r["val_pairs"] for r in ranks]
        assert sum(len(u) for u, _ in pairs) == len(single.val_users)
        expected = {**expected, "val/loss": _val_loss(single, model, pairs)}
        assert ranks[0]["metrics"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
        assert ranks[0]["baseline"] == pytest.approx(baseline, rel=1e-6, abs=1e-12)
        users = len(single.eval_users)
        assert users == 151
        # evaluate's and baseline's scoring calls: each ceil(U/2) users at most, U together.
        per_rank = [r["scored"] for r in ranks]
        assert all(n <= math.ceil(users / 2) for calls in per_rank for n in calls)
        assert per_rank[0][0] + per_rank[1][0] == users
        assert per_rank[0][1] + per_rank[1][1] == users
    else:
        # The scores are gathered: AUC, logloss, RMSE are those of one process (the sums of
        # logloss and MSE in another order: 1e-6), the AUC exactly.
        assert ranks[0]["metrics"] == pytest.approx(expected, rel=1e-6)
        assert ranks[0]["metrics"].get("val/auc") == expected.get("val/auc")
        assert ranks[0]["baseline"] == pytest.approx(baseline, rel=1e-6)
        # Each rank scored the rows of its own users: together all of them, once.
        rows = len(single.val[0])
        scored = [r["scored"][0] for r in ranks]
        assert sum(scored) == rows and min(scored) > rows / 3
    assert all(math.isfinite(v) for v in expected.values())


@pytest.mark.slow
@pytest.mark.parametrize("mixed", [0, 16])
def test_global_negatives_loss_and_gradients_equal_one_process_over_the_global_batch(
    tmp_path, mixed
):
    # 30 items in batches of 32: the same item on both ranks' batches is common, so accidental
    # hits across ranks are masked or the loss differs.
    config = _config(
        "retrieval",
        "dataset.synth.items=30",
        "dataset.synth.interactions=2000",
        "training.batch_size=32",
        "training.negatives=global",
        f"training.mixed_negatives={mixed}",
    )
    data = load_task_data(config)
    model = _model_weights(config, data, tmp_path / "weights.pt")
    ranks = _torchrun("step", config, tmp_path / "weights.pt", tmp_path / "out")
    grads = [torch.load(tmp_path / "out" / f"grads{r}.pt") for r in (0, 1)]

    # One process, the concatenated batch (each rank's 32 rows of its own shard), its softmax
    # over all 64 (+ 2M) items.
    task = make_task(config, data, torch.device("cpu"))
    batch = {
        "users": torch.tensor([u for r in ranks for u in r["users"]]),
        "items": torch.tensor([i for r in ranks for i in r["items"]]),
    }
    assert not set(ranks[0]["users"]) & set(ranks[1]["users"])  # each rank its own users
    if mixed:
        extra = torch.tensor([i for r in ranks for d in r["mixed"] for i in d])
        assert len(extra) == 2 * mixed
        user_emb, both = model(
            task.user_features[batch["users"]],
            task.item_features[torch.cat([batch["items"], extra])],
        )
        expected = in_batch_softmax_loss(
            user_emb,
            both[:64],
            task.temperature,
            item_ids=batch["items"],
            log_q=task.log_q[batch["items"]] + math.log(64),
            extra_emb=both[64:],
            extra_ids=extra,
            extra_log_q=math.log(2 * mixed / data.n_items),
        )
    else:
        expected = task.loss(model, batch)  # world 1: one softmax over the 64
    expected.backward()

    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(expected.item(), rel=1e-6)
    assert grads[0].keys() == grads[1].keys() == {n for n, _ in model.named_parameters()}
    for name, param in model.named_parameters():
        assert torch.equal(grads[0][name], grads[1][name]), name  # DDP averaged them
        torch.testing.assert_close(grads[0][name], param.grad, rtol=GRAD_RTOL, atol=GRAD_ATOL)

    # The test can fail: each rank's own batch as its negatives gives another loss.
    model.zero_grad()
    local = [
        task.loss(model, {k: v[r * 32 : r * 32 + 32] for k, v in batch.items()}) for r in (0, 1)
    ]
    local_mean = float(sum(local).detach() / 2)
    assert abs(local_mean - expected.item()) > 0.05


def test_global_negatives_at_one_process_are_local():
    data_config = _config("retrieval", "training.batch_size=64")
    data = load_task_data(data_config)
    model = _model_weights(data_config, data, Path(os.devnull))
    batch = {"users": data.train_users[:64].long(), "items": data.train_items[:64].long()}
    losses = []
    for negatives in ("local", "global"):
        task = make_task(_config("retrieval", f"training.negatives={negatives}"), data, CPU)
        losses.append(task.loss(model, batch, mixed=False).item())
    assert losses[0] == losses[1]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["retrieval", "--set", "training.negatives=all"],
            "error: retrieval.training.negatives: expected one of 'local', 'global', got string "
            "'all'",
        ),
        (
            ["ranking", "--set", "training.negatives=global"],
            "error: ranking.training.negatives: only applies to retrieval, not ranking",
        ),
    ],
)
def test_bad_negatives_is_one_line_exit_2(argv, expected, capsys):
    assert main(["resolve", *argv]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", expected + "\n")


def test_global_is_accepted_and_written_back(capsys):
    assert main(["resolve", "retrieval", "--set", "training.negatives=global"]) == 0
    assert '"negatives": "global"' in capsys.readouterr().out
