"""Reading and writing the four input tables, and turning raw ids into contiguous indices.

Everything here is columnar (pyarrow/numpy): data sets of millions of rows must load in
about a second, so no function walks rows in Python. Errors the user can fix (a missing file,
a misspelt column, an unreadable file) become `DataError`s naming the file and column.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

from recjobs.atomic import atomic_file, atomic_files
from recjobs.errors import CheckpointError, DataError
from recjobs.file_kind import require_regular, require_regular_tree

PARQUET_EXTENSIONS = (".parquet", ".pq")
CSV_EXTENSIONS = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
_COLUMNS_HINT = "check the `columns:` section of the config"


# --------------------------------------------------------------------------------------------
# Reading


def table_format(path: str) -> str:
    """'parquet' or 'csv', chosen by the file name's extension (case-insensitive); a local
    directory is a Parquet data set.

    The extension rather than sniffing the bytes decides, so that a wrong file fails with a
    message about its name before anything is downloaded from a remote store.
    """
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    if name.endswith(PARQUET_EXTENSIONS) or ("://" not in path and os.path.isdir(path)):
        return "parquet"  # a local directory: Parquet parts (Spark's, a recommend job's)
    if name.endswith(CSV_EXTENSIONS):
        return "csv"
    ext = os.path.splitext(name)[1]
    raise DataError(
        path,
        f"unsupported file extension {ext!r}" if ext else "file name has no extension",
        hint="supported: " + ", ".join(PARQUET_EXTENSIONS + CSV_EXTENSIONS),
    )


def _filesystem(path: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for URLs; (None, path) for local paths."""
    if "://" not in path:
        return None, path
    import fsspec

    protocol = path.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(path)
    except ImportError as exc:
        match = re.search(r"install (\S+)", str(exc), flags=re.IGNORECASE)
        package = match.group(1) if match else f"the fsspec backend for {protocol}://"
        raise DataError(
            path,
            f"cannot open {protocol}:// URLs: the filesystem package is not installed",
            hint=f"pip install {package}",
        ) from exc
    except ValueError as exc:
        raise DataError(path, f"unknown URL protocol '{protocol}://'", hint=str(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def select_columns(table: pa.Table, columns: Sequence[str], *, source: str, role: str) -> pa.Table:
    """`table` reduced to `columns` (in that order, duplicates once); DataError if one is absent.

    Shared by file reading and the in-memory synthetic tables so both fail the same way.
    """
    wanted = list(dict.fromkeys(columns))
    _check_columns(table.column_names, wanted, source=source, role=role)
    return table.select(wanted)


def _check_columns(present: Sequence[str], wanted: Sequence[str], *, source: str, role: str):
    for col in wanted:
        if col not in present:
            raise DataError(
                f"{source}: column '{col}'",
                f"no such column in the {role} table (columns present: {', '.join(present)})",
                hint=_COLUMNS_HINT,
            )


def column_names(path: str, *, role: str, hint: str | None = None) -> list[str]:
    """The column names of the table at `path` (its schema or CSV header; no rows are read)."""
    fmt = table_format(path)
    fs, fs_path = _filesystem(path)
    _check_exists(path, fs, fs_path, role, hint)
    try:
        if fmt == "parquet":
            return list(pads.dataset(fs_path, format="parquet", filesystem=fs).schema.names)
        return _csv_header(path, fs, fs_path)
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read the {role} table as {fmt}: {_first_line(exc)}") from exc


def check_columns_exist(path: str, columns: Sequence[str], *, role: str) -> None:
    """DataError unless the table at `path` is there with all of `columns` (nothing is read
    but its schema or CSV header)."""
    _check_columns(column_names(path, role=role), columns, source=path, role=role)


def _check_exists(path: str, fs: Any, fs_path: str, role: str, hint: str | None) -> None:
    try:
        exists = os.path.exists(path) if fs is None else fs.exists(fs_path)
    except Exception as exc:  # credentials, network: whatever the backend raises
        raise DataError(path, f"cannot access the {role} table: {_first_line(exc)}") from exc
    if fs is None:  # a link to nothing is named as such, before "not found"
        require_regular_tree(path, DataError)
    if not exists:
        raise DataError(path, "file not found", hint=hint or f"check dataset.paths.{role}")


def read_table(
    path: str,
    columns: Sequence[str],
    *,
    role: str,
    hint: str | None = None,
    column_types: dict[str, pa.DataType] | None = None,
) -> pa.Table:
    """Read only `columns` of the table at `path` (local path or fsspec URL).

    `role` (users, items, interactions_train, interactions_val) appears in messages and hints
    (`hint` replaces the one for a missing file). Parquet may also be a directory of parquet
    files (as Spark writes them). CSV empty strings read as nulls, so CSV and parquet versions
    of the same data load identically; `column_types` fixes CSV columns' types (ids that must
    stay strings, "007").
    """
    fmt = table_format(path)
    fs, fs_path = _filesystem(path)
    _check_exists(path, fs, fs_path, role, hint)
    wanted = list(dict.fromkeys(columns))
    try:
        if fmt == "parquet":
            dataset = pads.dataset(fs_path, format="parquet", filesystem=fs)
            _check_columns(dataset.schema.names, wanted, source=path, role=role)
            return dataset.to_table(columns=wanted)
        return _read_csv(path, fs, fs_path, wanted, role, column_types or {})
    except DataError:
        raise
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read the {role} table as {fmt}: {_first_line(exc)}") from exc


# A streamed table comes in chunks of at least this many rows (the last may be shorter): tens of
# MB of ids at a time, few enough chunks that the per-chunk work costs nothing.
STREAM_ROWS = 1 << 20


def iter_table(path: str, columns: Sequence[str], *, role: str) -> Iterator[pa.Table]:
    """`read_table` in chunks, in the file's row order: a large interactions table passes
    through memory a chunk at a time, and each rank keeps only its own rows of each chunk
    (`recjobs.data.dataset`). Same checks and messages as `read_table`; a CSV's column types
    are inferred from its first block, as `read_table` infers them."""
    fmt = table_format(path)
    fs, fs_path = _filesystem(path)
    _check_exists(path, fs, fs_path, role, None)
    wanted = list(dict.fromkeys(columns))
    src = None
    try:
        if fmt == "parquet":
            dataset = pads.dataset(fs_path, format="parquet", filesystem=fs)
            _check_columns(dataset.schema.names, wanted, source=path, role=role)
            schema = dataset.schema
            batches: Iterator[pa.RecordBatch] = iter(
                dataset.to_batches(columns=wanted, batch_size=STREAM_ROWS, use_threads=False)
            )
        else:
            _check_columns(_csv_header(path, fs, fs_path), wanted, source=path, role=role)
            src = _csv_source(path, fs, fs_path)
            reader = pacsv.open_csv(
                src,
                read_options=_csv_read_options(),
                parse_options=_csv_parse_options(path),
                convert_options=pacsv.ConvertOptions(
                    include_columns=wanted, strings_can_be_null=True
                ),
            )
            schema, batches = reader.schema, iter(reader)
        pending: list[pa.RecordBatch] = []
        rows, yielded = 0, False
        for batch in batches:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= STREAM_ROWS:
                yield pa.Table.from_batches(pending).select(wanted)
                pending, rows, yielded = [], 0, True
        if pending:
            yield pa.Table.from_batches(pending).select(wanted)
        elif not yielded:  # an empty table is one empty chunk, as read_table gives it
            yield schema.empty_table().select(wanted)
    except DataError:
        raise
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read the {role} table as {fmt}: {_first_line(exc)}") from exc
    finally:
        if fs is not None and src is not None:
            src.close()


def _csv_read_options() -> pacsv.ReadOptions:
    return pacsv.ReadOptions()  # blocks of 1 MB, gathered into chunks of STREAM_ROWS rows


def _csv_parse_options(path: str) -> pacsv.ParseOptions:
    delimiter = "\t" if ".tsv" in path.rsplit("/", 1)[-1].lower() else ","
    return pacsv.ParseOptions(delimiter=delimiter)


def _csv_source(path: str, fs: Any, fs_path: str) -> Any:
    # pyarrow decompresses local .gz by extension; for URLs fsspec does it.
    return path if fs is None else fs.open(fs_path, "rb", compression="infer")


def _csv_header(path: str, fs: Any, fs_path: str) -> list[str]:
    src = _csv_source(path, fs, fs_path)
    try:
        return pacsv.open_csv(src, parse_options=_csv_parse_options(path)).schema.names
    finally:
        if fs is not None:
            src.close()


def _read_csv(
    path: str,
    fs: Any,
    fs_path: str,
    wanted: list[str],
    role: str,
    column_types: dict[str, pa.DataType],
) -> pa.Table:
    parse = _csv_parse_options(path)
    _check_columns(_csv_header(path, fs, fs_path), wanted, source=path, role=role)
    convert = pacsv.ConvertOptions(
        include_columns=wanted, strings_can_be_null=True, column_types=column_types
    )
    src = _csv_source(path, fs, fs_path)
    try:
        return pacsv.read_csv(src, parse_options=parse, convert_options=convert)
    finally:
        if fs is not None:
            src.close()


# --------------------------------------------------------------------------------------------
# Writing


def write_table(table: pa.Table, path: str) -> None:
    """Write `table` as parquet, atomically: a reader never sees a half-written file."""
    with atomic_file(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def _write_text(text: str, path: str) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_dataset_dir(
    out_dir: str,
    tables: dict[str, pa.Table],
    *,
    name: str,
    seed: int,
    user_cat_cols: Sequence[str],
    item_cat_cols: Sequence[str],
    user_num_cols: Sequence[str] = (),
    item_num_cols: Sequence[str] = (),
    item_multi_cols: Sequence[str] = (),
) -> str:
    """Write the four tables as parquet plus a ready-to-train config.yaml; return its path.

    Used by the synthetic generator and the MovieLens converter, whose tables share the column
    names user_id, item_id, timestamp and rating. The config names the tables by their file
    names (`users: users.parquet`), which a config file reads from its own folder: the folder
    can be copied or moved and its config still trains on its own tables.
    """
    roles = ("users", "items", "interactions_train", "interactions_val")
    names = {role: f"{role}.parquet" for role in roles}
    paths = {role: os.path.join(out_dir, name) for role, name in names.items()}

    def columns(label_col: str | None) -> dict[str, Any]:
        # The numeric and multi-valued keys only where used: the synthetic data set's config
        # reads as it did before they existed.
        features = {
            key: list(cols)
            for key, cols in (
                ("user_num_cols", user_num_cols),
                ("item_num_cols", item_num_cols),
                ("item_multi_cols", item_multi_cols),
            )
            if cols
        }
        return {
            "user_id": "user_id",
            "item_id": "item_id",
            "user_cat_cols": list(user_cat_cols),
            "item_cat_cols": list(item_cat_cols),
            **features,
            "interaction_user_col": "user_id",
            "interaction_item_col": "item_id",
            "interaction_time_col": "timestamp",
            "label_col": label_col,
        }

    config = {
        "dataset": {"name": name, "paths": names},
        "shared": {"seed": seed},
        "retrieval": {
            "columns": columns(None),
            "model": {
                "model_arch": "two_tower",
                "embedding_dim": 64,
                "hidden_dims": [128, 64],
                "dropout": 0.1,
            },
            # Measured on MovieLens-100k (docs/performance.md, "Model quality"): 20 epochs at
            # lr 0.005, batch 512, temperature 0.1 reach EASE's recall@10 on the user-time
            # split; the old 3 epochs at lr 0.001 stopped at 1.6x the most-popular baseline.
            "training": {
                "batch_size": 512,
                "max_epochs": 20,
                "lr": 0.005,
                "optimizer": "Adam",
                "temperature": 0.1,
                "loss_func": "cross_entropy",
                "early_stopping": {"enabled": True, "metric": "recall@10", "patience": 3},
            },
        },
        "ranking": {
            "columns": columns("rating"),
            "model": {
                "model_arch": "dlrm",
                "embedding_dim": 32,
                "hidden_dims": [128, 64],
                "scorer_hidden_dims": [128, 64],
                "dropout": 0.1,
            },
            # The old batch 4096 at lr 0.001 gave 20 steps an epoch on MovieLens-100k and a
            # model no better than popularity after 3 epochs; this reaches val/auc 0.85.
            "training": {
                "batch_size": 1024,
                "max_epochs": 4,
                "lr": 0.01,
                "optimizer": "Adam",
                "scheduler": {"name": "CosineAnnealingLR", "T_max": 4, "interval": "epoch"},
                "loss_func": "bce",
                "negatives_per_pos": 8,
            },
        },
    }
    config_path = os.path.join(out_dir, "config.yaml")
    # All five files are written beside their targets first and replace them only when all are
    # written: a failure (disk full, a directory in the way) or a stop signal leaves a data set
    # --force was replacing whole, never half old and half new. config.yaml is replaced last:
    # a new one means the new data set is all there (the CLI says so when stopped).
    targets = [*paths.values(), config_path]
    for target in targets:
        if os.path.isdir(target):  # found now, not after some files were replaced
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), target)
    created = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        with atomic_files(targets) as temporary:
            for role, tmp in zip(roles, temporary):
                write_parquet(tables[role], tmp)
            with open(temporary[-1], "w", encoding="utf-8") as f:
                f.write(yaml.safe_dump(config, sort_keys=False))
    except BaseException:
        if created:  # an --out this call made holds nothing of a data set: no trace of it
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)
        raise
    return config_path


