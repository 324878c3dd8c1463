"""Using a trained model: `recjobs recommend` / `score`, `recjobs.Recommender`, the top-K search.

Two tiny runs (a second or two each) on a data set whose ids are strings ("u10042", "i50007"),
whose data files are deleted once trained: everything below works from the run directory alone.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

import recjobs
from recjobs.cli import main
from recjobs.config.resolver import Overrides, resolve
from recjobs.data import generate_tables, write_table
from recjobs.inference.recommend import top_k_items
from recjobs.training import metrics, trainer
from recjobs.training.export import CATALOGUE, load_model

from runs import QUICKSTART, TINY


def string_id_data(out: Path) -> dict[str, pa.Table]:
    """The tiny synthetic tables with ids turned into strings, written as Parquet."""
    tables = generate_tables(300, 80, 4000, seed=42)
    prefix = {"user_id": "u", "item_id": "i"}
    out.mkdir(parents=True)
    for role, table in tables.items():
        for column, letter in prefix.items():
            if column in table.column_names:
                ids = [f"{letter}{v}" for v in table.column(column).to_pylist()]
                table = table.set_column(
                    table.column_names.index(column), column, pa.array(ids, pa.string())
                )
        tables[role] = table
        write_table(table, str(out / f"{role}.parquet"))
    return tables


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A retrieval and a ranking run on string ids; the data files are gone afterwards."""
    root = tmp_path_factory.mktemp("recommend")
    tables = string_id_data(root / "data")
    paths = [f"dataset.paths.{role}={root / 'data' / role}.parquet" for role in tables]
    out = {"tables": tables}
    for task in ("retrieval", "ranking"):
        config = resolve(task, QUICKSTART, Overrides(sets=[*TINY, *paths, "training.max_epochs=1"]))
        out[task] = root / task
        out[f"{task}_metrics"] = trainer.train(config, out[task])
    shutil.rmtree(root / "data")  # the run directories must do without
    return out


def read(path: Path) -> pa.Table:
    return pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)


def by_user(table: pa.Table) -> dict[str, list[dict]]:
    rows = defaultdict(list)
    for row in table.to_pylist():
        rows[row["user_id"]].append(row)
    return rows


