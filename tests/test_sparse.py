"""Sparse embedding updates: config, the auto rule, and real runs (learning, resume, DDP, clipping)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from recjobs.config.optim import SPARSE_AUTO_ROWS, build_optimizers, clip_grad_norm, sparse_decision
from recjobs.config.resolver import Overrides, load_yaml, resolve, resolve_dict
from recjobs.errors import ConfigError
from recjobs.training import trainer

from runs import QUICKSTART, ROOT, TINY, StopAfter


def training(snippet: str) -> dict:
    raw = load_yaml(
        "ranking:\n  training:\n" + "".join(f"    {line}\n" for line in snippet.splitlines()), "t"
    )
    return resolve_dict(raw, "ranking").to_dict()["ranking"]["training"]


@pytest.mark.parametrize(
    "dense, derived",
    [
        ("optimizer: Adam", {"name": "SparseAdam", "lr": 0.001}),
        (
            "optimizer: {name: AdamW, weight_decay: 0.01, betas: [0.8, 0.9], eps: 1e-7}",
            {"name": "SparseAdam", "lr": 0.001, "betas": [0.8, 0.9], "eps": 1e-7},
        ),
        (
            "optimizer: {name: SGD, momentum: 0.9, nesterov: true, weight_decay: 0.0001}",
            {"name": "SGD", "lr": 0.001, "momentum": 0.9, "nesterov": True},
        ),
        (
            "optimizer: {name: Adagrad, lr_decay: 0.01}",
            {"name": "Adagrad", "lr": 0.001, "lr_decay": 0.01},
        ),
        ("optimizer: RMSprop", {"name": "SparseAdam", "lr": 0.001}),
    ],
)
def test_embedding_optimizer_is_derived_from_the_dense_one(dense, derived):
    assert training(dense)["embedding_optimizer"] == derived


def test_explicit_embedding_optimizer_and_its_errors():
    t = training("embedding_optimizer: {name: Adagrad, lr: 0.05}")
    assert t["embedding_optimizer"] == {"name": "Adagrad", "lr": 0.05}
    with pytest.raises(ConfigError) as err:
        training("embedding_optimizer: Adam")
    assert (
        err.value.line()
        == "error: ranking.training.embedding_optimizer.name: Adam does not accept sparse gradients (one of SparseAdam, Adagrad, SGD)"
    )
    with pytest.raises(ConfigError) as err:
        training("embedding_optimizer: {name: SGD, weight_decay: 0.1}")
    assert (
        err.value.line()
        == "error: ranking.training.embedding_optimizer.weight_decay: weight decay does not work with sparse gradients (drop it, or set sparse_embeddings: false)"
    )


def test_the_auto_rule():
    assert sparse_decision("auto", [10, SPARSE_AUTO_ROWS - 1], nccl=False)[0] is False
    assert sparse_decision("auto", [10, SPARSE_AUTO_ROWS], nccl=False)[0] is True
    assert sparse_decision("auto", [10, 10**7], nccl=True)[0] is False
    assert sparse_decision(True, [10], nccl=False)[0] is True
    assert sparse_decision(False, [10**7], nccl=False)[0] is False
    with pytest.raises(ConfigError, match="NCCL cannot all-reduce sparse gradients"):
        sparse_decision(True, [10], nccl=True)


def test_tables_and_dense_parameters_get_their_own_optimizer():
    from recjobs.models import build_model

    t = resolve("ranking").training
    model = build_model("ranking", resolve("ranking").model, [50, 4], [30, 5], sparse=True)
    opts = build_optimizers(model, t.optimizer, t.embedding_optimizer)
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert {id(p) for g in opts.embeddings.param_groups for p in g["params"]} == tables
    dense = {id(p) for g in opts.dense.param_groups for p in g["params"]}
    assert not dense & tables and len(dense) + len(tables) == len(list(model.parameters()))
    assert type(opts.embeddings).__name__ == "SparseAdam" and type(opts.dense).__name__ == "Adam"


def test_clip_grad_norm_with_sparse_gradients_matches_dense():
    torch.manual_seed(0)
    idx = torch.tensor([1, 3, 3, 7])
    grads = []
    for sparse in (True, False):
        emb = torch.nn.Embedding(10, 4, sparse=sparse)
        torch.nn.init.constant_(emb.weight, 0.5)
        lin = torch.nn.Linear(4, 1)
        torch.nn.init.constant_(lin.weight, 2.0)
        lin(emb(idx)).sum().backward()
        total = clip_grad_norm([emb.weight, lin.weight, lin.bias], 1.0)
        grads.append((total, emb.weight.grad.to_dense(), lin.weight.grad, lin.bias.grad))
    assert torch.allclose(grads[0][0], grads[1][0])
    assert all(torch.allclose(a, b) for a, b in zip(grads[0][1:], grads[1][1:]))
    norm = torch.cat([g.flatten() for g in grads[1][1:]]).norm()
    assert norm == pytest.approx(1.0, rel=1e-4)


def cfg(task, *sets):
    return resolve(task, QUICKSTART, Overrides(sets=[*TINY, *sets]))


def test_sparse_run_learns_and_logs_both_lrs(tmp_path):
    sets = [
        "training.sparse_embeddings=true",
        "training.max_epochs=3",
        "training.grad_clip_norm=5.0",
    ]
    sets.append("training.scheduler={name: StepLR, step_size: 1, gamma: 0.5}")
    config = resolve("ranking", QUICKSTART, Overrides(sets=sets))
    trainer.train(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss" in r]
    assert all(r["train/lr"] == r["train/lr/embeddings"] for r in train)
    lr = config.training.optimizer["lr"]  # quickstart's
    assert sorted({r["train/lr"] for r in train}) == pytest.approx([lr / 4, lr / 2, lr])
    assert [r for r in records if "val/auc" in r][-1]["val/auc"] > 0.75


def test_off_switch_and_auto_on_small_tables_are_the_plain_single_optimizer(tmp_path):
    trainer.train(
        cfg("ranking", "training.max_epochs=1", "training.sparse_embeddings=false"),
        tmp_path / "off",
    )
    trainer.train(cfg("ranking", "training.max_epochs=1"), tmp_path / "auto")
    a, b = (torch.load(tmp_path / d / "model" / "model.pt") for d in ("off", "auto"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sparse_run_resumes_exactly(tmp_path, monkeypatch):
    config = cfg("retrieval", "training.sparse_embeddings=true", "training.max_epochs=2")
    trainer.train(config, tmp_path / "straight")
    StopAfter.n = 9
    monkeypatch.setattr(trainer, "StopSignal", StopAfter)
    with pytest.raises(trainer.Preempted):
        trainer.train(config, tmp_path / "resumed")
    monkeypatch.undo()
    trainer.train(config, tmp_path / "resumed", resume=True)
    a, b = (torch.load(tmp_path / d / "model" / "model.pt") for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sparse_ddp_on_gloo(tmp_path):
    config = cfg(
        "ranking",
        "training.sparse_embeddings=true",
        "training.max_epochs=1",
        "dataset.synth.interactions=4001",
    )
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [
        str(ROOT / "tests" / "ddp_worker.py"),
        "ranking",
        json.dumps(config.to_dict()),
        str(tmp_path / "run"),
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    w0, w1 = (torch.load(out / f"weights{r}.pt") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    start = torch.load(tmp_path / "run" / "model" / "model.pt")
    assert all(torch.equal(start[k], w0[k]) for k in w0)
