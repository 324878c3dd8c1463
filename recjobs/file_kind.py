"""What a path a command reads must be: a regular file (or a directory where one is expected).

Opening a FIFO for reading blocks until some process opens it for writing, and a process
blocked in open() is deaf to SIGINT and SIGTERM; a device (`/dev/zero`, a tty) reads without
end or waits for input. So every path a command reads is looked at with stat() first, here,
and anything else is one `error:` line (exit 2) instead of a hang. stat() follows symlinks: a
link to a regular file is a regular file. A path that does not exist passes: the caller knows
how to say "not found" for its kind of file; a symbolic link that leads nowhere does not pass
(`require_regular`): it is named, never taken for a missing file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from recjobs.errors import UserError, link_problem

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)

HINT = "reading it could wait forever; give a regular file"


def special_kind(path: str | Path) -> str | None:
    """'a FIFO', 'a socket', ... when `path` is neither a regular file nor a directory; None
    when it is one of those or does not exist (a dangling link included)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, a loop of links, a NUL byte: the open reports it
        return None
    return next((name for test, name in _KINDS if test(mode)), None)


LINK_HINT = "restore what it points to, or remove the link"


def require_regular(path: str | Path, error: type[UserError] = UserError) -> None:
    """Raise `error` (one line, exit 2) when `path` is a FIFO, a socket or a device, or a
    symbolic link that leads nowhere (never taken for a missing file: a run would start over,
    or a writer would create the link's target)."""
    link = link_problem(path)
    if link is not None:
        raise error(str(path), link, LINK_HINT)
    kind = special_kind(path)
    if kind is not None:
        raise error(str(path), f"is {kind}, not a regular file", HINT)


def require_regular_tree(path: str | Path, error: type[UserError] = UserError) -> None:
    """`require_regular` for `path` and, when it is a directory (a table written in parts),
    every file under it."""
    require_regular(path, error)
    if not os.path.isdir(path):
        return
    for folder, _dirs, files in os.walk(path):
        for name in files:
            require_regular(os.path.join(folder, name), error)
