"""The exported model: what a serving or analysis job loads, without the training state.

model/<training.checkpoint>   model weights (state_dict)
model/config.yaml             the resolved config
model/<shared.encoder_cache>  id and category vocabularies
model/item_embeddings.pt      retrieval only: {"item_ids": [raw ids], "embeddings": [N, D]}
model/catalogue.pt            the users' and items' encoded feature rows, every user's training
                              items (the seen-items index) and the items' training counts

With these the directory is self-sufficient: `recjobs.Recommender.load(dir)` recommends and
scores without the data files (recjobs.inference.recommend). For the bare model:

>>> from recjobs.training.export import load_model
>>> model, cfg, encoders = load_model("runs/quickstart/model")
>>> model.eval()
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import torch
import yaml
from torch import nn

from recjobs.config.resolver import drop_ignored_keys, load_file, resolve_dict
from recjobs.config.schema import TASKS, ResolvedConfig
from recjobs.data import Encoders, TaskData
from recjobs.errors import CheckpointError, ConfigError
from recjobs.file_kind import require_regular
from recjobs.models import build_model
from recjobs.training import metrics
from recjobs.training.checkpoint import atomic_write_bytes

ITEM_EMBEDDINGS = "item_embeddings.pt"
CATALOGUE = "catalogue.pt"


def _save(obj: object, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def export_model(model_dir: Path, model: nn.Module, cfg: ResolvedConfig, data: TaskData) -> None:
    """Write the model to `model_dir`, all of it or nothing.

    The files go to `<model_dir>.partial/` first, which then replaces `model_dir`: a process
    killed during the export leaves the previous export (or none) and a stray .partial
    directory, never a model/ that lacks a file. `recjobs train --resume` exports again.
    """
    partial = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _write_files(partial, model, cfg, data)
    old = model_dir.with_name(model_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if model_dir.exists():
        os.replace(model_dir, old)
    os.replace(partial, model_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_files(model_dir: Path, model: nn.Module, cfg: ResolvedConfig, data: TaskData) -> None:
    _save(
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        model_dir / cfg.training.checkpoint,
    )
    atomic_write_bytes(
        model_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode()
    )
    data.encoders.save(str(model_dir / cfg.shared.encoder_cache))
    _save(catalogue(data), model_dir / CATALOGUE)
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


def catalogue(data: TaskData) -> dict[str, torch.Tensor]:
    """What inference needs from the data, indexed by vocabulary index (row 0: OOV).

    user_features [users + 1, user columns] and item_features [items + 1, item columns] as the
    model reads them; seen_indptr/seen_indices: CSR of each user's distinct training items (the
    items `recommend` leaves out, and the trainer's validation masks); item_counts: training
    interactions per item (the most-popular baseline).
    """
    seen_indptr, seen_indices = metrics.csr_from_pairs(
        data.train_users, data.train_items, data.user_features.shape[0]
    )
    return {
        "user_features": data.user_features.cpu(),
        "item_features": data.item_features.cpu(),
        "seen_indptr": seen_indptr,
        "seen_indices": seen_indices,
        "item_counts": data.item_counts.cpu(),
    }


def load_config(model_dir: Path) -> ResolvedConfig:
    """The resolved config an export (or a run directory) was written with."""
    path = model_dir / "config.yaml"
    require_regular(path, CheckpointError)
    fix = "export the model again, or use another run"
    # load_file: empty, invalid YAML or not a mapping is one error naming the file.
    raw = load_file(path)
    tasks = [task for task in TASKS if task in raw]
    if len(tasks) != 1:
        found = ", ".join(map(str, raw)) or "nothing"
        raise ConfigError(
            str(path), f"expected exactly one of {' or '.join(TASKS)}: (found {found})", fix
        )
    try:
        return resolve_dict(drop_ignored_keys(raw), tasks[0])
    except ConfigError as exc:
        # The key alone ("retrieval.model.embedding_dim") reads like the user's own config.
        raise ConfigError(f"{path}: {exc.where}", exc.problem, exc.hint or fix) from None


def load_model(model_dir: str | Path) -> tuple[nn.Module, ResolvedConfig, Encoders]:
    """Load an exported model for inference: (model in eval mode, its config, its vocabularies)."""
    model_dir = Path(model_dir)
    cfg = load_config(model_dir)
    task = cfg.task
    encoders = Encoders.load(str(model_dir / cfg.shared.encoder_cache))
    model = build_model(
        task, cfg.model, encoders.user_cardinalities(), encoders.item_cardinalities()
    )
    model.load_state_dict(
        torch.load(model_dir / cfg.training.checkpoint, map_location="cpu", weights_only=True)
    )
    return model.eval(), cfg, encoders
