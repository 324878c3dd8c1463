"""The first lines the `recjobs` command runs (the installed script and `python -m recjobs`).

Python takes seconds to import torch, and a SIGINT that lands in an import can be swallowed by a
library's broad `except`, or become a KeyboardInterrupt traceback; a SIGTERM there kills the
process with no word. So the stop signals are held from the first line until `recjobs.cli` is
imported, then acted on: one `error:` line and 128 + the signal's number. After that, the
commands see Python's usual SIGINT (and `train` installs its own handler, which checkpoints).
"""

import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run() -> int:
    held: list[int] = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda number, frame: held.append(number))
    from recjobs.cli import main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if held:
        name = signal.Signals(held[0]).name
        print(f"error: interrupted ({name}) before training started", file=sys.stderr)
        return 128 + held[0]
    return main()


if __name__ == "__main__":
    raise SystemExit(run())
