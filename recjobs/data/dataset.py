"""From the config's four tables to the integer tensors the models train on.

The users and items tables are the catalogue: vocabularies are fit on them, and every
feature lookup goes through a row index of `TaskData.user_features` / `item_features`. Row 0
of each is the out-of-vocabulary (OOV) entity, all zeros, used for anything unseen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recjobs.config.schema import ColumnsConfig, ResolvedConfig
from recjobs.data import synth
from recjobs.data.features import (
    Features,
    dense_matrix,
    is_numeric_type,
    list_column,
    list_values,
    multi_matrix,
    numeric_column,
)
from recjobs.data.shards import assign_users, index_dtype
from recjobs.data.tables import (
    Encoders,
    NumericStats,
    Vocabulary,
    as_key_array,
    check_columns_exist,
    iter_table,
    key_kind,
    read_table,
    select_columns,
)
from recjobs.distributed import Ranks, all_reduce_sum
from recjobs.errors import CheckpointError, DataError

logger = logging.getLogger(__name__)

ROLES = ("users", "items", "interactions_train", "interactions_val")


@dataclass
class TaskData:
    """Everything a trainer needs from the data, as tensors indexed by vocabulary index."""

    # Rows indexed by vocabulary index; row 0 is the OOV user (all zeros). `.cat` is int64
    # [n_users + 1, 1 + len(user_cat_cols)]: column 0 the user index itself, then one encoded
    # column per user_cat_col; `.dense` and `.multi` the numeric and multi-valued columns.
    user_features: Features
    item_features: Features
    # Embedding-table size per feature column, OOV included.
    user_cardinalities: list[int]
    item_cardinalities: list[int]
    # This rank's interactions: those of the users it owns (`recjobs.data.shards`); at world
    # size 1 all of them, in the table's order. Row indices into user_features/item_features,
    # in the smallest integer type that holds them (`shards.index_dtype`: int16 up to 32,768
    # rows, else int32): cast to int64 where they index.
    train_users: torch.Tensor
    train_items: torch.Tensor
    train_labels: torch.Tensor | None  # float32, when columns.label_col is set
    val_users: torch.Tensor
    val_items: torch.Tensor
    val_labels: torch.Tensor | None
    # int64: each validation row's position in its table, the same at any world size (ranking
    # draws a row's validation negatives from it).
    val_positions: torch.Tensor
    # int64, sorted: the validation users this rank scores (retrieval's full-catalogue metrics).
    eval_users: torch.Tensor
    # Examples each rank trains on per epoch: the smallest rank's share, so that every rank
    # runs the same number of steps.
    train_per_rank: int
    train_total: int  # training interactions over all ranks (known user and item)
    val_total: int
    # int64 [n_items + 1]: training interactions per item over all ranks (popularity, logQ).
    item_counts: torch.Tensor
    encoders: Encoders

    @property
    def n_users(self) -> int:
        """Number of users, excluding the OOV row."""
        return len(self.user_features) - 1

    @property
    def n_items(self) -> int:
        return len(self.item_features) - 1


def load_task_data(
    cfg: ResolvedConfig,
    encoders: Encoders | None = None,
    stop_requested: Callable[[], bool] | None = None,
    ranks: Ranks | None = None,
) -> TaskData:
    """Read (or generate) the four tables of `cfg` and encode them.

    Vocabularies are fit on the users and items tables unless `encoders` is given (resume,
    inference), in which case those are used and catalogue entries they do not know become
    OOV. Interaction rows whose user or item is not in the catalogue are dropped, with one
    warning per table giving the count; in validation they are first mapped to OOV (index 0)
    and then dropped, because metrics on an unknown user or item measure nothing the model
    could have learned. Null categorical values encode as OOV (0), which acts as their own
    "missing" category. Numeric columns are standardized with statistics of the users/items
    table's rows (fit here, or the saved ones of `encoders`), missing values 0 plus an
    indicator; multi-valued columns get their own vocabularies (`recjobs.data.features`).
    Errors in the data (missing files or columns, duplicate or null ids, non-numeric or NaN
    labels, non-numeric or infinite numeric features, no training rows) raise DataError naming
    file and column.
    `stop_requested` stops the generation of the synthetic data set (synth.GenerationStopped).

    In a job of several processes (`ranks`) every rank builds the same catalogue, and streams
    the interactions tables chunk by chunk (`tables.iter_table`), keeping only the rows of the
    users it owns (`recjobs.data.shards`): its memory for interactions falls as 1/N. Every
    rank reads every row, so errors in the data are found, and raised, on every rank alike.
    A collective (the item counts are summed over the ranks): every rank must call it. The
    synthetic data set is generated whole on every rank before it is divided.
    """
    cols = cfg.columns
    ranks = ranks or Ranks()
    tables, chunks, sources = _load_tables(cfg, stop_requested)
    users, items = tables["users"], tables["items"]

    user_ids = _catalogue_ids(users, cols.user_id, sources["users"], "user")
    item_ids = _catalogue_ids(items, cols.item_id, sources["items"], "item")
    for role, ids, entity in (("users", user_ids, "user"), ("items", item_ids, "item")):
        # Else every interaction is dropped as unknown and the error blames the interactions.
        if len(ids) == 0:
            raise DataError(
                sources[role],
                f"the {role} table has no rows",
                f"it needs a row for every {entity} of the interactions (dataset.paths.{role})",
            )
    user_cats = {
        c: _key_column(users, c, f"{sources['users']}: column '{c}'") for c in cols.user_cat_cols
    }
    item_cats = {
        c: _key_column(items, c, f"{sources['items']}: column '{c}'") for c in cols.item_cat_cols
    }

    user_nums = {c: numeric_column(users, c, sources["users"]) for c in cols.user_num_cols}
    item_nums = {c: numeric_column(items, c, sources["items"]) for c in cols.item_num_cols}
    delimiter = cols.multi_delimiter
    user_multis = {
        c: list_column(users, c, sources["users"], delimiter) for c in cols.user_multi_cols
    }
    item_multis = {
        c: list_column(items, c, sources["items"], delimiter) for c in cols.item_multi_cols
    }

    if encoders is None:
        encoders = Encoders(
            user_id=Vocabulary.fit(user_ids),
            item_id=Vocabulary.fit(item_ids),
            user_cats={c: Vocabulary.fit(v) for c, v in user_cats.items()},
            item_cats={c: Vocabulary.fit(v) for c, v in item_cats.items()},
            # Each entity once: a user's age counts once, not once per rating.
            user_nums={c: NumericStats.fit(v) for c, v in user_nums.items()},
            item_nums={c: NumericStats.fit(v) for c, v in item_nums.items()},
            user_multis={
                c: Vocabulary.fit(list_values(v, f"{sources['users']}: column '{c}'"))
                for c, v in user_multis.items()
            },
            item_multis={
                c: Vocabulary.fit(list_values(v, f"{sources['items']}: column '{c}'"))
                for c, v in item_multis.items()
            },
        )
    else:
        _check_encoders(encoders, cols)

    user_features = _side_features(
        encoders.user_id,
        user_ids,
        (encoders.user_cats, user_cats),
        (encoders.user_nums, user_nums),
        (encoders.user_multis, user_multis),
        sources["users"],
        cols.user_id,
    )
    item_features = _side_features(
        encoders.item_id,
        item_ids,
        (encoders.item_cats, item_cats),
        (encoders.item_nums, item_nums),
        (encoders.item_multis, item_multis),
        sources["items"],
        cols.item_id,
    )

    interactions = _Interactions(cfg, encoders, sources, chunks, ranks)
    owner = None
    if ranks.world_size > 1:  # which rank holds which users: every rank works it out alike
        eval_users = interactions.eval_users(
            cfg, interactions.read("interactions_val", None, warn=False)
        )
        owner = interactions.assign_users(eval_users)
    train = interactions.read("interactions_train", owner)
    val = interactions.read("interactions_val", owner)
    if train.total_rows == 0:
        raise DataError(
            sources["interactions_train"],
            "no training interactions: the table has no rows",
        )
    if train.total_kept == 0:
        raise DataError(
            sources["interactions_train"],
            f"no training interactions left: none of the {train.total_rows} rows has both its "
            "user and its item in the users and items tables",
            hint=f"check that {cols.interaction_user_col}/{cols.interaction_item_col} hold the "
            f"same ids as {cols.user_id}/{cols.item_id}",
        )
    if val.total_kept == 0:
        # Validation drives the metrics, early stopping, ReduceLROnPlateau and best.pt: a run
        # without it would report nothing and checkpoint "best" at random.
        raise DataError(
            sources["interactions_val"],
            f"no validation interactions (of {val.total_rows} rows, none has a known user and "
            "item)",
            hint="the validation table must share users and items with the catalogue",
        )
    per_rank = int(train.kept_per_rank.min())
    if per_rank == 0:
        raise DataError(
            sources["interactions_train"],
            f"{train.total_kept} training interactions of {len(encoders.user_id) - 1} users "
            f"cannot be shared among {ranks.world_size} ranks: rank "
            f"{int(train.kept_per_rank.argmin())} would have none (each rank trains on whole "
            "users)",
            "use fewer processes or more training data",
        )
    if owner is None:
        eval_users = interactions.eval_users(cfg, val)
    else:
        eval_users = eval_users[owner[eval_users] == ranks.rank]

    # Every rank's counts summed: logQ and the popularity baseline see the whole table.
    item_counts = torch.from_numpy(np.bincount(train.items, minlength=len(item_features)))
    item_counts = all_reduce_sum(item_counts.long(), ranks, ranks.cpu_group)

    return TaskData(
        user_features=user_features,
        item_features=item_features,
        user_cardinalities=encoders.user_cardinalities(),
        item_cardinalities=encoders.item_cardinalities(),
        train_users=torch.from_numpy(train.users),
        train_items=torch.from_numpy(train.items),
        train_labels=train.labels,
        val_users=torch.from_numpy(val.users),
        val_items=torch.from_numpy(val.items),
        val_labels=val.labels,
        val_positions=torch.from_numpy(val.positions),
        eval_users=torch.from_numpy(eval_users.astype(np.int64)),
        train_per_rank=per_rank,
        train_total=train.total_kept,
        val_total=val.total_kept,
        item_counts=item_counts,
        encoders=encoders,
    )


@dataclass
class _Split:
    """One interactions table as this rank holds it: its own rows, and counts over the whole
    table (every rank reads every row, so they are the same on every rank)."""

    users: np.ndarray
    items: np.ndarray
    labels: torch.Tensor | None
    positions: np.ndarray  # each row's position in the table (int64)
    total_rows: int
    total_kept: int
    kept_per_rank: np.ndarray  # rows with a known user and item, per owning rank


class _Interactions:
    """Reads the two interactions tables chunk by chunk, keeping this rank's rows."""

    def __init__(
        self,
        cfg: ResolvedConfig,
        encoders: Encoders,
        sources: dict[str, str],
        chunks: Callable[[str, list[str]], Iterator[pa.Table]],
        ranks: Ranks,
    ):
        self.cols, self.encoders, self.sources = cfg.columns, encoders, sources
        self.chunks, self.ranks = chunks, ranks
        self.user_dtype = index_dtype(len(encoders.user_id))
        self.item_dtype = index_dtype(len(encoders.item_id))

    def assign_users(self, eval_users: np.ndarray) -> np.ndarray:
        """The owning rank of every user row (`recjobs.data.shards`), from one pass over the
        training table's user column (each user's count of interactions)."""
        n = len(self.encoders.user_id)
        counts = np.zeros(n, dtype=np.int64)
        user_col = self.cols.interaction_user_col
        for chunk in self.chunks("interactions_train", [user_col]):
            users = self._ids(chunk, "interactions_train", user_col, self.encoders.user_id, "users")
            counts += np.bincount(users, minlength=n)
        counts[0] = 0
        return assign_users(counts, eval_users, self.ranks.world_size)

    def eval_users(self, cfg: ResolvedConfig, val: _Split) -> np.ndarray:
        """The user rows validation scores (sorted): those with a validation interaction, or a
        fixed sample of `eval_max_users` of them (the same at every validation, in every run
        with this seed, at any world size). `val`: the whole validation table's rows."""
        users = np.flatnonzero(np.bincount(val.users, minlength=len(self.encoders.user_id)))
        users = users[users > 0]
        limit = cfg.training.eval_max_users if cfg.task == "retrieval" else None
        if limit and len(users) > limit:
            pick = torch.randperm(
                len(users), generator=torch.Generator().manual_seed(cfg.shared.seed)
            )
            users = np.sort(users[pick[:limit].numpy()])
        return users

    def read(self, role: str, owner: np.ndarray | None, warn: bool = True) -> _Split:
        """The rows of `role` whose user and item are known and whose user `owner` gives this
        rank (all of them without `owner`); `warn`: one warning for the rows dropped."""
        cols, source, enc = self.cols, self.sources[role], self.encoders
        world = self.ranks.world_size
        users_out, items_out, positions_out, labels_out = [], [], [], []
        total = kept = unknown_users = unknown_items = 0
        kept_per_rank = np.zeros(world, dtype=np.int64)
        for chunk in self.chunks(role, _interaction_columns(cols)):
            users = self._ids(chunk, role, cols.interaction_user_col, enc.user_id, "users")
            items = self._ids(chunk, role, cols.interaction_item_col, enc.item_id, "items")
            known = (users > 0) & (items > 0)
            n_known = int(known.sum())
            unknown_users += int((users == 0).sum())
            unknown_items += int((items == 0).sum())
            if owner is None:
                kept_per_rank[0] += n_known
                mine = known
            else:
                kept_per_rank += np.bincount(owner[users[known]], minlength=world)
                mine = known & (owner[users] == self.ranks.rank)
            users_out.append(users[mine].astype(self.user_dtype))
            items_out.append(items[mine].astype(self.item_dtype))
            positions_out.append(np.flatnonzero(mine) + total)
            if cols.label_col:
                labels_out.append(_labels(chunk, cols.label_col, source)[mine].astype(np.float32))
            total += len(users)
            kept += n_known
        if warn and total - kept:
            split = "training" if role == "interactions_train" else "validation"
            logger.warning(
                "%s: dropped %d of %d %s interactions whose user or item is not in the "
                "users/items tables (%d unknown users, %d unknown items)",
                source,
                total - kept,
                total,
                split,
                unknown_users,
                unknown_items,
            )
        return _Split(
            users=np.concatenate(users_out),
            items=np.concatenate(items_out),
            labels=torch.from_numpy(np.concatenate(labels_out)) if cols.label_col else None,
            positions=np.concatenate(positions_out).astype(np.int64, copy=False),
            total_rows=total,
            total_kept=kept,
            kept_per_rank=kept_per_rank,
        )

    def _ids(self, chunk: pa.Table, role: str, col: str, vocab: Vocabulary, entity: str):
        """A chunk's id column as vocabulary rows (0: unknown); DataError for null ids or ids of
        another kind than the catalogue's."""
        where = f"{self.sources[role]}: column '{col}'"
        arr = _key_column(chunk, col, where)
        if arr.null_count:
            raise DataError(
                where, f"{arr.null_count} null ids", hint="every interaction needs a user and item"
            )
        _check_kind(vocab, arr, where, self.sources[entity], chunk.column(col).type)
        return vocab.encode(arr)


