"""Where metrics go: `metrics.jsonl` in the run dir, the log, and W&B when it is on.

Only rank 0 tracks. Metric keys are the same everywhere (`train/loss`, `train/lr`,
`val/recall@10`, ...). W&B is best effort: a W&B failure logs a warning and never stops
training. The W&B key is read by the wandb library from the environment; recjobs never
copies it anywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recjobs.errors import RunDirError, UserError, cannot_write
from recjobs.file_kind import require_regular
from recjobs.training.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)


class Tracker:
    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        *,
        enabled: bool,
        use_wandb: bool,
        wandb_args: dict[str, Any],
    ):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.lines = 0
        self.wandb = None
        if not enabled:
            return
        self.lines = _count_lines(self.path)
        if use_wandb:
            self.wandb = _start_wandb(run_dir, config, wandb_args)

    def truncate(self, lines: int) -> None:
        """Drop records written after the checkpoint we resume from (they will be written again)."""
        if not self.enabled or not self.path.exists():
            return
        require_regular(self.path, RunDirError)
        kept = self.path.read_text().splitlines(keepends=True)[:lines]
        atomic_write_bytes(self.path, "".join(kept).encode())
        self.lines = len(kept)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        _append(self.path, (json.dumps(record) + "\n").encode())
        self.lines += 1
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in record.items())
        log.info("%s", shown)
        if self.wandb is not None:
            try:
                values = {k: v for k, v in record.items() if k not in ("step",)}
                self.wandb.log(values, step=record["step"])
            except Exception as exc:  # W&B trouble must not cost a training run
                log.warning("W&B logging failed, continuing without it: %s", exc)
                self.wandb = None

    def finish(self) -> None:
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as exc:
                log.warning("W&B finish failed: %s", exc)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of RUN_DIR/metrics.jsonl; UserError for a missing or damaged file."""
    path = run_dir / "metrics.jsonl"
    require_regular(path)
    if not path.is_file():
        raise UserError(
            str(run_dir),
            "no metrics.jsonl here" if run_dir.is_dir() else "not found",
            "give run directories of `recjobs train`",
        )
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: [[[...]]] nested too deep
            raise UserError(f"{path}: line {number}", "not a JSON record") from None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _RunLogHandler(logging.FileHandler):
    """Appends to RUN_DIR/train.log; a file that cannot be written (disk full) turns it off
    with one warning instead of a logging traceback per line."""

    def __init__(self, path: Path):
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        try:
            super().emit(record)  # opens the file on the first record, outside logging's guard
        except OSError:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.failed:
            return
        self.failed = True
        log.warning("%s cannot be written; its log lines go to stderr only", self.baseFilename)


class RunLog:
    """Lines RUN_DIR/train.log must hold whatever the log level: `recjobs status` reads how a
    run started and how it ended from them (recjobs.training.run_status)."""

    def __init__(self, handler: logging.Handler):
        self._handler = handler

    def to_file(self, logger: logging.Logger, level: int, message: str) -> None:
        """One line for train.log alone (the run's last word: the command line prints its own
        line on stderr)."""
        self._handler.handle(logger.makeRecord(logger.name, level, __file__, 0, message, (), None))

    def always(self, logger: logging.Logger, level: int, message: str) -> None:
        """Log `message` as usual; where the level filters it out, still write it to train.log."""
        if logger.isEnabledFor(level):
            logger.log(level, "%s", message)
        else:
            self.to_file(logger, level, message)


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[RunLog]:
    """Copy recjobs' log lines to `path` (RUN_DIR/train.log) while the block runs.

    TorchX's local_cwd log directory is deleted when the job ends and container logs go with
    the container; this copy stays with the run. Levels are as configured (RECJOBS_LOG_LEVEL).
    The block gets a `RunLog` for the lines the file must hold at any level.
    """
    require_regular(path, RunDirError)  # appending to a FIFO waits for a reader
    handler = _RunLogHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    package = logging.getLogger("recjobs")

    def last_word(level: int, line: str) -> None:
        handler.handle(package.makeRecord(package.name, level, __file__, 0, "%s", (line,), None))

    package.addHandler(handler)
    try:
        yield RunLog(handler)
    finally:
        package.removeHandler(handler)
        handler.close()


def wandb_wanted(use_wandb: bool) -> tuple[bool, str]:
    """Whether W&B can run, and why not: it needs a key or offline mode."""
    if not use_wandb:
        return False, "W&B is off (training.use_wandb is false)"
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return True, ""
    return (
        False,
        "W&B is off: use_wandb is true but neither WANDB_API_KEY nor WANDB_MODE=offline is set",
    )


def _start_wandb(run_dir: Path, config: dict[str, Any], wandb_args: dict[str, Any]) -> Any:
    try:
        import wandb

        return wandb.init(
            dir=str(run_dir),
            config=config,
            resume="allow",
            id=wandb_args.pop("id", None),
            **wandb_args,
        )
    except Exception as exc:
        log.warning("W&B could not start, continuing without it: %s", exc)
        return None


def _append(path: Path, line: bytes) -> None:
    """Append one record; on a write error (disk full) the file is cut back to what it was,
    so it never ends in half a record, and RunDirError says what happened."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise RunDirError(str(path), cannot_write(exc, path)) from None
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        os.ftruncate(fd, start)
        raise RunDirError(
            str(path),
            f"cannot write: {exc.strerror or exc}",
            "the records before this one are whole; resume with --resume once it can be written",
        ) from None
    finally:
        os.close(fd)


def _count_lines(path: Path) -> int:
    require_regular(path, RunDirError)
    if not path.exists():
        return 0
    with path.open() as f:
        return sum(1 for _ in f)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
