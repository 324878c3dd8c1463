"""The run directory: one place per run for its config, metrics, checkpoints and model.

<run_dir>/config.yaml            the resolved config (what `recjobs resolve` prints)
<run_dir>/metrics.jsonl          one JSON object per log/validation event
<run_dir>/train.log              rank 0's log lines, ending with the best metric and the model
<run_dir>/summary.json           written at the end: best metric, baseline and lift, time, model
<run_dir>/checkpoints/last.pt    the latest checkpoint (resume point)
<run_dir>/checkpoints/best.pt    the checkpoint with the best early-stopping metric
<run_dir>/model/                 the best weights, config, vocabularies, catalogue (export.py)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from recjobs.errors import CheckpointError, RunDirError

# recjobs.training.checkpoint (torch, seconds to import) is imported where it is used:
# `recjobs status` and `recjobs log` read run directories with this module and no torch.


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def last(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def lock_file(self) -> Path:
        """Flock-ed by the trainer while it runs (`lock`); holds its pid."""
        return self.path / ".lock"

    def prepare(self) -> None:
        """Create the run dir (and its parents) and check this user can write in it.

        Raises:
            RunDirError: it is a file or under one, cannot be created, or is not writable.
        """
        from recjobs.training.checkpoint import previous

        where = str(self.path)
        if "\0" in where:
            raise RunDirError(where, "a path cannot hold a NUL character")
        try:
            if self.path.exists() and not self.path.is_dir():
                raise RunDirError(where, "is a file, not a directory", "use another --run-dir")
            self.path.mkdir(parents=True, exist_ok=True)
            in_the_way = [p for p in (self.last, previous(self.last), self.best) if p.is_dir()]
            # Found now, not when the first checkpoint or the export is written.
            not_dirs = [p for p in (self.last.parent, self.model) if p.exists() and not p.is_dir()]
        except (FileExistsError, NotADirectoryError):
            raise RunDirError(
                where, "a parent of it is a file, not a directory", "use another --run-dir"
            ) from None
        except OSError as exc:
            raise RunDirError(
                where, f"cannot create it: {exc.strerror or exc}", "use another --run-dir"
            ) from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise RunDirError(
                where,
                f"not writable by this user (uid {os.getuid()})",
                "make it writable for this user, or use another --run-dir",
            )
        if not_dirs:
            raise RunDirError(
                str(not_dirs[0]),
                f"is a file, not a directory: the run writes its {not_dirs[0].name} there",
                "remove or rename that file, or use another --run-dir",
            )
        if in_the_way:
            raise RunDirError(
                str(in_the_way[0]), "is a directory, not a checkpoint file", "remove it"
            )

    def require_checkpoint(self) -> None:
        """`--resume`: there must be a run here to resume; a mistyped --run-dir is not a new run.

        Raises:
            CheckpointError: the directory does not exist or holds no checkpoint.
        """
        from recjobs.training.checkpoint import previous

        hint = (
            "drop --resume to start a new run, or pass --resume-or-start to resume when there "
            "is a checkpoint and start a new run when there is none"
        )
        if not self.path.is_dir():
            raise CheckpointError(str(self.path), "does not exist: nothing to resume", hint)
        if not (self.last.exists() or previous(self.last).exists()):
            raise CheckpointError(str(self.path), "has no checkpoints/last.pt to resume", hint)

    def check_start(self, resume: bool) -> bool:
        """Whether this run resumes. A fresh run never overwrites another run's checkpoints."""
        from recjobs.training.checkpoint import previous

        if self.last.exists() or previous(self.last).exists():
            if not resume:
                raise CheckpointError(
                    str(self.path),
                    "already holds a run (checkpoints/last.pt)",
                    "pass --resume to continue it, or use another --run-dir",
                )
            return True
        if not resume and self.metrics.exists():
            raise CheckpointError(
                str(self.path), "already holds metrics.jsonl", "use another --run-dir"
            )
        return False

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run dir: a second trainer on it stops instead of
        interleaving writes. The kernel drops the lock when the process dies, even by SIGKILL."""
        self.prepare()
        try:
            f = open(self.lock_file, "a+")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise RunDirError(
                str(self.lock_file), f"cannot open the lock file: {exc.strerror or exc}"
            ) from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise CheckpointError(
                    str(self.path),
                    f"another trainer is using this run dir (pid {holder})",
                    "wait for it or use another --run-dir",
                ) from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def write_config(self, resolved: dict[str, Any]) -> None:
        from recjobs.training.checkpoint import atomic_write_bytes

        text = yaml.safe_dump(resolved, sort_keys=False)
        atomic_write_bytes(self.config, text.encode())