def _load_tables(
    cfg: ResolvedConfig, stop_requested: Callable[[], bool] | None = None
) -> tuple[dict[str, pa.Table], Callable[[str, list[str]], Iterator[pa.Table]], dict[str, str]]:
    """The users and items tables reduced to the configured columns, the interactions tables
    as chunks of the columns asked for (`chunks(role, columns)`), and a name for each table in
    messages."""
    cols = cfg.columns
    wanted = {
        "users": [cols.user_id, *cols.user_cat_cols, *cols.user_num_cols, *cols.user_multi_cols],
        "items": [cols.item_id, *cols.item_cat_cols, *cols.item_num_cols, *cols.item_multi_cols],
    }
    paths = cfg.dataset.paths
    if paths is None:
        size = cfg.dataset.synth
        generated = synth.generate_tables(
            size.users, size.items, size.interactions, cfg.shared.seed, stop_requested
        )
        sources = {role: f"synthetic data set ({role})" for role in ROLES}

        def generated_chunks(role: str, columns: list[str]) -> Iterator[pa.Table]:
            yield select_columns(generated[role], columns, source=sources[role], role=role)

        catalogue = {
            role: select_columns(generated[role], wanted[role], source=sources[role], role=role)
            for role in ("users", "items")
        }
        return catalogue, generated_chunks, sources
    sources = {role: getattr(paths, role) for role in ROLES}
    catalogue = {
        role: read_table(sources[role], wanted[role], role=role) for role in ("users", "items")
    }

    def file_chunks(role: str, columns: list[str]) -> Iterator[pa.Table]:
        return iter_table(sources[role], columns, role=role)

    # Checked before anything is read, as a whole-table read did: a missing file or column
    # fails at once, on every rank alike.
    for role in ("interactions_train", "interactions_val"):
        check_columns_exist(sources[role], _interaction_columns(cols), role=role)
    return catalogue, file_chunks, sources


