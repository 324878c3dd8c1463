"""Per-rank data: which rank owns which users, streamed tables, the smallest id type."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recjobs.config.resolver import Overrides, resolve
from recjobs.data import load_task_data, tables, write_dataset
from recjobs.data.shards import assign_users, index_dtype
from recjobs.distributed import Ranks
from recjobs.errors import DataError


@pytest.mark.parametrize("world", [2, 3, 8])
def test_every_user_has_one_owner_and_the_loads_come_out_even(world):
    rng = np.random.default_rng(0)
    counts = np.concatenate([[0], rng.zipf(1.6, 5000).clip(max=400)])  # heavy-tailed users
    eval_users = np.sort(rng.choice(np.arange(1, 5001), 1501, replace=False))
    owner = assign_users(counts, eval_users, world)
    assert owner.shape == counts.shape and set(owner.tolist()) == set(range(world))
    per_rank_eval = np.bincount(owner[eval_users], minlength=world)
    assert per_rank_eval.max() <= math.ceil(len(eval_users) / world)
    load = np.bincount(owner, weights=counts, minlength=world)
    # Within the largest user's count of each other (about 1% of a rank's load here).
    assert load.max() - load.min() <= counts.max()
    assert np.array_equal(owner, assign_users(counts, eval_users, world))  # same on every rank
    assert not assign_users(counts, eval_users, 1).any()


def test_snake_order_evens_out_users_sorted_by_count():
    # 1000, 999, ... to ranks 0, 1, 1, 0, 0, 1, ...: every four users add 1997 + 1997 (user % 2
    # would give rank 0 the larger of each pair, 500 more).
    counts = np.array([0, *range(1000, 0, -1)])
    owner = assign_users(counts, np.zeros(0, dtype=np.int64), 2)
    assert owner[1:5].tolist() == [0, 1, 1, 0]
    load = np.bincount(owner, weights=counts, minlength=2)
    assert load[0] == load[1] == counts.sum() / 2


def test_index_dtype_is_the_smallest_that_holds_the_rows():
    assert index_dtype(1) == np.int16 and index_dtype(32768) == np.int16
    assert index_dtype(32769) == np.int32 and index_dtype(2**31) == np.int32
    assert index_dtype(2**31 + 1) == np.int64


def _interactions(n: int) -> pa.Table:
    rng = np.random.default_rng(1)
    return pa.table(
        {"user_id": rng.integers(0, 50, n), "item_id": rng.integers(0, 30, n), "x": np.arange(n)}
    )


@pytest.mark.parametrize("fmt", ["parquet", "parquet-dir", "csv"])
def test_streamed_chunks_are_the_table_in_order(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(tables, "STREAM_ROWS", 700)
    table = _interactions(5000)
    if fmt == "parquet":
        path = tmp_path / "t.parquet"
        pq.write_table(table, path, row_group_size=300)
    elif fmt == "parquet-dir":
        path = tmp_path / "parts"
        path.mkdir()
        for i, start in enumerate(range(0, 5000, 1250)):
            pq.write_table(table.slice(start, 1250), path / f"part-{i:05d}.parquet")
    else:
        path = tmp_path / "t.csv"
        pa.csv.write_csv(table, path)
        monkeypatch.setattr(
            tables, "_csv_read_options", lambda: pa.csv.ReadOptions(block_size=4096)
        )
    chunks = list(tables.iter_table(str(path), ["x", "user_id"], role="interactions_train"))
    assert len(chunks) > 3 and all(c.num_rows >= 700 for c in chunks[:-1])
    whole = pa.concat_tables(chunks)
    assert whole.column_names == ["x", "user_id"]
    assert whole.column("x").to_pylist() == list(range(5000))
    assert whole.equals(tables.read_table(str(path), ["x", "user_id"], role="interactions_train"))


def test_a_table_of_whole_chunks_streams_without_an_empty_last_one(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "STREAM_ROWS", 1000)
    path = tmp_path / "t.parquet"
    pq.write_table(_interactions(5000), path, row_group_size=500)
    chunks = list(tables.iter_table(str(path), ["x"], role="interactions_train"))
    assert [c.num_rows for c in chunks] == [1000] * 5


def test_streaming_an_empty_table_gives_one_empty_chunk_and_bad_columns_fail_at_once(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_interactions(0), path)
    chunks = list(tables.iter_table(str(path), ["user_id"], role="interactions_train"))
    assert [c.num_rows for c in chunks] == [0] and chunks[0].column_names == ["user_id"]
    with pytest.raises(DataError, match="column 'nope': no such column"):
        next(tables.iter_table(str(path), ["nope"], role="interactions_train"))


@pytest.mark.parametrize("task", ["retrieval", "ranking"])
def test_a_table_read_in_many_chunks_loads_as_read_whole(tmp_path, monkeypatch, task):
    config = write_dataset(str(tmp_path / "data"), 200, 90, 6000, seed=3)
    cfg = resolve(task, config, Overrides())
    whole = load_task_data(cfg)
    monkeypatch.setattr(tables, "STREAM_ROWS", 500)
    chunked = load_task_data(cfg)
    for key in ("train_users", "train_items", "val_users", "val_items", "val_positions"):
        assert torch.equal(getattr(chunked, key), getattr(whole, key)), key
    assert torch.equal(chunked.item_counts, whole.item_counts)
    assert (chunked.train_labels is None) == (whole.train_labels is None)
    if whole.train_labels is not None:
        assert torch.equal(chunked.train_labels, whole.train_labels)
    assert whole.train_users.dtype == torch.int16 and whole.train_items.dtype == torch.int16
    assert whole.train_total == len(whole.train_users) == whole.train_per_rank


def test_a_rank_left_without_training_rows_is_one_error_on_every_rank(tmp_path):
    # Two users, one with every interaction: at world 2 the other user's rank has nothing to
    # train on. Raised before the load's one collective, so no process group is needed here.
    (tmp_path / "users.csv").write_text("user_id\na\nb\n")
    (tmp_path / "items.csv").write_text("item_id\n1\n2\n3\n")
    (tmp_path / "train.csv").write_text("user_id,item_id\na,1\na,2\n")
    (tmp_path / "val.csv").write_text("user_id,item_id\na,3\n")
    sets = [
        f"dataset.paths.{role}={tmp_path / name}"
        for role, name in (
            ("users", "users.csv"),
            ("items", "items.csv"),
            ("interactions_train", "train.csv"),
            ("interactions_val", "val.csv"),
        )
    ]
    cfg = resolve(
        "retrieval",
        None,
        Overrides(sets=[*sets, "columns.user_cat_cols=[]", "columns.item_cat_cols=[]"]),
    )
    assert load_task_data(cfg).train_total == 2  # one process: fine
    for rank in (0, 1):
        with pytest.raises(DataError) as caught:
            load_task_data(cfg, ranks=Ranks(rank, 2))
        assert caught.value.line() == (
            f"error: {tmp_path / 'train.csv'}: 2 training interactions of 2 users cannot be "
            "shared among 2 ranks: rank 1 would have none (each rank trains on whole users) "
            "(use fewer processes or more training data)"
        )
