"""The config schema: every key a config file may hold, its type and its default.

One dataclass per section. `recjobs.config` validates YAML against these classes (unknown
keys, wrong types, bad values) and builds them; nothing else in the project reads raw dicts.
The layout is the spec's: top-level `dataset:` and `shared:`, then one section per task
(`retrieval:`, `ranking:`) holding `columns:`, `model:` and `training:`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

TASKS = ("retrieval", "ranking")
Task = Literal["retrieval", "ranking"]

INT32_MAX = 2**31 - 1  # counts and sizes: far beyond any real run, far below any overflow
SEED_MAX = 2**32 - 1  # numpy's legacy seeding (np.random.seed) takes 32 bits
MAX_LAYERS = 32  # entries of hidden_dims / scorer_hidden_dims
MAX_EVAL_K = 10  # entries of eval_k
MAX_WIDTH = 65536  # embedding_dim and each hidden layer


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric key (of each element, for a list key).

    Every int and float field of the schema carries one (`field(metadata={"range": ...})`);
    `recjobs.config` checks them at resolve time and docs/reliability.md lists them.
    """

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def text(self) -> str:
        return (
            f"{'(' if self.low_open else '['}{_num(self.low)}, "
            f"{_num(self.high)}{')' if self.high_open or self.high == math.inf else ']'}"
        )

    def problem(self, value: float, nullable: bool = False) -> str:
        """Why `value` is outside: one bound when the other one is only an overflow guard."""
        if self.high != math.inf and self.high < INT32_MAX:
            bound = f"in {self.text()}"
        elif value > self.high:
            bound = f"at most {_num(self.high)}"
        elif self.low_open or self.low == 1:  # for integers, >= 1 is > 0
            bound = f"greater than {_num(self.low if self.low_open else 0)}"
        elif self.low == 0:
            bound = "0 or more"
        else:
            bound = f"at least {_num(self.low)}"
        return f"must be {bound}{' or null' if nullable else ''}, got {value}"


def _num(x: float) -> str:
    return "inf" if x == math.inf else str(int(x)) if float(x).is_integer() else str(x)


def ranged(default: Any, low: float, high: float = math.inf, **kw: Any) -> Any:
    """A dataclass field with a default and a valid range (see Range)."""
    make = {"default_factory": lambda: default} if isinstance(default, list) else {}
    return field(**(make or {"default": default}), metadata={"range": Range(low, high, **kw)})


POSITIVE = {"low_open": True}  # for floats: (0, inf)


@dataclass(frozen=True)
class DataPaths:
    """Where the four tables live: local paths (relative to the working directory) or URLs."""

    users: str
    items: str
    interactions_train: str
    interactions_val: str


@dataclass(frozen=True)
class SynthSize:
    """Size of the built-in synthetic data set used when `dataset.paths` is null."""

    users: int = ranged(2000, 1, INT32_MAX)
    items: int = ranged(500, 1, INT32_MAX)
    interactions: int = ranged(60000, 1, INT32_MAX)


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "synth"
    # null: train on the built-in synthetic data set (generated from shared.seed).
    paths: DataPaths | None = None
    synth: SynthSize = field(default_factory=SynthSize)


@dataclass(frozen=True)
class SharedConfig:
    seed: int = ranged(42, 0, SEED_MAX)
    # File name (inside the run dir's model/) where the id/category vocabularies are saved;
    # a plain name: no / or ..
    encoder_cache: str = "encoders.json"


@dataclass(frozen=True)
class ColumnsConfig:
    user_id: str = "user_id"
    item_id: str = "item_id"
    user_cat_cols: tuple[str, ...] = ("user_group", "region", "age_group")
    item_cat_cols: tuple[str, ...] = ("category", "price_band", "style")
    interaction_user_col: str = "user_id"
    interaction_item_col: str = "item_id"
    interaction_time_col: str | None = "timestamp"
    label_col: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    model_arch: Literal["two_tower", "dlrm", "dcn"] = "two_tower"
    embedding_dim: int = ranged(64, 1, MAX_WIDTH)
    hidden_dims: tuple[int, ...] = ranged((128, 64), 1, MAX_WIDTH)
    # Ranking only: the MLP on top of the feature interactions.
    scorer_hidden_dims: tuple[int, ...] = ranged((128, 64), 1, MAX_WIDTH)
    # DCN only: number of DCN-v2 cross layers.
    cross_layers: int = ranged(3, 1, 64)
    dropout: float = ranged(0.1, 0, 1, high_open=True)


@dataclass(frozen=True)
class EarlyStopping:
    enabled: bool = False
    # A validation metric without the `val/` prefix, e.g. recall@10, auc, loss.
    # null: recall@<first eval_k> for retrieval, auc (bce) or rmse (mse) for ranking.
    metric: str | None = None
    patience: int = ranged(5, 1, INT32_MAX)
    # null: derived from the metric (min for losses and errors, max otherwise).
    mode: Literal["min", "max"] | None = None
    min_delta: float = ranged(0.0, 0)