def test_recall_from_recommend_equals_the_trainers_validation(runs, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    assert main(["recommend", str(runs["retrieval"]), "--k", "10", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    recs = read(out)
    assert recs.column_names == ["user_id", "item_id", "score", "rank"]
    assert recs.schema.field("user_id").type in (pa.string(), pa.large_string())  # as given
    every_user = set(runs["tables"]["users"].column("user_id").to_pylist())
    per_user = by_user(recs)
    assert set(per_user) == every_user
    seen = defaultdict(set)
    for row in runs["tables"]["interactions_train"].to_pylist():
        seen[row["user_id"]].add(row["item_id"])
    for user, rows in per_user.items():
        assert [r["rank"] for r in rows] == list(range(1, 11))
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=True)
        assert not {r["item_id"] for r in rows} & seen[user]  # training items left out

    # recall@10 over the validation users, as the trainer computes it: positives deduplicated,
    # validation items the user also trained on count as positives that cannot be hit.
    positives = defaultdict(set)
    for row in runs["tables"]["interactions_val"].to_pylist():
        positives[row["user_id"]].add(row["item_id"])
    recall = np.mean(
        [
            len({r["item_id"] for r in per_user[user]} & items) / len(items)
            for user, items in positives.items()
        ]
    )
    # The exported weights are the best validation's; train() returns that validation.
    assert abs(recall - runs["retrieval_metrics"]["val/recall@10"]) < 1e-6
    assert recall > 0.2


def test_python_api_matches_the_cli_and_can_include_seen_items(runs, tmp_path):
    rec = recjobs.Recommender.load(runs["retrieval"] / "model")
    users = ["u10003", "u10200", "no-such-user", "u10003"]
    api = rec.topk(users, k=5)
    assert api.column("user_id").to_pylist() == ["u10003"] * 5 + ["u10200"] * 5
    out = tmp_path / "some.csv"
    pacsv.write_csv(pa.table({"user_id": ["u10003", "u10200"]}), tmp_path / "users.csv")
    argv = ["recommend", str(runs["retrieval"]), "--k", "5", "--out", str(out)]
    assert main([*argv, "--users", str(tmp_path / "users.csv")]) == 0
    cli = read(out)
    assert cli.column("item_id").to_pylist() == api.column("item_id").to_pylist()
    assert np.allclose(cli.column("score").to_numpy(), api.column("score").to_numpy(), atol=1e-6)
    # score() gives the same numbers for the same pairs.
    pairs = list(zip(api.column("user_id").to_pylist(), api.column("item_id").to_pylist()))
    scored = rec.score(pairs)
    assert np.allclose(scored.column("score").to_numpy(), api.column("score").to_numpy(), atol=1e-6)
    # Without the mask, popular training items come back.
    seen = {(r["user_id"], r["item_id"]) for r in runs["tables"]["interactions_train"].to_pylist()}
    with_seen = rec.topk(None, k=10, exclude_seen=False)
    pairs = zip(with_seen.column("user_id").to_pylist(), with_seen.column("item_id").to_pylist())
    assert sum(p in seen for p in pairs) > 100


def test_ranking_scores_and_reranks_candidates(runs, tmp_path):
    retrieved = tmp_path / "retrieved.parquet"
    assert main(["recommend", str(runs["retrieval"]), "--k", "20", "--out", str(retrieved)]) == 0
    reranked = tmp_path / "reranked.csv"
    argv = ["recommend", str(runs["ranking"]), "--k", "5", "--out", str(reranked)]
    assert main([*argv, "--candidates", str(retrieved)]) == 0
    top = by_user(read(reranked))
    candidates = by_user(read(retrieved))
    assert set(top) == set(candidates)
    scored = tmp_path / "scored.parquet"
    assert (
        main(["score", str(runs["ranking"]), "--pairs", str(retrieved), "--out", str(scored)]) == 0
    )
    scores = {(r["user_id"], r["item_id"]): r["score"] for r in read(scored).to_pylist()}
    assert len(scores) == read(retrieved).num_rows
    for user, rows in top.items():
        best = sorted((scores[(user, c["item_id"])] for c in candidates[user]), reverse=True)
        assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
        assert [r["score"] for r in rows] == pytest.approx(best[:5], abs=1e-6)

    # The scores are the model's probabilities, computed here from the export by hand.
    model, _, encoders = load_model(runs["ranking"] / "model")
    catalogue = torch.load(runs["ranking"] / "model" / CATALOGUE)
    some = list(scores)[:50]
    u = torch.from_numpy(encoders.user_id.encode([p[0] for p in some]))
    i = torch.from_numpy(encoders.item_id.encode([p[1] for p in some]))
    with torch.no_grad():
        expected = torch.sigmoid(
            model(catalogue["user_features"][u], catalogue["item_features"][i])
        )
    assert [scores[p] for p in some] == pytest.approx(expected.tolist(), abs=1e-6)


def test_sharded_parts_hold_every_user_once(runs, tmp_path, monkeypatch):
    out = tmp_path / "parts"
    for rank in (0, 1, 2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        argv = ["recommend", str(runs["retrieval"]), "--k", "3", "--out", str(out)]
        assert main([*argv, "--parts", "parquet"]) == 0
    parts = sorted(out.iterdir())
    assert [p.name for p in parts] == [f"part-0000{r}-of-00003.parquet" for r in range(3)]
    users = [u for p in parts for u in set(read(p).column("user_id").to_pylist())]
    assert sorted(users) == sorted(runs["tables"]["users"].column("user_id").to_pylist())
    # The parts' directory is a table: a ranking model re-ranks all of it.
    reranked = tmp_path / "reranked.parquet"
    argv = ["recommend", str(runs["ranking"]), "--k", "2", "--out", str(reranked)]
    assert main([*argv, "--candidates", str(out)]) == 0
    assert read(reranked).num_rows == 2 * len(users)


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys):
    def error(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
        return err

    run = str(runs["retrieval"])
    out = str(tmp_path / "o.parquet")
    assert error("recommend", str(tmp_path / "nope"), "--out", out) == (
        f"error: {tmp_path / 'nope'}: not found (give a run directory or its model/)"
    )
    assert error("recommend", run, "--out", str(tmp_path / "o.txt")).startswith(
        f"error: {tmp_path / 'o.txt'}: unsupported file extension '.txt' (supported: .parquet"
    )
    assert error("recommend", str(runs["ranking"]), "--out", out) == (
        "error: candidates: a ranking model scores given candidates, it does not search the "
        "catalogue (pass candidates: user_id,item_id pairs, e.g. a retrieval model's "
        "recommendations)"
    )
    pacsv.write_csv(pa.table({"id": ["u10003"]}), tmp_path / "users.csv")
    assert error("recommend", run, "--out", out, "--users", str(tmp_path / "users.csv")) == (
        f"error: {tmp_path / 'users.csv'}: column 'user_id': not in the file (columns present: "
        "id) (name the column user_id)"
    )
    pacsv.write_csv(pa.table({"user_id": [10003]}), tmp_path / "unknown.csv")  # read as "10003"
    assert error("recommend", run, "--out", out, "--users", str(tmp_path / "unknown.csv")) == (
        f"error: {tmp_path / 'unknown.csv'}: none of its users is in the model's users table "
        "(ids are matched as they are: 7 and '7' differ)"
    )
    pq.write_table(pa.table({"user_id": [10003]}), tmp_path / "ints.parquet")
    assert error("recommend", run, "--out", out, "--users", str(tmp_path / "ints.parquet")) == (
        f"error: {tmp_path / 'ints.parquet'}: column 'user_id': user ids are integers but the "
        "model's are strings (ids are matched as they are: 7 and '7' differ)"
    )
    assert (
        error("recommend", run, "--out", out, "--k", "0")
        == "error: --k: must be between 1 and 100000, got 0"
    )
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "metrics.jsonl").write_text("")
    assert error("recommend", str(tmp_path / "unfinished"), "--out", out) == (
        f"error: {tmp_path / 'unfinished'}: holds no exported model yet (no model/): the run "
        "has not finished (wait for it, or finish it with `recjobs train TASK --run-dir RUN_DIR "
        "--resume`)"
    )
    copy_again = (
        "copy the model folder again, whole, from the run that exported it (recjobs train "
        "writes RUN_DIR/model), or give a finished run's directory or its model/"
    )
    # catalogue.pt deleted from an export that lists it (export.json): not "an older recjobs".
    deleted = tmp_path / "deleted"
    shutil.copytree(runs["retrieval"] / "model", deleted)
    (deleted / CATALOGUE).unlink()
    assert error("recommend", str(deleted), "--out", out) == (
        f"error: {deleted / CATALOGUE}: missing from the model folder (export.json lists it: it "
        f"was deleted since the export, or the folder was copied in part) ({copy_again})"
    )
    # An export by a recjobs before catalogue.pt (and export.json) had neither.
    old = tmp_path / "old"
    shutil.copytree(runs["retrieval"] / "model", old)
    (old / CATALOGUE).unlink()
    (old / "export.json").unlink()
    assert error("recommend", str(old), "--out", out) == (
        f"error: {old / CATALOGUE}: not found, and the folder has no export.json either: an "
        f"export by a recjobs older than catalogue.pt (or both files were deleted) ({copy_again})"
    )
    shutil.copytree(runs["retrieval"] / "model", tmp_path / "broken")
    (tmp_path / "broken" / CATALOGUE).write_bytes(b"not a torch file")
    broken = error("recommend", str(tmp_path / "broken"), "--out", out)
    assert broken.startswith(f"error: {tmp_path / 'broken' / CATALOGUE}: cannot load it (")
    assert broken.endswith(f" cut short or changed since ({copy_again})")
    assert not (tmp_path / "o.parquet").exists()


def test_top_k_search_by_block_maxima_equals_torch_topk():
    torch.manual_seed(0)
    users, items, k = 37, 5000, 10  # 79 blocks of 64 >= 4k: the pruned search runs
    user_emb, item_emb = torch.randn(users, 8), torch.randn(items, 8)
    rows = torch.randint(0, users, (600,))
    cols = torch.randint(0, items, (600,))
    rows = torch.cat([rows, torch.full((items - 4,), 5)])  # user 5: only 4 items left
    cols = torch.cat([cols, torch.arange(4, items)])
    exclude = metrics.csr_from_pairs(rows, cols, users)
    scores, columns = top_k_items(user_emb, item_emb, k, exclude, chunk_size=16)
    full = user_emb @ item_emb.T
    masked_rows, masked_cols = metrics.csr_chunk(*exclude, 0, users)
    full[masked_rows, masked_cols] = float("-inf")
    expected = torch.topk(full, k, dim=1)
    # The same items; the scores up to float rounding (the chunks' matmuls have other shapes).
    assert torch.allclose(scores, expected.values, atol=1e-5)
    finite = torch.isfinite(expected.values)
    assert torch.equal(columns[finite], expected.indices[finite])
    assert columns[5].tolist()[4:] == [-1] * 6 and sorted(columns[5, :4].tolist()) == [0, 1, 2, 3]


def test_reranking_says_how_many_seen_candidates_it_left_out(runs, caplog):
    rec = recjobs.Recommender.load(runs["ranking"])
    train = runs["tables"]["interactions_train"]
    user = train.column("user_id")[0].as_py()
    seen = sorted(
        {
            i
            for u, i in zip(*(train.column(c).to_pylist() for c in ("user_id", "item_id")))
            if u == user
        }
    )
    unseen = sorted(set(runs["tables"]["items"].column("item_id").to_pylist()) - set(seen))
    pairs = [(user, i) for i in seen[:3] + unseen[:4]]
    with caplog.at_level("INFO", logger="recjobs"):
        kept = rec.topk(candidates=pairs, k=10)
    assert sorted(kept.column("item_id").to_pylist()) == unseen[:4]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("candidates:")]
    assert said == [
        "candidates: left out 3 of 7 pairs whose item is in the user's training items (include "
        "seen items to keep them)"
    ]
    caplog.clear()
    with caplog.at_level("INFO", logger="recjobs"):
        assert rec.topk(candidates=pairs, k=10, exclude_seen=False).num_rows == 7
    assert not [r for r in caplog.records if r.getMessage().startswith("candidates:")]
