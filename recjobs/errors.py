"""User-facing errors. The CLI prints each as one line and exits with code 2; no traceback."""

from __future__ import annotations

import errno
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
    file, or the path or a parent is a symbolic link that leads nowhere; this names that file.
    """
    link_errors = (FileExistsError, NotADirectoryError, FileNotFoundError)
    link = broken_link(path) if isinstance(exc, link_errors) or exc.errno == errno.ELOOP else None
    if link:
        return f"cannot write: {link}"
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        for parent in reversed(Path(path).parents):
            if parent.exists() and not parent.is_dir():
                return f"cannot write: {parent} is a file, not a directory"
    return f"cannot write: {exc.strerror or exc}"


def broken_link(path: str | os.PathLike[str]) -> str | None:
    """'X is a symbolic link to T, which does not exist' (or 'X is a loop of symbolic links')
    for the first of `path`'s parents, or `path` itself, that is a link leading nowhere; None
    when there is none. mkdir and open call such a link "File exists"."""
    path = Path(path)
    for candidate in (*reversed(path.parents), path):
        problem = link_problem(candidate)
        if problem:
            return f"{candidate} {problem}"
    return None


def link_problem(path: str | os.PathLike[str]) -> str | None:
    """'is a symbolic link to T, which does not exist' or 'is a loop of symbolic links' when
    `path` is a link that leads nowhere; None otherwise. Such a link is never "no file": a
    command that took it for absence would start over, or write through it (docs/reliability.md,
    "Links are not taken for absence")."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a loop of symbolic links"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    return None
