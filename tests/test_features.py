"""Numeric and multi-valued feature columns: loading (Parquet and CSV), their errors, pooling,
the models, and the transform saved with a model and reapplied by recommend/score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recjobs.cli import main
from recjobs.config.resolver import Overrides, resolve
from recjobs.data import Features, generate_tables, load_task_data
from recjobs.errors import DataError
from recjobs.inference.recommend import Recommender
from recjobs.models import build_model
from recjobs.models.two_tower import make_bags, pool_bags
from recjobs.training import trainer
from recjobs.training.export import load_model

from runs import StopAfter

ROLES = ("users", "items", "interactions_train", "interactions_val")


def tables() -> dict[str, pa.Table]:
    """3 users with a numeric column (one null, one NaN) and a tag list; 3 items with a price
    and a genre list (one empty, one null)."""
    return {
        "users": pa.table(
            {
                "user_id": ["u1", "u2", "u3"],
                "region": ["x", "y", "x"],
                "income": pa.array([10.0, None, float("nan")]),
                "tags": pa.array([["a", "b"], ["b"], []], pa.list_(pa.string())),
            }
        ),
        "items": pa.table(
            {
                "item_id": [10, 20, 30],
                "category": ["c1", "c2", "c1"],
                "price": pa.array([1, 2, 6], pa.int64()),
                "genres": pa.array([["Drama", "Comedy"], [], None], pa.list_(pa.string())),
            }
        ),
        "interactions_train": pa.table(
            {"user_id": ["u1", "u2", "u3", "u1"], "item_id": [10, 20, 30, 30]}
        ),
        "interactions_val": pa.table({"user_id": ["u2", "u3"], "item_id": [10, 20]}),
    }


COLUMNS = {
    "user_cat_cols": ["region"],
    "item_cat_cols": ["category"],
    "user_num_cols": ["income"],
    "item_num_cols": ["price"],
    "user_multi_cols": ["tags"],
    "item_multi_cols": ["genres"],
}


def write(directory: Path, data: dict[str, pa.Table], ext: str = ".parquet", **columns) -> Path:
    """The tables as Parquet, or as CSV with list columns joined by `delimiter` ('|'), and a
    config.yaml naming them; returns the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    delimiter = columns.get("multi_delimiter", "|")
    for role, table in data.items():
        path = directory / f"{role}{ext}"
        if ext == ".parquet":
            pq.write_table(table, path)
            continue
        for i, field in enumerate(table.schema):
            if pa.types.is_list(field.type):
                joined = [
                    None if v is None else delimiter.join(map(str, v))
                    for v in table.column(i).to_pylist()
                ]
                table = table.set_column(i, field.name, pa.array(joined, pa.string()))
        pacsv.write_csv(table, path)
    cols = {**COLUMNS, "label_col": None, **columns}
    config = {
        "dataset": {"name": "features", "paths": {r: f"{r}{ext}" for r in ROLES}},
        "retrieval": {"columns": cols},
        "ranking": {"columns": cols},
    }
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return directory / "config.yaml"


def load(config: Path, task: str = "retrieval"):
    return load_task_data(resolve(task, config))


# --------------------------------------------------------------------------- loading


def test_numeric_columns_standardized_on_the_table_missing_zero_and_indicator(tmp_path):
    data = load(write(tmp_path, tables()))
    # Users u1, u2, u3 are rows 1, 2, 3: one income known (10), so std 1 (no spread) and
    # every known value standardizes to 0; null and NaN are missing: 0 and indicator 1.
    assert data.user_features.dense.tolist() == [[0, 0], [0, 0], [0, 1], [0, 1]]
    stats = data.encoders.user_nums["income"]
    assert (stats.mean, stats.std) == (10.0, 1.0)
    prices = np.array([1.0, 2.0, 6.0])  # each item once
    z = (prices - prices.mean()) / prices.std()
    assert data.item_features.dense[1:, 0].tolist() == pytest.approx(z.tolist())
    assert data.item_features.dense[:, 1].tolist() == [0, 0, 0, 0]
    assert data.item_features.dense[0].tolist() == [0, 0]  # the OOV row


