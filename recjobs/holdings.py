"""What a directory already holds: a run, an exported model or a data set.

Every command that writes into a directory asks first, and refuses one that holds something of
another kind (docs/reliability.md, "Nothing lost: the write discipline"): `train --run-dir` a
data set, `data synth --out` a run. Read-only and without torch: the CLI asks before it loads
anything. The names are those the writers use (training/rundir.py, training/export.py,
data/tables.py); tests/test_write_discipline.py checks them against real runs and data sets.
"""

from __future__ import annotations

from pathlib import Path

# A run directory's own files (training/rundir.py); `.lock` is left out: the trainer creates
# it before it looks, and it holds nothing.
RUN_FILES = ("config.yaml", "metrics.jsonl", "train.log", "summary.json", "model", "checkpoints")
# What only a finished run has: no retry (`--resume-or-start`) may start such a run over.
FINISHED_RUN_FILES = ("summary.json", "model")
# What marks a run even without config.yaml (a data set and a model have a config.yaml too).
RUN_ONLY_FILES = tuple(name for name in RUN_FILES if name != "config.yaml")
# An exported model (training/export.py): its catalogue; the weights' name is configurable.
MODEL_FILES = ("catalogue.pt",)
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
