"""Files replaced whole or not at all: a reader, or a crash, never sees half a file."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def new_file_mode() -> int:
    """The mode open() gives a new file (0666 less the umask); mkstemp's is 0600.

    Files a run writes are read by other users: a serving job, the image's uid 1000.
    """
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


# Temporary files being written now. A stop signal's handler may raise anywhere (cli.py's
# `_stoppable`), also in the few lines between creating a temporary file and the `try` that
# removes it, or inside that clean-up; the command then removes what is left here.
_LIVE: set[str] = set()


def _temporary_beside(path: str, suffix: str) -> str:
    """A new empty file beside `path`, named `.tmp-*`, recorded in _LIVE before any signal can
    act (it is acted on after the file is recorded)."""
    with stop_signals_held():
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=suffix)
        os.close(fd)
        _LIVE.add(tmp)
    return tmp


def _remove(tmp: str) -> None:
    if os.path.exists(tmp):
        os.remove(tmp)
    _LIVE.discard(tmp)


def remove_leftovers() -> None:
    """Remove the temporary files a signal's exception left behind (see _LIVE)."""
    for tmp in list(_LIVE):
        try:
            _remove(tmp)
        except OSError:
            _LIVE.discard(tmp)


@contextmanager
def atomic_file(path: str, suffix: str = "") -> Iterator[str]:
    """A temporary path beside `path` to write to; when the block ends without an exception it
    replaces `path` (with a new file's usual mode), otherwise it is removed and `path` stays as
    it was. `suffix` is for writers that choose the format by extension."""
    tmp = _temporary_beside(path, suffix)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextmanager
def atomic_files(paths: Sequence[str]) -> Iterator[list[str]]:
    """`atomic_file` for files that belong together (a data set): a temporary path beside each
    of `paths` (with its extension); when the block ends without an exception they replace
    theirs in the order given, with the stop signals held until the last rename, so a Ctrl-C
    or SIGTERM leaves all of them old or all new; otherwise all are removed."""
    tmps: list[str] = []
    try:
        for path in paths:
            tmps.append(_temporary_beside(path, os.path.splitext(path)[1]))
        yield list(tmps)
        for tmp in tmps:
            os.chmod(tmp, new_file_mode())
        with stop_signals_held():
            for tmp, path in zip(tmps, paths):
                os.replace(tmp, path)
    finally:
        for tmp in tmps:
            _remove(tmp)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive while the block runs are acted on after it, by the
    handlers there were before: a few renames are never cut in the middle.

    Python-level handlers, not a signal mask: the kernel may give a process's signal to any
    of its threads (pyarrow's among them), and Python then runs the handler in the main thread
    whatever the main thread's mask. Only the main thread can set handlers; elsewhere the
    block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {
        s: signal.signal(s, lambda number, frame: held.append(number)) for s in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)
