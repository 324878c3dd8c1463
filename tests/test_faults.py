"""Faults injected into real runs: kills, damaged checkpoints, two trainers, divergence."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recjobs.cli import main
from recjobs.config.resolver import Overrides, resolve
from recjobs.errors import CheckpointError
from recjobs.training import trainer
from recjobs.training.checkpoint import load_checkpoint, previous, save_checkpoint
from recjobs.training.rundir import RunDir

from runs import QUICKSTART, StopAfter
from runs import TINY as TINY_RUN

TINY = [*TINY_RUN, "training.max_epochs=3"]


def tiny_argv(task: str, run_dir: Path, *sets: str) -> list[str]:
    argv = ["train", task, "--config", str(QUICKSTART), "--run-dir", str(run_dir)]
    for item in [*TINY, *sets]:
        argv += ["--set", item]
    return argv


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model" / "model.pt")


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigterm_at_random_steps_then_resume_gives_the_same_weights(tmp_path, monkeypatch):
    config = resolve("ranking", QUICKSTART, Overrides(sets=[*TINY, "model.dropout=0.2"]))
    assert main(tiny_argv("ranking", tmp_path / "straight", "model.dropout=0.2")) == 0
    rng = random.Random(1234)  # seeded: the same "random" steps on every run of the suite
    stops = sorted(rng.sample(range(1, 40), 3))
    run_dir = tmp_path / "interrupted"
    for stop in stops:
        StopAfter.n = stop
        monkeypatch.setattr(trainer, "StopSignal", StopAfter)
        with pytest.raises(trainer.Preempted):  # the first stop comes before any checkpoint
            trainer.train(config, run_dir, resume_or_start=True)
        monkeypatch.undo()
    trainer.train(config, run_dir, resume=True)
    assert same_weights(tmp_path / "straight", run_dir)


def test_sigkill_resumes_from_the_last_periodic_checkpoint(tmp_path):
    sets = ["training.checkpoint_steps=3", "training.max_epochs=40"]
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "recjobs", *tiny_argv("retrieval", run_dir, *sets)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 60
        while not last.exists() or load_checkpoint(last)["step"] < 20:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    load_checkpoint(last)  # whatever the kill interrupted, the file under the final name is whole
    # Resume (shorter run, allowed) and compare with an uninterrupted run of that length.
    short = ["training.checkpoint_steps=3", "training.max_epochs=3"]
    killed_at = load_checkpoint(last)["step"]
    if killed_at >= 3 * 16:
        pytest.skip(
            "the kill came after the short run's end"
        )  # cannot happen with max_epochs 40 unless very slow
    assert main([*tiny_argv("retrieval", run_dir, *short), "--resume"]) == 0
    assert main(tiny_argv("retrieval", tmp_path / "straight", *short)) == 0
    assert same_weights(tmp_path / "straight", run_dir)


def test_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    run_dir = tmp_path / "run"
    assert main(tiny_argv("ranking", run_dir, "training.max_epochs=2")) == 0
    last = run_dir / "checkpoints" / "last.pt"
    prev = previous(last)
    assert (
        prev.exists()
        and load_checkpoint(prev)["epoch"] == 1
        and load_checkpoint(last)["epoch"] == 2
    )
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(last)
    with caplog.at_level("WARNING"):
        assert main([*tiny_argv("ranking", run_dir, "training.max_epochs=2"), "--resume"]) == 0
    assert any("resuming from the previous checkpoint" in r.message for r in caplog.records)
    assert load_checkpoint(last)["epoch"] == 2  # epoch 2 trained again from the epoch-1 state


def test_garbage_in_both_checkpoints_stops_with_a_clear_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(tiny_argv("ranking", run_dir, "training.max_epochs=2")) == 0
    last = run_dir / "checkpoints" / "last.pt"
    for path in (last, previous(last)):
        blob = bytearray(path.read_bytes())
        blob[-100] ^= 0xFF  # one flipped bit-field deep inside the payload
        path.write_bytes(bytes(blob))
    capsys.readouterr()
    assert main([*tiny_argv("ranking", run_dir, "training.max_epochs=2"), "--resume"]) == 2
    err = capsys.readouterr().err
    # What to do instead, as `recjobs status` says it: best.pt is whole, resume from it.
    assert err == (
        f"error: {previous(last)}: checksum mismatch (the file is truncated or corrupted; no "
        "whole checkpoint to resume from: resume from the best validation's instead (the steps "
        f"after it train again): cp {run_dir}/checkpoints/best.pt {last}, then recjobs train "
        f"ranking --run-dir {run_dir} --resume)\n"
    )


def test_a_crash_while_writing_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    def crash(fd):
        raise KeyboardInterrupt  # dies after writing the temp file, before the rename

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2}, keep_previous=True)
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_a_second_trainer_on_the_same_run_dir_refuses(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with RunDir(run_dir).lock():
        assert main(tiny_argv("ranking", run_dir)) == 2
        assert capsys.readouterr().err == (
            f"error: {run_dir}: another trainer is using this run dir (pid {os.getpid()}) "
            "(wait for it or use another --run-dir)\n"
        )
    assert not (run_dir / "metrics.jsonl").exists()
    assert main(tiny_argv("ranking", run_dir, "training.max_epochs=1")) == 0  # the lock is released


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # The LR grows tenfold every step: the loss is finite for a while, then it is not.
    run_dir = tmp_path / "run"
    sets = [
        "training.optimizer=SGD",
        "training.lr=0.01",
        "training.checkpoint_steps=2",
        "training.log_steps=3",
    ]
    sets.append("training.scheduler={name: ExponentialLR, gamma: 10.0, interval: step}")
    code = main(tiny_argv("ranking", run_dir, *sets))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 3, err
    assert err.startswith("error: training: loss is not finite at step ")
    # train.log ends with the run's own error line (the CLI prints it to stderr).
    assert (
        (run_dir / "train.log")
        .read_text()
        .splitlines()[-1]
        .endswith(f" ERROR recjobs.training.trainer: run ended: failed (exit 3): {err}")
    )
    assert not (run_dir / "summary.json").exists()
    bad_step = int(err.split("at step ")[1].split(" ")[0])
    assert bad_step > 2
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["step"] < bad_step
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["step"] < bad_step for r in logged)
