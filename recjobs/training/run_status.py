"""Where a run stands, read from its run directory alone: `recjobs status` and `recjobs log`.

TorchX 0.7.0 keeps a local_cwd job's state inside the `torchx run` process that started it, so
from another terminal `torchx status` says the app does not exist, `torchx log` waits forever
and `torchx list -s local_cwd` fails. The run directory holds all that is needed instead:

- running: a process holds the directory's lock (`RUN_DIR/.lock`, flock; the trainer takes it
  before anything else and the kernel drops it when the process dies, even by SIGKILL). Seen
  in /proc/locks (Linux, any pid namespace), or as the pid the lock file names still running
  recjobs;
- finished, preempted, interrupted, failed: the trainer's last line in `train.log`, its summary
  (`done at step ...`) or its last word (`run ended: STATE (exit N): why`, see `last_word`).
  A command that stopped before it changed the run (a refused `--resume`: another config, a
  data error, a stop signal while the data was generated) leaves `attempt_word` instead, which
  is shown but does not change the state: the run is what it was;
- stopped: `train.log` ends without either and nothing holds the lock: the process was killed
  (SIGKILL, out of memory), or it runs on another machine, where this one cannot see its lock;
- not started: no `train.log` yet.

Step, epoch and the best validation so far come from `metrics.jsonl`, the metric and its
direction from `config.yaml` (`training.early_stopping`). Nothing here imports torch: a status
takes a fraction of a second.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import yaml

from recjobs.errors import RunDirError
from recjobs.file_kind import require_regular
from recjobs.holdings import FINISHED_RUN_FILES, RUN_ONLY_FILES, found
from recjobs.training import checkpoint_file
from recjobs.training.rundir import RunDir

# The trainer's summary, the last line of a run that exported its model (trainer._run_summary).
DONE = "done at step"
# The trainer's last word when it stops any other way (trainer.train writes it to train.log).
ENDED = "run ended:"
_ENDED = re.compile(r"^run ended: ([a-z]+) \(exit (\d+)\): (.*)$")
# The last word of a command that stopped before it changed the run (`attempt_word`).
ATTEMPT = "an attempt ended before it changed the run"
_ATTEMPT = re.compile(r"^an attempt ended before it changed the run \(exit (\d+)\): (.*)$")
# The line every (re)start of the trainer logs first (TrainingRun.run): a later ending belongs
# to this start, an earlier one to a previous run in the same directory.
_STARTED = re.compile(r"^training (retrieval|ranking) \(")
# train.log's lines: tracking.LOG_FORMAT, "%(asctime)s %(levelname)s %(name)s: %(message)s".
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ [A-Z]+ [\w.]+: (.*)$")
# Reading the end of train.log is enough to find its last ending or start.
_TAIL_BYTES = 256 * 1024

RUNNING, FINISHED, PREEMPTED, INTERRUPTED = "running", "finished", "preempted", "interrupted"
FAILED, STOPPED, NOT_STARTED = "failed", "stopped", "not started"
ENDED_STATES = (FINISHED, PREEMPTED, INTERRUPTED, FAILED, STOPPED)
# Where status suggests `--resume` (when a checkpoint is whole).
RESUMABLE = (PREEMPTED, INTERRUPTED, FAILED, STOPPED)
# What `recjobs log -f` exits with when the run ended without an exit code of its own.
EXIT_STOPPED = 1


def last_word(state: str, exit_code: int, why: str) -> str:
    """The trainer's last line in train.log when it stops other than by finishing normally."""
    one_line = " ".join(why.split())
    return f"{ENDED} {state} (exit {exit_code}): {one_line}"


def attempt_word(exit_code: int, why: str) -> str:
    """train.log's line for a command that stopped before it changed the run: a `--resume`
    refused (another config, a schedule that cannot follow), a data error, a stop signal while
    the data loaded. `recjobs status` shows it, and still reports the run as it was."""
    one_line = " ".join(why.split())
    return f"{ATTEMPT} (exit {exit_code}): {one_line}"


@dataclass(frozen=True)
class Attempt:
    """A command that stopped before it changed the run (`attempt_word`), after the run's own
    last start or ending."""

    at: str  # train.log's time stamp
    exit_code: int
    why: str


@dataclass(frozen=True)
class Best:
    key: str  # e.g. val/recall@10
    value: float
    step: int
    baseline: float | None  # the most-popular baseline's value of the same metric