# Rows written at a time: pyarrow's largest row group (1024 * 1024 rows), so the file is laid
# out as pq.write_table lays it; a stop signal is acted on between slices (a fraction of a
# second) instead of after a table of 10^8 rows.
PARQUET_SLICE_ROWS = 1024 * 1024


def write_parquet(table: pa.Table, path: str) -> None:
    """`pq.write_table`, slice by slice (PARQUET_SLICE_ROWS)."""
    with pq.ParquetWriter(path, table.schema) as writer:
        for start in range(0, table.num_rows, PARQUET_SLICE_ROWS):
            writer.write_table(table.slice(start, PARQUET_SLICE_ROWS))


# --------------------------------------------------------------------------------------------
# Vocabularies


def as_key_array(values: Any) -> pa.Array | None:
    """Ids or categories as a pyarrow array of int64 or large_string (or null type).

    Integer-like types (any int width, bool, floats that are all whole numbers) become int64,
    so the same ids read from CSV and parquet match; NaN becomes null; anything else that is not
    a string (non-integral floats, dates, decimals) is cast to its string form. Returns None for
    a Python object array mixing ints and strings, which callers split by type.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if not isinstance(values, pa.Array):
        # A list goes through an object array: np.asarray([1, "a"]) would turn 1 into "1".
        values = values if isinstance(values, np.ndarray) else np.array(values, dtype=object)
        try:
            values = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            if values.dtype == object:
                return None
            raise
    arr = values
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if pa.types.is_null(t) or t == pa.int64() or t == pa.large_string():
        return arr
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return arr.cast(pa.int64())
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return arr.cast(pa.large_string())
    if pa.types.is_floating(t):
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, t), arr)
        # Whole numbers that int64 holds (2**63 itself is a float but not an int64).
        fits = pc.and_(pc.equal(pc.floor(arr), arr), pc.less(pc.abs(arr), 2.0**63))
        whole = pc.all(fits).as_py()
        if whole is None or whole:  # all null, or all whole numbers
            return arr.cast(pa.int64())
        return arr.cast(pa.large_string())
    return arr.cast(pa.large_string())


def key_kind(arr: pa.Array | None) -> str:
    """'int', 'str', 'empty' (all null) or 'mixed' (None) for a result of `as_key_array`."""
    if arr is None:
        return "mixed"
    if pa.types.is_null(arr.type):
        return "empty"
    return "int" if arr.type == pa.int64() else "str"


def _split_mixed(values: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(int positions, int values, str positions, str values) of a mixed object array.

    The one place with a per-element Python loop: only Python-object input mixing ints and
    strings gets here (data files always have one type per column).
    """
    obj = np.asarray(values, dtype=object)
    is_str = np.fromiter((isinstance(v, str) for v in obj), bool, len(obj))
    is_int = np.fromiter((isinstance(v, (int, np.integer)) for v in obj), bool, len(obj))
    int_pos, str_pos = np.flatnonzero(is_int), np.flatnonzero(is_str)
    return int_pos, obj[int_pos].astype(np.int64), str_pos, obj[str_pos].astype(str)


