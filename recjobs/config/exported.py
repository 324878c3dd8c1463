"""The config a model folder was exported with, read and resolved without torch.

`recjobs recommend`/`score` (recjobs.inference) and the TorchX `recommend` component at submit
time (recjobs.submit, which never imports torch) read a model's `config.yaml` with this one
reader, so a file that is empty, not YAML, not a mapping, of neither or both tasks, or holding
a bad value is the same one line naming that file (and the key) in both, with what to do about
it: export it again from the run's checkpoint, or copy the folder again whole.

The model folder itself is written by recjobs.training.export; the names of its list of files
(`export.json`, written last) live here because the messages read it for the sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

from recjobs.config.resolver import drop_ignored_keys, load_file, resolve_dict
from recjobs.config.schema import TASKS, ResolvedConfig
from recjobs.errors import CheckpointError, ConfigError, UserError
from recjobs.file_kind import require_regular, special_kind

MANIFEST = "export.json"
MANIFEST_FORMAT = "recjobs.model"


def remake_hint(model_dir: Path) -> str:
    """What to do about a model folder that lacks a file or holds a damaged one: export it
    again where it is a run's model/ with a checkpoint, else copy it again whole."""
    run = model_dir.parent
    if model_dir.name == "model" and (run / "checkpoints" / "last.pt").is_file():
        task = _task_of(model_dir / "config.yaml") or _task_of(run / "config.yaml") or "TASK"
        return (
            f"export it again from the run's checkpoint: recjobs train {task} --run-dir {run} "
            "--resume (a finished run trains no further; it reads the run's data again), or "
            "give another run"
        )
    return (
        "copy the model folder again, whole, from the run that exported it (recjobs train "
        "writes RUN_DIR/model), or give a finished run's directory or its model/"
    )


def _task_of(config: Path) -> str | None:
    """The one task `config` holds; None when it holds none or cannot be read (a hint's detail:
    the bounded reader, and never a FIFO, which would hang the error it explains)."""
    try:
        loaded = load_file(config)
    except (UserError, OSError):
        return None
    found = [t for t in TASKS if t in loaded]
    return found[0] if len(found) == 1 else None


def listed_files(model_dir: Path) -> dict[str, int] | None:
    """export.json's files and sizes; None when it is missing or not what the export writes."""
    if special_kind(model_dir / MANIFEST) is not None:  # a FIFO would hang the reader
        return None
    try:
        manifest = json.loads((model_dir / MANIFEST).read_bytes()[:1_000_000])
        files = manifest["files"]
        if manifest["format"] != MANIFEST_FORMAT or not isinstance(files, dict):
            return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # [[[...]]] nests deep
        return None
    plain = all(
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and name.isprintable()  # a NUL or a newline would end up in an error line
        for name in files
    )
    sizes = all(isinstance(size, int) and not isinstance(size, bool) for size in files.values())
    return files if plain and sizes else None


def size_note(path: Path) -> str:
    """Why a model file may not load: '; it is N bytes but the export wrote M (...)', or ''."""
    listed = (listed_files(path.parent) or {}).get(path.name)
    try:
        size = path.stat().st_size
    except OSError:
        return ""
    if listed is None or size == listed:
        return ""
    return f"; it is {size} bytes but the export wrote {listed}: cut short or changed since"


def load_config(model_dir: Path) -> ResolvedConfig:
    """The resolved config an export (or a run directory) was written with."""
    path = model_dir / "config.yaml"
    require_regular(path, CheckpointError)
    fix = remake_hint(model_dir)
    # load_file: empty, invalid YAML or not a mapping is one error naming the file; its hints
    # are for a config the user writes, this one the export wrote.
    try:
        raw = load_file(path)
    except ConfigError as exc:
        raise ConfigError(exc.where, exc.problem + size_note(path), fix) from None
    tasks = [task for task in TASKS if task in raw]
    if len(tasks) != 1:
        found = ", ".join(map(str, raw)) or "nothing"
        raise ConfigError(
            str(path),
            f"expected exactly one of {' or '.join(TASKS)}: (found {found}){size_note(path)}",
            fix,
        )
    try:
        return resolve_dict(drop_ignored_keys(raw), tasks[0])
    except ConfigError as exc:
        # The key alone ("retrieval.model.embedding_dim") reads like the user's own config.
        raise ConfigError(f"{path}: {exc.where}", exc.problem + size_note(path), fix) from None
