"""Atomic checkpoints: written to a temp file in the same directory, fsynced, then renamed.

A reader therefore sees either the previous complete file or the new complete file, never a
half-written one, whatever kills the writer. A checkpoint holds everything needed for an
exact resume: model, optimizer, scheduler, GradScaler, RNG states, loop position, early
stopping state and the resolved config it was trained with.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from recjobs.atomic import new_file_mode
from recjobs.errors import CheckpointError, RunDirError, cannot_write
from recjobs.file_kind import require_regular
from recjobs.training.checkpoint_file import DAMAGED_HINT, DIGEST, MAGIC, previous

log = logging.getLogger(__name__)

FORMAT = "recjobs-checkpoint/1"
# File layout (checkpoint_file.py): MAGIC, the SHA-256 of the payload, then the torch.save
# payload. The digest makes a truncated or bit-flipped file detectable before torch tries to
# unpickle it.


def atomic_write_bytes(path: Path, payload: bytes, keep_previous: Path | None = None) -> None:
    """Write `payload` to `path` atomically; optionally keep the old file as `keep_previous`.

    Raises RunDirError when the file cannot be written (disk full, read-only, a directory in
    the way); `path` and `keep_previous` are then as they were and no temp file is left.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())  # mkstemp's 0600 would hide it from other users
        if keep_previous is not None and path.exists():
            _copy_atomically(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the renames themselves durable
    finally:
        os.close(dir_fd)


def _write_error(path: Path, exc: OSError) -> RunDirError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return RunDirError(
        str(path),
        cannot_write(exc, path),
        "nothing was replaced: the previous file, if any, is whole"
        + ("; free some space and resume with --resume" if full else ""),
    )


def _copy_atomically(source: Path, target: Path) -> None:
    """`target` becomes `source`'s content while `source` stays where it is.

    A hard link where the filesystem has them, else a copy; either way under a temporary name
    first. (Renaming `source` away would leave a moment without any file at its name, which a
    reader, or a crash, would see.)
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        try:
            os.unlink(tmp)
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    payload = buffer.getvalue()
    blob = MAGIC + hashlib.sha256(payload).digest() + payload
    atomic_write_bytes(path, blob, previous(path) if keep_previous else None)


def load_checkpoint(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The state saved at `path`; CheckpointError unless it is whole and has `required` keys."""
    require_regular(path, CheckpointError)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(str(path), "checkpoint not found") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise CheckpointError(str(path), f"cannot read: {exc.strerror or exc}") from None
    head = len(MAGIC) + DIGEST
    if not blob.startswith(MAGIC):
        raise CheckpointError(str(path), "not a recjobs checkpoint")
    payload = blob[head:]
    if len(blob) < head or hashlib.sha256(payload).digest() != blob[len(MAGIC) : head]:
        raise CheckpointError(str(path), "checksum mismatch", DAMAGED_HINT)
    try:
        # weights_only=False: the checkpoint holds RNG states and plain Python containers we
        # wrote ourselves, and its checksum matched.
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(str(path), f"unreadable checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(str(path), "not a recjobs checkpoint")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(
            str(path),
            f"has a valid checksum but lacks {', '.join(missing)}",
            "it was not written by this version of recjobs train",
        )
    return state


def load_latest_good(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """`path`, or the checkpoint before it when `path` is damaged or missing; never garbage."""
    try:
        return load_checkpoint(path, required)
    except CheckpointError as damaged:
        fallback = previous(path)
        if not fallback.exists():
            raise
        state = load_checkpoint(fallback, required)
        log.warning(
            "%s; resuming from the previous checkpoint %s",
            damaged.line().removeprefix("error: "),
            fallback,
        )
        return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
