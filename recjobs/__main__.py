"""The first lines the `recjobs` command runs (the installed script and `python -m recjobs`).

Python takes seconds to import torch, and a SIGINT that lands in an import can be swallowed by a
library's broad `except`, or become a KeyboardInterrupt traceback; a SIGTERM there kills the
process with no word. So the stop signals are held from the first line until `recjobs.cli` is
imported, then acted on: one `error:` line and 128 + the signal's number. After that, the
commands see Python's usual SIGINT (`train` installs its own handler, which checkpoints, and
the commands that write an output, `data`, `recommend`, `score` and `plot`, theirs: one line
saying what the output holds).
"""

import os
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run() -> int:
    held: list[int] = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda number, frame: held.append(number))
    _open_standard_streams()
    from recjobs.cli import main, say

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if held:
        name = signal.Signals(held[0]).name
        say(f"error: interrupted ({name}) before training started")
        return 128 + held[0]
    return main()


def _open_standard_streams() -> None:
    """A command started with stdin, stdout or stderr closed (`recjobs status DIR >&-`) gets
    /dev/null there: Python leaves sys.stdout None (the first print is a traceback), and the
    free descriptor would go to the next file opened, e.g. a run's train.log."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if getattr(sys, name) is None:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - for the process


if __name__ == "__main__":
    raise SystemExit(run())
