"""`recjobs status RUN_DIR` and `recjobs log RUN_DIR [-f]` on run directories of real tiny runs.

Every state comes from a real trainer: finished and preempted (a scripted SIGTERM) in-process,
running, killed and followed through real `recjobs` processes, whose progress the tests wait
for by what appears in the run directory or on the processes' output, never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recjobs.cli import main
from recjobs.config.resolver import Overrides, resolve
from recjobs.training import run_status, trainer

from runs import QUICKSTART, TINY, StopAfter

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = [word for s in TINY for word in ("--set", s)]


def tiny(*sets: str):
    return resolve("retrieval", QUICKSTART, Overrides(sets=[*TINY, *sets]))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def recjobs(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "recjobs", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def train_process(run_dir: Path, *sets: str) -> subprocess.Popen:
    argv = ["train", "retrieval", "--config", str(QUICKSTART), "--run-dir", str(run_dir)]
    return recjobs(*argv, *TINY_ARGS, *[w for s in sets for w in ("--set", s)])


def wait_for(what: str, condition, proc: subprocess.Popen | None = None, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert proc is None or proc.poll() is None, f"exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)  # polling an observable event, not waiting for time to pass
    return value


def logged_steps(run_dir: Path) -> int:
    try:
        return sum(1 for r in records(run_dir) if "train/loss" in r)
    except (OSError, ValueError):
        return 0


def status_screen(run_dir: Path, capsys) -> str:
    assert main(["status", str(run_dir)]) == 0
    return capsys.readouterr().out


# --------------------------------------------------------------------------- states


def test_a_finished_run_shows_its_step_epoch_best_metric_and_model(tmp_path, capsys):
    trainer.train(tiny("training.max_epochs=2"), tmp_path)
    status = run_status.read_status(tmp_path)
    last = records(tmp_path)[-1]
    vals = [r for r in records(tmp_path) if "val/recall@10" in r]
    best = max(vals, key=lambda r: r["val/recall@10"])
    (baseline,) = [r for r in records(tmp_path) if "val/baseline/recall@10" in r]

    assert status.state == "finished" and status.exit_code == 0
    assert status.why.startswith("done at step ")
    assert (status.task, status.step, status.epoch, status.max_epochs) == (
        "retrieval",
        last["step"],
        1,
        2,
    )
    assert status.best.key == "val/recall@10"
    assert (status.best.value, status.best.step) == (best["val/recall@10"], best["step"])
    assert status.best.baseline == baseline["val/baseline/recall@10"]
    assert status.model == tmp_path / "model"

    screen = status_screen(tmp_path, capsys)
    assert screen.splitlines()[0] == f"{tmp_path}: finished"
    assert f"  progress:    step {last['step']}, epoch 2 of 2\n" in screen
    assert f"  best so far: val/recall@10 {best['val/recall@10']:.6g} at step " in screen
    assert f"  model:       {tmp_path / 'model'}\n" in screen
    assert "checkpoint:" not in screen and "continue it" not in screen


def test_a_preempted_run_says_so_and_how_to_continue_then_finishes(tmp_path, monkeypatch, capsys):
    StopAfter.n = 5
    monkeypatch.setattr(trainer, "StopSignal", StopAfter)
    with pytest.raises(trainer.Preempted):
        trainer.train(tiny("training.max_epochs=2"), tmp_path)
    monkeypatch.undo()
    step = records(tmp_path)[-1]["step"]
    last_line = (tmp_path / "train.log").read_text().splitlines()[-1]
    assert last_line.endswith(
        f"WARNING recjobs.training.trainer: run ended: preempted (exit 143): SIGTERM at step "
        f"{step}: checkpoint written to {tmp_path}/checkpoints/last.pt"
    )

    status = run_status.read_status(tmp_path)
    assert (status.state, status.exit_code, status.step) == ("preempted", 143, step)
    assert status.checkpoint == tmp_path / "checkpoints" / "last.pt" and status.model is None
    screen = status_screen(tmp_path, capsys)
    assert screen.startswith(f"{tmp_path}: preempted (exit 143)\n  SIGTERM at step {step}: ")
    assert f"continue it: recjobs train retrieval --run-dir {tmp_path} --resume" in screen

    # The resumed run appends to train.log: its own ending counts, not the earlier one.
    trainer.train(tiny("training.max_epochs=2"), tmp_path, resume=True)
    assert run_status.read_status(tmp_path).state == "finished"


def test_a_failed_run_ends_its_log_with_the_error_and_its_exit_code(tmp_path):
    # A real divergence: SGD with a learning rate of 1e30 gives a non-finite loss at step 2.
    with pytest.raises(trainer.TrainingDiverged) as exc:
        trainer.train(tiny("training.lr=1e30", "training.optimizer=SGD"), tmp_path)
    status = run_status.read_status(tmp_path)
    assert status.state == "failed"
    assert status.exit_code == exc.value.exit_code
    assert status.why == exc.value.line()
    assert status.why.startswith("error: training: loss is not finite at step ")


def test_a_refused_resume_does_not_change_what_status_says(tmp_path, monkeypatch, capsys):
    """A command refused before it trains (another config than the run's, exit 2) logs its
    line in train.log but is no ending of the run: a finished run stays finished (it used to
    read "failed (exit 2)"), a preempted one stays preempted and resumable."""
    argv = ["train", "retrieval", "--config", str(QUICKSTART), "--run-dir", str(tmp_path)]
    argv += [*TINY_ARGS, "--set", "training.max_epochs=1"]
    assert main(argv) == 0
    before = run_status.read_status(tmp_path)
    capsys.readouterr()
    assert main([*argv, "--set", "model.embedding_dim=16", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: checkpoints/last.pt: was trained with a different config")

    status = run_status.read_status(tmp_path)
    assert (status.state, status.exit_code, status.why) == ("finished", 0, before.why)
    assert status.last_attempt is not None and status.last_attempt.exit_code == 2
    assert status.last_attempt.why == err
    screen = status_screen(tmp_path, capsys)
    assert screen.splitlines()[0] == f"{tmp_path}: finished"
    assert f", exit 2, stopped before it changed the run: {err}\n" in screen
    follower = recjobs("log", str(tmp_path), "-f")  # the run ended finished: 0
    assert follower.wait(timeout=60) == 0, follower.communicate()

    # A preempted run refused the same way stays preempted, with its hint to continue.
    preempted = tmp_path / "preempted"
    StopAfter.n = 3
    monkeypatch.setattr(trainer, "StopSignal", StopAfter)
    with pytest.raises(trainer.Preempted):
        trainer.train(tiny("training.max_epochs=2"), preempted)
    monkeypatch.undo()
    with pytest.raises(trainer.CheckpointError):
        trainer.train(tiny("training.max_epochs=2", "training.lr=0.5"), preempted, resume=True)
    status = run_status.read_status(preempted)
    assert (status.state, status.exit_code) == ("preempted", 143)
    assert status.last_attempt.why.startswith("error: checkpoints/last.pt: was trained with a")
    assert "continue it: recjobs train retrieval" in run_status.describe(status)


def _cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_status_checks_the_checkpoint_it_points_at_as_resume_would(tmp_path, monkeypatch, capsys):
    """A damaged last.pt is named, and the hint is what `train --resume` would do with it:
    continue from last.pt's predecessor; with neither whole, copy best.pt over last.pt (which
    then resumes for real) or start over; a damaged best.pt stops a resume: move it aside."""
    StopAfter.n = 20  # into the second of 3 epochs: last.pt, last.prev.pt and best.pt exist
    monkeypatch.setattr(trainer, "StopSignal", StopAfter)
    with pytest.raises(trainer.Preempted):
        trainer.train(tiny("training.max_epochs=3"), tmp_path)
    monkeypatch.undo()
    last, prev, best = (
        tmp_path / "checkpoints" / name for name in ("last.pt", "last.prev.pt", "best.pt")
    )
    damaged = (
        "checksum mismatch (the file is truncated or corrupted: its zip directory is unreadable)"
    )
    resume = f"recjobs train retrieval --run-dir {tmp_path} --resume"

    _cut_short(last)
    status = run_status.read_status(tmp_path)
    assert (status.state, status.checkpoint, status.damaged) == (
        "preempted",
        prev,
        ((last, damaged),),
    )
    screen = status_screen(tmp_path, capsys)
    assert f"  checkpoint:  {prev}\n  damaged:     {last}: {damaged}\n" in screen
    assert f"--resume continues from {prev}, the checkpoint before the damaged last.pt" in screen
    assert f"continue it: {resume}" in screen

    _cut_short(prev)
    status = run_status.read_status(tmp_path)
    assert status.checkpoint is None and [p for p, _ in status.damaged] == [last, prev]
    screen = status_screen(tmp_path, capsys)
    instead = (
        "no whole checkpoint to resume from: resume from the best validation's instead (the "
        f"steps after it train again): cp {best} {last}, then {resume}"
    )
    assert f"  {instead}\n" in screen and "continue it" not in screen
    # `train --resume` refuses it with the same advice (and leaves the status as it was).
    argv = ["train", "retrieval", "--config", str(QUICKSTART), "--run-dir", str(tmp_path)]
    argv += [*TINY_ARGS, "--set", "training.max_epochs=3", "--resume"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {prev}: checksum mismatch (the file is truncated or corrupted; {instead})"
    )
    assert run_status.read_status(tmp_path).state == "preempted"
    # The advice works: resumed from best.pt, the run finishes.
    last.write_bytes(best.read_bytes())
    good = best.read_bytes()
    _cut_short(best)
    status = run_status.read_status(tmp_path)
    assert status.checkpoint == last and status.damaged[-1][0] == best
    stops = (
        f"--resume stops at the damaged {best} (the best weights so far): put back a good "
        f"copy, or move it aside and run {resume} (the best weights before the resume are "
        "then lost)"
    )
    assert f"  {stops}\n" in status_screen(tmp_path, capsys)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {best}: checksum mismatch (the file is truncated or corrupted; {stops})"
    )
    best.write_bytes(good)
    assert main(argv) == 0
    assert run_status.read_status(tmp_path).state == "finished"


@pytest.mark.slow
def test_running_then_killed_without_a_last_word(tmp_path):
    run_dir = tmp_path / "run"
    proc = train_process(run_dir, "training.max_epochs=200")
    try:
        wait_for("a logged step", lambda: logged_steps(run_dir) >= 2, proc)
        status = run_status.read_status(run_dir)
        assert status.state == "running" and status.pid == proc.pid
        assert status.step >= 2 and status.why == f"pid {proc.pid} holds {run_dir}/.lock"
        assert run_status.read_status(run_dir).state == "running"  # status never takes the lock
        proc.kill()  # SIGKILL: no checkpoint, no last line; the kernel drops the lock
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    status = run_status.read_status(run_dir)
    assert status.state == "stopped" and status.exit_code is None
    assert "killed (SIGKILL, out of memory)" in run_status.describe(status)
    # `log -f` on a run that has ended prints it and returns at once: 1 for "stopped".
    follower = recjobs("log", str(run_dir), "-f")
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 1, err
    assert out == (run_dir / "train.log").read_bytes()


def test_not_started_and_missing_run_directories(tmp_path, capsys):
    assert status_screen(tmp_path, capsys).splitlines()[:2] == [
        f"{tmp_path}: not started",
        "  no train.log yet",
    ]
    assert main(["log", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path}/train.log: does not exist yet: the run has written no line (not "
        f"started) (recjobs log {tmp_path} -f waits for it)\n"
    )
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path}/nope: does not exist (give a run directory: train's --run-dir, a "
        "job's runs/<app id>)\n"
    )


# --------------------------------------------------------------------------- following


@pytest.mark.slow
def test_log_follow_waits_for_the_run_follows_it_and_exits_when_it_finished(tmp_path):
    run_dir = tmp_path / "run"
    follower = recjobs("log", str(run_dir), "-f")
    trainer_proc = None
    try:
        # The follower says once that it waits; only then does the run start.
        waiting = follower.stderr.readline().decode()
        assert (
            waiting
            == f"recjobs log: waiting for {run_dir}/train.log (the run has not started yet)\n"
        )
        trainer_proc = train_process(run_dir, "training.max_epochs=1")
        out = follower.stdout.read()  # until the follower exits by itself
        follower.wait(timeout=120)
        assert trainer_proc.wait(timeout=120) == 0
    finally:
        for proc in (follower, trainer_proc):
            if proc is not None:
                proc.kill()
    assert follower.returncode == 0
    log = (run_dir / "train.log").read_bytes()
    assert out == log  # every line, once, in order
    starts = [i for i, line in enumerate(out.splitlines()) if b"training retrieval (two_" in line]
    generated = [i for i, line in enumerate(out.splitlines()) if b"generating the synth" in line]
    assert generated[0] < starts[0] == 3, out.splitlines()[:5]
    assert b"done at step" in out.splitlines()[-2] and b"summary: " in out.splitlines()[-1]
    last = follower.stderr.read().decode()
    assert last.startswith(f"recjobs log: {run_dir} finished: done at step ")


@pytest.mark.slow
def test_log_follow_ends_with_130_and_one_line_on_ctrl_c(tmp_path):
    follower = recjobs("log", str(tmp_path / "run"), "-f")
    try:
        assert follower.stderr.readline().startswith(b"recjobs log: waiting for ")
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert follower.returncode == 130
    assert out == b""
    assert err.decode() == (
        f"recjobs log: stopped following {tmp_path / 'run'} (Ctrl-C); the run itself goes on\n"
    )


def test_lock_holder_is_read_from_the_kernel_and_never_taken(tmp_path):
    from recjobs.training.rundir import RunDir

    rundir = RunDir(tmp_path)
    assert run_status.lock_holder(rundir) is None  # no lock file
    with rundir.lock():
        assert run_status.lock_holder(rundir) == os.getpid()
    assert run_status.lock_holder(rundir) is None  # the file stays, the lock is gone
    with rundir.lock():  # and nothing status did keeps a trainer out
        pass
