"""Property: whatever the four tables hold, loading them gives the data or one error line.

Random schemas and values for each table (column types, nulls, NaN and infinities, bytes that
are not UTF-8, nested types, empty and duplicated rows, CSV in other encodings) go through the
real loader. It answers with `TaskData`, whose only losses are the documented drops of
interactions with an unknown user or item (counted in one warning per table), or with one
`DataError` line naming the file; nothing else.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data import make_cfg, tiny_tables

from recjobs.data import load_task_data
from recjobs.errors import DataError

ROLES = ("users", "items", "interactions_train", "interactions_val")
COLUMNS = {
    "users": ("user_id", "user_group"),
    "items": ("item_id", "category"),
    "interactions_train": ("user_id", "item_id", "timestamp", "rating"),
    "interactions_val": ("user_id", "item_id", "timestamp", "rating"),
}
DROPPED = re.compile(r"dropped (\d+) of (\d+) (training|validation) interactions")

KINDS = [
    "int",
    "float",
    "float_nan",
    "float_inf",
    "string",
    "bool",
    "null",
    "list",
    "struct",
    "binary",
    "not_utf8",
    "timestamp",
    "dictionary",
    "decimal",
]


@st.composite
def columns(draw, n: int) -> pa.Array:
    """A column of `n` values of a random type, with random nulls and repeats."""
    kind = draw(st.sampled_from(KINDS))
    ints = draw(st.lists(st.integers(-3, 1000), min_size=n, max_size=n))
    nulls = draw(st.lists(st.booleans(), min_size=n, max_size=n)) if draw(st.booleans()) else []
    mask = np.array(nulls or [False] * n, dtype=bool)
    if kind in ("float", "float_nan", "float_inf"):
        special = {"float": 0.5, "float_nan": math.nan, "float_inf": -math.inf}[kind]
        values = [float(i) if i % 3 else special for i in ints]
        return pa.array(values, pa.float64(), mask=mask)
    builders = {
        "int": lambda: pa.array(ints, pa.int64(), mask=mask),
        "string": lambda: pa.array([f"v{i % 7}" for i in ints], mask=mask),
        "bool": lambda: pa.array([i % 2 == 0 for i in ints], mask=mask),
        "null": lambda: pa.nulls(n),
        "list": lambda: pa.array([[i] for i in ints]),
        "struct": lambda: pa.array([{"a": i} for i in ints]),
        "binary": lambda: pa.array([str(i).encode() for i in ints], pa.binary()),
        "not_utf8": lambda: pa.array([b"\xff\xfe" + bytes([i % 256]) for i in ints]),
        "timestamp": lambda: pa.array(ints, pa.int64()).cast(pa.timestamp("s")),
        "dictionary": lambda: pa.array([f"d{i % 3}" for i in ints]).dictionary_encode(),
        "decimal": lambda: pa.array([str(i) for i in ints]).cast(pa.decimal128(10, 2)),
    }
    return builders[kind]()


@st.composite
def tables(draw) -> dict[str, pa.Table]:
    """The tiny valid data set with a few of its tables damaged at random."""
    out = dict(tiny_tables())
    for role in draw(st.lists(st.sampled_from(ROLES), max_size=3, unique=True)):
        table = out[role]
        how = draw(st.sampled_from(["column", "empty", "duplicate", "shuffle"]))
        if how == "empty":
            out[role] = table.slice(0, 0)
        elif how == "duplicate":
            out[role] = pa.concat_tables([table, table])
        elif how == "shuffle":
            out[role] = table.take(draw(st.permutations(range(table.num_rows))))
        else:
            name = draw(st.sampled_from(COLUMNS[role]))
            index = table.schema.get_field_index(name)
            out[role] = table.set_column(index, name, draw(columns(table.num_rows)))
    return out


def write(tables: dict[str, pa.Table], directory: Path, fmt: str, encoding: str) -> dict:
    paths = {}
    for role, table in tables.items():
        path = directory / f"{role}.{fmt}"
        if fmt == "parquet":
            pq.write_table(table, path)
        else:
            try:
                pacsv.write_csv(table, path)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                pq.write_table(table, path := path.with_suffix(".parquet"))  # no CSV for nested
            else:
                if encoding != "utf-8":  # the same text in another encoding
                    text = path.read_bytes().decode("utf-8", "surrogateescape")
                    path.write_bytes(text.encode(encoding, "surrogateescape"))
        paths[role] = str(path)
    return paths


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=tables(),
    fmt=st.sampled_from(["parquet", "csv"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]),
)
def test_any_tables_load_or_give_one_error_line(tmp_path_factory, caplog, data, fmt, encoding):
    paths = write(data, tmp_path_factory.mktemp("tables"), fmt, encoding)
    cfg = make_cfg(paths, task="ranking", label_col="rating")
    caplog.clear()
    try:
        loaded = load_task_data(cfg)
    except DataError as exc:
        line = exc.line()
        assert "\n" not in line and line.startswith("error: "), line
        assert any(line.startswith(f"error: {p}") for p in paths.values()) or line.startswith(
            "error: interactions_"
        ), line
        return
    dropped = {"training": 0, "validation": 0}
    for record in caplog.records:
        found = DROPPED.search(record.getMessage())
        if found:
            dropped[found.group(3)] += int(found.group(1))
    # What the loader returns is every row of the table but the counted drops.
    n_train, n_val = data["interactions_train"].num_rows, data["interactions_val"].num_rows
    assert len(loaded.train_users) == n_train - dropped["training"]
    assert len(loaded.val_users) == n_val - dropped["validation"]
    assert bool((loaded.train_users > 0).all()) and bool((loaded.train_items > 0).all())
    for labels in (loaded.train_labels, loaded.val_labels):
        assert labels is not None and bool(labels.isfinite().all())
