"""The training loop on CPU: it learns, its LR curves are right, it resumes exactly, it obeys SIGTERM."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from recjobs.cli import main
from recjobs.config.resolver import Overrides, resolve
from recjobs.data import load_task_data
from recjobs.training import metrics, trainer
from recjobs.training.checkpoint import load_checkpoint
from recjobs.training.export import ITEM_EMBEDDINGS, load_model

from lr_curves import cosine, one_cycle, step_lr, warm_restarts
from runs import QUICKSTART, TINY, StopAfter

ROOT = Path(__file__).resolve().parents[1]


def cfg(task: str, *sets: str, config: Path | None = QUICKSTART, **flags):
    return resolve(task, config, Overrides(sets=[*TINY, *sets], **flags))


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_records(run_dir: Path) -> list[dict]:
    # Every train record has train/lr; retrieval's has no train/loss when its window holds
    # only an epoch's short last batch.
    return [r for r in read_metrics(run_dir) if "train/lr" in r]


def val_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "val/loss" in r]


# --------------------------------------------------------------------------- it learns


def most_popular_recall(config) -> float:
    data = load_task_data(config)
    users, rows = torch.unique(data.val_users.long(), return_inverse=True)
    n = len(users)
    position = torch.full((len(data.user_features),), -1)
    position[users] = torch.arange(n)
    seen = position[data.train_users.long()]
    keep = seen >= 0
    popularity = data.item_counts.float()[:, None]
    found = metrics.retrieval_metrics(
        torch.ones(n, 1),
        popularity,
        *metrics.csr_from_pairs(rows, data.val_items, n),
        *metrics.csr_from_pairs(seen[keep], data.train_items[keep], n),
        [10],
    )
    return found["recall@10"]


def test_retrieval_beats_most_popular(tmp_path):
    config = resolve("retrieval", QUICKSTART, Overrides(sets=["training.max_epochs=3"]))
    trainer.train(config, tmp_path)
    best = max(r["val/recall@10"] for r in val_records(tmp_path))
    baseline = most_popular_recall(config)
    assert baseline > 0.1  # the baseline itself is not trivial on this data
    assert best > 1.5 * baseline, (best, baseline)


@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
def test_ranking_auc_well_above_chance(tmp_path, arch):
    config = resolve(
        "ranking", QUICKSTART, Overrides(sets=[f"model.model_arch={arch}", "training.max_epochs=3"])
    )
    trainer.train(config, tmp_path)
    assert val_records(tmp_path)[-1]["val/auc"] > 0.75


def test_ranking_mse_beats_predicting_the_mean(tmp_path):
    config = cfg(
        "ranking",
        "training.loss_func=mse",
        "training.max_epochs=4",
        "training.lr=0.01",
        "training.scheduler=null",  # a constant lr, whatever quickstart's ranking schedule is
    )
    trainer.train(config, tmp_path)
    data = load_task_data(config)
    constant = float((data.val_labels - data.train_labels.mean()).pow(2).mean().sqrt())
    assert val_records(tmp_path)[-1]["val/rmse"] < 0.9 * constant


# --------------------------------------------------------------------------- LR curves in real runs


def lr_by_step(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/lr"] for r in train_records(run_dir)}


SPEC_SCHEDULERS = {
    "StepLR": ("{name: StepLR, step_size: 2, gamma: 0.5}", lambda n: step_lr(n, 2, 0.5)),
    "CosineAnnealingLR": (
        "{name: CosineAnnealingLR, T_max: 4, eta_min: 1e-6}",
        lambda n: cosine(n, 4, 1e-6),
    ),
    "ExponentialLR": ("{name: ExponentialLR, gamma: 0.95}", lambda n: 0.1 * 0.95**n),
    "CosineAnnealingWarmRestarts": (
        "{name: CosineAnnealingWarmRestarts, T_0: 2, T_mult: 2, eta_min: 1e-6}",
        lambda n: warm_restarts(n, 2, 2, 1e-6),
    ),
}


@pytest.mark.parametrize("interval", ["epoch", "step"])
@pytest.mark.parametrize("name", list(SPEC_SCHEDULERS))
def test_train_lr_follows_the_schedule(tmp_path, name, interval):
    spec, form = SPEC_SCHEDULERS[name]
    config = cfg(
        "retrieval",
        "training.max_epochs=4",
        "training.lr=0.1",
        "training.optimizer=SGD",
        f"training.scheduler={spec[:-1]}, interval: {interval}}}",
    )
    trainer.train(config, tmp_path)
    lrs = lr_by_step(tmp_path)
    per_epoch = len(lrs) // 4
    assert per_epoch >= 10 and len(lrs) == 4 * per_epoch
    for step, lr in lrs.items():
        n = (step - 1) // per_epoch if interval == "epoch" else step - 1
        assert lr == pytest.approx(form(n), rel=1e-9), (step, lr)


def test_one_cycle_in_a_real_run_derives_total_steps(tmp_path):
    config = cfg(
        "retrieval", "training.max_epochs=2", "training.scheduler={name: OneCycleLR, max_lr: 0.05}"
    )
    trainer.train(config, tmp_path)
    lrs = lr_by_step(tmp_path)
    total = len(lrs)
    assert [lrs[s] for s in sorted(lrs)] == pytest.approx(
        [one_cycle(n, total, 0.05) for n in range(total)]
    )


def test_reduce_on_plateau_reduces_when_the_metric_stalls(tmp_path):
    # mode max on val/loss: a falling loss is "no improvement", so every epoch after the first
    # is a stall and (patience 0) halves the LR. The curve is computed from the logged metric.
    config = cfg(
        "retrieval",
        "training.max_epochs=4",
        "training.lr=0.01",
        "training.scheduler={name: ReduceLROnPlateau, monitor: loss, mode: max, patience: 0, factor: 0.5, threshold: 0}",
    )
    trainer.train(config, tmp_path)
    losses = [r["val/loss"] for r in val_records(tmp_path)]
    expected, best, lr = [], -float("inf"), 0.01
    for loss in losses:
        expected.append(lr)
        if loss > best:
            best = loss
        else:
            lr *= 0.5
    records = train_records(tmp_path)
    first_lr_of_epoch = [next(r["train/lr"] for r in records if r["epoch"] == e) for e in range(4)]
    assert first_lr_of_epoch == pytest.approx(expected)
    assert first_lr_of_epoch[-1] < 0.01  # it did reduce


# --------------------------------------------------------------------------- run dir and export


def test_run_dir_contents(tmp_path, capsys):
    argv = [
        "--config",
        str(QUICKSTART),
        *[a for s in TINY for a in ("--set", s)],
        "--set",
        "training.max_epochs=2",
    ]
    assert main(["train", "retrieval", *argv, "--run-dir", str(tmp_path)]) == 0
    assert main(["resolve", "retrieval", *argv]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == resolved
    records = read_metrics(tmp_path)
    assert all({"step", "epoch"} <= set(r) for r in records)
    train_keys = {"step", "epoch", "train/loss", "train/lr", "train/examples_per_s"}
    assert set(train_records(tmp_path)[0]) == train_keys
    val_keys = {"step", "epoch", "val/loss"} | {
        f"val/{m}@{k}" for m in ("recall", "ndcg", "hit") for k in (10, 50)
    }
    assert set(val_records(tmp_path)[0]) == val_keys
    assert (tmp_path / "checkpoints" / "last.pt").is_file() and (
        tmp_path / "checkpoints" / "best.pt"
    ).is_file()
    model, config, encoders = load_model(tmp_path / "model")
    assert config.to_dict() == resolved and not model.training
    emb = torch.load(tmp_path / "model" / ITEM_EMBEDDINGS)
    assert len(emb["item_ids"]) == 80 and emb["embeddings"].shape == (80, 16)
    assert emb["item_ids"] == encoders.item_id.values()
    data = load_task_data(config, encoders)
    with torch.no_grad():
        again = model.item_embeddings(data.item_features[1:])
    assert torch.allclose(again, emb["embeddings"])


def test_fresh_run_refuses_a_used_run_dir(tmp_path, capsys):
    trainer.train(cfg("ranking", "training.max_epochs=1"), tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    assert main(["train", "ranking", "--config", str(QUICKSTART), "--run-dir", str(tmp_path)]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "already holds a run (checkpoints/last.pt) (pass --resume to continue it, or use another --run-dir)"
        )
    )
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_resume_with_another_config_is_refused(tmp_path, capsys):
    trainer.train(cfg("ranking", "training.max_epochs=1"), tmp_path)
    argv = [
        "train",
        "ranking",
        "--config",
        str(QUICKSTART),
        *[a for s in TINY for a in ("--set", s)],
    ]
    assert main([*argv, "--set", "training.lr=0.5", "--run-dir", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: checkpoints/last.pt: was trained with a different config (ranking.training.lr, ranking.training.optimizer, ranking.training.embedding_optimizer) "
        "(resume with the same config, or start a new --run-dir)"
    )
    # Longer training of the same run is allowed.
    assert (
        main([*argv, "--set", "training.max_epochs=2", "--run-dir", str(tmp_path), "--resume"]) == 0
    )
    assert max(r["epoch"] for r in val_records(tmp_path)) == 1


RESUME_HINT = (
    "(drop --resume to start a new run, or pass --resume-or-start to resume when there is a "
    "checkpoint and start a new run when there is none)"
)


def test_resume_without_a_run_to_resume_is_an_error(tmp_path, capsys):
    argv = [
        "train",
        "ranking",
        "--config",
        str(QUICKSTART),
        *[a for s in TINY for a in ("--set", s)],
    ]
    typo = tmp_path / "typo_dir"
    assert main([*argv, "--run-dir", str(typo), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {typo}: does not exist: nothing to resume {RESUME_HINT}"
    )
    assert not typo.exists()  # the mistyped directory is not created
    # A directory without a checkpoint (a run that died before its first one) is no run either.
    started = tmp_path / "started"
    started.mkdir()
    (started / "metrics.jsonl").write_text("")
    assert main([*argv, "--run-dir", str(started), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {started}: has no checkpoints/last.pt to resume {RESUME_HINT}"
    )
    assert sorted(p.name for p in started.iterdir()) == ["metrics.jsonl"]
    assert main([*argv, "--run-dir", str(started), "--resume", "--resume-or-start"]) == 2
    assert "not allowed with argument --resume" in capsys.readouterr().err


def test_resume_or_start_starts_a_new_run_with_one_warning_then_resumes(tmp_path, caplog):
    argv = [
        "train",
        "ranking",
        "--config",
        str(QUICKSTART),
        *[a for s in TINY for a in ("--set", s)],
    ]
    run_dir = tmp_path / "run"
    with caplog.at_level("INFO", logger="recjobs"):
        assert (
            main(
                [
                    *argv,
                    "--set",
                    "training.max_epochs=1",
                    "--run-dir",
                    str(run_dir),
                    "--resume-or-start",
                ]
            )
            == 0
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"no checkpoint in {run_dir}: starting a new run"]
    assert [r["epoch"] for r in val_records(run_dir)] == [0]
    caplog.clear()
    with caplog.at_level("INFO", logger="recjobs"):
        assert (
            main(
                [
                    *argv,
                    "--set",
                    "training.max_epochs=2",
                    "--run-dir",
                    str(run_dir),
                    "--resume-or-start",
                ]
            )
            == 0
        )
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        r.getMessage().startswith(f"resumed from {run_dir}/checkpoints/last.pt at epoch 1")
        for r in caplog.records
    )
    assert [r["epoch"] for r in val_records(run_dir)] == [0, 1]


def test_cpu_runs_are_deterministic(tmp_path):
    config = cfg("ranking", "training.max_epochs=2")
    trainer.train(config, tmp_path / "a")
    trainer.train(config, tmp_path / "b")
    a = torch.load(tmp_path / "a" / "model" / "model.pt")
    b = torch.load(tmp_path / "b" / "model" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "train/examples_per_s"} for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "a")) == strip(read_metrics(tmp_path / "b"))


def test_early_stopping_stops_and_restores_the_best(tmp_path):
    # mode max on logloss: while the loss falls, every epoch after the best one is a bad one,
    # so patience 2 stops right after the third epoch whose logloss is not a new maximum.
    config = cfg(
        "ranking",
        "training.max_epochs=8",
        "training.early_stopping.enabled=true",
        "training.early_stopping.metric=logloss",
        "training.early_stopping.mode=max",
        "training.early_stopping.patience=2",
    )
    trainer.train(config, tmp_path)
    losses = [r["val/logloss"] for r in val_records(tmp_path)]
    best, bad, expected_epochs = -1.0, 0, 0
    for loss in losses:
        expected_epochs += 1
        best, bad = (loss, 0) if loss > best else (best, bad + 1)
        if bad >= 2:
            break
    assert len(losses) == expected_epochs < 8
    best_state = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    last_state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    exported = torch.load(tmp_path / "model" / "model.pt")
    assert best_state["epoch"] == losses.index(max(losses)) + 1
    assert all(torch.equal(best_state["model"][k], exported[k]) for k in exported)
    assert not all(torch.equal(last_state["model"][k], exported[k]) for k in exported)


def test_max_steps_ends_mid_epoch_with_a_validation(tmp_path, caplog):
    caplog.set_level("INFO", logger="recjobs")
    trainer.train(cfg("retrieval", "training.max_steps=5", "training.max_epochs=3"), tmp_path)
    assert max(r["step"] for r in train_records(tmp_path)) == 5
    assert val_records(tmp_path)[-1]["step"] == 5
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["step"], summary["epochs"], summary["ended_mid_epoch"]) == (5, 1, True)
    assert (
        (tmp_path / "train.log")
        .read_text()
        .splitlines()[-2]
        .split(": ", 1)[1]
        .startswith("done at step 5, in epoch 0: best val/recall@10 ")
    )


# --------------------------------------------------------------------------- the run's last word


def test_summary_json_and_the_last_lines_of_train_log(tmp_path, caplog):
    caplog.set_level("INFO", logger="recjobs")  # train.log copies what the recjobs logger lets by
    trainer.train(
        cfg("retrieval", "training.max_epochs=3", "training.mixed_precision=bf16"), tmp_path
    )
    records = read_metrics(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    vals = val_records(tmp_path)
    best = max(vals, key=lambda r: r["val/recall@10"])
    (baseline,) = [r["val/baseline/recall@10"] for r in records if "val/baseline/recall@10" in r]
    rates = [r["train/examples_per_s"] for r in train_records(tmp_path)]
    assert summary["best"] == {
        "metric": "val/recall@10",
        "mode": "max",
        "value": best["val/recall@10"],
        "step": best["step"],
    }
    assert summary["baseline"] == {
        "name": "most popular",
        "metric": "val/baseline/recall@10",
        "value": baseline,
    }
    assert summary["lift"]["absolute"] == pytest.approx(best["val/recall@10"] - baseline)
    assert summary["lift"]["relative"] == pytest.approx(best["val/recall@10"] / baseline - 1)
    assert summary["examples_per_s"] == pytest.approx(statistics.median(rates), abs=0.05)
    assert (summary["step"], summary["epochs"], summary["ended_mid_epoch"]) == (
        vals[-1]["step"],
        3,
        False,
    )
    assert summary["model"] == str(tmp_path / "model") and summary["wall_time_s"] > 0
    lines = [line.split(": ", 1)[1] for line in (tmp_path / "train.log").read_text().splitlines()]
    assert "mixed precision: bf16 (autocast to bfloat16)" in lines
    assert lines[-3] == f"restored the best weights (val/recall@10 = {best['val/recall@10']:.4g})"
    lift = summary["lift"]["relative"]
    assert lines[-2] == (
        f"done at step {vals[-1]['step']}, after 3 epochs: best val/recall@10 "
        f"{best['val/recall@10']:.4g} at step {best['step']} (most-popular baseline "
        f"{baseline:.4g}: {lift:+.0%}); those weights are in {tmp_path / 'model'}"
    )
    assert lines[-1].startswith(f"summary: {tmp_path / 'summary.json'} (")


# --------------------------------------------------------------------------- train/loss, examples/s


class FakeClock:
    """The trainer's clock: a training step "takes" 0.05 s plus 1 ms per example."""

    now = 0.0

    @classmethod
    def perf_counter(cls) -> float:
        return cls.now


