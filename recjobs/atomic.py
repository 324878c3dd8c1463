"""Files replaced whole or not at all: a reader, or a crash, never sees half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def new_file_mode() -> int:
    """The mode open() gives a new file (0666 less the umask); mkstemp's is 0600.

    Files a run writes are read by other users: a serving job, the image's uid 1000.
    """
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_file(path: str, suffix: str = "") -> Iterator[str]:
    """A temporary path beside `path` to write to; when the block ends without an exception it
    replaces `path` (with a new file's usual mode), otherwise it is removed and `path` stays as
    it was. `suffix` is for writers that choose the format by extension."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
