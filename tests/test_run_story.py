"""The run directory tells its own story: train.log with a closing line, the loss of every
epoch, the most-popular baseline, the best weights in model/, resume from the run's own config,
curves (`recjobs plot`) and the config reference (docs/config.md)."""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml

from recjobs.cli import main
from recjobs.config.reference import config_reference
from recjobs.config.resolver import Overrides, resolve
from recjobs.data import load_task_data
from recjobs.training import trainer
from recjobs.training.checkpoint import load_checkpoint
from recjobs.training.plot import plot_runs

from runs import QUICKSTART, TINY

ROOT = Path(__file__).resolve().parents[1]


def cfg(task: str, *sets: str):
    return resolve(task, QUICKSTART, Overrides(sets=[*TINY, *sets]))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """ "short": log_steps beyond the run, INFO logging; "sparse": two LR groups (dense, tables)."""
    root = tmp_path_factory.mktemp("story")
    package = logging.getLogger("recjobs")
    level = package.level
    package.setLevel(logging.INFO)  # what the CLI logs by default
    try:
        trainer.train(
            cfg("retrieval", "training.max_epochs=2", "training.log_steps=1000"), root / "short"
        )
    finally:
        package.setLevel(level)
    trainer.train(
        cfg("retrieval", "training.max_epochs=1", "training.sparse_embeddings=true"),
        root / "sparse",
    )
    return {"short": root / "short", "sparse": root / "sparse", "config": cfg("retrieval")}


def most_popular_recall_at_10(config) -> float:
    """The baseline computed here from the data, one user at a time: each validation user gets
    the 10 most popular items (ties: vocabulary order) they did not train on."""
    data = load_task_data(config)
    counts = data.item_counts.tolist()
    by_popularity = sorted(range(1, len(counts)), key=lambda i: (-counts[i], i))
    seen, positives = defaultdict(set), defaultdict(set)
    for user, item in zip(data.train_users.tolist(), data.train_items.tolist()):
        seen[user].add(item)
    for user, item in zip(data.val_users.tolist(), data.val_items.tolist()):
        positives[user].add(item)
    recalls = []
    for user, items in positives.items():
        top = [i for i in by_popularity if i not in seen[user]][:10]
        recalls.append(len(items & set(top)) / len(items))
    return sum(recalls) / len(recalls)


def test_every_epoch_logs_its_loss_and_the_first_validation_its_baseline(runs):
    logged = records(runs["short"])
    validations = [r for r in logged if "val/loss" in r]
    per_epoch = validations[0]["step"]
    # log_steps 1000 is beyond the run: a train/loss record at each epoch's end all the same.
    assert [r["step"] for r in logged if "train/loss" in r] == [per_epoch, 2 * per_epoch]
    (baseline,) = [r for r in logged if any(k.startswith("val/baseline/") for k in r)]
    assert baseline["step"] == per_epoch and baseline["epoch"] == 0
    assert set(baseline) == {"step", "epoch"} | {
        f"val/baseline/{m}@{k}" for m in ("recall", "ndcg", "hit") for k in (10, 50)
    }
    config = cfg("retrieval", "training.max_epochs=2", "training.log_steps=1000")
    assert baseline["val/baseline/recall@10"] == pytest.approx(
        most_popular_recall_at_10(config), abs=1e-12
    )


def test_train_log_ends_with_the_best_metric_and_where_the_model_is(runs):
    lines = (runs["short"] / "train.log").read_text().splitlines()
    validations = [r for r in records(runs["short"]) if "val/loss" in r]
    best = max(validations, key=lambda r: r["val/recall@10"])  # the first of equals
    assert any(
        "recjobs.training.tracking: step=" in line and "train/loss=" in line for line in lines
    )
    assert (
        f"recjobs.training.trainer: done at step {validations[-1]['step']}, after 2 epochs: "
        f"best val/recall@10 {best['val/recall@10']:.4g} at step {best['step']} (most-popular "
        in lines[-2]
    )
    assert lines[-2].endswith(f"; those weights are in {runs['short'] / 'model'}")
    assert f"recjobs.training.trainer: summary: {runs['short'] / 'summary.json'} (" in lines[-1]


def test_model_holds_the_best_weights_even_without_early_stopping(tmp_path):
    # mode max on logloss: the best epoch is the first one while the loss falls.
    config = cfg(
        "ranking",
        "training.max_epochs=2",
        "training.early_stopping.enabled=false",
        "training.early_stopping.metric=logloss",
        "training.early_stopping.mode=max",
    )
    returned = trainer.train(config, tmp_path)
    losses = [r["val/logloss"] for r in records(tmp_path) if "val/loss" in r]
    assert len(losses) == 2 and losses[0] > losses[1]  # ran on; the best is not the last
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")["model"]
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    exported = torch.load(tmp_path / "model" / "model.pt")
    assert all(torch.equal(best[k], exported[k]) for k in exported)
    assert not all(torch.equal(last[k], exported[k]) for k in exported)
    assert returned["val/logloss"] == max(losses)  # train() reports the exported weights


