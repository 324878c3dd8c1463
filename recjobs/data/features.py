"""One side's (users' or items') feature rows, and the numeric and multi-valued columns in them.

A `Features` holds, for every vocabulary index (row 0: the OOV entity, all zeros):
- `cat`: int64 [n, 1 + C], the id's index and one encoded column per categorical column;
- `dense`: float32 [n, 2 * N] or None, each numeric column standardized (missing: 0) and then
  one 0/1 missing indicator per numeric column;
- `multi`: one int64 [n, L] matrix per multi-valued column, the list's vocabulary indices
  padded with 0 to the longest list (L); 0 is also what values the vocabulary does not know
  encode to, so they are left out of the bag like the padding.

A batch is the rows of a batch (`features[idx]`), gathered on the training device like the
categorical matrix alone was: a few index gathers, no per-example Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from recjobs.data.tables import NumericStats, Vocabulary, as_key_array
from recjobs.errors import DataError


@dataclass(frozen=True)
class Features:
    """The feature rows of one side; see the module docstring."""

    cat: Tensor
    dense: Tensor | None = None
    multi: tuple[Tensor, ...] = ()

    def __len__(self) -> int:
        return self.cat.shape[0]

    def __getitem__(self, idx: Tensor | slice | int) -> Features:
        return Features(
            self.cat[idx],
            None if self.dense is None else self.dense[idx],
            tuple(m[idx] for m in self.multi),
        )

    def to(self, device: torch.device | str) -> Features:
        return Features(
            self.cat.to(device),
            None if self.dense is None else self.dense.to(device),
            tuple(m.to(device) for m in self.multi),
        )

    def cpu(self) -> Features:
        return self.to("cpu")


# ----------------------------------------------------------------------------- numeric columns


def is_numeric_type(t: pa.DataType) -> bool:
    """Integers, floats, booleans and decimals: what reads as float64 without a parse."""
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
    )


def numeric_column(table: pa.Table, col: str, source: str) -> np.ndarray:
    """Column `col` as float64, missing values (null, NaN) as NaN.

    DataError naming file and column for a non-numeric column or an infinite value: an
    infinity cannot be standardized, and replacing it would hide a broken export.
    """
    where = f"{source}: column '{col}'"
    column = table.column(col)
    t = column.type
    numeric = is_numeric_type(t) or pa.types.is_null(t)
    if not numeric:
        raise DataError(
            where,
            f"expected a numeric column, got {t}",
            hint="a numeric feature (columns.*_num_cols) holds numbers; text or categories "
            "belong in *_cat_cols",
        )
    try:
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(where, f"values do not fit a float64: {exc}") from None
    n_inf = int(np.isinf(values).sum())
    if n_inf:
        raise DataError(
            where,
            f"{n_inf} of {len(values)} values are infinite",
            hint="a numeric feature needs finite numbers; leave a value empty (null) for "
            "missing, which the model sees through its missing indicator",
        )
    return values


def dense_matrix(
    columns: dict[str, np.ndarray],
    stats: dict[str, NumericStats],
    rows: np.ndarray,
    n: int,
) -> np.ndarray:
    """float32 [n, 2 * N]: standardized values (missing: 0), then the missing indicators.

    `columns[c][k]` belongs to vocabulary row `rows[k]` (0: unknown, skipped); rows no table
    row fills (OOV, or an entity the saved encoders know but the table lacks) stay all 0.
    """
    width = len(stats)
    out = np.zeros((n, 2 * width), dtype=np.float32)
    known = rows > 0
    for j, (col, st) in enumerate(stats.items()):
        values = columns[col][known]
        missing = np.isnan(values)
        standardized = np.where(missing, 0.0, (np.nan_to_num(values) - st.mean) / st.std)
        out[rows[known], j] = standardized
        out[rows[known], width + j] = missing
    return out


# ------------------------------------------------------------------------ multi-valued columns


def list_column(table: pa.Table, col: str, source: str, delimiter: str) -> pa.ListArray:
    """Column `col` as a list array of int64 or string values; null lists are empty.

    Parquet list<...> columns as they are; a string column (CSV) is split on `delimiter`, the
    values trimmed, empty ones dropped, and read as integers when every value is one (as the
    CSV reader reads a plain integer column); any other scalar column is a one-value list.
    """
    where = f"{source}: column '{col}'"
    column = table.column(col)
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    t = column.type
    if pa.types.is_dictionary(t):
        column, t = column.dictionary_decode(), t.value_type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lists = column.cast(pa.large_list(t.value_type))
        values = lists.flatten()
        if pa.types.is_nested(values.type):
            raise DataError(where, f"expected a list of integers or strings, got {t}")
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        split = pc.split_pattern(pc.fill_null(column.cast(pa.large_string()), ""), delimiter)
        trimmed = pc.utf8_trim_whitespace(split.flatten())
        lengths = pc.list_value_length(split).to_numpy(zero_copy_only=False)
        keep = pc.not_equal(trimmed, "").to_numpy(zero_copy_only=False)
        owner = np.repeat(np.arange(len(column)), lengths)[keep]
        values = trimmed.filter(pa.array(keep))
        try:
            values = values.cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        offsets = np.zeros(len(column) + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=len(column)), out=offsets[1:])
        return pa.LargeListArray.from_arrays(pa.array(offsets), values)
    elif pa.types.is_nested(t):
        raise DataError(where, f"expected a list of integers or strings, got {t}")
    else:  # one value per row (an int column of a CSV whose lists all have one value)
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        offsets = np.zeros(len(column) + 1, dtype=np.int64)
        np.cumsum(valid, out=offsets[1:])
        return pa.LargeListArray.from_arrays(pa.array(offsets), column.filter(pa.array(valid)))
    if lists.null_count:
        lists = pc.if_else(pc.is_null(lists), pa.scalar([], lists.type), lists)
    return lists


def list_values(lists: pa.ListArray, where: str) -> pa.Array:
    """The values of all lists as int64 or strings (for fitting and encoding vocabularies)."""
    try:
        values = as_key_array(lists.flatten())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise DataError(
            where, f"expected list values that are integers or strings: {exc}"
        ) from None
    assert values is not None
    if pa.types.is_nested(values.type):
        raise DataError(
            where, f"expected list values that are integers or strings, got {values.type}"
        )
    return values


def multi_matrix(
    vocab: Vocabulary, lists: pa.ListArray, rows: np.ndarray, n: int, where: str
) -> np.ndarray:
    """int64 [n, L]: row `rows[k]` holds the encoded values of list k, padded with 0.

    L is the longest list's length (at least 1, so an all-empty column still has a shape).
    """
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    codes = vocab.encode(list_values(lists, where))
    known = rows > 0
    width = max(1, int(lengths[known].max())) if known.any() else 1
    out = np.zeros((n, width), dtype=np.int64)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
    position = np.arange(len(codes)) - np.repeat(starts, lengths)
    keep = known[owner]
    out[rows[owner[keep]], position[keep]] = codes[keep]
    return out
