"""User-facing errors. The CLI prints each as one line and exits with code 2; no traceback."""

from __future__ import annotations

import os
from pathlib import Path


class UserError(Exception):
    """A mistake in what the user gave us (config, command line, data, checkpoint)."""

    exit_code = 2

    def __init__(self, where: str, problem: str, hint: str | None = None):
        self.where, self.problem, self.hint = where, problem, hint
        super().__init__(self.line())

    # However the message was built, it stays one line of readable length.
    MAX_LINE = 2000

    def line(self) -> str:
        text = f"error: {self.where}: {self.problem}"
        text = f"{text} ({self.hint})" if self.hint else text
        text = text.replace("\r", "\\r").replace("\n", "\\n")
        return text if len(text) <= self.MAX_LINE else text[: self.MAX_LINE - 3] + "..."


class ConfigError(UserError):
    """Invalid config file, config key or command-line override. `where` is the dotted key."""


class DataError(UserError):
    """Invalid input data. `where` names the file (and column where there is one)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used (missing, corrupted, from another config)."""


class RunDirError(UserError):
    """The run directory cannot hold the run: not a directory, not writable, or full.

    Raised before anything is replaced: what was written before stays as it was.
    """


class TrainingDiverged(UserError):
    """The loss became NaN or infinite. No checkpoint is written from the diverged state."""

    exit_code = 3


def cannot_write(exc: OSError, path: str | os.PathLike[str]) -> str:
    """The problem of an OSError from writing `path`, saying what to fix.

    mkdir and open say only "File exists" or "Not a directory" when a parent of the path is a
    file; this names that file.
    """
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        for parent in reversed(Path(path).parents):
            if parent.exists() and not parent.is_dir():
                return f"cannot write: {parent} is a file, not a directory"
    return f"cannot write: {exc.strerror or exc}"
