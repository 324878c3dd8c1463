"""A checkpoint written by N processes resumes at M (2 -> 1, 1 -> 2): real torchrun jobs (gloo,
CPU) on tiny data. Epoch boundaries continue exactly; a mid-epoch checkpoint ends its epoch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from recjobs.config.resolver import Overrides, resolve
from recjobs.data import load_task_data, steps_per_epoch
from recjobs.training.checkpoint import load_checkpoint, save_checkpoint

from runs import shard_sizes, table_pairs

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
TINY = [
    "dataset.synth.users=300",
    "dataset.synth.items=80",
    "dataset.synth.interactions=2001",
    "model.embedding_dim=8",
    "model.hidden_dims=[16]",
    f"training.batch_size={BATCH}",
    "training.log_steps=3",
    "training.device=cpu",
]
# A per-step schedule, so that its position after the world changes can be checked.
STEP_LR = Overrides(
    scheduler="StepLR", scheduler_args=["step_size=4", "gamma=0.5"], scheduler_interval="step"
)


def config(*sets: str, overrides: Overrides | None = None):
    overrides = overrides or Overrides()
    overrides.sets = [*TINY, *sets]
    return resolve("retrieval", None, overrides)


def launch(world: int, cfg, run: Path, out: Path, resume: bool = False) -> dict[int, Counter]:
    """One torchrun job of `world` processes; {epoch: the (user, item) rows its ranks trained in
    it}, each checked against the table: no row trained more often in an epoch than it occurs."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(world), str(ROOT / "tests" / "resume_world_worker.py")]
    cmd += ["retrieval", json.dumps(cfg.to_dict()), str(run), str(out)]
    cmd += ["--resume"] if resume else []
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # The schedule replayed at another world size steps before any optimizer step, on purpose:
    # torch's warning about that order is not for the user.
    assert "lr_scheduler.step()" not in done.stderr
    trained: dict[int, Counter] = {}
    for rank in range(world):
        per_rank = json.loads((out / f"rank{rank}.json").read_text())["trained"]
        for epoch, examples in per_rank.items():
            trained.setdefault(int(epoch), Counter()).update(map(tuple, examples))
    table = table_pairs(cfg)
    for epoch, examples in trained.items():
        assert not examples - table, f"epoch {epoch}: an example trained twice"
    return trained


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_an_epoch_boundary_checkpoint_resumes_at_another_world_size(tmp_path, before, after):
    run = tmp_path / "run"
    first = launch(before, config("training.max_epochs=1", overrides=STEP_LR), run, tmp_path / "a")
    cfg = config("training.max_epochs=2", overrides=STEP_LR)
    # Determinism: the same resume of a copy gives the same weights (2 -> 1 and 1 -> 2).
    shutil.copytree(run, tmp_path / "copy")
    second = launch(after, cfg, run, tmp_path / "b", resume=True)

    # Each rank trains on as many examples as the smallest shard holds.
    per_rank = {w: min(shard_sizes(cfg, w)) for w in (before, after)}
    p_before, p_after = (steps_per_epoch(per_rank[w], BATCH) for w in (before, after))
    assert sorted(first) == [0] and sorted(second) == [1]  # epoch 1 alone, none of epoch 0 again
    assert first[0].total() == per_rank[before] * before
    assert second[1].total() == per_rank[after] * after
    log = (run / "train.log").read_text()
    assert (
        f"resumed at world {after} (was {before}): epoch 1 on at {p_after} steps per epoch" in log
    )
    assert f"global batch {BATCH * after} (was {BATCH * before}" in log

    recs = records(run)
    vals = [(r["epoch"], r["step"]) for r in recs if "val/loss" in r]
    assert vals == [(0, p_before), (1, p_before + p_after)]  # steps continue, counted once
    train = [r for r in recs if "train/lr" in r]
    steps = [r["step"] for r in train]
    assert steps == sorted(set(steps)) and steps[-1] == p_before + p_after
    for r in train:
        # The schedule's position: steps at the world that trained them, then this world's
        # steps per epoch from the boundary on (StepLR(4, 0.5) of lr 0.001).
        position = r["step"] - 1 if r["epoch"] == 0 else p_after + r["step"] - p_before - 1
        assert r["train/lr"] == pytest.approx(0.001 * 0.5 ** (position // 4), rel=1e-9)
    assert (run / "summary.json").is_file() and (run / "model").is_dir()

    launch(after, cfg, tmp_path / "copy", tmp_path / "c", resume=True)
    resumed, again = weights(run), weights(tmp_path / "copy")
    assert all(torch.equal(resumed[k], again[k]) for k in resumed)


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_ends_its_epoch_at_another_world_size(tmp_path):
    run = tmp_path / "run"
    first = launch(2, config("training.max_steps=3", "training.max_epochs=2"), run, tmp_path / "a")
    cfg = config("training.max_steps=null", "training.max_epochs=2")
    second = launch(1, cfg, run, tmp_path / "b", resume=True)

    n = len(load_task_data(cfg).train_users)
    assert first[0].total() == 3 * BATCH * 2  # three steps of two ranks
    assert sorted(second) == [1] and second[1] == table_pairs(cfg)  # epoch 0 not trained again
    log = (run / "train.log").read_text()
    assert (
        "resumed at world 1 (was 2): epoch 0 ends at the checkpoint (step 3, 3 steps into it; "
        "its other examples are not trained in it), then epoch 1 on at "
        f"{steps_per_epoch(n, BATCH)} steps per epoch" in log
    )
    recs = records(run)
    assert max(r["epoch"] for r in recs if "val/loss" in r) == 1
    first_after = min(r["step"] for r in recs if "train/lr" in r and r["epoch"] == 1)
    assert first_after == 3 + 3  # log_steps=3 from step 3 on, at world 1
    assert (run / "summary.json").is_file()


def test_a_per_step_schedule_ending_at_max_steps_cannot_change_world(tmp_path):
    """A checkpoint made to look like two processes wrote it (its rank states are all that says
    so) is resumed by one: StepLR per step with max_steps is refused with one line."""
    from recjobs.training import trainer

    run = tmp_path / "run"
    cfg = config("training.max_steps=2", overrides=STEP_LR)
    trainer.train(cfg, run)
    last = run / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["ranks"] = state["ranks"] * 2
    save_checkpoint(last, {k: v for k, v in state.items() if k != "format"})
    cmd = [sys.executable, "-m", "recjobs", "train", "retrieval", "--run-dir", str(run)]
    done = subprocess.run(
        [*cmd, "--resume", "--set", "training.max_steps=4"], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {last}: was written by 2 processes, not 1, and its per-step scheduler ends at "
        "max_steps (4), a count of steps whose size changes with the world (resume with 2 "
        "processes, or set training.max_epochs instead of max_steps)"
    )