def test_resume_without_config_continues_with_the_run_dirs_config(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    sets = [a for s in [*TINY, "training.max_epochs=1"] for a in ("--set", s)]
    assert (
        main(["train", "retrieval", "--config", str(QUICKSTART), *sets, "--run-dir", run_dir]) == 0
    )
    resume = ["train", "retrieval", "--run-dir", run_dir, "--resume"]
    assert main([*resume, "--set", "training.max_epochs=2"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["retrieval"]
    assert saved["training"]["max_epochs"] == 2
    assert saved["training"]["batch_size"] == 256  # TINY's, not the default: the run's config
    assert [r["epoch"] for r in records(tmp_path / "run") if "val/loss" in r] == [0, 1]
    # A run directory written by an older version (with training.num_workers) still resumes.
    path = tmp_path / "run" / "config.yaml"
    old = yaml.safe_load(path.read_text())
    old["retrieval"]["training"]["num_workers"] = 0
    path.write_text(yaml.safe_dump(old))
    capsys.readouterr()
    assert main([*resume, "--set", "training.max_epochs=2"]) == 0
    assert main(["train", "ranking", "--run-dir", run_dir, "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {path}: holds a retrieval run, not ranking (use recjobs train retrieval)"
    )


def test_plot_overlays_runs_with_their_names(runs, tmp_path, capsys):
    out = tmp_path / "curves.png"
    labels = plot_runs([str(runs["short"]), str(runs["sparse"])], str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(labels)[:3] == ["loss", "learning rate", "recall@10"]
    assert set(labels) == {"loss", "learning rate"} | {
        f"{m}@{k}" for m in ("recall", "ndcg", "hit") for k in (10, 50)
    }
    assert labels["loss"] == [
        "short train/loss",
        "short val/loss",
        "sparse train/loss",
        "sparse val/loss",
    ]
    assert labels["learning rate"] == [
        "short train/lr",
        "sparse train/lr",
        "sparse train/lr/embeddings",
    ]
    assert labels["recall@10"] == ["short", "short most popular", "sparse", "sparse most popular"]
    assert main(["plot", str(runs["short"]), "-o", str(tmp_path / "c.png")]) == 0
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "c.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path}: no metrics.jsonl here (give run directories of `recjobs train`)"
    )
    assert main(["plot", str(runs["short"]), "-o", str(tmp_path / "c.gif")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'c.gif'}: unsupported image format (use .png, .svg, .pdf)"
    )


def test_plot_without_out_writes_into_the_run_directory(runs, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(runs["short"], run)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "curves.png").write_bytes(b"someone else's figure")
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    assert main(["plot", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "curves.png")
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (cwd / "curves.png").read_bytes() == b"someone else's figure"


def test_config_reference_is_generated_from_the_schema_and_current(capsys):
    page = (ROOT / "docs" / "config.md").read_text()
    assert page == config_reference(), (
        "docs/config.md is stale: run `recjobs config-reference > docs/config.md`"
    )
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == page
    for key in ("batch_size", "eval_k", "log_steps", "early_stopping.metric", "label_col"):
        assert f"`TASK.{'training' if key != 'label_col' else 'columns'}.{key}`" in page
    assert (
        "| `TASK.training.batch_size` | int | retrieval: `1024`; ranking: `4096` | [1, 2147483647] |"
        in page
    )


def test_num_workers_from_the_common_format_is_ignored_with_one_warning(tmp_path, capsys, caplog):
    config = tmp_path / "common.yaml"
    config.write_text("ranking:\n  training:\n    num_workers: 8\n    batch_size: 512\n")
    assert main(["resolve", "ranking"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["resolve", "ranking", "--config", str(config)]) == 0
    resolved = json.loads(capsys.readouterr().out)
    training = resolved["ranking"]["training"]
    assert "num_workers" not in training and training["batch_size"] == 512
    plain["ranking"]["training"]["batch_size"] = 512
    assert resolved == plain
    warnings = [
        (r.levelname, r.getMessage()) for r in caplog.records if "num_workers" in r.msg % r.args
    ]
    assert warnings == [
        (
            "WARNING",
            "ranking.training.num_workers: ignored, has no effect: "
            "the data lives in memory as tensors and a batch is an index gather, so there are no "
            "data-loader workers (delete it from the config)",
        )
    ]
    # A key that would change what trains is never ignored.
    assert main(["resolve", "ranking", "--set", "training.num_worker=8"]) == 2
    assert "error: ranking.training.num_worker: unknown key" in capsys.readouterr().err