def test_multi_columns_own_vocabulary_padded_empty_and_null_lists(tmp_path):
    data = load(write(tmp_path, tables()))
    assert data.encoders.item_multis["genres"].values() == ["Comedy", "Drama"]
    assert data.encoders.user_multis["tags"].values() == ["a", "b"]
    (genres,) = data.item_features.multi
    assert genres.tolist() == [[0, 0], [2, 1], [0, 0], [0, 0]]  # OOV, [Drama, Comedy], [], null
    (tags,) = data.user_features.multi
    assert tags.tolist() == [[0, 0], [1, 2], [2, 0], [0, 0]]


@pytest.mark.parametrize("delimiter", ["|", ";"])
def test_csv_lists_are_delimited_strings_and_load_as_parquet_lists(tmp_path, delimiter):
    parquet = load(write(tmp_path / "pq", tables(), multi_delimiter=delimiter))
    csv = load(write(tmp_path / "csv", tables(), ".csv", multi_delimiter=delimiter))
    text = (tmp_path / "csv" / "items.csv").read_text()
    assert f'"Drama{delimiter}Comedy"' in text
    for a, b in (
        (parquet.user_features, csv.user_features),
        (parquet.item_features, csv.item_features),
    ):
        assert torch.equal(a.cat, b.cat) and torch.equal(a.dense, b.dense)
        assert all(torch.equal(x, y) for x, y in zip(a.multi, b.multi, strict=True))
    assert parquet.encoders == csv.encoders


def test_csv_integer_lists_read_as_integers(tmp_path):
    data = tables()
    data["items"] = data["items"].set_column(
        3, "genres", pa.array([[7, 3], [3], None], pa.list_(pa.int64()))
    )
    csv = load(write(tmp_path, data, ".csv"))
    assert csv.encoders.item_multis["genres"].values() == [3, 7]
    assert csv.item_features.multi[0].tolist() == [[0, 0], [2, 1], [1, 0], [0, 0]]


