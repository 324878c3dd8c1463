"""The config schema: every key a config file may hold, its type, default, range and meaning.

docs/config.md is written from these fields (`recjobs config-reference`): a key's `doc` is its
meaning there, its `Range` (numbers) the valid values.

One dataclass per section. `recjobs.config.resolver` validates YAML against these classes (unknown
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
INTERVALS = ("epoch", "step")  # when an LR scheduler steps (`interval`, --scheduler-interval)
MAX_LAYERS = 32  # entries of hidden_dims / scorer_hidden_dims
MAX_EVAL_K = 10  # entries of eval_k
MAX_WIDTH = 65536  # embedding_dim and each hidden layer
# The smallest synthetic data set that trains (SynthSize; `recjobs data synth` shares them).
MIN_SYNTH_USERS, MIN_SYNTH_ITEMS, MIN_SYNTH_INTERACTIONS = 2, 2, 10


def synth_density_problem(users: int, items: int, interactions: int) -> str | None:
    """Why a synthetic data set this dense would not train, or None.

    The generator draws each (user, item) pair at most once (it cannot, past every pair), and
    ranking's validation draws negatives among the items a user does not have: with every pair
    taken there are none, and the AUC is not a number. At most half of the pairs leaves plenty.
    """
    most = users * items // 2
    if interactions <= most:
        return None
    return (
        f"{interactions} interactions among {users} users x {items} items are more than half "
        f"of their {users * items} user-item pairs (at most {most}): a pair occurs once, and "
        "ranking's validation needs items a user does not have"
    )


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric key (of each element, for a list key).

    Every int and float field of the schema carries one (`field(metadata={"range": ...})`);
    `recjobs.config.resolver` checks them at resolve time and docs/reliability.md lists them.
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


def ranged(default: Any, low: float, high: float = math.inf, *, doc: str, **kw: Any) -> Any:
    """A dataclass field with a default, a valid range (see Range) and its meaning (`doc`)."""
    make = {"default_factory": lambda: default} if isinstance(default, list) else {}
    return field(
        **(make or {"default": default}), metadata={"range": Range(low, high, **kw), "doc": doc}
    )


def option(default: Any = dataclasses.MISSING, *, doc: str, factory: Any = None) -> Any:
    """A dataclass field that is not a number: its default and its meaning.

    `doc` is what docs/config.md says about the key (`recjobs config-reference` writes that
    page from these fields, and a test fails when the page is stale).
    """
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


POSITIVE = {"low_open": True}  # for floats: (0, inf)


@dataclass(frozen=True)
class DataPaths:
    """Where the four tables live: local paths or URLs. A relative path in a config file is
    read from the file's folder, one given with --set from the working directory; the resolved
    config holds absolute paths (`recjobs.config.resolver`, "dataset paths")."""

    users: str = option(doc="users table (Parquet or CSV): the user id column and its categories")
    items: str = option(doc="items table: the item id column and its categories")
    interactions_train: str = option(
        doc="training interactions: user, item, optional timestamp and label"
    )
    interactions_val: str = option(doc="validation interactions, same columns as the training ones")


@dataclass(frozen=True)
class SynthSize:
    """Size of the built-in synthetic data set used when `dataset.paths` is null."""

    # Generated in memory (some 50 bytes per interaction, 100 per user or item): the upper
    # bounds keep a typo from asking for terabytes (docs/reliability.md, "Bounds and blocking
    # paths"). The lower ones are the smallest data set that trains: a second user and item
    # (one item is every in-batch negative and every sampled negative), and interactions for
    # both splits (15% validation: 8 training, 2 validation rows) and a batch of 2 or more;
    # with at most half of the user-item pairs taken (synth_density_problem).
    users: int = ranged(2000, MIN_SYNTH_USERS, 100_000_000, doc="synthetic users")
    items: int = ranged(500, MIN_SYNTH_ITEMS, 100_000_000, doc="synthetic items")
    interactions: int = ranged(
        60000,
        MIN_SYNTH_INTERACTIONS,
        1_000_000_000,
        doc="synthetic interactions (train and validation together)",
    )


@dataclass(frozen=True)
class DatasetConfig:
    name: str = option("synth", doc="a name for the data set (logged; not interpreted)")
    paths: DataPaths | None = option(
        None,
        doc="the four tables, local paths or URLs; null trains on the built-in synthetic data "
        "generated from shared.seed. A relative path in a config file is read from the file's "
        "folder (a data set folder with its config.yaml can be copied or moved), one given with "
        "--set from the working directory; the resolved config (what a run saves, what a TorchX "
        "job receives) holds absolute paths",
    )
    synth: SynthSize = option(doc="size of the synthetic data set", factory=SynthSize)


@dataclass(frozen=True)
class SharedConfig:
    seed: int = ranged(
        42, 0, SEED_MAX, doc="seeds everything: weights, batch order, negatives, synthetic data"
    )
    encoder_cache: str = option(
        "encoders.json",
        doc="file name, inside the run dir's model/, of the saved vocabularies (no / or ..)",
    )


@dataclass(frozen=True)
class ColumnsConfig:
    user_id: str = option("user_id", doc="user id column of the users table")
    item_id: str = option("item_id", doc="item id column of the items table")
    user_cat_cols: tuple[str, ...] = option(
        ("user_group", "region", "age_group"),
        doc="categorical columns of the users table, each an embedding table",
    )
    item_cat_cols: tuple[str, ...] = option(
        ("category", "price_band", "style"),
        doc="categorical columns of the items table, each an embedding table",
    )
    user_num_cols: tuple[str, ...] = option(
        (),
        doc="numeric columns of the users table: standardized with the mean and standard "
        "deviation of the users table's rows (saved with the model, reapplied by recommend and "
        "score); a missing value (null, NaN) becomes 0 plus a 0/1 missing-indicator input; an "
        "infinite value is a data error",
    )
    item_num_cols: tuple[str, ...] = option(
        (),
        doc="numeric columns of the items table, as user_num_cols (statistics of the items table)",
    )
    user_multi_cols: tuple[str, ...] = option(
        (),
        doc="multi-valued columns of the users table (Parquet list<string or int>; in CSV one "
        "string of values separated by multi_delimiter), each with its own vocabulary, pooled "
        "with an EmbeddingBag (model.multi_pooling); an empty or null list is a zero vector and "
        "values the vocabulary does not know are left out",
    )
    item_multi_cols: tuple[str, ...] = option(
        (), doc="multi-valued columns of the items table, as user_multi_cols (e.g. genres)"
    )
    multi_delimiter: str = option(
        "|",
        doc="one character separating the values of a multi-valued column in a CSV file "
        '("Action|Comedy"); not used for Parquet lists',
    )
    interaction_user_col: str = option("user_id", doc="user id column of the interaction tables")
    interaction_item_col: str = option("item_id", doc="item id column of the interaction tables")
    interaction_time_col: str | None = option(
        "timestamp",
        doc="timestamp column of the interaction tables; optional and not read (nothing trains "
        "on time: the split is the two files)",
    )
    label_col: str | None = option(
        None, doc="label column (ratings); needed by ranking's mse loss, ignored by bce"
    )


@dataclass(frozen=True)
class ModelConfig:
    model_arch: Literal["two_tower", "dlrm", "dcn"] = option(
        "two_tower", doc="retrieval: two_tower; ranking: dlrm or dcn (DCN-v2)"
    )
    embedding_dim: int = ranged(64, 1, MAX_WIDTH, doc="width of every embedding table")
    hidden_dims: tuple[int, ...] = ranged(
        (128, 64),
        1,
        MAX_WIDTH,
        doc="MLP widths (1 to 32 layers): each tower of two_tower (its last width is the "
        "embedding size of users and items), DLRM's bottom MLP, DCN's deep network",
    )
    scorer_hidden_dims: tuple[int, ...] = ranged(
        (128, 64), 1, MAX_WIDTH, doc="the MLP on top of the feature interactions (1 to 32 layers)"
    )
    cross_layers: int = ranged(3, 1, 64, doc="DCN only: number of DCN-v2 cross layers")
    dropout: float = ranged(0.1, 0, 1, high_open=True, doc="dropout after every hidden layer")
    multi_pooling: Literal["mean", "sum"] = option(
        "mean",
        doc="how a multi-valued column's embeddings are pooled into one vector (EmbeddingBag "
        "mode): mean (the average; a list's length does not matter) or sum",
    )


@dataclass(frozen=True)
class EarlyStopping:
    enabled: bool = option(
        False, doc="stop when the metric has not improved for `patience` epoch-end validations"
    )
    metric: str | None = option(
        None,
        doc="validation metric without `val/` (recall@10, auc, loss, ...) that picks the best "
        "weights (checkpoints/best.pt and model/) and drives early stopping; null: "
        "recall@<first eval_k> (retrieval), auc (bce) or rmse (mse)",
    )
    patience: int = ranged(5, 1, INT32_MAX, doc="epoch-end validations without improvement")
    mode: Literal["min", "max"] | None = option(
        None, doc="min or max is better; null: min for losses and errors, max otherwise"
    )
    min_delta: float = ranged(0.0, 0, doc="smallest change that counts as an improvement")


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = ranged(
        1024,
        1,
        INT32_MAX,
        doc="examples per step and process; retrieval needs at least 2 (in-batch negatives)",
    )
    max_epochs: int = ranged(3, 1, INT32_MAX, doc="passes over the training interactions")
    max_steps: int | None = ranged(
        None, 1, 2**62, doc="stop after this many steps (mid-epoch too); null: no limit"
    )
    lr: float = ranged(
        0.001, 0, **POSITIVE, doc="learning rate; an `lr` inside `optimizer` takes precedence"
    )
    # Resolved: {"name": ..., "lr": ..., **kwargs}. See recjobs.config.optim.
    optimizer: dict[str, Any] = option(
        doc="a torch.optim class by name, or {name: ..., <its keyword arguments>}",
        factory=lambda: {"name": "Adam"},
    )
    # Sparse gradients for the embedding tables, updated by `embedding_optimizer`, so that a
    # step costs O(rows in the batch) instead of O(rows in the tables). auto: on when the
    # largest table has at least 100,000 rows and the backend supports it (not NCCL DDP).
    # false: one optimizer for all parameters, exactly as configured.
    sparse_embeddings: bool | Literal["auto"] = option(
        "auto",
        doc="sparse gradients for the embedding tables; auto: on when the largest table has "
        "100,000 rows or more (not under NCCL); false: one optimizer for everything",
    )
    # Resolved: {"name": SparseAdam|Adagrad|SGD, "lr": ..., **kwargs}; null derives it from
    # `optimizer` (same lr; betas/eps or momentum carried over; no weight decay on tables).
    embedding_optimizer: dict[str, Any] | None = option(
        None,
        doc="optimizer of the tables when sparse: SparseAdam, Adagrad or SGD; null: derived "
        "from `optimizer`",
    )
    # Resolved: None or {"name": ..., "interval": "epoch"|"step", **kwargs}.
    scheduler: dict[str, Any] | None = option(
        None,
        doc="a torch.optim.lr_scheduler class: {name: ..., interval: epoch|step, monitor: "
        "<metric> (ReduceLROnPlateau), <its keyword arguments>}; null: constant LR",
    )
    # Resolved: "off", "fp16" or "bf16".
    mixed_precision: Literal["off", "fp16", "bf16"] = option(
        "off", doc="autocast: fp16 (CUDA, with GradScaler) or bf16; true means fp16"
    )
    grad_clip_norm: float | None = ranged(
        None, 0, **POSITIVE, doc="clip the global gradient norm to this; null: no clipping"
    )
    loss_func: Literal["cross_entropy", "bce", "mse"] = option(
        "cross_entropy",
        doc="retrieval: cross_entropy (in-batch softmax); ranking: bce (sampled negatives) or "
        "mse (on label_col)",
    )
    # Retrieval only: softmax temperature, and the logQ correction for in-batch negatives being
    # sampled by popularity (Yi et al. 2019); without it the model under-recommends popular items.
    temperature: float = ranged(
        0.05, 0, **POSITIVE, doc="softmax temperature of the in-batch softmax"
    )
    logq_correction: bool = option(
        True,
        doc="subtract log(item popularity) from in-batch logits (Yi et al. 2019); without it "
        "popular items are pushed down",
    )
    # Retrieval only: mixed negative sampling (Yang et al. 2020).
    mixed_negatives: int = ranged(
        0,
        0,
        1_000_000,
        doc="retrieval: this many items drawn uniformly from the catalogue at every step join "
        "the in-batch negatives of every row (each column with its own logQ term); 0: in-batch "
        "negatives only",
    )
    # Retrieval only: whose batches are a rank's in-batch negatives under DDP (docs/performance.md,
    # "Negatives from every rank"). local stays the default: an N-rank job then needs no
    # collective beyond DDP's, and a config trains the same softmax at every world size.
    negatives: Literal["local", "global"] = option(
        "local",
        doc="retrieval, several processes: local: each rank's softmax takes its negatives from "
        "its own batch (batch_size candidates); global: from every rank's batch (world size x "
        "batch_size candidates, the softmax of one process with the whole global batch), for "
        "an all-gather of batch_size x embedding width per step; the same at one process",
    )
    negatives_per_pos: int = ranged(4, 1, 1000, doc="bce: sampled negative items per positive")
    # Ranking only: how training negatives are drawn. Validation negatives are always uniform
    # and never an item the user has in training or validation (comparable across configs).
    negatives_distribution: Literal["uniform", "popularity"] = option(
        "uniform",
        doc="bce: training negatives drawn uniformly from the catalogue, or by popularity: "
        "(training interactions + 1) ** negatives_alpha",
    )
    negatives_alpha: float = ranged(
        0.75, 0, 2, doc="bce, popularity: exponent of the popularity (0 is uniform)"
    )
    negatives_exclude_seen: bool = option(
        False,
        doc="bce: redraw a training negative that the user has among its training "
        "interactions (validation negatives always avoid the user's known items)",
    )
    eval_k: tuple[int, ...] = ranged(
        (10, 50), 1, INT32_MAX, doc="K of val/recall@K, ndcg@K and hit@K (1 to 10 values)"
    )
    # Retrieval only: score at most this many validation users (a fixed sample; null: all).
    # Full-catalogue scoring costs users x items; bound it for very large catalogues.
    eval_max_users: int | None = ranged(
        None,
        1,
        INT32_MAX,
        doc="score a fixed sample of this many validation users (full-catalogue scoring costs "
        "users x items); null: all",
    )
    eval_steps: int = ranged(
        0, 0, INT32_MAX, doc="also validate every this many steps; 0: at epoch ends only"
    )
    log_steps: int = ranged(
        50,
        1,
        INT32_MAX,
        doc="log train/loss (mean per example since the last record; retrieval leaves out an "
        "epoch's short last batch), train/lr, train/examples_per_s every this many steps and at "
        "every epoch end",
    )
    checkpoint_steps: int = ranged(
        0, 0, INT32_MAX, doc="also write checkpoints/last.pt every this many steps; 0: epoch ends"
    )
    device: Literal["auto", "cpu", "cuda"] = option(
        "auto", doc="auto: CUDA when visible, else the CPU"
    )
    artifact_dir: str | None = option(
        None, doc="run directory when --run-dir is not given; null: artifacts/<task>"
    )
    checkpoint: str = option(
        "model.pt", doc="file name of the exported weights inside the run dir's model/"
    )
    use_wandb: bool = option(
        False, doc="log to Weights & Biases too (needs WANDB_API_KEY or WANDB_MODE=offline)"
    )
    wandb_project: str = option("recjobs", doc="W&B project")
    wandb_entity: str | None = option(None, doc="W&B entity (team); null: your default")
    wandb_run_name: str | None = option(None, doc="W&B run name; null: W&B picks one")
    early_stopping: EarlyStopping = option(
        doc="best-weights metric and early stopping; `true`/`false` is short for {enabled: ...}",
        factory=EarlyStopping,
    )


# Keys of the common config format (the project the spec came from, older recjobs) that have no
# effect here: a config that sets one resolves with one warning and without it, so such configs
# migrate unchanged. A key that would change what trains never goes here: it stays unknown.
# A run directory's own saved config just drops them.
IGNORED_KEYS: dict[str, str] = {
    "training.num_workers": "has no effect: the data lives in memory as tensors and a batch is "
    "an index gather, so there are no data-loader workers",
}


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
    # dataset.paths.* that were given as relative paths (role -> the text as given), now
    # absolute on this machine: a container job cannot see them. Not part of the config.
    relative_paths: dict[str, str] = field(default_factory=dict, compare=False)

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
        "training": (
            "temperature",
            "logq_correction",
            "mixed_negatives",
            "negatives",
            "eval_k",
            "eval_max_users",
        ),
        "model": (),
    },
    "ranking": {
        "training": (
            "negatives_per_pos",
            "negatives_distribution",
            "negatives_alpha",
            "negatives_exclude_seen",
        ),
        "model": ("scorer_hidden_dims", "cross_layers"),
    },
}
ARCHS = {"retrieval": ("two_tower",), "ranking": ("dlrm", "dcn")}
LOSSES = {"retrieval": ("cross_entropy",), "ranking": ("bce", "mse")}
