"""Tests of recjobs.data: tables, vocabularies, loading, batching, synthetic and MovieLens data."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recjobs.config.resolver import Overrides, resolve, resolve_dict
from recjobs.config.schema import (
    ColumnsConfig,
    DataPaths,
    DatasetConfig,
    ResolvedConfig,
    SharedConfig,
    SynthSize,
    TaskConfig,
)
from recjobs.data import (
    Encoders,
    TaskData,
    Vocabulary,
    convert_movielens,
    epoch_batches,
    generate_tables,
    load_task_data,
    read_table,
    steps_per_epoch,
    write_dataset,
)
from recjobs.errors import CheckpointError, ConfigError, DataError

ROLES = ("users", "items", "interactions_train", "interactions_val")
TENSOR_FIELDS = (
    "train_users",
    "train_items",
    "train_labels",
    "val_users",
    "val_items",
    "val_labels",
    "item_counts",
)


def make_cfg(paths: dict[str, str] | None, *, task: str = "retrieval", **columns) -> ResolvedConfig:
    dataset = DatasetConfig(paths=DataPaths(**paths)) if paths else DatasetConfig()
    return ResolvedConfig(
        task=task,
        dataset=dataset,
        shared=SharedConfig(),
        section=TaskConfig(columns=ColumnsConfig(**columns)),
    )


def write_tables(tables: dict[str, pa.Table], directory, ext: str = ".parquet") -> dict[str, str]:
    """Write each table as parquet or CSV/TSV; return role -> path."""
    paths = {}
    for role, table in tables.items():
        path = str(directory / f"{role}{ext}")
        if ext in (".parquet", ".pq"):
            pq.write_table(table, path)
        else:
            delimiter = "\t" if ext.startswith(".tsv") else ","
            with (
                pa.CompressedOutputStream(path, "gzip")
                if ext.endswith(".gz")
                else open(path, "wb") as out
            ):
                pacsv.write_csv(table, out, pacsv.WriteOptions(delimiter=delimiter))
        paths[role] = path
    return paths


def tiny_tables(**overrides: pa.Table) -> dict[str, pa.Table]:
    """3 users (string ids), 3 items (int ids), hand-written interactions."""
    tables = {
        "users": pa.table(
            {
                "user_id": ["u3", "u1", "u2"],
                "user_group": ["a", "b", None],
                "region": ["x", "x", "y"],
                "age_group": ["18-24", "25-34", "18-24"],
            }
        ),
        "items": pa.table(
            {
                "item_id": [30, 10, 20],
                "category": ["c1", "c2", "c1"],
                "price_band": ["low", "low", "high"],
                "style": ["s", "t", "s"],
            }
        ),
        "interactions_train": pa.table(
            {
                "user_id": ["u1", "u2", "u3", "u1"],
                "item_id": [10, 20, 30, 30],
                "timestamp": [1, 2, 3, 4],
                "rating": [5.0, 3.0, 1.0, 4.0],
            }
        ),
        "interactions_val": pa.table(
            {
                "user_id": ["u2", "u3"],
                "item_id": [10, 20],
                "timestamp": [5, 6],
                "rating": [2.0, 4.0],
            }
        ),
    }
    tables.update(overrides)
    return tables


@pytest.fixture(scope="module")
def synth_tables() -> dict[str, pa.Table]:
    return generate_tables(users=300, items=80, interactions=6000, seed=7)


# --------------------------------------------------------------------------------------------
# Vocabulary and Encoders


def test_vocabulary_int_ids():
    vocab = Vocabulary.fit(np.array([30, 10, 20, 10]))
    assert len(vocab) == 4  # 3 values + OOV
    assert vocab.kind == "int"
    assert vocab.encode(np.array([10, 20, 30, 99])).tolist() == [1, 2, 3, 0]
    assert vocab.encode(pa.array([30, None], pa.int32())).tolist() == [3, 0]
    assert vocab.encode(["10", "20"]).tolist() == [0, 0]  # strings are other values
    assert vocab.encode(np.array([10, 20])).dtype == np.int64
    restored = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
    assert restored.to_json() == {"values": [10, 20, 30]}
    assert restored == vocab
    assert restored.decode([0, 3]) == [None, 30]


def test_vocabulary_str_ids_nulls_and_chunks():
    vocab = Vocabulary.fit(pa.chunked_array([["b", "a"], [None, "c", "a"]]))
    assert vocab.values() == ["a", "b", "c"]
    assert vocab.encode(["a", "c", "zz", None]).tolist() == [1, 3, 0, 0]
    assert vocab.encode(pa.array(["b", "a"]).dictionary_encode()).tolist() == [2, 1]
    assert vocab.encode(np.array(["c"])).tolist() == [3]
    assert vocab.encode([1, 2]).tolist() == [0, 0]
    assert Vocabulary.from_json(json.loads(json.dumps(vocab.to_json()))) == vocab


def test_vocabulary_mixed_ints_and_strings_stay_distinct():
    vocab = Vocabulary.fit([2, "1", 1, "b"])
    assert vocab.values() == [1, 2, "1", "b"]  # ints first, then strings, each sorted
    assert vocab.encode(["1", 1, 2, "b", "2"]).tolist() == [3, 1, 2, 4, 0]
    restored = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
    assert restored.values() == [1, 2, "1", "b"]
    assert isinstance(restored.values()[0], int)


def test_vocabulary_whole_floats_are_ints_and_nan_is_null():
    vocab = Vocabulary.fit(np.array([3.0, np.nan, 1.0]))
    assert vocab.values() == [1, 3]
    assert vocab.encode(np.array([1, 3, 2])).tolist() == [1, 2, 0]


def test_vocabulary_empty_and_bad_json():
    empty = Vocabulary.fit(pa.array([None, None], pa.string()))
    assert len(empty) == 1
    assert empty.encode(["a"]).tolist() == [0]
    with pytest.raises(ValueError, match="not sorted"):
        Vocabulary.from_json({"values": [2, 1]})
    with pytest.raises(ValueError, match="integers followed by strings"):
        Vocabulary.from_json({"values": ["a", 1]})


def test_vocabulary_encode_large():
    ids = np.char.add("user", np.arange(200_000).astype(str))
    vocab = Vocabulary.fit(pa.array(ids))
    queries = pa.array(np.repeat(ids, 5))  # 1M lookups
    encoded = vocab.encode(queries)
    assert encoded.min() >= 1 and len(np.unique(encoded)) == 200_000
    assert (encoded[::5] == encoded[4::5]).all()


def test_encoders_save_load_roundtrip(tmp_path):
    encoders = Encoders(
        user_id=Vocabulary.fit(["u2", "u1"]),
        item_id=Vocabulary.fit([7, 3]),
        user_cats={"region": Vocabulary.fit(["x", "y"]), "age": Vocabulary.fit([18, 25])},
        item_cats={"category": Vocabulary.fit(["c"])},
    )
    path = tmp_path / "model" / "encoders.json"
    encoders.save(str(path))
    assert os.listdir(tmp_path / "model") == ["encoders.json"]  # no temp file left
    loaded = Encoders.load(str(path))
    assert loaded == encoders
    assert list(loaded.user_cats) == ["region", "age"]  # column order kept
    assert loaded.user_cats["age"].values() == [18, 25]
    assert loaded.user_cardinalities() == [3, 3, 3]
    assert loaded.item_cardinalities() == [3, 2]

    with pytest.raises(CheckpointError) as exc:
        Encoders.load(str(tmp_path / "nope.json"))
    assert exc.value.line() == f"error: {tmp_path / 'nope.json'}: encoders file not found"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt encoders file"):
        Encoders.load(str(tmp_path / "bad.json"))


# --------------------------------------------------------------------------------------------
# load_task_data


def assert_same_task_data(a: TaskData, b: TaskData) -> None:
    for side in ("user_features", "item_features"):
        x, y = getattr(a, side), getattr(b, side)
        assert torch.equal(x.cat, y.cat), side
        assert (x.dense is None) == (y.dense is None), side
        if x.dense is not None:
            assert torch.equal(x.dense, y.dense), side
        assert len(x.multi) == len(y.multi), side
        assert all(torch.equal(p, q) for p, q in zip(x.multi, y.multi, strict=True)), side
    for name in TENSOR_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
        else:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.user_cardinalities == b.user_cardinalities
    assert a.item_cardinalities == b.item_cardinalities
    assert a.encoders == b.encoders


@pytest.mark.parametrize("ext", [".csv", ".csv.gz", ".tsv", ".pq"])
def test_parquet_and_csv_load_identically(tmp_path, synth_tables, ext):
    (tmp_path / "pq").mkdir()
    (tmp_path / "other").mkdir()
    pq_paths = write_tables(synth_tables, tmp_path / "pq")
    other_paths = write_tables(synth_tables, tmp_path / "other", ext)
    cols = {"task": "ranking", "label_col": "rating"}
    a = load_task_data(make_cfg(pq_paths, **cols))
    b = load_task_data(make_cfg(other_paths, **cols))
    assert_same_task_data(a, b)


def test_task_data_shapes_and_values(tmp_path, synth_tables):
    data = load_task_data(make_cfg(write_tables(synth_tables, tmp_path)))
    assert data.n_users == 300 and data.n_items == 80
    assert data.user_features.cat.shape == (301, 4) and data.user_features.cat.dtype == torch.int64
    assert data.item_features.cat.shape == (81, 4)
    assert data.user_features.cat[0].tolist() == [0, 0, 0, 0]
    assert data.item_features.cat[0].tolist() == [0, 0, 0, 0]
    assert data.user_features.cat[:, 0].tolist() == list(range(301))
    # 8 observed groups, 5 regions, 5 age groups; 12 categories, 4 price bands, 6 styles.
    assert data.user_cardinalities == [301, 9, 6, 6]
    assert data.item_cardinalities == [81, 13, 5, 7]
    for col, card in enumerate(data.user_cardinalities):
        assert int(data.user_features.cat[1:, col].min()) >= 1
        assert int(data.user_features.cat[:, col].max()) == card - 1
    n_train = synth_tables["interactions_train"].num_rows
    n_val = synth_tables["interactions_val"].num_rows
    assert data.train_users.shape == data.train_items.shape == (n_train,)
    assert data.val_users.shape == (n_val,)
    assert data.train_labels is None and data.val_labels is None  # retrieval: no label_col
    assert data.item_counts.shape == (81,) and int(data.item_counts[0]) == 0
    assert int(data.item_counts.sum()) == n_train
    assert torch.equal(data.item_counts, torch.bincount(data.train_items, minlength=81))

    # Indices map back to the raw ids, and feature rows to that entity's own categories.
    raw_users = synth_tables["interactions_train"].column("user_id").to_pylist()
    assert data.encoders.user_id.decode(data.train_users.numpy()) == raw_users
    users = synth_tables["users"].to_pylist()
    for row in users[:20]:
        idx = int(data.encoders.user_id.encode([row["user_id"]])[0])
        group = int(data.encoders.user_cats["user_group"].encode([row["user_group"]])[0])
        region = int(data.encoders.user_cats["region"].encode([row["region"]])[0])
        assert data.user_features.cat[idx, 1:3].tolist() == [group, region]


def test_ranking_labels(tmp_path, synth_tables):
    data = load_task_data(make_cfg(write_tables(synth_tables, tmp_path), label_col="rating"))
    assert data.train_labels.dtype == torch.float32
    expected = synth_tables["interactions_train"].column("rating").to_numpy()
    assert data.train_labels.numpy().tolist() == expected.astype(np.float32).tolist()
    assert set(data.val_labels.unique().tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_synthetic_when_paths_null(tmp_path):
    cfg = ResolvedConfig(
        task="retrieval",
        dataset=DatasetConfig(synth=SynthSize(users=100, items=40, interactions=2000)),
        shared=SharedConfig(seed=5),
        section=TaskConfig(),
    )
    in_memory = load_task_data(cfg)
    from_files = load_task_data(
        make_cfg(write_tables(generate_tables(100, 40, 2000, seed=5), tmp_path))
    )
    assert_same_task_data(in_memory, from_files)
    assert not list(tmp_path.glob("*.yaml"))


def test_synthetic_with_unknown_column_is_a_data_error():
    cfg = ResolvedConfig(
        task="retrieval",
        dataset=DatasetConfig(synth=SynthSize(users=50, items=20, interactions=500)),
        shared=SharedConfig(),
        section=TaskConfig(columns=ColumnsConfig(user_cat_cols=("country",))),
    )
    with pytest.raises(DataError, match="synthetic data set \\(users\\): column 'country'"):
        load_task_data(cfg)


def test_tiny_tables_exact_encoding(tmp_path):
    data = load_task_data(make_cfg(write_tables(tiny_tables(), tmp_path), label_col="rating"))
    # users sorted u1, u2, u3 -> 1, 2, 3; items 10, 20, 30 -> 1, 2, 3
    assert data.train_users.tolist() == [1, 2, 3, 1]
    assert data.train_items.tolist() == [1, 2, 3, 3]
    assert data.train_labels.tolist() == [5.0, 3.0, 1.0, 4.0]
    assert data.val_users.tolist() == [2, 3] and data.val_items.tolist() == [1, 2]
    assert data.item_counts.tolist() == [0, 1, 1, 2]
    # user_group: a -> 1, b -> 2, null -> 0 (OOV); u1 has b, u2 null, u3 a.
    assert data.user_features.cat[:, 1].tolist() == [0, 2, 0, 1]
    assert data.user_cardinalities == [4, 3, 3, 3]


def test_resume_with_given_encoders(tmp_path, caplog):
    first = load_task_data(make_cfg(write_tables(tiny_tables(), tmp_path)))
    users = pa.table(
        {
            "user_id": ["u1", "u9", "u3"],  # u2 gone, u9 new
            "user_group": ["a", "a", "z"],  # b no longer present; z unseen
            "region": ["x", "y", "y"],
            "age_group": ["18-24", "18-24", "18-24"],
        }
    )
    (tmp_path / "v2").mkdir()
    paths = write_tables(tiny_tables(users=users), tmp_path / "v2")
    with caplog.at_level(logging.WARNING, logger="recjobs.data.dataset"):
        second = load_task_data(make_cfg(paths), encoders=first.encoders)
    assert second.encoders is first.encoders
    assert second.user_cardinalities == first.user_cardinalities  # sized by the encoders
    assert second.user_features.cat.shape == first.user_features.cat.shape
    assert second.user_features.cat[:, 1].tolist() == [0, 1, 0, 0]  # u1 a, u2 absent, u3 unseen z
    assert "1 of 3 ids are not in the saved encoders" in caplog.text
    # u2 is still in the saved vocabulary, so its interactions keep index 2.
    assert second.train_users.tolist() == [1, 2, 3, 1]

    with pytest.raises(CheckpointError, match="differ from the config"):
        load_task_data(make_cfg(paths, user_cat_cols=("region",)), encoders=first.encoders)


def test_unknown_interactions_dropped_with_one_warning(tmp_path, caplog):
    train = pa.table(
        {
            "user_id": ["u1", "u2", "ghost", "u3", "ghost"],
            "item_id": [10, 99, 10, 30, 99],
            "timestamp": [1, 2, 3, 4, 5],
        }
    )
    val = pa.table(
        {"user_id": ["u2", "nobody", "u1"], "item_id": [10, 20, 20], "timestamp": [6, 7, 8]}
    )
    paths = write_tables(
        tiny_tables(interactions_train=train, interactions_val=val), tmp_path, ".csv"
    )
    with caplog.at_level(logging.WARNING, logger="recjobs.data.dataset"):
        data = load_task_data(make_cfg(paths))
    assert data.train_users.tolist() == [1, 3] and data.train_items.tolist() == [1, 3]
    assert data.val_users.tolist() == [2, 1] and data.val_items.tolist() == [1, 2]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"{paths['interactions_train']}: dropped 3 of 5 training interactions whose user or "
        "item is not in the users/items tables (2 unknown users, 2 unknown items)",
        f"{paths['interactions_val']}: dropped 1 of 3 validation interactions whose user or "
        "item is not in the users/items tables (1 unknown users, 0 unknown items)",
    ]


# --------------------------------------------------------------------------------------------
# Data errors, with their exact messages


def load_error(tmp_path, tables=None, ext=".parquet", **columns) -> str:
    paths = write_tables(tables or tiny_tables(), tmp_path, ext)
    with pytest.raises(DataError) as exc:
        load_task_data(make_cfg(paths, **columns))
    return exc.value.line()


def test_error_no_usable_validation_rows(tmp_path):
    val = pa.table({"user_id": ["nobody"], "item_id": [10], "timestamp": [6]})
    line = load_error(tmp_path, tiny_tables(interactions_val=val))
    assert line.endswith(
        "interactions_val.parquet: no validation interactions (of 1 rows, none has a known user "
        "and item) (the validation table must share users and items with the catalogue)"
    )


def test_error_missing_file(tmp_path):
    paths = write_tables(tiny_tables(), tmp_path)
    paths["users"] = str(tmp_path / "nope.parquet")
    with pytest.raises(DataError) as exc:
        load_task_data(make_cfg(paths))
    assert exc.value.line() == (
        f"error: {tmp_path}/nope.parquet: file not found (check dataset.paths.users)"
    )


def test_error_missing_column(tmp_path):
    line = load_error(tmp_path, user_cat_cols=("region", "country"))
    assert line == (
        f"error: {tmp_path}/users.parquet: column 'country': no such column in the users "
        "table (columns present: user_id, user_group, region, age_group) "
        "(check the `columns:` section of the config)"
    )
    (tmp_path / "csv").mkdir()
    line = load_error(tmp_path / "csv", ext=".csv", interaction_item_col="movie")
    assert line.startswith(
        f"error: {tmp_path}/csv/interactions_train.csv: column 'movie': no such column in "
        "the interactions_train table (columns present: user_id, item_id, timestamp, rating)"
    )


def test_error_bad_extension():
    with pytest.raises(DataError) as exc:
        read_table("data/users.json", ["user_id"], role="users")
    assert exc.value.line() == (
        "error: data/users.json: unsupported file extension '.json' "
        "(supported: .parquet, .pq, .csv, .csv.gz, .tsv, .tsv.gz)"
    )


def test_error_unreadable_file(tmp_path):
    path = tmp_path / "users.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError) as exc:
        read_table(str(path), ["user_id"], role="users")
    assert exc.value.line().startswith(f"error: {path}: cannot read the users table as parquet: ")


def test_error_duplicate_ids(tmp_path):
    items = pa.table({"item_id": [1, 2, 2, 3, 3], "category": ["a"] * 5, "price_band": ["p"] * 5})
    items = items.append_column("style", pa.array(["s"] * 5))
    line = load_error(tmp_path, tiny_tables(items=items))
    assert line == (
        f"error: {tmp_path}/items.parquet: column 'item_id': duplicate id 2 "
        "(ids with duplicates: 2) (each item must have exactly one row)"
    )
    users = tiny_tables()["users"]
    users = pa.concat_tables([users, users.slice(1, 1)])
    (tmp_path / "u").mkdir()
    line = load_error(tmp_path / "u", tiny_tables(users=users), ext=".csv")
    assert line == (
        f"error: {tmp_path}/u/users.csv: column 'user_id': duplicate id 'u1' "
        "(ids with duplicates: 1) (each user must have exactly one row)"
    )


def test_error_null_ids(tmp_path):
    users = tiny_tables()["users"].set_column(0, "user_id", pa.array(["u1", None, "u3"]))
    line = load_error(tmp_path, tiny_tables(users=users))
    assert line == (
        f"error: {tmp_path}/users.parquet: column 'user_id': 1 null ids (every user needs an id)"
    )
    train = tiny_tables()["interactions_train"]
    train = train.set_column(1, "item_id", pa.array([10, None, float("nan"), 30]))
    (tmp_path / "t").mkdir()
    line = load_error(tmp_path / "t", tiny_tables(interactions_train=train))
    assert line == (
        f"error: {tmp_path}/t/interactions_train.parquet: column 'item_id': 2 null ids "
        "(every interaction needs a user and item)"
    )


def test_error_nan_label(tmp_path):
    val = tiny_tables()["interactions_val"]
    val = val.set_column(3, "rating", pa.array([float("nan"), None], pa.float64()))
    line = load_error(tmp_path, tiny_tables(interactions_val=val), label_col="rating")
    assert line == (
        f"error: {tmp_path}/interactions_val.parquet: column 'rating': 2 of 2 labels are "
        "null, NaN or infinite (drop or fill those rows)"
    )


def test_error_non_numeric_label(tmp_path):
    train = tiny_tables()["interactions_train"]
    train = train.set_column(3, "rating", pa.array(["good", "bad", "ok", "good"]))
    line = load_error(tmp_path, tiny_tables(interactions_train=train), label_col="rating")
    assert line == (
        f"error: {tmp_path}/interactions_train.parquet: column 'rating': "
        "expected a numeric column, got string"
    )


def test_error_empty_train(tmp_path):
    empty = tiny_tables()["interactions_train"].slice(0, 0)
    line = load_error(tmp_path, tiny_tables(interactions_train=empty))
    assert line == (
        f"error: {tmp_path}/interactions_train.parquet: no training interactions: "
        "the table has no rows"
    )
    unknown = pa.table({"user_id": ["x"], "item_id": [10], "timestamp": [1], "rating": [1.0]})
    (tmp_path / "u").mkdir()
    line = load_error(tmp_path / "u", tiny_tables(interactions_train=unknown))
    assert line.startswith(
        f"error: {tmp_path}/u/interactions_train.parquet: no training interactions left: "
        "none of the 1 rows has both its user and its item in the users and items tables"
    )


def test_error_id_type_mismatch(tmp_path):
    train = tiny_tables()["interactions_train"]
    train = train.set_column(0, "user_id", pa.array([1, 2, 3, 1]))
    line = load_error(tmp_path, tiny_tables(interactions_train=train))
    assert line == (
        f"error: {tmp_path}/interactions_train.parquet: column 'user_id': values are "
        f"integers but strings in {tmp_path}/users.parquet (use the same id type in all tables)"
    )


def test_error_missing_fsspec_backend():
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("s3fs is installed")
    with pytest.raises(DataError) as exc:
        read_table("s3://bucket/users.parquet", ["user_id"], role="users")
    assert exc.value.line() == (
        "error: s3://bucket/users.parquet: cannot open s3:// URLs: the filesystem package is "
        "not installed (pip install s3fs)"
    )


# --------------------------------------------------------------------------------------------
# fsspec URLs


def test_memory_url_reading():
    fs = fsspec.filesystem("memory")
    root = f"/recjobs-test-{uuid.uuid4().hex}"
    tables = tiny_tables()
    paths = {}
    try:
        for role, table in tables.items():
            ext = ".csv.gz" if role == "interactions_val" else ".parquet"
            url = f"memory://{root}/{role}{ext}"
            if ext == ".parquet":
                with fs.open(f"{root}/{role}{ext}", "wb") as f:
                    pq.write_table(table, f)
            else:
                with fsspec.open(url, "wb", compression="gzip") as f:
                    pacsv.write_csv(table, f)
            paths[role] = url
        users = read_table(paths["users"], ["region", "user_id"], role="users")
        assert users.column_names == ["region", "user_id"]
        assert users.column("user_id").to_pylist() == ["u3", "u1", "u2"]
        data = load_task_data(make_cfg(paths, label_col="rating"))
        assert data.train_users.tolist() == [1, 2, 3, 1]
        assert data.val_labels.tolist() == [2.0, 4.0]
        with pytest.raises(DataError, match="file not found"):
            read_table(f"memory://{root}/missing.csv", ["a"], role="users")
    finally:
        fs.rm(root, recursive=True)


# --------------------------------------------------------------------------------------------
# epoch_batches


def test_epoch_batches_take_the_common_length_of_each_ranks_own_shard():
    # Rank 0 holds 53 examples, rank 1 holds 51: both train on 51 per epoch.
    bs = 10
    shards = [
        epoch_batches(n, bs, epoch=3, seed=11, rank=r, world_size=2, length=51)
        for r, n in ((0, 53), (1, 51))
    ]
    assert [len(s) for s in shards] == [6, 6] == [steps_per_epoch(51, bs)] * 2
    assert [len(b) for b in shards[0]] == [10, 10, 10, 10, 10, 1]
    flat = [torch.cat(s) for s in shards]
    assert len(set(flat[0].tolist())) == 51 and set(flat[0].tolist()) <= set(range(53))
    assert sorted(flat[1].tolist()) == list(range(51))
    # Another epoch leaves out other examples of the larger shard; the ranks draw unrelated
    # orders (rank and world size are in the seed).
    later = torch.cat(epoch_batches(53, bs, epoch=4, seed=11, rank=0, world_size=2, length=51))
    assert set(later.tolist()) != set(flat[0].tolist())
    same_size = torch.cat(epoch_batches(51, bs, epoch=3, seed=11, rank=0, world_size=2))
    assert not torch.equal(same_size, flat[1])
    assert all(b.dtype == torch.int64 for b in shards[0])


def test_epoch_batches_at_world_one_keep_the_order_of_earlier_releases():
    # The permutation recjobs drew before shards (seeded by seed and epoch only): a world-1
    # config trains on the same order as before.
    state = np.random.SeedSequence([11, 3]).generate_state(1, np.uint64)
    seed = int(state[0]) & (2**63 - 1)
    expected = torch.randperm(103, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(torch.cat(epoch_batches(103, 10, epoch=3, seed=11)), expected)


def test_epoch_batches_deterministic_and_epoch_dependent():
    a = torch.cat(epoch_batches(1000, 64, epoch=0, seed=1))
    b = torch.cat(epoch_batches(1000, 64, epoch=0, seed=1))
    c = torch.cat(epoch_batches(1000, 64, epoch=1, seed=1))
    d = torch.cat(epoch_batches(1000, 64, epoch=0, seed=2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)
    assert sorted(c.tolist()) == list(range(1000))


def test_epoch_batches_errors():
    with pytest.raises(ValueError, match="at least one example per rank"):
        epoch_batches(0, 2, epoch=0, seed=0)
    with pytest.raises(ValueError, match="at least one example per rank"):
        steps_per_epoch(0, 2)
    with pytest.raises(ValueError, match="exceeds the shard"):
        epoch_batches(5, 2, epoch=0, seed=0, length=6)
    with pytest.raises(ValueError, match="rank must be in"):
        epoch_batches(10, 2, epoch=0, seed=0, rank=2, world_size=2)
    assert steps_per_epoch(100, 10) == 10 and steps_per_epoch(101, 10) == 11


# --------------------------------------------------------------------------------------------
# Synthetic data


def test_synth_deterministic_and_sized():
    a = generate_tables(200, 50, 4000, seed=3)
    b = generate_tables(200, 50, 4000, seed=3)
    c = generate_tables(200, 50, 4000, seed=4)
    assert all(a[k].equals(b[k]) for k in ROLES)
    assert not a["interactions_train"].equals(c["interactions_train"])
    assert a["users"].num_rows == 200 and a["items"].num_rows == 50
    n_train, n_val = a["interactions_train"].num_rows, a["interactions_val"].num_rows
    assert n_train + n_val == 4000
    assert 0.12 < n_val / 4000 < 0.18
    assert a["users"].schema.names == ["user_id", "user_group", "region", "age_group"]
    assert a["items"].schema.names == ["item_id", "category", "price_band", "style"]
    inter = a["interactions_train"].schema
    assert inter.names == ["user_id", "item_id", "timestamp", "rating"]
    assert [str(t) for t in inter.types] == ["int64", "int64", "int64", "double"]
    train_ts = a["interactions_train"].column("timestamp").to_numpy()
    val_ts = a["interactions_val"].column("timestamp").to_numpy()
    assert val_ts.min() >= train_ts.max()
    assert np.all(np.diff(train_ts) >= 0)
    ratings = a["interactions_train"].column("rating").to_numpy()
    assert ratings.min() >= 1 and ratings.max() <= 5
    # Every user interacts several times; every id is in the catalogue.
    all_users = np.concatenate([a[k].column("user_id").to_numpy() for k in ROLES[2:]])
    assert np.bincount(all_users - all_users.min()).min() >= 3
    assert set(all_users) <= set(a["users"].column("user_id").to_pylist())


def test_synth_has_learnable_structure():
    t = generate_tables(2000, 500, 60_000, seed=0)
    group = dict(
        zip(*(t["users"].column(c).to_pylist() for c in ("user_id", "user_group")), strict=True)
    )
    category = dict(
        zip(*(t["items"].column(c).to_pylist() for c in ("item_id", "category")), strict=True)
    )
    inter = t["interactions_train"]
    g = np.array([group[u] for u in inter.column("user_id").to_pylist()])
    c = np.array([category[i] for i in inter.column("item_id").to_pylist()])
    shares = []
    for name in np.unique(g):
        _, counts = np.unique(c[g == name], return_counts=True)
        shares.append(np.sort(counts)[::-1][:3].sum() / counts.sum())
    # Uniform over 12 categories would give 3/12 = 0.25 to any three.
    assert min(shares) > 0.55
    # Ratings are higher on a group's top categories.
    rating = inter.column("rating").to_numpy()
    top = np.zeros(len(g), dtype=bool)
    for name in np.unique(g):
        cats, counts = np.unique(c[g == name], return_counts=True)
        top |= (g == name) & np.isin(c, cats[np.argsort(counts)[::-1][:3]])
    assert rating[top].mean() > rating[~top].mean() + 0.5
    # Popularity is skewed: the top 10% of items get far more than 10% of interactions.
    counts = np.sort(np.bincount(inter.column("item_id").to_numpy()))[::-1]
    assert counts[:50].sum() / counts.sum() > 0.3


def test_write_dataset_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config_path = write_dataset("out/synth", users=50, items=20, interactions=600, seed=9)
    assert config_path == "out/synth/config.yaml"
    assert sorted(os.listdir("out/synth")) == [
        "config.yaml",
        "interactions_train.parquet",
        "interactions_val.parquet",
        "items.parquet",
        "users.parquet",
    ]
    config = yaml.safe_load(open(config_path))
    assert list(config) == ["dataset", "shared", "retrieval", "ranking"]
    assert config["dataset"] == {"name": "synth", "paths": {r: f"{r}.parquet" for r in ROLES}}
    assert config["shared"] == {"seed": 9}
    assert config["retrieval"]["columns"]["label_col"] is None
    assert config["ranking"]["columns"]["label_col"] == "rating"
    assert config["ranking"]["columns"]["item_cat_cols"] == ["category", "price_band", "style"]
    assert config["retrieval"]["training"]["loss_func"] == "cross_entropy"
    assert config["ranking"]["training"]["negatives_per_pos"] == 8
    assert config["ranking"]["model"]["scorer_hidden_dims"] == [128, 64]
    data = load_task_data(resolve("ranking", config_path))
    assert data.n_users == 50 and data.n_items == 20
    assert len(data.train_users) + len(data.val_users) == 600


# --------------------------------------------------------------------------------------------
# Dataset paths: a config file's relative paths are read from its folder


@pytest.fixture
def synth_dir(tmp_path, monkeypatch) -> str:
    """A data set written by `data synth` into tmp/a; the working directory is tmp."""
    monkeypatch.chdir(tmp_path)
    write_dataset("a", users=50, items=20, interactions=600, seed=9)
    return str(tmp_path)


def _paths(cfg: ResolvedConfig) -> dict[str, str]:
    return dataclasses.asdict(cfg.dataset.paths)


def test_a_copied_data_set_folder_trains_on_its_own_files(synth_dir):
    import shutil

    shutil.copytree("a", "b")
    # The copy differs from the original, so reading the original's files would show.
    pq.write_table(generate_tables(60, 20, 600, seed=1)["users"], "b/users.parquet")
    copy = resolve("retrieval", "b/config.yaml")
    assert _paths(copy) == {r: os.path.join(synth_dir, "b", f"{r}.parquet") for r in ROLES}
    assert copy.relative_paths == {r: f"{r}.parquet" for r in ROLES}
    assert load_task_data(copy).n_users == 60
    shutil.rmtree("a")  # nor does it need the original
    os.rename("b", "moved")
    assert load_task_data(resolve("retrieval", "moved/config.yaml")).n_users == 60


def test_relative_paths_from_a_file_its_folder_from_set_the_working_directory(synth_dir):
    os.mkdir("elsewhere")
    os.rename("a/users.parquet", "elsewhere/users.parquet")
    overrides = Overrides(sets=["dataset.paths.users=elsewhere/users.parquet"])
    cfg = resolve("retrieval", "a/config.yaml", overrides)
    assert _paths(cfg)["users"] == os.path.join(synth_dir, "elsewhere", "users.parquet")
    assert _paths(cfg)["items"] == os.path.join(synth_dir, "a", "items.parquet")
    assert load_task_data(cfg).n_users == 50
    # The resolved config (what a run saves, what a TorchX job gets) is absolute, and reads
    # the same again from anywhere.
    os.chdir("elsewhere")
    again = resolve_dict(json.loads(json.dumps(cfg.to_dict())), "retrieval")
    assert again.to_dict() == cfg.to_dict() and again.relative_paths == {}


def test_a_config_that_read_its_paths_from_the_working_directory_is_refused_not_changed(
    synth_dir,
):
    # Written before the rule: paths from the working directory (`data synth --out a` wrote
    # a/users.parquet). From the config's folder they name nothing; refused with both readings.
    config = yaml.safe_load(open("a/config.yaml"))
    config["dataset"]["paths"] = {r: f"a/{r}.parquet" for r in ROLES}
    open("a/config.yaml", "w").write(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ConfigError) as caught:
        resolve("retrieval", "a/config.yaml")
    assert caught.value.line() == (
        f"error: dataset.paths.users: 'a/users.parquet' in a/config.yaml is read from the config "
        f"file's folder: {synth_dir}/a/a/users.parquet, which does not exist; from the working "
        f"directory, as before, it is {synth_dir}/a/users.parquet (write users.parquet (from the "
        f"config's folder) or {synth_dir}/a/users.parquet)"
    )
    # Both readings exist and differ: refused too, rather than a silent switch of files.
    config["dataset"]["paths"] = {r: f"{r}.parquet" for r in ROLES}
    open("a/config.yaml", "w").write(yaml.safe_dump(config, sort_keys=False))
    pq.write_table(generate_tables(60, 20, 600, seed=1)["users"], "users.parquet")
    with pytest.raises(ConfigError) as caught:
        resolve("retrieval", "a/config.yaml")
    assert caught.value.line() == (
        f"error: dataset.paths.users: 'users.parquet' in a/config.yaml is read from the config "
        f"file's folder: {synth_dir}/a/users.parquet, which names another file; from the working "
        f"directory, as before, it is {synth_dir}/users.parquet (write the one you mean as an "
        f"absolute path: {synth_dir}/users.parquet or {synth_dir}/a/users.parquet)"
    )
    # Run from the config's folder, both readings are one file: no question.
    os.chdir("a")
    assert _paths(resolve("retrieval", "config.yaml"))["users"] == f"{synth_dir}/a/users.parquet"


def test_a_checkpoint_saved_with_relative_paths_still_resumes(synth_dir):
    from recjobs.training.trainer import _check_same_run

    cfg = resolve("retrieval", "a/config.yaml")
    saved = cfg.to_dict()
    # What an older version saved for the same data: paths as given, from the working directory
    saved["dataset"]["paths"] = {r: f"a/{r}.parquet" for r in ROLES}
    _check_same_run(saved, cfg)
    saved["dataset"]["paths"]["users"] = "b/users.parquet"
    with pytest.raises(CheckpointError, match=r"different config \(dataset.paths\)"):
        _check_same_run(saved, cfg)


# --------------------------------------------------------------------------------------------
# MovieLens


def write_ml100k(d) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rows = [(1, 1, 5, 100), (1, 2, 3, 200), (2, 1, 4, 150), (2, 3, 2, 300), (3, 2, 1, 400)]
    rows += [(3, 3, 4, 500), (1, 3, 5, 600), (2, 2, 3, 700), (3, 1, 2, 800), (1, 4, 4, 900)]
    (d / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|17|M|writer|T8H1N\n")
    flags = lambda *on: "|".join("1" if k in on else "0" for k in range(19))  # noqa: E731
    items = [
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags(3, 4, 5)}",
        f"2|Café Society (1994)|01-Jan-1994||http://y|{flags(8)}",
        f"3|unknown||||{flags()}",
        f"4|Old One (1968)|01-Jan-1968||http://z|{flags(1, 2)}",
    ]
    (d / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))


def write_ml1m(d) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rows = [(1, 10, 5, 10), (1, 20, 3, 20), (2, 10, 4, 30), (2, 30, 2, 40), (3, 20, 1, 50)]
    rows += [(3, 30, 4, 60), (1, 30, 5, 70), (2, 20, 3, 80), (3, 10, 2, 90), (4, 10, 4, 99)]
    (d / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    (d / "users.dat").write_text(
        "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117-1234\n4::F::45::7::02460\n"
    )
    movies = [
        "10::Toy Story (1995)::Animation|Children's|Comedy",
        "20::Amélie (2001)::Comedy|Romance",
        "30::Nosferatu (1922)::Horror",
    ]
    (d / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))


def load_converted(config_path: str, task: str = "ranking") -> TaskData:
    config = yaml.safe_load(open(config_path))
    # The config names its tables from its own folder: its paths as the resolver reads them.
    assert config["dataset"]["paths"] == {r: f"{r}.parquet" for r in ROLES}
    paths = dataclasses.asdict(resolve(task, config_path).dataset.paths)
    assert paths == {r: os.path.join(os.path.dirname(config_path), f"{r}.parquet") for r in ROLES}
    columns = {
        k: tuple(v) if isinstance(v, list) else v for k, v in config[task]["columns"].items()
    }
    return load_task_data(make_cfg(paths, task=task, **columns))


def test_movielens_100k(tmp_path):
    write_ml100k(tmp_path / "src")
    config_path = convert_movielens(
        str(tmp_path / "src"), str(tmp_path / "out"), split="global-time"
    )
    config = yaml.safe_load(open(config_path))
    assert config["dataset"]["name"] == "ml-100k"
    assert config["ranking"]["columns"]["user_cat_cols"] == [
        "age_bucket",
        "gender",
        "occupation",
        "zip_prefix",
    ]
    users = pq.read_table(tmp_path / "out" / "users.parquet").to_pylist()
    assert users[2] == {
        "user_id": 3,
        "age": 17.0,
        "age_bucket": "under 18",
        "gender": "M",
        "occupation": "writer",
        "zip_prefix": "T8H",
    }
    assert users[0]["age_bucket"] == "18-24" and users[1]["age_bucket"] == "50-55"
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()
    assert [(i["genre"], i["year_bucket"]) for i in items] == [
        ("Animation", "1990s"),
        ("Drama", "1990s"),
        ("unknown", "unknown"),
        ("Action", "1960s"),
    ]
    # All genres as a list (none: an empty list), the year as a number (null when unknown).
    assert [(i["genres"], i["year"]) for i in items] == [
        (["Animation", "Children's", "Comedy"], 1995.0),
        (["Drama"], 1994.0),
        ([], None),
        (["Action", "Adventure"], 1968.0),
    ]
    columns = config["ranking"]["columns"]
    assert (columns["user_num_cols"], columns["item_num_cols"]) == (["age"], ["year"])
    assert (columns["item_multi_cols"], columns["item_cat_cols"]) == (["genres"], ["year_bucket"])
    assert config["retrieval"]["columns"]["item_multi_cols"] == ["genres"]
    val = pq.read_table(tmp_path / "out" / "interactions_val.parquet")
    assert val.column("timestamp").to_pylist() == [900]  # 10 ratings, val_fraction 0.1
    data = load_converted(config_path)
    assert data.n_users == 3 and data.n_items == 4
    assert len(data.train_users) == 9 and data.val_items.tolist() == [4]
    assert data.train_labels.tolist()[:2] == [5.0, 4.0]  # sorted by time: t=100, t=150
    assert data.item_cardinalities == [5, 4]  # 1990s, 1960s, unknown
    # 6 genres in the list vocabulary; padded to the longest list (3), the empty list all 0.
    assert data.encoders.item_multis["genres"].values() == [
        "Action", "Adventure", "Animation", "Children's", "Comedy", "Drama",
    ]  # fmt: skip
    (genres,) = data.item_features.multi
    assert genres.tolist() == [[0, 0, 0], [3, 4, 5], [6, 0, 0], [0, 0, 0], [1, 2, 0]]
    # Years 1995, 1994, -, 1968 (items 1..4): standardized over the three known ones.
    years = np.array([1995.0, 1994.0, 1968.0])
    stats = data.encoders.item_nums["year"]
    assert (stats.mean, stats.std) == pytest.approx((years.mean(), years.std()))
    dense = data.item_features.dense
    assert dense[1:, 0].tolist() == pytest.approx(
        [(1995 - years.mean()) / years.std(), (1994 - years.mean()) / years.std(), 0.0,
         (1968 - years.mean()) / years.std()]
    )  # fmt: skip
    assert dense[:, 1].tolist() == [0, 0, 0, 1, 0]  # item 3's year is missing


def test_movielens_1m_in_subdirectory(tmp_path):
    write_ml1m(tmp_path / "download" / "ml-1m")
    config_path = convert_movielens(
        str(tmp_path / "download"), str(tmp_path / "out"), split="global-time", val_fraction=0.3
    )
    assert yaml.safe_load(open(config_path))["dataset"]["name"] == "ml-1m"
    users = pq.read_table(tmp_path / "out" / "users.parquet").to_pylist()
    assert [(u["age_bucket"], u["occupation"], u["zip_prefix"]) for u in users] == [
        ("under 18", "K-12 student", "480"),
        ("56+", "self-employed", "700"),
        ("25-34", "scientist", "551"),
        ("45-49", "executive/managerial", "024"),
    ]
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()
    assert [(i["genre"], i["year_bucket"]) for i in items] == [
        ("Animation", "1990s"),
        ("Comedy", "2000s"),
        ("Horror", "1920s"),
    ]
    assert [(i["genres"], i["year"]) for i in items] == [
        (["Animation", "Children's", "Comedy"], 1995.0),
        (["Comedy", "Romance"], 2001.0),
        (["Horror"], 1922.0),
    ]
    assert [u["age"] for u in users] == [1.0, 56.0, 25.0, 45.0]  # ml-1m's age-group codes
    data = load_converted(config_path, task="retrieval")
    assert data.train_labels is None
    assert len(data.train_users) == 7 and len(data.val_users) == 3
    val_ts = pq.read_table(tmp_path / "out" / "interactions_val.parquet").column("timestamp")
    assert val_ts.to_pylist() == [80, 90, 99]


def test_movielens_user_time_split_holds_out_each_users_last_ratings(tmp_path):
    write_ml100k(tmp_path / "src")
    out = tmp_path / "out"
    convert_movielens(str(tmp_path / "src"), str(out), val_fraction=0.5)  # user-time: default
    rows = lambda name: pq.read_table(out / f"{name}.parquet").to_pylist()  # noqa: E731
    train, val = rows("interactions_train"), rows("interactions_val")
    # Each user rated 3 or 4 items: floor(0.5 * n) of them, the latest, are validation.
    assert sorted((r["user_id"], r["timestamp"]) for r in val) == [
        (1, 600),
        (1, 900),
        (2, 700),
        (3, 800),
    ]
    for user in (1, 2, 3):
        latest_train = max(r["timestamp"] for r in train if r["user_id"] == user)
        assert latest_train < min(r["timestamp"] for r in val if r["user_id"] == user)
    assert len(train) == 6
    # The default fraction is 20%: at least one rating per user with two or more.
    convert_movielens(str(tmp_path / "src"), str(tmp_path / "default"))
    default_val = pq.read_table(tmp_path / "default" / "interactions_val.parquet").to_pylist()
    assert sorted((r["user_id"], r["timestamp"]) for r in default_val) == [
        (1, 900),
        (2, 700),
        (3, 800),
    ]


def test_movielens_not_found(tmp_path):
    with pytest.raises(DataError) as exc:
        convert_movielens(str(tmp_path), str(tmp_path / "out"))
    assert exc.value.line() == (
        f"error: {tmp_path}: no MovieLens files found (looked for u.data, u.user, u.item "
        "(ml-100k) or ratings.dat, users.dat, movies.dat (ml-1m), in the directory or its "
        "ml-100k/ or ml-1m/ subdirectory)"
    )
    (tmp_path / "ratings.dat").write_text("1::1::5::1\n")
    with pytest.raises(DataError, match="users.dat: file not found"):
        convert_movielens(str(tmp_path), str(tmp_path / "out"))
