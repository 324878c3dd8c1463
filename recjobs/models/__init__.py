"""Model zoo: `build_model` turns a task and its ModelConfig into an nn.Module."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from recjobs.config.schema import ARCHS, ModelConfig
from recjobs.models.ranking import DCN, DLRM
from recjobs.models.two_tower import TwoTower, in_batch_softmax_loss

__all__ = ["DCN", "DLRM", "TwoTower", "build_model", "in_batch_softmax_loss"]


def build_model(
    task: str,
    cfg: ModelConfig,
    user_cardinalities: Sequence[int],
    item_cardinalities: Sequence[int],
    *,
    sparse: bool = False,
    user_dense: int = 0,
    item_dense: int = 0,
    user_multi: Sequence[int] = (),
    item_multi: Sequence[int] = (),
) -> nn.Module:
    """retrieval → TwoTower; ranking → DLRM or DCN. Raises ValueError on any other pairing.

    `user_dense`/`item_dense`: widths of the dense (numeric) inputs; `user_multi`/`item_multi`:
    vocabulary sizes of the multi-valued columns (`Encoders.feature_widths()` gives all four).

    Config validation already rejects bad pairings for configs read from files; this check is for
    callers that build a ModelConfig by hand.
    """
    if task not in ARCHS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(ARCHS)}")
    if cfg.model_arch not in ARCHS[task]:
        raise ValueError(
            f"model_arch {cfg.model_arch!r} is not available for task {task!r}; "
            f"expected one of {list(ARCHS[task])}"
        )
    extra = {
        "user_dense": user_dense,
        "item_dense": item_dense,
        "user_multi": tuple(user_multi),
        "item_multi": tuple(item_multi),
        "multi_pooling": cfg.multi_pooling,
    }
    if cfg.model_arch == "two_tower":
        return TwoTower(
            user_cardinalities,
            item_cardinalities,
            cfg.embedding_dim,
            cfg.hidden_dims,
            cfg.dropout,
            sparse=sparse,
            **extra,
        )
    if cfg.model_arch == "dlrm":
        return DLRM(
            user_cardinalities,
            item_cardinalities,
            cfg.embedding_dim,
            cfg.hidden_dims,
            cfg.scorer_hidden_dims,
            cfg.dropout,
            sparse=sparse,
            **extra,
        )
    return DCN(
        user_cardinalities,
        item_cardinalities,
        cfg.embedding_dim,
        cfg.hidden_dims,
        cfg.scorer_hidden_dims,
        cfg.dropout,
        cross_layers=cfg.cross_layers,
        sparse=sparse,
        **extra,
    )