class Vocabulary:
    """Raw value (int or str) -> contiguous index; 0 is reserved for unseen values (OOV).

    Indices follow sorted order: all integer values first, then all strings, so fitting is
    deterministic and the integer 1 and the string "1" stay distinct values. `len()` counts
    the OOV slot, so it is the embedding-table size.
    """

    def __init__(self, ints: np.ndarray, strs: pa.Array):
        """Build from already sorted, unique values; use `fit` or `from_json` instead."""
        self._ints = np.asarray(ints, dtype=np.int64)
        self._strs = strs.cast(pa.large_string())

    @classmethod
    def fit(cls, values: np.ndarray | pa.Array | Sequence[Any]) -> Vocabulary:
        """Vocabulary of the distinct non-null values of `values`."""
        arr = as_key_array(values)
        if arr is None:
            _, ints, _, strs = _split_mixed(values)
            return cls(np.unique(ints), _sorted_unique(pa.array(strs, pa.large_string())))
        kind = key_kind(arr)
        if kind == "int":
            ints = pc.unique(arr.drop_null()).to_numpy()
            return cls(np.sort(ints), pa.array([], pa.large_string()))
        if kind == "str":
            return cls(np.empty(0, np.int64), _sorted_unique(arr))
        return cls(np.empty(0, np.int64), pa.array([], pa.large_string()))

    @property
    def kind(self) -> str:
        """'int', 'str', 'mixed' or 'empty': the type of the values it holds."""
        if len(self._ints) and len(self._strs):
            return "mixed"
        if len(self._ints):
            return "int"
        return "str" if len(self._strs) else "empty"

    def __len__(self) -> int:
        return 1 + len(self._ints) + len(self._strs)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and np.array_equal(self._ints, other._ints)
            and self._strs.equals(other._strs)
        )

    def __repr__(self) -> str:
        return f"Vocabulary({len(self) - 1} values + OOV, kind={self.kind})"

    def values(self) -> list[Any]:
        """The raw values in index order: `values()[i]` has index `i + 1`."""
        return self._ints.tolist() + self._strs.to_pylist()

    def decode(self, indices: np.ndarray | Sequence[int]) -> list[Any]:
        """Raw values of `indices`; None for the OOV index 0 (for exporting predictions)."""
        table = [None, *self.values()]
        return [table[i] for i in np.asarray(indices, dtype=np.int64).tolist()]

    def decode_array(self, indices: np.ndarray) -> pa.Array:
        """Raw values of `indices` as one array: int64 or strings as the vocabulary holds them
        (strings for a mixed one); null for the OOV index 0. Vectorised."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.kind == "int":
            values = pa.array(self._ints)
        elif self.kind == "mixed":
            values = pa.concat_arrays(
                [pa.array(self._ints.astype(str), pa.large_string()), self._strs]
            )
        else:
            values = self._strs
        return values.take(pa.array(indices - 1, mask=indices < 1))

    def encode(self, values: np.ndarray | pa.Array | pa.ChunkedArray | Sequence[Any]) -> np.ndarray:
        """int64 indices of `values`; unseen values and nulls map to 0.

        Vectorised: integers by binary search, strings by a hash lookup (pyarrow index_in).
        Values of the other type than the vocabulary holds (ints against a string vocabulary)
        are unseen, never coerced.
        """
        arr = as_key_array(values)
        if arr is None:
            int_pos, ints, str_pos, strs = _split_mixed(values)
            out = np.zeros(len(values), dtype=np.int64)
            out[int_pos] = self.encode(ints)
            out[str_pos] = self.encode(pa.array(strs, pa.large_string()))
            return out
        kind = key_kind(arr)
        if kind == "int" and len(self._ints):
            valid = None
            if arr.null_count:
                valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
                arr = pc.fill_null(arr, 0)
            vals = arr.to_numpy()
            pos = np.searchsorted(self._ints, vals)
            hit = self._ints[np.minimum(pos, len(self._ints) - 1)] == vals
            if valid is not None:
                hit &= valid
            return np.where(hit, pos + 1, 0).astype(np.int64)
        if kind == "str" and len(self._strs):
            idx = pc.fill_null(pc.index_in(arr, value_set=self._strs), -1)
            idx = idx.to_numpy(zero_copy_only=False).astype(np.int64)
            return np.where(idx >= 0, idx + 1 + len(self._ints), 0)
        return np.zeros(len(arr), dtype=np.int64)

    def to_json(self) -> dict[str, Any]:
        """{"values": [...]} in index order; JSON keeps ints as numbers and strings quoted."""
        return {"values": self.values()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Vocabulary:
        """Inverse of `to_json`; ValueError if the list is not in the order `fit` produces."""
        values = d["values"]
        if not isinstance(values, list):
            raise ValueError("'values' must be a list")
        n_int = 0
        while n_int < len(values) and _is_int(values[n_int]):
            n_int += 1
        ints, strs = values[:n_int], values[n_int:]
        if not all(isinstance(v, str) for v in strs):
            raise ValueError("values must be integers followed by strings")
        ints_np = np.asarray(ints, dtype=np.int64)
        strs_pa = pa.array(strs, pa.large_string())
        if np.any(np.diff(ints_np) <= 0) or not _strictly_sorted(strs_pa):
            raise ValueError("values are not sorted and unique")
        return cls(ints_np, strs_pa)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _sorted_unique(arr: pa.Array) -> pa.Array:
    uniq = pc.unique(arr.drop_null())
    return uniq.take(pc.array_sort_indices(uniq))


def _strictly_sorted(arr: pa.Array) -> bool:
    if len(arr) < 2:
        return True
    return bool(pc.all(pc.less(arr[:-1], arr[1:])).as_py())


@dataclass(frozen=True)
class NumericStats:
    """The standardization of one numeric column: (value - mean) / std.

    Fit on the non-missing values of the users or items table (each entity once, whatever its
    number of interactions); a column without spread gets std 1, so it standardizes to 0.
    """

    mean: float
    std: float

    @classmethod
    def fit(cls, values: np.ndarray) -> NumericStats:
        """Statistics of the non-NaN values of `values` (float64); 0 and 1 when there are none."""
        present = values[~np.isnan(values)]
        if len(present) == 0:
            return cls(0.0, 1.0)
        mean, std = float(present.mean()), float(present.std())
        return cls(mean, std if std > 0 and math.isfinite(std) else 1.0)

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NumericStats:
        mean, std = float(d["mean"]), float(d["std"])
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"bad standardization statistics {d!r}")
        return cls(mean, std)


@dataclass
class Encoders:
    """Every vocabulary of a data set, saved with a run so resume and inference reuse them.

    Column order of the categorical dicts is the feature-column order of
    `TaskData.user_features` / `item_features` (after the id column); the numeric columns'
    standardization statistics and the multi-valued columns' vocabularies are in the same
    order as the dense and multi inputs of `recjobs.data.features.Features`.
    """

    user_id: Vocabulary
    item_id: Vocabulary
    user_cats: dict[str, Vocabulary] = field(default_factory=dict)
    item_cats: dict[str, Vocabulary] = field(default_factory=dict)
    user_nums: dict[str, NumericStats] = field(default_factory=dict)
    item_nums: dict[str, NumericStats] = field(default_factory=dict)
    user_multis: dict[str, Vocabulary] = field(default_factory=dict)
    item_multis: dict[str, Vocabulary] = field(default_factory=dict)

    FORMAT = "recjobs.encoders"
    # Version 2 adds the numeric and multi-valued columns; a file without them is still
    # written as version 1, so runs without those features read as before.
    VERSION = 2

    def feature_widths(self) -> dict[str, Any]:
        """The model's inputs beyond the categorical columns, as `build_model`'s keywords:
        dense widths (a standardized value and a missing indicator per numeric column) and
        the vocabulary size of each multi-valued column."""
        return {
            "user_dense": 2 * len(self.user_nums),
            "item_dense": 2 * len(self.item_nums),
            "user_multi": [len(v) for v in self.user_multis.values()],
            "item_multi": [len(v) for v in self.item_multis.values()],
        }

    def user_cardinalities(self) -> list[int]:
        """Embedding-table size per user feature column (id first), OOV included."""
        return [len(self.user_id), *(len(v) for v in self.user_cats.values())]

    def item_cardinalities(self) -> list[int]:
        return [len(self.item_id), *(len(v) for v in self.item_cats.values())]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": self.FORMAT,
            "version": 1,
            "user_id": self.user_id.to_json(),
            "item_id": self.item_id.to_json(),
            "user_cats": {c: v.to_json() for c, v in self.user_cats.items()},
            "item_cats": {c: v.to_json() for c, v in self.item_cats.items()},
        }
        if self.user_nums or self.item_nums or self.user_multis or self.item_multis:
            d["version"] = self.VERSION
            for key in ("user_nums", "item_nums", "user_multis", "item_multis"):
                d[key] = {c: v.to_json() for c, v in getattr(self, key).items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Encoders:
        """Inverse of `to_json`; ValueError naming the problem for anything else."""
        if not isinstance(d, dict) or d.get("format") != cls.FORMAT:
            raise ValueError("not a recjobs encoders file")
        if d.get("version") not in (1, cls.VERSION):
            raise ValueError(f"unsupported encoders version {d.get('version')!r}")
        try:
            return cls(
                user_id=Vocabulary.from_json(d["user_id"]),
                item_id=Vocabulary.from_json(d["item_id"]),
                user_cats={c: Vocabulary.from_json(v) for c, v in d["user_cats"].items()},
                item_cats={c: Vocabulary.from_json(v) for c, v in d["item_cats"].items()},
                user_nums={c: NumericStats.from_json(v) for c, v in d.get("user_nums", {}).items()},
                item_nums={c: NumericStats.from_json(v) for c, v in d.get("item_nums", {}).items()},
                user_multis={
                    c: Vocabulary.from_json(v) for c, v in d.get("user_multis", {}).items()
                },
                item_multis={
                    c: Vocabulary.from_json(v) for c, v in d.get("item_multis", {}).items()
                },
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed encoders: {exc!r}") from exc

    def save(self, path: str) -> None:
        """Write JSON atomically (temp file + os.replace); fsspec URLs are written directly."""
        text = json.dumps(self.to_json(), separators=(",", ":"))
        fs, fs_path = _filesystem(path)
        if fs is not None:
            with fs.open(fs_path, "w", encoding="utf-8") as f:
                f.write(text)
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        _write_text(text, path)

    @classmethod
    def load(cls, path: str) -> Encoders:
        """Read a file written by `save`; CheckpointError if it is missing or corrupt.

        CheckpointError rather than DataError: the encoders are an artifact of a run, found in
        its model directory, not part of the user's input data.
        """
        fs, fs_path = _filesystem(path)
        if fs is None:
            require_regular(path, CheckpointError)
        try:
            if fs is None:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            else:
                with fs.open(fs_path, "r", encoding="utf-8") as f:
                    text = f.read()
        except FileNotFoundError as exc:
            raise CheckpointError(path, "encoders file not found") from exc
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError; [[[...]]] nested deep
            raise CheckpointError(path, f"corrupt encoders file: {_first_line(exc)}") from exc
