"""The standard streams of a recjobs process: the `recjobs` command, and the `torchx` process
that loaded a recjobs component or scheduler.

A stream that cannot be written is never a traceback (docs/reliability.md, "A stdout or stderr
that cannot be written is no traceback"): a reader that went away (EPIPE) ends quietly, a stdout
that fails otherwise (disk full, I/O error) is one `error:` line on stderr and exit 2, and a
stderr that fails loses its lines but changes no exit code. Once a stream has failed, what is
left for it goes to /dev/null, so Python's own flush at exit does not fail again ("Exception
ignored", exit 120).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

# A standard stream that cannot be written (disk full, I/O error): docs/reliability.md, "Exit
# codes". Exit 2, as any write that failed; a reader that went away (EPIPE) is no failure.
EXIT_OUTPUT_LOST = 2


class StreamFailed(Exception):
    """Writing stdout failed for a reason other than a closed pipe. Not an OSError: no
    command's own `except OSError` (for a file it reads, an --out it writes) may take the
    stream's failure for its own and name the wrong file."""

    def __init__(self, error: OSError):
        super().__init__(error)
        self.error = error


class WatchedStdout:
    """sys.stdout (and its .buffer) while a command runs: a failed write or flush raises
    StreamFailed; everything else is the stream's own."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, data: Any) -> Any:
        return self._watch(self._stream.write, data)

    def writelines(self, lines: Any) -> None:
        self._watch(self._stream.writelines, lines)

    def flush(self) -> None:
        self._watch(self._stream.flush)

    @property
    def buffer(self) -> WatchedStdout:
        return type(self)(self._stream.buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    @staticmethod
    def _watch(call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:
            raise  # the reader went away: the quiet end, as before
        except OSError as exc:
            raise StreamFailed(exc) from None


def quiet(stream: Any) -> None:
    """Send what is left for a stream (still in its buffer, or written later) to /dev/null:
    Python's own flush at exit would otherwise fail again, print "Exception ignored" and exit
    120. For stdout this is also the quiet end of a closed pipe (`recjobs resolve | head`)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)


def say(line: str) -> None:
    """One line on stderr; a stderr that cannot be written (`2>/dev/full`) loses the line but
    changes neither the exit code nor anything else the command does."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        quiet(sys.stderr)


def stdout_failed(error: OSError) -> int:
    """Stdout could not take the output: what is left of it goes nowhere, one line says so on
    stderr; the exit code to end with."""
    quiet(sys.stdout)
    say(
        f"error: stdout: cannot write: {error.strerror or error} (what the command printed is "
        "incomplete; files it wrote are whole; send its output somewhere with room)"
    )
    return EXIT_OUTPUT_LOST


class TorchxStdout(WatchedStdout):
    """sys.stdout of a `torchx` process running a recjobs component or scheduler: TorchX prints
    the dry run and the app handle itself and lets any exception become a traceback, and there
    is no recjobs `main` around it to catch StreamFailed. So each write is flushed at once (a
    full disk shows in the print, not in Python's flush at exit) and a failure ends the process
    here: a reader that went away quietly, with exit 0, as `recjobs` does; any other with the
    one line and exit 2. SystemExit passes through TorchX untouched."""

    def write(self, data: Any) -> Any:
        written = super().write(data)
        self.flush()
        return written

    @staticmethod
    def _watch(call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:
            quiet(sys.stdout)
            raise SystemExit(0) from None
        except OSError as exc:
            raise SystemExit(stdout_failed(exc)) from None


def guard_torchx_stdout() -> None:
    """Watch this `torchx` process's stdout (`TorchxStdout`); once per process."""
    if sys.stdout is not None and not isinstance(sys.stdout, TorchxStdout):
        sys.stdout = TorchxStdout(sys.stdout)  # type: ignore[assignment]
