"""Whether a checkpoint file is whole, read without torch: what `recjobs status` asks before it
suggests `--resume`, and what it suggests instead.

A checkpoint (training/checkpoint.py) is MAGIC, the SHA-256 of the payload, then the payload:
torch.save's zip archive. A file cut short loses the zip's central directory, at its end, and
Python's zipfile finds that in a few reads whatever the file's size (it allows for the header
in front). The checksum, which catches a flipped byte too, is verified where that takes a
fraction of a second (files up to VERIFY_MAX_BYTES); `train --resume` verifies it always.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

from recjobs.file_kind import special_kind

MAGIC = b"RECJOBS-CKPT-1\n"
DIGEST = 32  # bytes of the SHA-256 after MAGIC
VERIFY_MAX_BYTES = 128 * 1024 * 1024
DAMAGED_HINT = "the file is truncated or corrupted"


def previous(path: Path) -> Path:
    """Where the checkpoint before `path` is kept (last.pt -> last.prev.pt)."""
    return path.with_suffix(".prev" + path.suffix)


def problem(path: Path) -> str | None:
    """What is wrong with the checkpoint at `path`, in the words `train --resume` would use;
    None when it looks whole."""
    kind = special_kind(path)
    if kind is not None:
        return f"is {kind}, not a regular file"
    head = len(MAGIC) + DIGEST
    try:
        with open(path, "rb") as f:
            start = f.read(head)
            if not start.startswith(MAGIC[: len(start)]) or len(start) < len(MAGIC):
                return "not a recjobs checkpoint"
            if len(start) < head:
                return f"checksum mismatch ({DAMAGED_HINT})"
            try:
                with zipfile.ZipFile(f) as archive:
                    names = archive.namelist()
            except (zipfile.BadZipFile, ValueError, EOFError, OSError):
                return f"checksum mismatch ({DAMAGED_HINT}: its zip directory is unreadable)"
            if not any(name.endswith("data.pkl") for name in names):
                return f"checksum mismatch ({DAMAGED_HINT}: it holds no data.pkl)"
            if os.fstat(f.fileno()).st_size <= VERIFY_MAX_BYTES:
                f.seek(head)
                digest = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                if digest.digest() != start[len(MAGIC) :]:
                    return f"checksum mismatch ({DAMAGED_HINT})"
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    return None


def resume_point(last: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """What `train --resume` continues from, as `load_latest_good` picks it: `last`, else the
    checkpoint before it; None when neither is whole. Also the damaged ones, with why."""
    damaged = []
    for path in (last, previous(last)):
        if not path.exists() and not path.is_symlink():
            continue
        why = problem(path)
        if why is None:
            return path, damaged
        damaged.append((path, why))
    return None, damaged