def record_steps(monkeypatch, task_class) -> list[tuple[float, int]]:
    """(loss, examples) of every training step, each advancing the fake clock."""
    steps: list[tuple[float, int]] = []
    real = task_class.loss

    def loss(self, model, batch, **options):
        value = real(self, model, batch, **options)
        if model.training:  # not validation's val/loss
            examples = len(batch["labels"] if "labels" in batch else batch["users"])
            steps.append((float(value), examples))
            FakeClock.now += 0.05 + examples / 1000
        return value

    FakeClock.now = 0.0
    monkeypatch.setattr(task_class, "loss", loss)
    monkeypatch.setattr(trainer, "time", FakeClock)
    return steps


@pytest.mark.parametrize("log_steps", [1, 3])
def test_retrieval_train_loss_weighs_examples_and_leaves_out_the_short_batch(
    tmp_path, monkeypatch, log_steps
):
    from recjobs.training.tasks import RetrievalTask

    steps = record_steps(monkeypatch, RetrievalTask)
    trainer.train(
        cfg("retrieval", "training.max_epochs=2", f"training.log_steps={log_steps}"), tmp_path
    )
    full = 256
    per_epoch = sum(1 for _, n in steps) // 2
    assert [n for _, n in steps[:per_epoch]] == [full] * 13 + [3400 - 13 * full]  # 72 left
    records = [r for r in read_metrics(tmp_path) if "train/lr" in r]
    previous, last_window = 0, None
    for record in records:
        window = steps[previous : record["step"]]
        previous = record["step"]
        counted = [(loss, n) for loss, n in window if n == full]
        if counted:
            expected = sum(loss * n for loss, n in counted) / sum(n for _, n in counted)
            assert record["train/loss"] == pytest.approx(expected, rel=1e-5)
        else:  # only the epoch's short last batch: no loss to show
            assert "train/loss" not in record and record["step"] % per_epoch == 0
        examples = sum(n for _, n in window)
        seconds = sum(0.05 + n / 1000 for _, n in window)
        rate = (examples, seconds)
        if record["step"] % per_epoch == 0:  # an epoch's end: the whole epoch's rate
            epoch = steps[record["step"] - per_epoch : record["step"]]
            rate = (sum(n for _, n in epoch), sum(0.05 + n / 1000 for _, n in epoch))
        elif len(counted) < log_steps and last_window is not None:  # too short on its own
            rate = (examples + last_window[0], seconds + last_window[1])
        assert record["train/examples_per_s"] == pytest.approx(rate[0] / rate[1], rel=1e-9)
        last_window = (examples, seconds)
    epoch_ends = [r for r in records if r["step"] % per_epoch == 0]
    # Full steps read 256 / 0.306 = 837 examples/s; the short batch alone would read
    # 72 / 0.122 = 590; the epoch (13 full steps and the short one) 3400 / 4.1 = 829.27.
    assert all(r["train/examples_per_s"] > 760 for r in records)
    assert [r["train/examples_per_s"] for r in epoch_ends] == pytest.approx([3400 / 4.1] * 2)
    # log_steps=3: epoch 0's last window is steps 13-14 (one full batch), epoch 1's is step 28
    # alone (the short batch).
    expected_loss = [False, False] if log_steps == 1 else [True, False]
    assert [("train/loss" in r) for r in epoch_ends] == expected_loss