@dataclass(frozen=True)
class RunStatus:
    path: Path
    state: str
    why: str = ""  # the last word or summary, or what the state rests on
    exit_code: int | None = None
    pid: int | None = None  # the running trainer's (in this machine's pid namespace)
    task: str | None = None
    step: int | None = None
    epoch: int | None = None  # the epoch (from 0) of the last record in metrics.jsonl
    max_epochs: int | None = None
    best: Best | None = None
    model: Path | None = None
    checkpoint: Path | None = None  # what --resume continues from (checked when it would)
    damaged: tuple[tuple[Path, str], ...] = ()  # checkpoint files found damaged, with why
    last_attempt: Attempt | None = None
    age_s: float | None = None  # seconds since train.log or metrics.jsonl last changed
    notes: list[str] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES


def read_status(run_dir: str | Path) -> RunStatus:
    """The state of the run in `run_dir` (see the module docstring for how it is decided).

    Raises:
        RunDirError: `run_dir` does not exist or is not a directory.
    """
    rundir = RunDir(Path(run_dir))
    if not rundir.path.is_dir():
        problem = "is not a directory" if rundir.path.exists() else "does not exist"
        raise RunDirError(
            str(rundir.path),
            problem,
            "give a run directory: train's --run-dir, a job's runs/<app id>",
        )
    for path in (rundir.config, rundir.metrics, rundir.log):
        require_regular(path, RunDirError)
    config = _read_config(rundir)
    task = next((t for t in ("retrieval", "ranking") if t in config), None)
    training = ((config.get(task) or {}).get("training") or {}) if task else {}
    records = _records(rundir.metrics)
    progress = next((r for r in reversed(records) if "step" in r), {})
    state, why, exit_code, pid, attempt = _state(rundir)
    return RunStatus(
        rundir.path,
        state,
        why,
        exit_code,
        pid,
        task=task,
        step=progress.get("step"),
        epoch=progress.get("epoch"),
        max_epochs=training.get("max_epochs"),
        best=_best(records, training.get("early_stopping") or {}),
        model=rundir.model if (rundir.model / "config.yaml").exists() else None,
        **_checkpoints(rundir, state),
        last_attempt=attempt,
        age_s=_age(rundir.log, rundir.metrics),
    )


def _state(rundir: RunDir) -> tuple[str, str, int | None, int | None, Attempt | None]:
    """(state, why, exit code, pid, the last attempt that did not change the run): the lock,
    then train.log's last ending."""
    pid = lock_holder(rundir)
    if pid is not None:
        return RUNNING, f"pid {pid} holds {rundir.lock_file}", None, pid, None
    if not rundir.log.exists():
        # Deleted, or copied without it: what the run wrote says whether it ran, never "not
        # started" for a finished run (`log -f` would wait for it for ever).
        if found(rundir.path, FINISHED_RUN_FILES):
            held = ", ".join(found(rundir.path, FINISHED_RUN_FILES))
            return FINISHED, f"train.log is missing; {held} show the run finished", None, None, None
        written = found(rundir.path, tuple(n for n in RUN_ONLY_FILES if n != "train.log"))
        if written:
            why = f"train.log is missing; the run wrote {', '.join(written)}"
            return STOPPED, why, None, None, None
        return NOT_STARTED, "no train.log yet", None, None, None
    ending, started, attempt = _last_ending(rundir.log)
    if ending is None:
        if not started:
            return STOPPED, "train.log has no line from the trainer", None, None, attempt
        return STOPPED, "the run's last start has no ending in train.log", None, None, attempt
    state, exit_code, why = ending
    return state, why, exit_code, None, attempt


def _checkpoints(rundir: RunDir, state: str) -> dict[str, Any]:
    """The checkpoint `--resume` would continue from, and the damaged ones it would not use.

    Looked into only where status suggests a resume: a running trainer is replacing them, and a
    finished run needs none. `train --resume` takes last.pt, else last.prev.pt (with a
    warning), and loads best.pt when there is one: each of them must be whole."""
    if state not in RESUMABLE:
        return {"checkpoint": rundir.last if rundir.last.exists() else None}
    resume_from, damaged = checkpoint_file.resume_point(rundir.last)
    if resume_from is not None and rundir.best.exists():
        why = checkpoint_file.problem(rundir.best)
        damaged += [(rundir.best, why)] if why else []
    return {"checkpoint": resume_from, "damaged": tuple(damaged)}


def lock_holder(rundir: RunDir) -> int | None:
    """The pid of the process holding the run directory's lock, or None.

    /proc/locks lists every flock on this machine by device and inode, with the holder's pid as
    seen from this pid namespace (a trainer in a container included). Where it cannot be read,
    the pid the trainer wrote into the lock file, if that process still runs recjobs. Never
    takes the lock itself: a trainer starting at that moment would find it taken and stop.
    """
    try:
        stat = rundir.lock_file.stat()
    except OSError:
        return None
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        with open("/proc/locks") as locks:
            table = locks.read()
    except OSError:
        return _pid_if_recjobs(rundir.lock_file)
    for line in table.splitlines():
        words = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters have "->" after the id.
        if len(words) >= 6 and words[1] == "FLOCK" and words[5] == inode:
            return int(words[4]) if words[4].isdigit() else -1
    return None