def test_infinite_numeric_value_is_a_one_line_error_exit_2(tmp_path, capsys):
    data = tables()
    data["items"] = data["items"].set_column(2, "price", pa.array([1.0, float("inf"), 2.0]))
    config = write(tmp_path, data)
    assert (
        main(["train", "ranking", "--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: {tmp_path}/items.parquet: column 'price': 1 of 3 values are infinite (a "
        "numeric feature needs finite numbers; leave a value empty (null) for missing, which "
        "the model sees through its missing indicator)"
    )
    assert "Traceback" not in capsys.readouterr().err


def test_non_numeric_numeric_column_is_an_error(tmp_path):
    with pytest.raises(DataError) as exc:
        load(write(tmp_path, tables(), user_cat_cols=[], user_num_cols=["region"]))
    assert exc.value.line().startswith(
        f"error: {tmp_path}/users.parquet: column 'region': expected a numeric column, got string"
    )


def test_list_of_structs_is_an_error(tmp_path):
    data = tables()
    data["items"] = data["items"].set_column(
        3, "genres", pa.array([[{"a": 1}], [], None], pa.list_(pa.struct([("a", pa.int64())])))
    )
    with pytest.raises(DataError) as exc:
        load(write(tmp_path, data))
    assert "column 'genres': expected a list of integers or strings" in exc.value.line()


def test_a_column_in_two_feature_lists_is_a_config_error(tmp_path, capsys):
    config = write(tmp_path, tables(), item_num_cols=["price", "category"])
    assert main(["resolve", "ranking", "--config", str(config)]) == 2
    assert "ranking.columns.item_num_cols: column 'category' is also in item_cat_cols" in (
        capsys.readouterr().err
    )


# --------------------------------------------------------------------------- pooling and models


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_embedding_bag_pools_mean_or_sum_and_an_empty_list_is_zero(mode):
    torch.manual_seed(0)
    (bag,) = make_bags([5], 4, mode, sparse=False)
    weight = bag.weight.detach()
    (pooled,) = pool_bags(torch.nn.ModuleList([bag]), [torch.tensor([[1, 3, 0], [0, 0, 0]])])
    expected = weight[1] + weight[3]
    expected = expected / 2 if mode == "mean" else expected
    assert torch.allclose(pooled[0], expected)
    assert torch.equal(pooled[1], torch.zeros(4))  # an empty list (all padding)


@pytest.mark.parametrize("arch", ["two_tower", "dlrm", "dcn"])
def test_models_read_dense_and_multi_inputs(tmp_path, arch):
    task = "retrieval" if arch == "two_tower" else "ranking"
    config = resolve(task, write(tmp_path, tables()), Overrides(sets=[f"model.model_arch={arch}"]))
    data = load_task_data(config)
    model = build_model(
        task,
        config.model,
        data.user_cardinalities,
        data.item_cardinalities,
        **data.encoders.feature_widths(),
    ).eval()
    rows = torch.tensor([1, 2, 3])

    def output(items: Features) -> torch.Tensor:
        out = model(data.user_features[rows], items[rows])
        return out[1] if arch == "two_tower" else out  # the item tower, or the logits

    base = output(data.item_features)
    item = data.item_features
    dense = item.dense.clone()
    dense[1, 0] += 3.0
    assert not torch.allclose(base, output(Features(item.cat, dense, item.multi)))
    genres = item.multi[0].clone()
    genres[1] = torch.tensor([1, 0])  # [Drama, Comedy] -> [Comedy]
    assert not torch.allclose(base, output(Features(item.cat, item.dense, (genres,))))


# --------------------------------------------------------------------------- train, export, serve


def featured_dataset(directory: Path) -> Path:
    """The tiny synthetic data set plus a numeric user column (some missing), a numeric item
    column on a large scale (standardization matters) and a genre list per item (some empty)."""
    generated = generate_tables(users=300, items=80, interactions=4000, seed=3)
    rng = np.random.default_rng(0)
    users, items = generated["users"], generated["items"]
    score = rng.normal(50.0, 10.0, users.num_rows)
    score[::7] = np.nan
    generated["users"] = users.append_column("score", pa.array(score))
    generated["items"] = items.append_column(
        "price", pa.array(rng.uniform(1000.0, 5000.0, items.num_rows))
    ).append_column(
        "genres",
        pa.array(
            [[f"g{(i + k) % 6}" for k in range(i % 3)] for i in range(items.num_rows)],
            pa.list_(pa.string()),
        ),
    )
    columns = {
        "user_cat_cols": ["user_group"],
        "item_cat_cols": ["category"],
        "user_num_cols": ["score"],
        "item_num_cols": ["price"],
        "item_multi_cols": ["genres"],
    }
    return write(directory, generated, **{**columns, "user_multi_cols": []})


RETRIEVAL = [
    "model.embedding_dim=8",
    "model.hidden_dims=[16]",
    "training.batch_size=256",
    "training.log_steps=1",
]
RANKING = [*RETRIEVAL, "model.scorer_hidden_dims=[16]", "training.negatives_per_pos=2"]


def by_hand(table: pa.Table, id_col: str, ids: list, encoders, side: str) -> Features:
    """The feature rows of `ids`, computed here from the raw table and the saved encoders:
    categorical codes, (value - mean) / std or 0 plus the missing flag, padded list codes."""
    rows = [table[id_col].to_pylist().index(v) for v in ids]
    id_vocab = getattr(encoders, f"{side}_id")
    cats, nums, multis = (getattr(encoders, f"{side}_{k}") for k in ("cats", "nums", "multis"))
    cat = [
        [int(id_vocab.encode([v])[0])]
        + [int(vocab.encode([table[c][r].as_py()])[0]) for c, vocab in cats.items()]
        for v, r in zip(ids, rows, strict=True)
    ]
    dense = []
    for r in rows:
        raw = [table[c][r].as_py() for c in nums]
        missing = [x is None or np.isnan(x) for x in raw]
        values = [
            0.0 if m else (x - st.mean) / st.std
            for x, m, st in zip(raw, missing, nums.values(), strict=True)
        ]
        dense.append(values + [float(m) for m in missing])
    lists = []
    for c, vocab in multis.items():
        codes = [vocab.encode(table[c][r].as_py() or []).tolist() for r in rows]
        width = max(1, *(len(x) for x in codes))
        lists.append(torch.tensor([x + [0] * (width - len(x)) for x in codes]))
    return Features(torch.tensor(cat), torch.tensor(dense, dtype=torch.float32), tuple(lists))


def test_recommend_and_score_apply_the_saved_standardization(tmp_path):
    config = resolve(
        "ranking",
        featured_dataset(tmp_path / "data"),
        Overrides(sets=[*RANKING, "training.max_epochs=1"]),
    )
    trainer.train(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "model" / "encoders.json").read_text())
    prices = pq.read_table(tmp_path / "data" / "items.parquet").column("price").to_numpy()
    assert saved["item_nums"]["price"] == pytest.approx(
        {"mean": prices.mean(), "std": prices.std()}
    )
    # What score gives equals the model on inputs standardized here by hand; raw prices (in
    # the thousands) give other scores, so a Recommender or an export that skipped the
    # transform fails this.
    model, _, encoders = load_model(tmp_path / "run" / "model")
    users = pq.read_table(tmp_path / "data" / "users.parquet")
    items = pq.read_table(tmp_path / "data" / "items.parquet")
    user_ids = [users["user_id"][r].as_py() for r in (0, 7, 5)]
    item_ids = [items["item_id"][r].as_py() for r in (0, 3, 9)]
    got = Recommender.load(tmp_path / "run").score(list(zip(user_ids, item_ids)))
    assert got["item_id"].to_pylist() == item_ids
    user_side = by_hand(users, "user_id", user_ids, encoders, "user")
    item_side = by_hand(items, "item_id", item_ids, encoders, "item")
    with torch.no_grad():
        expected = torch.sigmoid(model(user_side, item_side)).numpy()
        raw_prices = torch.tensor(
            [[items["price"][items["item_id"].to_pylist().index(i)].as_py(), 0.0] for i in item_ids]
        )
        raw = Features(item_side.cat, raw_prices.float(), item_side.multi)
        unstandardized = torch.sigmoid(model(user_side, raw)).numpy()
    assert got["score"].to_numpy() == pytest.approx(expected, abs=1e-5)
    assert not np.allclose(got["score"].to_numpy(), unstandardized, atol=1e-3)


@pytest.mark.parametrize(
    ("task", "extra"),
    [("retrieval", ()), ("ranking", ()), ("ranking", ("training.sparse_embeddings=true",))],
)
def test_interrupted_and_resumed_equals_uninterrupted_with_features(
    tmp_path, monkeypatch, task, extra
):
    sets = [*(RETRIEVAL if task == "retrieval" else RANKING), "training.max_epochs=2", *extra]
    config = resolve(
        task, featured_dataset(tmp_path / "data"), Overrides(sets=[*sets, "model.dropout=0.3"])
    )
    trainer.train(config, tmp_path / "straight")
    StopAfter.n = 7
    monkeypatch.setattr(trainer, "StopSignal", StopAfter)
    with pytest.raises(trainer.Preempted):
        trainer.train(config, tmp_path / "resumed")
    monkeypatch.undo()
    trainer.train(config, tmp_path / "resumed", resume=True)
    a = torch.load(tmp_path / "straight" / "model" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model" / "model.pt")
    assert any("bags" in k for k in a)  # the multi-valued column's EmbeddingBag was trained
    assert all(torch.equal(a[k], b[k]) for k in a)
