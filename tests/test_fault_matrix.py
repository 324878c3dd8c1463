"""Run directories, checkpoints and signals under faults: one line, the documented exit code,
and nothing already written lost.

Every interrupted run here is resumed and compared with one uninterrupted run (`straight`):
same weights, and the same metrics.jsonl record for record (timings aside), which also covers
the running train/loss window (log_steps=3 never divides the steps the signals land on).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from recjobs.cli import main
from recjobs.config.optim import current_lrs
from recjobs.config.resolver import Overrides, resolve
from recjobs.errors import UserError
from recjobs.training import tasks, trainer
from recjobs.training.checkpoint import load_checkpoint, previous, save_checkpoint
from recjobs.training.export import load_model

from runs import QUICKSTART, missing

# Tiny ranking runs: 2 epochs of 8 steps, a second or two each.
SETS = [
    "dataset.synth.users=200",
    "dataset.synth.items=60",
    "dataset.synth.interactions=2400",
    "model.embedding_dim=8",
    "model.hidden_dims=[16]",
    "model.scorer_hidden_dims=[16]",
    "training.batch_size=256",
    "training.max_epochs=2",
    "training.log_steps=3",
    "training.grad_clip_norm=100.0",  # large: never clips; gives the mid-epoch hook a place
]


def argv(run_dir: Path, *extra: str) -> list[str]:
    out = ["train", "ranking", "--config", str(QUICKSTART), "--run-dir", str(run_dir)]
    for item in [*SETS, *extra]:
        out += ["--set", item]
    return out


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k != "train/examples_per_s"} for line in lines
    ]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model" / "model.pt")


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert records(a) == records(b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert main(argv(run_dir)) == 0
    return run_dir


# --------------------------------------------------------------------------- signals


def _signal_first(real, signum: int):
    """`real`, sending `signum` to this process before it runs."""

    def wrapper(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    return wrapper


def _at_start(monkeypatch, signum):  # the data loaded, while the model is built
    monkeypatch.setattr(trainer, "make_task", _signal_first(trainer.make_task, signum))


def _mid_epoch(monkeypatch, signum):  # during step 5 of 8
    real, calls = trainer.clip_grad_norm, []

    def hook(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "clip_grad_norm", hook)


def _during_validation(monkeypatch, signum):
    evaluate = _signal_first(tasks.RankingTask.evaluate, signum)
    monkeypatch.setattr(tasks.RankingTask, "evaluate", evaluate)


def _during_checkpoint_write(monkeypatch, signum):
    monkeypatch.setattr(trainer, "save_checkpoint", _signal_first(trainer.save_checkpoint, signum))


def _during_export(monkeypatch, signum):
    monkeypatch.setattr(trainer, "export_model", _signal_first(trainer.export_model, signum))


# (signal, where it lands, the hook that sends it, the message's start)
SIGNAL_CASES = [
    (signal.SIGTERM, "at start", _at_start, "SIGTERM at step 0, before training started"),
    (signal.SIGINT, "at start", _at_start, "SIGINT at step 0, before training started"),
    (signal.SIGINT, "mid-epoch", _mid_epoch, "SIGINT at step 5"),
    (signal.SIGTERM, "mid-epoch", _mid_epoch, "SIGTERM at step 5"),
    (signal.SIGTERM, "during validation", _during_validation, "SIGTERM after epoch 1"),
    (signal.SIGINT, "during checkpoint write", _during_checkpoint_write, "SIGINT after epoch 1"),
    (signal.SIGTERM, "during export", _during_export, "SIGTERM after the last step"),
    (signal.SIGINT, "during export", _during_export, "SIGINT after the last step"),
]


@pytest.mark.parametrize(
    "signum, where, hook, message",
    SIGNAL_CASES,
    ids=[f"{signal.Signals(c[0]).name} {c[1]}" for c in SIGNAL_CASES],
)
def test_a_signal_stops_with_a_checkpoint_and_resume_is_exact(
    tmp_path, monkeypatch, caplog, straight, signum, where, hook, message
):
    run_dir = tmp_path / "run"
    hook(monkeypatch, signum)
    with caplog.at_level("WARNING"):
        assert main(argv(run_dir)) == 128 + signum
    monkeypatch.undo()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(message), warnings
    if where == "during export":  # training had ended: the export is complete and usable
        assert "the model is complete in" in warnings[0]
        load_model(run_dir / "model")
        assert_same_run(straight, run_dir)
        return
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")  # whole
    assert main([*argv(run_dir), "--resume"]) == 0
    assert_same_run(straight, run_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_synthetic_data_is_generated_stops_at_once(
    tmp_path, monkeypatch, caplog, capsys, straight, signum
):
    """Generating a large synthetic data set takes minutes: a stop signal ends it at once, with
    nothing trained or written (no checkpoint of step 0: there is nothing to keep), and the
    same command then trains the same run. Again on a resumed run: it stays as it was."""
    from recjobs.data import synth

    real = synth._generate

    def signalled(*args, **kwargs):  # the worker thread: the signal reaches the main one
        os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    run_dir = tmp_path / "run"
    monkeypatch.setattr(synth, "_generate", signalled)
    with caplog.at_level("WARNING"):
        assert main(argv(run_dir)) == 128 + signum
    name = signal.Signals(signum).name
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"{name} while the synthetic data set was generated, before training started: nothing "
        "was trained or written"
    ]
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # no train.log, no checkpoint
    monkeypatch.undo()
    assert main(argv(run_dir)) == 0
    assert_same_run(straight, run_dir)

    # A finished run resumed (it exports again) and stopped while its data is generated.
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    monkeypatch.setattr(synth, "_generate", signalled)
    assert main([*argv(run_dir), "--resume"]) == 128 + signum
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    log = run_dir / "train.log"
    assert after.pop(log).startswith(before.pop(log)) and after == before
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{run_dir}: finished"


def _stopped_while_generating(argv: list[str], signum: int) -> tuple[float, str, int]:
    """Start `recjobs ARGV` (a large synthetic data set), send `signum` once it logs that the
    generation started: (seconds until its error line, its stderr, its exit code)."""
    program = [sys.executable, "-m", "recjobs", *argv]
    proc = subprocess.Popen(program, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:  # the observable event: the generation has begun
            lines.append(line)
            if "generating the synthetic data set" in line:
                break
        assert proc.poll() is None, "".join(lines)
        sent = time.monotonic()
        proc.send_signal(signum)
        for line in proc.stderr:
            lines.append(line)
            if signal.Signals(signum).name in line:
                break
        answered = time.monotonic() - sent
        lines.append(proc.stderr.read())
        proc.wait(timeout=60)
    finally:
        proc.kill()
    return answered, "".join(lines), proc.returncode


# 2 * 10^7 interactions: a minute of numpy here, and gigabytes had it run to the end.
LARGE = ["--users", "100000", "--items", "10000", "--interactions", "20000000"]


def test_data_synth_stops_at_once_on_sigterm_and_writes_nothing(tmp_path):
    out = tmp_path / "data"
    answered, err, code = _stopped_while_generating(
        ["data", "synth", "--out", str(out), *LARGE], signal.SIGTERM
    )
    assert code == 143, err
    assert err.splitlines()[-1] == f"error: interrupted (SIGTERM): nothing was written to {out}"
    assert answered < 5, f"{answered:.1f} s"  # a fraction of a second, where it used to be never
    assert "Traceback" not in err and not out.exists()


def test_train_stops_at_once_on_ctrl_c_while_its_data_is_generated(tmp_path):
    run_dir = tmp_path / "run"
    sets = [
        w
        for s in zip(LARGE[::2], LARGE[1::2])
        for w in ("--set", f"dataset.synth.{s[0][2:]}={s[1]}")
    ]
    answered, err, code = _stopped_while_generating(
        ["train", "retrieval", "--run-dir", str(run_dir), *sets], signal.SIGINT
    )
    assert code == 130, err
    assert err.splitlines()[-1].endswith(
        "WARNING recjobs: SIGINT while the synthetic data set was generated, before training "
        "started: nothing was trained or written"
    )
    assert answered < 5, f"{answered:.1f} s"
    assert "Traceback" not in err and sorted(p.name for p in run_dir.iterdir()) == [".lock"]


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler of its own for `signum` (/proc's SigCgt mask)."""
    with open(f"/proc/{pid}/status") as status:
        mask = next(line for line in status if line.startswith("SigCgt:")).split()[1]
    return bool(int(mask, 16) >> (signum - 1) & 1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("entry", ["installed script", "python -m"])
def test_a_stop_signal_during_start_up_is_one_line(tmp_path, entry, signum):
    """From the entry point's first line a stop signal is held, then acted on: never a
    traceback, never swallowed (a SIGINT that landed in torch's import once let the run train
    to the end with exit 0). Sent as soon as the process has its handler (Python itself
    catches SIGINT but not SIGTERM, so SigCgt's SIGTERM bit is the entry point's), wherever
    start-up then is: importing torch, resolving, or the trainer's first step."""
    program = [str(Path(sys.executable).with_name("recjobs"))]
    if entry == "python -m":
        program = [sys.executable, "-m", "recjobs"]
    run_dir = tmp_path / "early"
    proc = subprocess.Popen([*program, *argv(run_dir)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _catches(proc.pid, signal.SIGTERM):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and f"{name}" in err, err
    assert len([line for line in err.splitlines() if name in line]) == 1, err


def test_ctrl_c_in_a_real_process_is_one_line_and_exit_130(tmp_path):
    """The handler, the exit code and the absence of a traceback in a real process: SIGINT
    mid-training."""

    run_dir = tmp_path / "late"
    cmd = [sys.executable, "-m", "recjobs", *argv(run_dir, "training.max_epochs=200")]
    late = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert late.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        late.send_signal(signal.SIGINT)
        _, err = late.communicate(timeout=60)
    finally:
        late.kill()
    assert late.returncode == 130, err
    assert "Traceback" not in err
    # Mid-step or between epochs (the signal may land in validation): one line either way.
    stops = [line for line in err.splitlines() if re.search(r"SIGINT (at step|after epoch)", line)]
    assert len(stops) == 1 and stops[0].endswith(
        f"checkpoint written to {run_dir}/checkpoints/last.pt"
    )
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] >= 2


# --------------------------------------------------------------------------- run dirs


def _fails(run_dir: Path, capsys, *extra: str) -> str:
    capsys.readouterr()
    code = main([*argv(run_dir), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    return err.strip()


def case_run_dir_is_a_file(tmp_path, capsys, straight):
    run_dir = tmp_path / "file"
    run_dir.write_text("not a dir")
    assert (
        _fails(run_dir, capsys)
        == f"error: {run_dir}: is a file, not a directory (use another --run-dir)"
    )
    assert run_dir.read_text() == "not a dir"


def case_run_dir_under_a_file(tmp_path, capsys, straight):
    (tmp_path / "file").write_text("")
    run_dir = tmp_path / "file" / "run"
    assert _fails(run_dir, capsys) == (
        f"error: {run_dir}: a parent of it is a file, not a directory (use another --run-dir)"
    )


def case_missing_parents_are_created(tmp_path, capsys, straight):
    run_dir = tmp_path / "a" / "b" / "run"
    assert main(argv(run_dir, "training.max_epochs=1")) == 0
    assert (run_dir / "model" / "model.pt").exists()


def case_not_writable_for_a_non_root_user(tmp_path, capsys, straight):
    if os.geteuid() != 0:
        missing("needs root to switch to uid 65534")
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is 0700: not traversable
    try:
        base.chmod(0o755)
        (base / "existing").mkdir()
        config = resolve("ranking", QUICKSTART, Overrides(sets=SETS))
        lines = _as_user(65534, config, [base / "existing", base / "new" / "run"])
    finally:
        shutil.rmtree(base)
    assert lines == [
        f"error: {base / 'existing'}: not writable by this user (uid 65534) "
        "(make it writable for this user, or use another --run-dir)",
        f"error: {base / 'new' / 'run'}: cannot create it: Permission denied "
        "(use another --run-dir)",
    ]


def _as_user(uid: int, config, run_dirs: list[Path]) -> list[str]:
    """trainer.train as `uid` in a forked child (the venv's interpreter under /root is not
    executable for other users); the error line of each run dir."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            os.setgid(uid)
            os.setuid(uid)
            lines = []
            for run_dir in run_dirs:
                try:
                    trainer.train(config, run_dir)
                    lines.append("trained")
                except UserError as exc:
                    lines.append(exc.line())
            os.write(write, json.dumps(lines).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return json.loads(out)


def case_disk_full_keeps_the_last_good_checkpoint(tmp_path, capsys, straight):
    if os.geteuid() != 0:
        missing("needs root to mount a tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)])
    if done.returncode:
        missing("mount -t tmpfs failed")
    try:
        _fill_and_resume(mount / "run", capsys, straight)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill_and_resume(run_dir: Path, capsys, straight: Path) -> None:
    assert main(argv(run_dir, "training.max_epochs=1")) == 0
    last = run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()
    filler = run_dir.parent / "filler"
    with open(filler, "wb") as f:  # leave about 60 KB: metrics fit, a checkpoint does not
        free = os.statvfs(run_dir).f_bavail * os.statvfs(run_dir).f_frsize
        f.write(b"\0" * max(free - 60_000, 0))
    err = _fails(run_dir, capsys, "--resume")
    assert err.startswith(f"error: {run_dir}/checkpoints/"), err
    assert err.endswith(
        ": cannot write: No space left on device (nothing was replaced: the previous file, if "
        "any, is whole; free some space and resume with --resume)"
    ), err
    assert last.read_bytes() == before  # the last good checkpoint, whole
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # no half-written record
    filler.unlink()
    assert main([*argv(run_dir), "--resume"]) == 0
    assert_same_run(straight, run_dir)


def case_metrics_append_on_a_full_disk_is_cut_back(tmp_path, capsys, straight, monkeypatch):
    run_dir = tmp_path / "run"
    real_write, writes = os.write, []

    def half_then_full(fd, data):  # the first record fits half, then the disk is full
        writes.append(1)
        if len(writes) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    assert _fails(run_dir, capsys) == (
        f"error: {run_dir}/metrics.jsonl: cannot write: No space left on device (the records "
        "before this one are whole; resume with --resume once it can be written)"
    )
    monkeypatch.undo()
    assert (run_dir / "metrics.jsonl").read_bytes() == b""


def case_last_checkpoint_is_a_directory(tmp_path, capsys, straight):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "last.pt").mkdir(parents=True)
    assert _fails(run_dir, capsys, "--resume") == (
        f"error: {run_dir}/checkpoints/last.pt: is a directory, not a checkpoint file (remove it)"
    )


def case_checkpoint_with_a_valid_checksum_but_missing_fields(tmp_path, capsys, straight):
    run_dir = tmp_path / "run"
    save_checkpoint(run_dir / "checkpoints" / "last.pt", {"step": 3})
    assert _fails(run_dir, capsys, "--resume") == (
        f"error: {run_dir}/checkpoints/last.pt: has a valid checksum but lacks config, model, "
        "optimizers, scheduler, scaler, early_stopping, ranks, epoch, batch_in_epoch, "
        "metrics_lines, encoders (it was not written by this version of recjobs train)"
    )


def case_checkpoint_with_fields_that_do_not_fit(tmp_path, capsys, straight):
    run_dir = tmp_path / "run"
    shutil.copytree(straight / "checkpoints", run_dir / "checkpoints")
    last = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["model"] = {"not": torch.zeros(1)}
    save_checkpoint(last, {k: v for k, v in state.items() if k != "format"})
    previous(last).unlink()
    err = _fails(run_dir, capsys, "--resume")
    assert err.startswith(f"error: {last}: does not fit this run (RuntimeError: "), err
    assert err.endswith(
        "(it was written for another model or by another version; use another --run-dir)"
    )


def case_synth_files_are_readable_by_other_users(tmp_path, capsys, straight):
    old = os.umask(0o022)
    try:
        out = tmp_path / "synth"
        assert (
            main(
                [
                    "data",
                    "synth",
                    "--out",
                    str(out),
                    "--users",
                    "20",
                    "--items",
                    "10",
                    "--interactions",
                    "100",
                ]
            )
            == 0
        )
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {
        name: 0o644
        for name in (
            "users.parquet",
            "items.parquet",
            "interactions_train.parquet",
            "interactions_val.parquet",
            "config.yaml",
        )
    }


def case_synth_into_a_file(tmp_path, capsys, straight):
    out = tmp_path / "file"
    out.write_text("")
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {out}: cannot write: File exists (check --out)\n"


def case_synth_with_a_seed_numpy_refuses(tmp_path, capsys, straight):
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(tmp_path), "--seed", "-1"]) == 2
    assert capsys.readouterr().err == "error: --seed: must be 0 or more, got -1\n"


RUN_DIR_CASES = [
    case_run_dir_is_a_file,
    case_run_dir_under_a_file,
    case_missing_parents_are_created,
    case_not_writable_for_a_non_root_user,
    case_disk_full_keeps_the_last_good_checkpoint,
    case_metrics_append_on_a_full_disk_is_cut_back,
    case_last_checkpoint_is_a_directory,
    case_checkpoint_with_a_valid_checksum_but_missing_fields,
    case_checkpoint_with_fields_that_do_not_fit,
    case_synth_files_are_readable_by_other_users,
    case_synth_into_a_file,
    case_synth_with_a_seed_numpy_refuses,
]


@pytest.mark.parametrize("case", RUN_DIR_CASES, ids=[c.__name__[5:] for c in RUN_DIR_CASES])
def test_run_dir_and_checkpoint_faults(case, tmp_path, capsys, straight, monkeypatch):
    params = case.__code__.co_varnames[: case.__code__.co_argcount]
    fixtures = {"tmp_path": tmp_path, "capsys": capsys, "straight": straight}
    case(**{**fixtures, **({"monkeypatch": monkeypatch} if "monkeypatch" in params else {})})


# --------------------------------------------------------------------------- divergence


def test_a_non_finite_validation_metric_stops_like_a_diverged_loss(tmp_path, capsys, monkeypatch):
    real = tasks.RankingTask.evaluate

    def nan_auc(self, model):
        return {**real(self, model), "val/auc": float("nan")}

    monkeypatch.setattr(tasks.RankingTask, "evaluate", nan_auc)
    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert main(argv(run_dir)) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "error: validation: val/auc is not finite at step 8 (nan) (no checkpoint was written "
        "from this state, and none before it: nothing to resume; start again "
        "(--resume-or-start starts over in this --run-dir). Lower the learning rate or set "
        "grad_clip_norm)"
    )
    assert not (run_dir / "model").exists() and not (run_dir / "checkpoints" / "last.pt").exists()


def test_a_schedule_that_turns_the_lr_negative_later_stops_before_the_first_step():
    from recjobs.config.optim import LRSchedule, build_scheduler
    from recjobs.errors import ConfigError

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    expected = (
        "error: training.scheduler: StepLR sets the learning rate to -0.1 after 3 steps (a "
        "learning rate must stay finite and 0 or more; check gamma, factors and eta_min/min_lr)"
    )
    # Refused at resolve time (gamma must be > 0); built directly: the rehearsal of the whole
    # run (10 epochs) finds it before the first step.
    with pytest.raises(ConfigError) as err:
        build_scheduler(opt, {"name": "StepLR", "step_size": 3, "gamma": -1.0}, 5, 10)
    assert err.value.line() == expected
    assert current_lrs(opt) == [0.1]  # the real optimizer was not touched
    # The loop checks every step as well (ReduceLROnPlateau and runs beyond the rehearsal).
    schedule = LRSchedule([torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=-1.0)])
    schedule.after_epoch()
    schedule.after_epoch()
    with pytest.raises(ConfigError) as err:
        schedule.after_epoch()
    assert err.value.line() == expected


def test_capturable_with_device_auto_fails_once_the_device_is_known(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_dir = tmp_path / "run"
    assert _fails(run_dir, capsys, "--optimizer-args", "capturable=true") == (
        "error: ranking.training.optimizer.capturable: capturable needs a CUDA device, but "
        "training.device is auto and no CUDA device is visible (drop capturable, or train on a "
        "GPU)"
    )
    assert not (run_dir / "checkpoints").exists()
