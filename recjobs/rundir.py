"""The run directory: one place per run for its config, metrics, checkpoints and model.

<run_dir>/config.yaml            the resolved config (what `recjobs resolve` prints)
<run_dir>/metrics.jsonl          one JSON object per log/validation event
<run_dir>/checkpoints/last.pt    the latest checkpoint (resume point)
<run_dir>/checkpoints/best.pt    the checkpoint with the best early-stopping metric
<run_dir>/model/                 exported weights, config, vocabularies (see recjobs.export)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from recjobs.checkpoint import atomic_write_bytes, previous
from recjobs.errors import CheckpointError


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
    def last(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def model(self) -> Path:
        return self.path / "model"

    def check_start(self, resume: bool) -> bool:
        """Whether this run resumes. A fresh run never overwrites another run's checkpoints."""
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
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as f:
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

    def write_config(self, resolved: dict) -> None:
        text = yaml.safe_dump(resolved, sort_keys=False)
        atomic_write_bytes(self.config, text.encode())