def _interaction_columns(cols: ColumnsConfig) -> list[str]:
    # interaction_time_col is not read: nothing trains on the time (the split is the two
    # files), and the docs call the column optional; a table without it must load.
    return [cols.interaction_user_col, cols.interaction_item_col, *filter(None, [cols.label_col])]


def _catalogue_ids(table: pa.Table, col: str, source: str, entity: str) -> pa.Array:
    """The id column as int64/string; DataError for null or duplicate ids."""
    where = f"{source}: column '{col}'"
    ids = _key_column(table, col, where)
    if ids.null_count:
        raise DataError(where, f"{ids.null_count} null ids", hint=f"every {entity} needs an id")
    if len(ids):
        values, counts = _value_counts(ids)
        n_dup = int((counts > 1).sum())
        if n_dup:
            example = values[int(np.flatnonzero(counts > 1)[0])]
            raise DataError(
                where,
                f"duplicate id {example!r} (ids with duplicates: {n_dup})",
                hint=f"each {entity} must have exactly one row",
            )
    return ids


def _value_counts(arr: pa.Array) -> tuple[list, np.ndarray]:
    vc = arr.value_counts()
    return vc.field("values").to_pylist(), vc.field("counts").to_numpy()


def _key_column(table: pa.Table, col: str, where: str) -> pa.Array:
    """An id or categorical column as int64 or strings; DataError for what cannot be a key.

    Refused: nested types (lists, structs, maps), infinite floats (NaN is a null, so a missing
    category; inf is no value at all) and bytes that are not UTF-8 text.
    """
    column = table.column(col)
    t = column.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    expected = "expected integer or string values"
    if pa.types.is_nested(t):
        raise DataError(where, f"{expected}, got {t}")
    if pa.types.is_floating(t):
        n_inf = pc.sum(pc.is_inf(pc.cast(column, pa.float64()))).as_py() or 0
        if n_inf:
            raise DataError(
                where,
                f"{n_inf} of {len(column)} values are infinite",
                "ids and categories are integers or strings; leave a category empty (null or "
                "NaN) for unknown",
            )
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        try:
            column.cast(pa.large_string())
        except pa.ArrowInvalid:
            raise DataError(
                where, "values are bytes that are not UTF-8 text", "store text"
            ) from None
    try:
        arr = as_key_array(column)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise DataError(where, f"{expected}, got {t}") from exc
    assert arr is not None  # tables never hold mixed Python objects
    return arr