def test_ranking_train_loss_is_the_mean_per_example_short_batch_included(tmp_path, monkeypatch):
    from recjobs.training.tasks import RankingTask

    steps = record_steps(monkeypatch, RankingTask)
    trainer.train(cfg("ranking", "training.max_epochs=1", "training.log_steps=1000"), tmp_path)
    (record,) = train_records(tmp_path)
    expected = sum(loss * n for loss, n in steps) / sum(n for _, n in steps)
    assert record["train/loss"] == pytest.approx(expected, rel=1e-5)
    unweighted = sum(loss for loss, _ in steps) / len(steps)
    assert record["train/loss"] != pytest.approx(unweighted, rel=1e-5)


# --------------------------------------------------------------------------- resume and SIGTERM


@pytest.mark.parametrize(
    ("task", "extra"),
    [("retrieval", ()), ("ranking", ()), ("retrieval", ("training.mixed_negatives=64",))],
)
@pytest.mark.parametrize("stop_at", [7, 16])  # mid-epoch, and just after an epoch end
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, task, extra, stop_at):
    sets = [
        "training.max_epochs=3",
        "training.scheduler={name: CosineAnnealingLR, T_max: 40, interval: step}",
        *extra,
    ]
    config = cfg(task, *sets, "model.dropout=0.3")
    trainer.train(config, tmp_path / "straight")

    StopAfter.n = stop_at
    monkeypatch.setattr(trainer, "StopSignal", StopAfter)
    with pytest.raises(trainer.Preempted):
        trainer.train(config, tmp_path / "resumed")
    monkeypatch.undo()
    assert (tmp_path / "resumed" / "checkpoints" / "last.pt").exists()
    trainer.train(config, tmp_path / "resumed", resume=True)

    a = torch.load(tmp_path / "straight" / "model" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "train/examples_per_s"} for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "resumed")) == strip(read_metrics(tmp_path / "straight"))


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path):
    run_dir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "recjobs",
        "train",
        "retrieval",
        "--config",
        str(QUICKSTART),
        "--run-dir",
        str(run_dir),
    ]
    argv += ["--set", "training.max_epochs=50", "--set", "training.log_steps=5"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while (
            not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").read_text()
        ):
            assert proc.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert time.monotonic() - sent < 10
    assert "SIGTERM at step" in err
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert 0 < state["step"] < 50 * 100
    logged = max(r["step"] for r in train_records(run_dir))
    assert state["step"] >= logged
    # And it resumes from there.
    resumed = subprocess.run(
        argv[:-4] + ["--set", "training.max_epochs=1", "--resume"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "model" / "model.pt").exists()


# --------------------------------------------------------------------------- W&B


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (LevelDB log format after a 7-byte W&B header)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        chunk += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_history(run_dir: Path) -> list[dict]:
    """History rows of an offline W&B run, once its file is complete.

    wandb.finish() can return before W&B's own service process has written the last records,
    so wait (bounded) for the run's closing "exit" record.
    """
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 30
    while True:
        try:
            records = wandb_records(path)
        except Exception:  # a record still being written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, "the W&B run file never got its exit record"
        time.sleep(0.1)
    return [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def test_wandb_offline_records_train_lr(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = cfg(
        "retrieval",
        "training.max_epochs=2",
        "training.use_wandb=true",
        "training.scheduler={name: StepLR, step_size: 1, gamma: 0.5}",
    )
    trainer.train(config, tmp_path)
    rows = wandb_history(tmp_path)
    logged = {r["_step"]: r["train/lr"] for r in rows if "train/lr" in r}
    assert logged == lr_by_step(tmp_path)
    assert sorted(set(logged.values())) == pytest.approx([0.0015, 0.003])
    assert any("val/recall@10" in r for r in rows)


def test_wandb_off_without_key_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with caplog.at_level("INFO"):
        trainer.train(cfg("ranking", "training.max_epochs=1", "training.use_wandb=true"), tmp_path)
    said = [r.message for r in caplog.records if "W&B" in r.message]
    assert said == [
        "W&B is off: use_wandb is true but neither WANDB_API_KEY nor WANDB_MODE=offline is set"
    ]
    assert not (tmp_path / "wandb").exists()


# --------------------------------------------------------------------------- data commands


def test_data_synth_then_train_on_parquet(tmp_path):
    out = tmp_path / "data"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--users",
                "300",
                "--items",
                "80",
                "--interactions",
                "4000",
            ]
        )
        == 0
    )
    config = resolve(
        "ranking",
        out / "config.yaml",
        Overrides(sets=["training.max_epochs=1", "training.batch_size=256"]),
    )
    assert config.dataset.paths.users == str(out / "users.parquet")
    trainer.train(config, tmp_path / "run")
    assert val_records(tmp_path / "run")[-1]["val/auc"] > 0.5


def test_os_environ_untouched_by_training(tmp_path):
    before = dict(os.environ)
    trainer.train(cfg("ranking", "training.max_epochs=1"), tmp_path)
    assert dict(os.environ) == before


def test_fp16_overflow_steps_are_skipped_and_logged_not_fatal(tmp_path, monkeypatch, caplog):
    # CPU autocast does fp16 too; forcing the CUDA policy here exercises GradScaler for real,
    # started at a scale (2^40) that overflows fp16 gradients for the first dozen steps.
    from recjobs.training.precision import Precision

    class Fp16OnCpu(Precision):
        def grad_scaler(self):
            return torch.amp.GradScaler("cpu", init_scale=2.0**40)

    monkeypatch.setattr(
        trainer, "precision_policy", lambda mode, device: Fp16OnCpu("fp16", "cpu", torch.float16)
    )
    with caplog.at_level("WARNING"):
        trainer.train(
            cfg(
                "ranking",
                "training.max_epochs=1",
                "training.mixed_precision=fp16",
                "training.log_steps=2",
            ),
            tmp_path,
        )
    scales = [r["train/grad_scale"] for r in train_records(tmp_path)]
    assert all(b <= a for a, b in zip(scales, scales[1:]))  # no growth within 2000 steps
    assert scales[-1] < 2.0**40  # steps overflowed and were skipped...
    skipped = [r.message for r in caplog.records if "GradScaler skipped" in r.message]
    assert skipped and skipped[0].startswith(
        "fp16: GradScaler skipped overflowing steps before step "
    )
    assert all(math.isfinite(r["train/loss"]) for r in train_records(tmp_path))  # ...not fatal
    assert (tmp_path / "model" / "model.pt").exists()


def test_wandb_failures_never_stop_training(tmp_path, monkeypatch, caplog):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")

    def broken_init(**kwargs):
        raise RuntimeError("wandb backend unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with caplog.at_level("WARNING"):
        trainer.train(cfg("ranking", "training.max_epochs=1", "training.use_wandb=true"), tmp_path)
    assert any(
        "W&B could not start, continuing without it: wandb backend unreachable" in r.message
        for r in caplog.records
    )
    assert val_records(tmp_path)


def test_movielens_command_converts_and_trains(tmp_path):
    src = tmp_path / "ml-100k"
    src.mkdir()
    rows = [
        (u, i, 1 + (u * i) % 5, 880000000 + 1000 * (u * 7 + i))
        for u in range(1, 31)
        for i in range(1, 41)
        if (u + i) % 3 == 0
    ]
    (src / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (src / "u.user").write_text(
        "".join(f"{u}|{18 + u}|{'MF'[u % 2]}|student|{10000 + u}\n" for u in range(1, 31))
    )
    genres = "|".join("1" if g == 0 else "0" for g in range(19))
    (src / "u.item").write_bytes(
        "".join(
            f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{genres}\n" for i in range(1, 41)
        ).encode("latin-1")
    )
    out = tmp_path / "out"
    assert main(["data", "movielens", "--src", str(src), "--out", str(out)]) == 0
    config = resolve(
        "ranking",
        out / "config.yaml",
        Overrides(
            sets=["training.max_epochs=1", "training.batch_size=64", "model.embedding_dim=8"]
        ),
    )
    assert config.columns.user_cat_cols == ("age_bucket", "gender", "occupation", "zip_prefix")
    trainer.train(config, tmp_path / "run")
    (val,) = val_records(tmp_path / "run")
    assert 0.0 <= val["val/auc"] <= 1.0 and val["val/logloss"] > 0


@pytest.mark.parametrize(
    ("relative", "shown"),
    [(0.76, "+76%"), (-0.0013, "-0.1%"), (0.042, "+4.2%"), (0.0004, "+0.04%"), (None, "+0.002")],
)
def test_the_last_line_shows_a_small_lift_with_its_sign_and_size(relative, shown):
    """A model 0.13% below the baseline read "-0%", as if it tied."""
    from recjobs.training.summary import summary_lines

    summary = {
        "ended_mid_epoch": False,
        "step": 60,
        "epochs": 3,
        "best": {"metric": "val/auc", "value": 0.7836, "step": 60},
        "lift": {"absolute": 0.002, "relative": relative},
        "baseline": {"value": 0.7846},
        "examples_per_s": 1922.0,
        "model": "runs/x/model",
        "wall_time_s": 124.0,
    }
    line = summary_lines(summary, Path("runs/x/summary.json"))[0]
    assert line == (
        f"done at step 60, after 3 epochs: best val/auc 0.7836 at step 60 (most-popular baseline "
        f"0.7846: {shown}); those weights are in runs/x/model"
    )