@dataclass(frozen=True)
class TrainingConfig:
    # Retrieval needs at least 2 (the other items of a batch are its negatives).
    batch_size: int = ranged(1024, 1, INT32_MAX)
    num_workers: int = ranged(0, 0, 1024)
    max_epochs: int = ranged(3, 1, INT32_MAX)
    # null: no limit beyond max_epochs.
    max_steps: int | None = ranged(None, 1, 2**62)
    lr: float = ranged(0.001, 0, **POSITIVE)
    # Resolved: {"name": ..., "lr": ..., **kwargs}. See recjobs.optim.
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "Adam"})
    # Sparse gradients for the embedding tables, updated by `embedding_optimizer`, so that a
    # step costs O(rows in the batch) instead of O(rows in the tables). auto: on when the
    # largest table has at least 100,000 rows and the backend supports it (not NCCL DDP).
    # false: one optimizer for all parameters, exactly as configured.
    sparse_embeddings: bool | Literal["auto"] = "auto"
    # Resolved: {"name": SparseAdam|Adagrad|SGD, "lr": ..., **kwargs}; null derives it from
    # `optimizer` (same lr; betas/eps or momentum carried over; no weight decay on tables).
    embedding_optimizer: dict[str, Any] | None = None
    # Resolved: None or {"name": ..., "interval": "epoch"|"step", **kwargs}.
    scheduler: dict[str, Any] | None = None
    # Resolved: "off", "fp16" or "bf16".
    mixed_precision: Literal["off", "fp16", "bf16"] = "off"
    grad_clip_norm: float | None = ranged(None, 0, **POSITIVE)
    loss_func: Literal["cross_entropy", "bce", "mse"] = "cross_entropy"
    # Retrieval only: softmax temperature, and the logQ correction for in-batch negatives being
    # sampled by popularity (Yi et al. 2019); without it the model under-recommends popular items.
    temperature: float = ranged(0.05, 0, **POSITIVE)
    logq_correction: bool = True
    # Ranking only: sampled negatives per positive for bce.
    negatives_per_pos: int = ranged(4, 1, 1000)
    eval_k: tuple[int, ...] = ranged((10, 50), 1, INT32_MAX)
    # Retrieval only: score at most this many validation users (a fixed sample; null: all).
    # Full-catalogue scoring costs users x items; bound it for very large catalogues.
    eval_max_users: int | None = ranged(None, 1, INT32_MAX)
    # 0: evaluate only at the end of each epoch.
    eval_steps: int = ranged(0, 0, INT32_MAX)
    log_steps: int = ranged(50, 1, INT32_MAX)
    # 0: checkpoint only at the end of each epoch.
    checkpoint_steps: int = ranged(0, 0, INT32_MAX)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    artifact_dir: str | None = None
    # File name of the exported weights inside the run dir's model/ (a plain name: no / or ..).
    checkpoint: str = "model.pt"
    use_wandb: bool = False
    wandb_project: str = "recjobs"
    wandb_entity: str | None = None
    wandb_run_name: str | None = None
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)


@dataclass(frozen=True)
class TaskConfig:
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


@dataclass(frozen=True)
class ResolvedConfig:
    """A fully validated config for one task. `to_dict()` is what `recjobs resolve` prints."""

    task: Task
    dataset: DatasetConfig
    shared: SharedConfig
    section: TaskConfig

    @property
    def columns(self) -> ColumnsConfig:
        return self.section.columns

    @property
    def model(self) -> ModelConfig:
        return self.section.model

    @property
    def training(self) -> TrainingConfig:
        return self.section.training

    def to_dict(self) -> dict[str, Any]:
        """The config-file layout, JSON-serialisable; resolving it again gives the same dict."""
        section = _plain(self.section)
        for other, subs in TASK_ONLY_KEYS.items():
            if other != self.task:
                for sub, keys in subs.items():
                    for key in keys:
                        section[sub].pop(key, None)
        return {"dataset": _plain(self.dataset), "shared": _plain(self.shared), self.task: section}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# Task-specific defaults that differ from the dataclass defaults above.
TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "retrieval": {
        "columns": {},
        "model": {"model_arch": "two_tower"},
        "training": {"loss_func": "cross_entropy", "batch_size": 1024},
    },
    "ranking": {
        "columns": {"label_col": "rating"},
        "model": {"model_arch": "dlrm"},
        "training": {"loss_func": "bce", "batch_size": 4096},
    },
}

# Keys that only one task understands; setting them for the other is an error, not a no-op.
TASK_ONLY_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "retrieval": {
        "training": ("temperature", "logq_correction", "eval_k", "eval_max_users"),
        "model": (),
    },
    "ranking": {
        "training": ("negatives_per_pos",),
        "model": ("scorer_hidden_dims", "cross_layers"),
    },
}
ARCHS = {"retrieval": ("two_tower",), "ranking": ("dlrm", "dcn")}
LOSSES = {"retrieval": ("cross_entropy",), "ranking": ("bce", "mse")}
