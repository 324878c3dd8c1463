"""What a directory already holds: a run, an exported model or a data set.

Every command that writes into a directory asks first, and refuses one that holds something of
another kind (docs/reliability.md, "Nothing lost: the write discipline"): `train --run-dir` a
data set, `data synth --out` a run. Read-only and without torch: the CLI asks before it loads
anything. The names are those the writers use (training/rundir.py, training/export.py,
data/tables.py); tests/test_write_discipline.py checks them against real runs and data sets.
"""

from __future__ import annotations

import os
from pathlib import Path

from recjobs.errors import UserError
from recjobs.file_kind import special_kind

# A run directory's own files (training/rundir.py); `.lock` is left out: the trainer creates
# it before it looks, and it holds nothing.
RUN_FILES = ("config.yaml", "metrics.jsonl", "train.log", "summary.json", "model", "checkpoints")
# What only a finished run has: no retry (`--resume-or-start`) may start such a run over.
FINISHED_RUN_FILES = ("summary.json", "model")
# What marks a run even without config.yaml (a data set and a model have a config.yaml too).
RUN_ONLY_FILES = tuple(name for name in RUN_FILES if name != "config.yaml")
# An exported model (training/export.py): the files only an export writes, export.json last (a
# folder whose catalogue.pt was deleted since is still a model, and so is an export by a recjobs
# before catalogue.pt, with its item_embeddings.pt); the weights' name is configurable.
MODEL_FILES = ("catalogue.pt", "item_embeddings.pt", "export.json")
# A data set (data/tables.py write_dataset_dir): the four tables beside its config.yaml.
DATASET_FILES = (
    "users.parquet",
    "items.parquet",
    "interactions_train.parquet",
    "interactions_val.parquet",
)


def present(path: Path) -> bool:
    """Whether anything is at `path`: a file, a directory, or a link (even a dangling one)."""
    if path.is_symlink():
        return True
    if path.is_dir():
        return any(path.iterdir()) if path.name == "checkpoints" else True
    return path.exists()


def found(directory: Path, names: tuple[str, ...]) -> list[str]:
    """Which of `names` are present in `directory` (an empty list when it does not exist)."""
    if not directory.is_dir():
        return []
    return [name for name in names if present(directory / name)]


def other_kind(directory: Path, wanted: str) -> str | None:
    """What `directory` holds that is not a `wanted` ("run" or "data set"), e.g. "a data set
    (users.parquet, items.parquet)"; None when it holds nothing of another kind."""
    kinds = {
        "run": found(directory, RUN_ONLY_FILES),
        "model": found(directory, MODEL_FILES),
        "data set": found(directory, DATASET_FILES),
    }
    for kind, names in kinds.items():
        if kind != wanted and names:
            article = "an exported" if kind == "model" else "a"
            return f"{article} {kind} ({', '.join(names)})"
    return None


# --------------------------------------------------------------------------- output files

# A run's folders that its trainer replaces or rewrites: a file written there is lost (the
# export replaces model/ whole) or clobbers the run's own.
_RUN_FOLDERS = {
    "model": "the run's model/ folder, which its next export replaces whole",
    "checkpoints": "the run's checkpoints/ folder, which its trainer writes",
}


def check_output(out: str, directory: bool = False) -> None:
    """Where `recommend`/`score --out` and `plot -o` may write: never inside a run's model/ or
    checkpoints/ folder or an exported model (a file there is lost, or replaces the model's
    own), never over a FIFO, socket, device (or a directory, for a file), nor over a data
    set's table. An existing regular file is fine: the writers replace it atomically.
    `directory`: `out` is a folder to write parts into (`recommend --parts`).

    Raises:
        UserError: one line naming `out` and what to give instead.
    """
    path = Path(out)
    kind = special_kind(path)
    if kind is not None:
        raise UserError(
            out, f"is {kind}, not a regular file", "an output replaces only a regular file"
        )
    if not directory and path.is_dir():
        raise UserError(out, "is a directory", "name a file")
    inside = _inside_a_model(path if directory else path.parent)
    if inside is not None:
        folder, what = inside
        where = "is" if folder == _real(path) else f"is in {folder},"
        raise UserError(out, f"{where} {what}", "write it elsewhere, e.g. beside the run")
    if path.name in DATASET_FILES and found(path.parent, DATASET_FILES):
        raise UserError(out, "is a table of the data set in its folder", "use another --out")


def _inside_a_model(folder: Path) -> tuple[Path, str] | None:
    """The folder at or above `folder` that outputs must stay out of, and what it is."""
    for above in (_real(folder), *_real(folder).parents):
        if above.name in _RUN_FOLDERS:
            markers = [n for n in RUN_ONLY_FILES if n != above.name]
            if found(above.parent, tuple(markers)):
                return above, _RUN_FOLDERS[above.name]
        if found(above, MODEL_FILES):
            return above, "an exported model's folder, whose files it could replace"
    return None


def _real(path: Path) -> Path:
    """`path` with its links followed as far as they go: os.path.realpath, where Path.resolve
    raises RuntimeError on a loop of links (`plot LOOP` was a traceback)."""
    return Path(os.path.realpath(path))
