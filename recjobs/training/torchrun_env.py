"""The process's place in a torchrun job, read from the variables torchrun sets.

Outside torchrun none is set and the process is rank 0 of 1. A value that is not a whole
number, out of range, or a multi-process job without its rendezvous address is one `error:`
line (exit 2) naming the variable, never a traceback from int() or torch.distributed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from recjobs.errors import UserError

# The most processes one job may have; the TorchX components' -j refuses more at submit
# (recjobs.submit.launch.MAX_PROCESSES is the same number).
MAX_WORLD_SIZE = 4096

_WHOLE_NUMBER = re.compile(r"[-+]?[0-9]+")
_HINT = "torchrun sets it; unset it to run as a single process"


def env_int(name: str, default: int, low: int, high: int) -> int:
    """The whole number in environment variable `name` (`default` when unset or empty),
    within [low, high]."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    # ASCII digits only, as torchrun writes them: int() would also take '٣' (an Arabic-Indic
    # three), '1_0' and full-width digits, which no launcher sets and nothing else reads alike.
    if not _WHOLE_NUMBER.fullmatch(text):
        raise UserError(name, f"must be a whole number in ASCII digits, got {text[:40]!r}", _HINT)
    if len(text) > 18:  # far out of range; int() of thousands of digits is slow or refused
        raise UserError(name, f"must be between {low} and {high}, got {text[:40]!r}", _HINT)
    value = int(text)
    if not low <= value <= high:
        raise UserError(name, f"must be between {low} and {high}, got {value}", _HINT)
    return value


@dataclass(frozen=True)
class TorchrunPlace:
    rank: int
    world_size: int
    local_rank: int


def torchrun_place() -> TorchrunPlace:
    """RANK, WORLD_SIZE and LOCAL_RANK, checked against each other."""
    world_size = env_int("WORLD_SIZE", 1, 1, MAX_WORLD_SIZE)
    rank = env_int("RANK", 0, 0, MAX_WORLD_SIZE - 1)
    if rank >= world_size:
        raise UserError("RANK", f"must be below WORLD_SIZE ({world_size}), got {rank}", _HINT)
    local_rank = env_int("LOCAL_RANK", 0, 0, world_size - 1)
    return TorchrunPlace(rank, world_size, local_rank)


def require_rendezvous() -> None:
    """A job of several processes meets at MASTER_ADDR:MASTER_PORT (torchrun sets both)."""
    if not os.environ.get("MASTER_ADDR", "").strip():
        raise UserError(
            "MASTER_ADDR",
            "not set, but WORLD_SIZE > 1 asks for a job of several processes",
            "start the job with torchrun (or recjobs' TorchX component), or unset WORLD_SIZE",
        )
    env_int("MASTER_PORT", -1, 1, 65535)
    if not os.environ.get("MASTER_PORT", "").strip():
        raise UserError("MASTER_PORT", "not set, but WORLD_SIZE > 1", _HINT)
