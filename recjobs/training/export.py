"""The exported model: what a serving or analysis job loads, without the training state.

model/<training.checkpoint>   model weights (state_dict)
model/config.yaml             the resolved config
model/<shared.encoder_cache>  id and category vocabularies
model/item_embeddings.pt      retrieval only: {"item_ids": [raw ids], "embeddings": [N, D]}
model/catalogue.pt            the users' and items' encoded feature rows, every user's training
                              items (the seen-items index) and the items' training counts
model/export.json             written last: the files above and their sizes, so that a file
                              deleted or cut short since (an incomplete copy) is told from an
                              export by a recjobs before a file existed (no export.json)

With these the directory is self-sufficient: `recjobs.Recommender.load(dir)` recommends and
scores without the data files (recjobs.inference.recommend). For the bare model:

>>> from recjobs.training.export import load_model
>>> model, cfg, encoders = load_model("runs/quickstart/model")
>>> model.eval()
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from recjobs.config.exported import (
    MANIFEST,
    MANIFEST_FORMAT,
    listed_files,
    load_config,
    remake_hint,
    size_note,
)
from recjobs.config.schema import ResolvedConfig
from recjobs.data import Encoders, TaskData
from recjobs.errors import CheckpointError, UserError
from recjobs.file_kind import require_regular
from recjobs.models import build_model
from recjobs.training import metrics
from recjobs.training.checkpoint import atomic_write_bytes

ITEM_EMBEDDINGS = "item_embeddings.pt"
CATALOGUE = "catalogue.pt"
MANIFEST_VERSION = 1


def _save(obj: object, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def export_model(
    model_dir: Path,
    model: nn.Module,
    cfg: ResolvedConfig,
    data: TaskData,
    train_pairs: torch.Tensor | None = None,
) -> None:
    """Write the model to `model_dir`, all of it or nothing.

    `train_pairs`: every training (user row, item row) pair, [n, 2], for the seen items of the
    catalogue; by default `data`'s own (a job of several ranks gathers them from every rank).

    The files go to `<model_dir>.partial/` first, which then replaces `model_dir`: a process
    killed during the export leaves the previous export (or none) and a stray .partial
    directory, never a model/ that lacks a file. `recjobs train --resume` exports again.
    """
    partial = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _write_files(partial, model, cfg, data, train_pairs)
    old = model_dir.with_name(model_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if model_dir.exists():
        os.replace(model_dir, old)
    os.replace(partial, model_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_files(
    model_dir: Path,
    model: nn.Module,
    cfg: ResolvedConfig,
    data: TaskData,
    train_pairs: torch.Tensor | None,
) -> None:
    _save(
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        model_dir / cfg.training.checkpoint,
    )
    atomic_write_bytes(
        model_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode()
    )
    data.encoders.save(str(model_dir / cfg.shared.encoder_cache))
    _save(catalogue(data, train_pairs), model_dir / CATALOGUE)
    if cfg.task == "retrieval":
        was_training = model.training
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            emb = model.item_embeddings(data.item_features[1:].to(device)).float().cpu()
        model.train(was_training)
        _save(
            {"item_ids": data.encoders.item_id.values(), "embeddings": emb},
            model_dir / ITEM_EMBEDDINGS,
        )
    files = {p.name: p.stat().st_size for p in sorted(model_dir.iterdir())}
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "files": files}
    atomic_write_bytes(model_dir / MANIFEST, json.dumps(manifest, indent=1).encode())


def catalogue(data: TaskData, train_pairs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """What inference needs from the data, indexed by vocabulary index (row 0: OOV).

    user_features [users + 1, user columns] and item_features [items + 1, item columns] as the
    model reads them (the categorical matrices), and when configured user_dense/item_dense (the
    numeric columns already standardized with the training statistics, so inference applies the
    same transform by reading them) and user_multi/item_multi (lists of the padded index
    matrices of the multi-valued columns); seen_indptr/seen_indices: CSR of each user's
    distinct training items (the items `recommend` leaves out, and the trainer's validation
    masks); item_counts: training interactions per item (the most-popular baseline).
    """
    users, items = (
        (data.train_users, data.train_items) if train_pairs is None else train_pairs.unbind(1)
    )
    seen_indptr, seen_indices = metrics.csr_from_pairs(users, items, len(data.user_features))
    out: dict[str, Any] = {
        "user_features": data.user_features.cat.cpu(),
        "item_features": data.item_features.cat.cpu(),
        "seen_indptr": seen_indptr,
        "seen_indices": seen_indices,
        "item_counts": data.item_counts.cpu(),
    }
    # Only when configured: a catalogue without them is the one older recjobs wrote and read.
    for side, features in (("user", data.user_features), ("item", data.item_features)):
        if features.dense is not None:
            out[f"{side}_dense"] = features.dense.cpu()
        if features.multi:
            out[f"{side}_multi"] = [m.cpu() for m in features.multi]
    return out


def check_manifest(model_dir: Path) -> bool:
    """Every file export.json lists is there; False when the folder has no export.json (an
    export by a recjobs before it). Sizes are not compared here (a model/config.yaml edited
    by hand is no damage); they explain a file that then cannot be read (`size_note`).

    Raises:
        CheckpointError: naming the file missing, or a damaged export.json.
    """
    path = model_dir / MANIFEST
    require_regular(path, CheckpointError)
    if not path.exists():
        return False
    files = listed_files(model_dir)
    if files is None:
        raise CheckpointError(
            str(path),
            f"is not the export's list of files (JSON with format {MANIFEST_FORMAT} and files)",
            remake_hint(model_dir),
        )
    for name in files:
        file = model_dir / name
        require_regular(file, CheckpointError)
        if not file.exists():
            raise CheckpointError(
                str(file),
                f"missing from the model folder ({MANIFEST} lists it: it was deleted since the "
                "export, or the folder was copied in part)",
                remake_hint(model_dir),
            )
    return True


def require_files(model_dir: Path, cfg: ResolvedConfig, manifest: bool) -> None:
    """Every file the model needs is there: missing ones named, an older export told apart
    (no export.json and no catalogue.pt) from a file deleted since."""
    hint = remake_hint(model_dir)
    needed = [cfg.shared.encoder_cache, cfg.training.checkpoint, CATALOGUE]
    needed += [ITEM_EMBEDDINGS] if cfg.task == "retrieval" else []
    for name in needed:
        path = model_dir / name
        require_regular(path, CheckpointError)
        if path.exists():
            continue
        if name == CATALOGUE and not manifest:
            raise CheckpointError(
                str(path),
                f"not found, and the folder has no {MANIFEST} either: an export by a recjobs "
                "older than catalogue.pt (or both files were deleted)",
                hint,
            )
        listed = f" ({MANIFEST} does not list it either)" if manifest else ""
        raise CheckpointError(
            str(path),
            f"missing from the model folder{listed}: deleted since the export, or the folder "
            "was copied in part",
            hint,
        )


# What torch.load, a state dict or a malformed file raise; anything else is a bug.
_LOAD_ERRORS = (
    OSError,
    RuntimeError,
    ValueError,
    KeyError,
    TypeError,
    EOFError,
    pickle.UnpicklingError,
)


@contextlib.contextmanager
def reading_model_file(path: Path) -> Iterator[None]:
    """Any failure to read a file of a model folder becomes one CheckpointError naming the
    file, what is wrong and what to do (`remake_hint`)."""
    try:
        yield
    except UserError as exc:
        hint = remake_hint(path.parent)
        raise type(exc)(exc.where, exc.problem + size_note(path), hint) from None
    except _LOAD_ERRORS as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            str(path),
            f"cannot load it ({type(exc).__name__}: {first}){size_note(path)}",
            remake_hint(path.parent),
        ) from None


def load_model(model_dir: str | Path) -> tuple[nn.Module, ResolvedConfig, Encoders]:
    """Load an exported model for inference: (model in eval mode, its config, its vocabularies)."""
    model_dir = Path(model_dir)
    manifest = check_manifest(model_dir)
    cfg = load_config(model_dir)
    require_files(model_dir, cfg, manifest)
    task = cfg.task
    with reading_model_file(model_dir / cfg.shared.encoder_cache):
        encoders = Encoders.load(str(model_dir / cfg.shared.encoder_cache))
    with reading_model_file(model_dir / cfg.training.checkpoint):
        model = build_model(
            task,
            cfg.model,
            encoders.user_cardinalities(),
            encoders.item_cardinalities(),
            **encoders.feature_widths(),
        )
        model.load_state_dict(
            torch.load(model_dir / cfg.training.checkpoint, map_location="cpu", weights_only=True)
        )
    return model.eval(), cfg, encoders
