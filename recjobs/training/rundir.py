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

from recjobs.errors import CheckpointError, RunDirError, broken_link, link_problem
from recjobs.file_kind import LINK_HINT
from recjobs.holdings import FINISHED_RUN_FILES, RUN_FILES, found, other_kind

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
            link = broken_link(self.path)  # mkdir calls it "File exists" too
            problem = link.removeprefix(f"{where} ") if link else None
            raise RunDirError(
                where,
                problem or "a parent of it is a file, not a directory",
                "use another --run-dir",
            ) from None
        except OSError as exc:
            link = broken_link(self.path)  # a parent a loop of links, say
            problem = link.removeprefix(f"{where} ") if link else None
            raise RunDirError(
                where,
                problem or f"cannot create it: {exc.strerror or exc}",
                "use another --run-dir",
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
        self._check_links()
        if not (self.last.exists() or previous(self.last).exists()):
            raise CheckpointError(str(self.path), "has no checkpoints/last.pt to resume", hint)

    def check_start(self, resume: bool) -> bool:
        """Whether this run resumes (`resume`: --resume or --resume-or-start). Read-only.

        A run starts only where it replaces nothing: not in a data set or a model, not over
        another run's files (a fresh run), not over a finished run whose checkpoints are gone
        (--resume-or-start would start it over). --resume-or-start may start again over a
        first attempt that died before its first checkpoint: that is what a retry is.
        """
        from recjobs.training.checkpoint import previous

        other = other_kind(self.path, "run")
        if other:
            raise RunDirError(str(self.path), f"holds {other}, not a run", "use another --run-dir")
        self._check_links()
        if self.last.exists() or previous(self.last).exists():
            if not resume:
                raise CheckpointError(
                    str(self.path),
                    "already holds a run (checkpoints/last.pt)",
                    "pass --resume to continue it, or use another --run-dir",
                )
            return True
        held = found(self.path, RUN_FILES)
        finished = [name for name in held if name in FINISHED_RUN_FILES]
        if resume and finished:
            raise CheckpointError(
                str(self.path),
                f"holds a finished run ({', '.join(finished)}) whose checkpoints/last.pt is "
                "gone: there is nothing to resume, and starting over would replace it",
                "use another --run-dir",
            )
        if not resume and held:
            hint = "use another --run-dir"
            if not finished:
                hint += ", or pass --resume-or-start to start it over here (it has no checkpoint)"
            raise CheckpointError(str(self.path), f"already holds a run ({', '.join(held)})", hint)
        return False

    def _check_links(self) -> None:
        """A checkpoint that is a link to nothing is named, never taken for "no checkpoint"."""
        from recjobs.training.checkpoint import previous

        for path in (self.last, previous(self.last)):
            problem = link_problem(path)
            if problem:
                raise CheckpointError(str(path), problem, LINK_HINT)

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


class Rollback:
    """What one attempt replaced in its run dir, put back if the attempt fails before it has
    moved the run on (its first checkpoint, or the export).

    A resume rewrites config.yaml and cuts metrics.jsonl back to its checkpoint's records
    before its first step; a resume that then diverges or fails leaves both as they were, so
    the run is still the one its checkpoint describes. A checkpoint written by this attempt
    settles it: from then on the files describe that checkpoint, as after a SIGTERM.
    """

    def __init__(self, rundir: RunDir) -> None:
        self.rundir = rundir
        self.saved: dict[Path, bytes] = {}
        self.started = False  # this attempt has written to the run dir
        self.settled = False

    def save(self) -> None:
        """Keep config.yaml and metrics.jsonl as they are now: this attempt is about to write."""
        self.started = True
        for path in (self.rundir.config, self.rundir.metrics):
            if path.is_file():
                self.saved[path] = path.read_bytes()

    def settle(self) -> None:
        self.settled = True

    def undo(self) -> None:
        """Put back what `save` kept (the attempt failed); a new file it wrote stays: it tells
        what the failed attempt did (a fresh run's diverging metrics)."""
        from recjobs.training.checkpoint import atomic_write_bytes

        if self.settled:
            return
        for path, payload in self.saved.items():
            if not path.is_file() or path.read_bytes() != payload:
                atomic_write_bytes(path, payload)