def _check_kind(
    vocab: Vocabulary,
    arr: pa.Array,
    where: str,
    vocab_source: str,
    source_type: pa.DataType | None = None,
) -> None:
    """DataError when ids are ints here but strings in the catalogue (or the reverse).

    Never coerced: "007" and 7 are different ids, and silently matching or not matching them
    would lose data without a word.
    """
    have, want = key_kind(arr), vocab.kind
    if {have, want} == {"int", "str"}:
        names = {"int": "integers", "str": "strings"}
        if source_type is not None and pa.types.is_floating(source_type):
            # as_key_array keeps non-whole numbers as their text; "strings" would mislead.
            example = next((v for v in arr.to_pylist()[:1000] if v is not None), None)
            raise DataError(
                where,
                f"values are numbers with a fraction (e.g. {example}) but {names[want]} in "
                f"{vocab_source}",
                hint="ids are whole numbers or text: fix those values, or store the column as "
                "integers",
            )
        raise DataError(
            where,
            f"values are {names[have]} but {names[want]} in {vocab_source}",
            hint="use the same id type in all tables",
        )


def _check_encoders(encoders: Encoders, cols: ColumnsConfig) -> None:
    for entity, kind, got, want in (
        ("user", "categorical", encoders.user_cats, cols.user_cat_cols),
        ("item", "categorical", encoders.item_cats, cols.item_cat_cols),
        ("user", "numeric", encoders.user_nums, cols.user_num_cols),
        ("item", "numeric", encoders.item_nums, cols.item_num_cols),
        ("user", "multi-valued", encoders.user_multis, cols.user_multi_cols),
        ("item", "multi-valued", encoders.item_multis, cols.item_multi_cols),
    ):
        if list(got) != list(want):
            raise CheckpointError(
                "encoders",
                f"saved {entity} {kind} columns {list(got)} differ from the config's {list(want)}",
                hint="the run was trained with another columns config",
            )


