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
from recjobs.data import load_task_data
from recjobs.models import build_model, in_batch_softmax_loss
from recjobs.training.distributed import Ranks
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


def test_shares_cover_everything_once_and_none_exceeds_ceil():
    for n in (0, 1, 5, 151, 1000):
        for world in (1, 2, 3, 7):
            parts = [Ranks(r, world).share(n) for r in range(world)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            assert max(p.stop - p.start for p in parts) <= -(-n // world)


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
        # The scores are gathered: AUC, logloss, RMSE are those of one process, exactly.
        assert ranks[0]["metrics"] == expected
        assert ranks[0]["baseline"] == baseline
        rows = len(single.val[0])
        assert [r["scored"][0] for r in ranks] == [math.ceil(rows / 2), rows // 2]
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

    # One process, the concatenated batch (rows 0..63), its softmax over all 64 (+ 2M) items.
    task = make_task(config, data, torch.device("cpu"))
    batch = task.batch(torch.arange(64))
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
    local = [task.loss(model, task.batch(torch.arange(r * 32, r * 32 + 32))) for r in (0, 1)]
    local_mean = float(sum(local).detach() / 2)
    assert abs(local_mean - expected.item()) > 0.05


def test_global_negatives_at_one_process_are_local():
    data_config = _config("retrieval", "training.batch_size=64")
    data = load_task_data(data_config)
    model = _model_weights(data_config, data, Path(os.devnull))
    batch = {"users": data.train_users[:64], "items": data.train_items[:64]}
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