def _pid_if_recjobs(lock_file: Path) -> int | None:
    try:
        pid = int(lock_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # alive, and nothing to tell it from another process by
    return pid if b"recjobs" in command else None


def _read_config(rundir: RunDir) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(rundir.config.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _records(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a line still being written is left out."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # a line nested too deep is no record either
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _best(records: list[dict[str, Any]], early_stopping: dict[str, Any]) -> Best | None:
    """The best value of the metric that picks the exported weights, among the validations."""
    metric, mode = early_stopping.get("metric"), early_stopping.get("mode")
    if not metric or mode not in ("min", "max"):
        return None
    key = f"val/{metric}"
    found = [r for r in records if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
    if not found:
        return None
    pick = min if mode == "min" else max
    best = pick(found, key=lambda r: r[key])
    baseline = next(
        (r[f"val/baseline/{metric}"] for r in records if f"val/baseline/{metric}" in r), None
    )
    return Best(key, float(best[key]), int(best.get("step", 0)), baseline)


def _last_ending(
    log: Path,
) -> tuple[tuple[str, int | None, str] | None, bool, Attempt | None]:
    """The last run's ending in train.log as (state, exit code, why), whether a start line was
    seen, and the last attempt after them that stopped before it changed the run. The ending is
    None when the last start has none after it."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None, False, None
    started = False
    attempt = None
    for line in reversed(tail.splitlines()):
        match = _LINE.match(line)
        if not match:
            continue  # a traceback or a line cut by the tail's start
        message = match.group(2)
        refused = _ATTEMPT.match(message)
        if refused:
            attempt = attempt or Attempt(match.group(1), int(refused.group(1)), refused.group(2))
            continue
        ended = _ENDED.match(message)
        if ended:
            return (ended.group(1), int(ended.group(2)), ended.group(3)), True, attempt
        if message.startswith(DONE):
            return (FINISHED, 0, message), True, attempt
        if _STARTED.match(message):
            started = True
            break
    return None, started, attempt


def _age(*paths: Path) -> float | None:
    times = []
    for path in paths:
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            pass
    return max(0.0, time.time() - max(times)) if times else None


# --------------------------------------------------------------------------- the screen


def describe(status: RunStatus) -> str:
    """One screen: the state and why, progress, the best validation, where the model is."""
    where = str(status.path)
    lines = [
        f"{where}: {status.state}"
        + (
            f" (exit {status.exit_code})"
            if status.exit_code is not None and status.state != FINISHED
            else ""
        )
    ]
    if status.why:
        lines.append(f"  {status.why}")
    if status.task:
        lines.append(f"  task:        {status.task}")
    if status.step is not None:
        epochs = f"epoch {status.epoch + 1}" if status.epoch is not None else ""
        if epochs and status.max_epochs:
            epochs += f" of {status.max_epochs}"
        lines.append(f"  progress:    step {status.step}" + (f", {epochs}" if epochs else ""))
    if status.best is not None:
        best = status.best
        text = f"{best.key} {best.value:.6g} at step {best.step}"
        if best.baseline is not None:
            text += f" (most-popular baseline {best.baseline:.6g})"
        lines.append(f"  best so far: {text}")
    if status.model is not None:
        lines.append(f"  model:       {status.model}")
    if status.checkpoint is not None and status.state != FINISHED:
        lines.append(f"  checkpoint:  {status.checkpoint}")
    lines.extend(f"  damaged:     {path}: {why}" for path, why in status.damaged)
    if status.last_attempt is not None:
        attempt = status.last_attempt
        lines.append(
            f"  last attempt: {attempt.at}, exit {attempt.exit_code}, stopped before it changed "
            f"the run: {attempt.why}"
        )
    if status.age_s is not None:
        lines.append(f"  last write:  {_ago(status.age_s)} (train.log, metrics.jsonl)")
    lines.extend(f"  {hint}" for hint in _hints(status))
    return "\n".join(lines) + "\n"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _hints(status: RunStatus) -> list[str]:
    where = str(status.path)
    hints = []
    if status.state == RUNNING:
        hints.append(f"follow it: recjobs log {where} -f")
    if status.state == PREEMPTED:
        hints.append(
            "SIGTERM comes from a preemption or eviction, a kill, or torchrun stopping all "
            "processes when another one of the job failed (then see the job's own log)"
        )
    if status.state == STOPPED:
        hints.append(
            "no process on this machine holds the run directory's lock: it was killed "
            "(SIGKILL, out of memory) or runs on another machine (there, ask its scheduler: "
            "torchx status, kubectl)"
        )
    if status.state in RESUMABLE:
        hints.extend(_resume_hints(status))
    if status.state == NOT_STARTED:
        hints.append(f"wait for it: recjobs log {where} -f")
    return hints


def _resume_hints(status: RunStatus) -> list[str]:
    """How to go on from the checkpoints there are, as `train --resume` would treat them."""
    where, task = str(status.path), status.task or "TASK"
    rundir = RunDir(status.path)
    damaged = dict(status.damaged)
    if status.checkpoint is None:
        # None and nothing damaged: it stopped before its first checkpoint.
        return [instead_of_resume(rundir, task)] if damaged else []
    hints = []
    if status.checkpoint != rundir.last:
        hints.append(
            f"--resume continues from {status.checkpoint}, the checkpoint before the damaged "
            f"{rundir.last.name} (with a warning; the steps after it train again)"
        )
    if rundir.best in damaged:
        return [*hints, damaged_best(rundir, task)]
    resume = f"recjobs train {task} --run-dir {where} --resume"
    return [*hints, f"continue it: {resume} (or submit the job again with --run_dir {where})"]


def instead_of_resume(rundir: RunDir, task: str) -> str:
    """What to do when neither last.pt nor last.prev.pt is whole (status, `train --resume`)."""
    resume = f"recjobs train {task} --run-dir {rundir.path} --resume"
    if rundir.best.exists() and checkpoint_file.problem(rundir.best) is None:
        return (
            "no whole checkpoint to resume from: resume from the best validation's instead (the "
            f"steps after it train again): cp {rundir.best} {rundir.last}, then {resume}"
        )
    return (
        f"no whole checkpoint to resume from: put back a good copy of {rundir.last}, or start "
        f"over in another run directory (recjobs train {task} --run-dir NEW_DIR)"
    )


def damaged_best(rundir: RunDir, task: str) -> str:
    """What to do when best.pt, which a resume loads, is damaged (status, `train --resume`)."""
    return (
        f"--resume stops at the damaged {rundir.best} (the best weights so far): put back a "
        f"good copy, or move it aside and run recjobs train {task} --run-dir {rundir.path} "
        "--resume (the best weights before the resume are then lost)"
    )


# --------------------------------------------------------------------------- the log


def print_log(run_dir: str | Path, out: BinaryIO) -> None:
    """Copy train.log to `out` as it is now.

    Raises:
        RunDirError: no run directory, or no train.log in it yet.
    """
    status = read_status(run_dir)
    log = RunDir(status.path).log
    try:
        with open(log, "rb") as f:
            _copy(f, out)
    except FileNotFoundError:
        raise RunDirError(
            str(log),
            f"does not exist yet: the run has written no line ({status.state})",
            f"recjobs log {run_dir} -f waits for it",
        ) from None


def follow_log(
    run_dir: str | Path,
    out: BinaryIO,
    say: TextIO = sys.stderr,
    poll_s: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Copy train.log to `out`, then what the trainer appends, until the run has ended.

    Waits for a run that has not started (says so once on `say`). Returns 0 when the run
    finished, else the exit code of its last word (143 preempted, 130 interrupted, 2 or 1
    failed) or 1 when it stopped without one; a run that had already ended is printed and
    returned at once. KeyboardInterrupt passes through to the caller.
    """
    rundir = RunDir(Path(run_dir))
    if rundir.path.exists():
        read_status(run_dir)  # a file where the directory should be is an error
    waiting_said = False
    f = None
    try:
        while True:
            if f is None:
                try:
                    f = open(rundir.log, "rb")
                except FileNotFoundError:
                    f = None
            if f is not None:
                _copy(f, out)
            # Only the state: metrics.jsonl (large in long runs) is not read at every poll.
            state, why, exit_code, _, _ = (
                _state(rundir) if rundir.path.is_dir() else (NOT_STARTED, "", None, None, None)
            )
            if state in ENDED_STATES:
                if f is None and rundir.log.exists():
                    f = open(rundir.log, "rb")  # noqa: SIM115 - closed below
                if f is not None:
                    _copy(
                        f, out
                    )  # all the trainer wrote: it lets go of the lock after its last line
                say.write(f"recjobs log: {rundir.path} {state}: {why}\n")
                if state == FINISHED:
                    return 0
                return exit_code if exit_code is not None else EXIT_STOPPED
            if f is None and not waiting_said:
                say.write(f"recjobs log: waiting for {rundir.log} (the run has not started yet)\n")
                say.flush()
                waiting_said = True
            sleep(poll_s)
    finally:
        if f is not None:
            f.close()


def _copy(f: BinaryIO, out: BinaryIO) -> None:
    while chunk := f.read(1 << 16):
        out.write(chunk)
    out.flush()