def _side_features(
    id_vocab: Vocabulary,
    ids: pa.Array,
    cats: tuple[dict[str, Vocabulary], dict[str, pa.Array]],
    nums: tuple[dict[str, NumericStats], dict[str, np.ndarray]],
    multis: tuple[dict[str, Vocabulary], dict[str, pa.ListArray]],
    source: str,
    id_col: str,
) -> Features:
    """The `Features` of one side: categorical matrix, then the dense and multi inputs (the
    latter two only when configured, so a run without them gathers one tensor as before)."""
    cat, rows = _features(id_vocab, ids, *cats, source, id_col)
    n = cat.shape[0]
    stats, values = nums
    dense = torch.from_numpy(dense_matrix(values, stats, rows, n)) if stats else None
    vocabs, lists = multis
    multi = tuple(
        torch.from_numpy(multi_matrix(v, lists[c], rows, n, f"{source}: column '{c}'"))
        for c, v in vocabs.items()
    )
    return Features(torch.from_numpy(cat), dense, multi)


def _features(
    id_vocab: Vocabulary,
    ids: pa.Array,
    cat_vocabs: dict[str, Vocabulary],
    cat_values: dict[str, pa.Array],
    source: str,
    id_col: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix indexed by vocabulary index: [index, encoded cat 1, cat 2, ...], and the
    vocabulary row of each table row (0: not in the saved encoders)."""
    _check_kind(id_vocab, ids, f"{source}: column '{id_col}'", "the saved encoders")
    n = len(id_vocab)
    features = np.zeros((n, 1 + len(cat_vocabs)), dtype=np.int64)
    features[:, 0] = np.arange(n)
    rows = id_vocab.encode(ids)
    known = rows > 0
    if not known.all():
        logger.warning(
            "%s: %d of %d ids are not in the saved encoders; they are treated as unseen (OOV)",
            source,
            int((~known).sum()),
            len(rows),
        )
    for j, (col, vocab) in enumerate(cat_vocabs.items(), start=1):
        values = cat_values[col]
        _check_kind(vocab, values, f"{source}: column '{col}'", "the saved encoders")
        features[rows[known], j] = vocab.encode(values)[known]
    features[0] = 0
    return features, rows


def _labels(table: pa.Table, col: str, source: str) -> np.ndarray:
    """The label column as float64; DataError unless numeric and free of nulls and NaNs."""
    where = f"{source}: column '{col}'"
    arr = table.column(col)
    t = arr.type
    numeric = is_numeric_type(t) or (pa.types.is_null(t) and table.num_rows == 0)
    if not numeric:
        raise DataError(where, f"expected a numeric column, got {t}")
    try:
        values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(where, f"labels do not fit a float64: {exc}") from None
    n_bad = int((~np.isfinite(values)).sum())
    if n_bad:
        raise DataError(
            where,
            f"{n_bad} of {len(values)} labels are null, NaN or infinite",
            hint="drop or fill those rows",
        )
    return values
