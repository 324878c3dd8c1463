"""Errors that say what to fix, and inputs that used to pass silently wrong (issue 17).

Each case: the exact one line on stderr, exit code 2, and where something could have been
written, that nothing was. Real files, a real tiny ranking run, the real CLI in-process.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from recjobs.cli import main
from recjobs.config.resolver import Overrides, resolve
from recjobs.training import trainer

from runs import QUICKSTART, ROOT, TINY


def error(capsys, *argv: str) -> str:
    """The one stderr line of a command that must exit 2."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def resolved(capsys, *argv: str) -> dict:
    assert main(["resolve", "retrieval", *argv]) == 0
    return json.loads(capsys.readouterr().out)["retrieval"]


@pytest.fixture(scope="module")
def ranking_run(tmp_path_factory) -> Path:
    """A finished tiny ranking run on the built-in synthetic data (ids are integers)."""
    run = tmp_path_factory.mktemp("errors") / "ranking"
    config = resolve("ranking", QUICKSTART, Overrides(sets=[*TINY, "training.max_epochs=1"]))
    trainer.train(config, run)
    return run


@pytest.fixture
def data(tmp_path, capsys) -> Path:
    """`recjobs data synth`: four small Parquet tables and their config.yaml."""
    out = tmp_path / "data"
    sizes = ["--users", "300", "--items", "80", "--interactions", "4000"]
    assert main(["data", "synth", "--out", str(out), *sizes]) == 0
    capsys.readouterr()
    return out


def train_error(capsys, data: Path, run: Path, *sets: str) -> str:
    sets_argv = [a for s in [*TINY, "training.max_epochs=1", *sets] for a in ("--set", s)]
    config = str(data / "config.yaml")
    return error(
        capsys, "train", "retrieval", "--config", config, "--run-dir", str(run), *sets_argv
    )


# --------------------------------------------------------------------------- silently wrong


def test_set_never_replaces_the_early_stopping_section(capsys):
    assert error(
        capsys, "resolve", "retrieval", "--set", "training.early_stopping={metric: loss}"
    ) == (
        "error: --set training.early_stopping: names the whole training.early_stopping section; "
        "set its keys one by one (e.g. training.early_stopping.metric=loss, or "
        "training.early_stopping=true)"
    )
    file_es = {"enabled": True, "patience": 2, "min_delta": 0.01}
    es = resolved(
        capsys,
        "--config-json",
        json.dumps({"retrieval": {"training": {"early_stopping": file_es}}}),
        "--set",
        "training.early_stopping.metric=loss",
    )["training"]["early_stopping"]
    assert (es["enabled"], es["patience"], es["min_delta"], es["metric"]) == (True, 2, 0.01, "loss")
    # The one-value shorthand stays: true is {enabled: true}.
    shorthand = resolved(capsys, "--set", "training.early_stopping=true")["training"]
    assert shorthand["early_stopping"]["enabled"] is True


BLANK_SETS = [
    # YAML reads '  ' as null: artifact_dir ' ' used to mean artifacts/retrieval without a word,
    # wandb_run_name ' ' a name W&B picks, label_col ' ' no label.
    ("training.artifact_dir= ", "retrieval.training.artifact_dir", "' ' (or null: artifacts/<task>)"),
    ("training.wandb_run_name=  ", "retrieval.training.wandb_run_name", "'  ' (or null: W&B picks one)"),
    ("training.wandb_project=\t", "retrieval.training.wandb_project", "'\\t' (e.g. recjobs)"),
    ("training.checkpoint= ", "retrieval.training.checkpoint", "' ' (e.g. model.pt)"),
    ("columns.label_col= ", "retrieval.columns.label_col", "' ' (or null to leave it unset)"),
    ("columns.user_id= ", "retrieval.columns.user_id", "' ' (e.g. user_id)"),
    ("columns.item_cat_cols=[category, ' ']", "retrieval.columns.item_cat_cols[1]", "' ' (e.g. category)"),
    ("dataset.name= ", "dataset.name", "' ' (e.g. synth)"),
    ("shared.encoder_cache= ", "shared.encoder_cache", "' ' (e.g. encoders.json)"),
    (
        "dataset.paths={users: ' ', items: i.parquet, interactions_train: t.parquet, interactions_val: v.parquet}",
        "dataset.paths.users",
        "' ' (a local path or a URL)",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("item", "key", "shown"), BLANK_SETS, ids=[c[1] for c in BLANK_SETS])
def test_a_blank_name_or_path_is_refused_naming_the_key(capsys, item, key, shown):
    assert error(capsys, "resolve", "retrieval", "--set", item) == (
        f"error: {key}: must not be empty or blank, got string {shown}"
    )


def test_a_blank_name_in_a_config_file_is_refused_too(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("retrieval:\n  training:\n    artifact_dir: '   '\n")
    assert error(capsys, "resolve", "retrieval", "--config", str(config)) == (
        "error: retrieval.training.artifact_dir: must not be empty or blank, got string '   ' "
        "(or null: artifacts/<task>)"
    )


TILDE = "starts with ~, the shell's shorthand for a home folder, which recjobs does not expand (it would name a folder called ~...)"


def test_a_path_starting_with_a_tilde_is_refused_naming_the_key(tmp_path, capsys):
    """No shell reads a config file or the text after `--set key=`: `artifact_dir: ~/runs/x`
    trained into ./~/runs/x without a word, and a data path became 'CONFIG_FOLDER/~/...'."""
    home = os.path.expanduser("~")
    assert error(capsys, "resolve", "retrieval", "--set", "training.artifact_dir=~/runs/x") == (
        f"error: retrieval.training.artifact_dir: string '~/runs/x' {TILDE} (write the whole "
        f"path, e.g. {home}/runs/x)"
    )
    config = tmp_path / "c.yaml"
    config.write_text("dataset:\n  paths: {users: ~alice/u.parquet}\nretrieval: {}\n")
    assert error(capsys, "resolve", "retrieval", "--config", str(config)) == (
        f"error: dataset.paths.users: string '~alice/u.parquet' {TILDE} (write the whole path)"
    )
    # A name is no path: a column may start with ~
    assert resolved(capsys, "--set", "columns.user_id=~u")["columns"]["user_id"] == "~u"


def test_empty_paths_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert error(capsys, "resolve", "retrieval", "--set", "training.artifact_dir=") == (
        "error: retrieval.training.artifact_dir: must not be empty or blank, got string '' (or "
        "null: artifacts/<task>)"
    )
    assert error(capsys, "train", "retrieval", "--run-dir", "") == (
        "error: recjobs train: argument --run-dir: an empty path; name a file or directory "
        "(see --help)"
    )
    assert error(capsys, "recommend", "", "--out", "recs.csv") == (
        "error: recjobs recommend: argument DIR: an empty path; name a file or directory "
        "(see --help)"
    )
    assert error(capsys, "status", " ") == (
        "error: recjobs status: argument RUN_DIR: an empty path; name a file or directory "
        "(see --help)"
    )
    assert list(tmp_path.iterdir()) == []  # no artifacts/ made


def test_score_where_no_pair_is_known_is_exit_2_and_writes_nothing(ranking_run, tmp_path, capsys):
    pq.write_table(pa.table({"user_id": [10**9], "item_id": [10**9]}), tmp_path / "pairs.parquet")
    out = tmp_path / "scores.csv"
    assert error(
        capsys,
        "score",
        str(ranking_run),
        "--pairs",
        str(tmp_path / "pairs.parquet"),
        "--out",
        str(out),
    ) == (
        f"error: {tmp_path / 'pairs.parquet'}: none of its pairs has a user and an item in the "
        "model's tables (ids are matched as they are: 7 and '7' differ)"
    )
    assert not out.exists()


# --------------------------------------------------------------------------- model/config.yaml


# Where a model folder is not a run's model/ with a checkpoint: copy it again.
COPY_AGAIN = (
    "copy the model folder again, whole, from the run that exported it (recjobs train writes "
    "RUN_DIR/model), or give a finished run's directory or its model/"
)


def _copied_model(ranking_run: Path, tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A copy of the run's model/ (elsewhere: no checkpoint beside it) and its export.json."""
    model = tmp_path / "model"
    shutil.copytree(ranking_run / "model", model)
    return model, json.loads((model / "export.json").read_text())["files"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "config file is empty"),
        (
            "ranking: [1, 2\n",
            "invalid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>'",
        ),
        ("- a\n", "expected a mapping at the top level, got list ['a']"),
        ("shared: {seed: 1}\n", "expected exactly one of retrieval or ranking: (found shared)"),
    ],
)
def test_a_damaged_model_config_is_one_line_naming_it(ranking_run, tmp_path, capsys, text, problem):
    """What is wrong, that the file is not what the export wrote (export.json's size), and
    what to do: the config of a model folder is the export's, not the user's to fix."""
    model, files = _copied_model(ranking_run, tmp_path)
    (model / "config.yaml").write_text(text)
    line = error(capsys, "score", str(model), "--pairs", "p.csv", "--out", str(tmp_path / "s.csv"))
    size = len(text.encode())
    assert line == (
        f"error: {model / 'config.yaml'}: {problem}; it is {size} bytes but the export wrote "
        f"{files['config.yaml']}: cut short or changed since ({COPY_AGAIN})"
    )


DAMAGED_MODEL_CONFIGS = ["", "ranking: [1, 2\n", "- a\n", "shared: {seed: 1}\n", "ranking: 3\n"]


@pytest.mark.parametrize("text", DAMAGED_MODEL_CONFIGS, ids=repr)
@pytest.mark.parametrize("given", ["run", "model"])
def test_the_recommend_component_reads_a_model_config_as_recommend_does(
    ranking_run, tmp_path, capsys, text, given
):
    """At submit (`torchx run ... recommend --model_dir`), a damaged model/config.yaml is the
    line `recjobs recommend` gives, naming that file, not a traceback or a bare key."""
    from torchx.specs.builders import materialize_appdef
    from torchx.specs.finder import get_component

    run = tmp_path / "run"
    shutil.copytree(ranking_run, run)
    (run / "model" / "config.yaml").write_text(text)
    where = run if given == "run" else run / "model"
    expected = error(capsys, "recommend", str(where), "--out", str(tmp_path / "r.csv"))
    assert expected.startswith(f"error: {run / 'model' / 'config.yaml'}: "), expected
    fn = get_component(f"{ROOT / 'components' / 'train.py'}:recommend").fn
    with pytest.raises(SystemExit) as exc:
        materialize_appdef(fn, ["--model_dir", str(where)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [expected]


def test_the_recommend_component_names_a_run_s_damaged_config(tmp_path, capsys):
    """A run that has not exported yet: its own config.yaml gives the task, or one line."""
    from recjobs.errors import UserError
    from recjobs.submit import launch

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("ranking:\n  training: {}\n")
    assert launch.model_task(str(run)) == "ranking"
    (run / "config.yaml").write_text("- a\n")
    with pytest.raises(UserError) as caught:
        launch.model_task(str(run))
    assert caught.value.line() == (
        f"error: {run / 'config.yaml'}: expected a mapping at the top level, got list ['a']"
    )


def test_a_config_error_inside_the_model_config_names_that_file(ranking_run, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(ranking_run / "model", model)
    config = yaml.safe_load((model / "config.yaml").read_text())
    config["ranking"]["model"]["embedding_dim"] = 0
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    line = error(capsys, "score", str(model), "--pairs", "p.csv", "--out", str(tmp_path / "s.csv"))
    assert line.startswith(f"error: {model / 'config.yaml'}: ranking.model.embedding_dim: ")
    assert line.endswith(f" ({COPY_AGAIN})")


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"format": "recjobs.encoders", "vers', "corrupt encoders file: Unterminated string "),
        ("[1, 2]", "corrupt encoders file: not a recjobs encoders file"),
        (
            '{"format": "recjobs.encoders", "version": 1, "user_id": {"values": 3}}',
            "corrupt encoders file: 'values' must be a list",
        ),
        ("[" * 100_000 + "]" * 100_000, "corrupt encoders file: maximum recursion depth"),
    ],
    ids=["cut short", "not a mapping", "wrong shape", "nested too deep"],
)
def test_a_damaged_encoders_file_says_what_to_do(ranking_run, tmp_path, capsys, text, problem):
    model, files = _copied_model(ranking_run, tmp_path)
    (model / "encoders.json").write_text(text)
    line = error(capsys, "score", str(model), "--pairs", "p.csv", "--out", str(tmp_path / "s.csv"))
    assert line.startswith(f"error: {model / 'encoders.json'}: {problem}"), line
    assert line.endswith(
        f"; it is {len(text)} bytes but the export wrote {files['encoders.json']}: cut short or "
        f"changed since ({COPY_AGAIN})"
    )


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,  # was a RecursionError traceback
        '{"format": "recjobs.model", "files": {"a\\u0000b": 1}}',  # a NUL in the error line
        '{"format": "recjobs.model", "files": {"a\\nb": 1}}',
    ],
    ids=["nested too deep", "NUL in a name", "newline in a name"],
)
def test_a_hostile_export_json_is_one_line(ranking_run, tmp_path, capsys, text):
    model, _ = _copied_model(ranking_run, tmp_path)
    (model / "export.json").write_text(text)
    line = error(capsys, "score", str(model), "--pairs", "p.csv", "--out", str(tmp_path / "s.csv"))
    assert line == (
        f"error: {model / 'export.json'}: is not the export's list of files (JSON with format "
        f"recjobs.model and files) ({COPY_AGAIN})"
    )


@pytest.mark.parametrize("command", ["plot", "status"])
def test_a_metrics_line_nested_too_deep_is_no_traceback(ranking_run, tmp_path, capsys, command):
    run = tmp_path / "run"
    shutil.copytree(ranking_run, run)
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write("[" * 100_000 + "]" * 100_000 + "\n")
    if command == "status":  # a line it cannot read is left out, as one still being written
        assert main(["status", str(run)]) == 0
        assert capsys.readouterr().out.splitlines()[0] == f"{run}: finished"
        return
    lines = sum(1 for _ in (run / "metrics.jsonl").open())
    assert error(capsys, "plot", str(run), "-o", str(tmp_path / "c.png")) == (
        f"error: {run / 'metrics.jsonl'}: line {lines}: not a JSON record"
    )


def test_a_run_s_damaged_model_file_says_how_to_export_it_again(ranking_run, tmp_path, capsys):
    """In a run's model/ beside its checkpoint the fix is to export again, and it works."""
    run = tmp_path / "run"
    shutil.copytree(ranking_run, run)
    (run / "model" / "encoders.json").unlink()
    line = error(capsys, "score", str(run), "--pairs", "p.csv", "--out", str(tmp_path / "s.csv"))
    again = f"recjobs train ranking --run-dir {run} --resume"
    assert line == (
        f"error: {run / 'model' / 'encoders.json'}: missing from the model folder (export.json "
        "lists it: it was deleted since the export, or the folder was copied in part) (export "
        f"it again from the run's checkpoint: {again} (a finished run trains no further; it "
        "reads the run's data again), or give another run)"
    )
    assert main(again.split()[1:]) == 0
    assert (run / "model" / "encoders.json").is_file()


# --------------------------------------------------------------------------- data


def test_an_empty_users_table_is_named(data, tmp_path, capsys):
    users = pq.read_table(data / "users.parquet")
    pq.write_table(users.slice(0, 0), data / "users.parquet")
    assert train_error(capsys, data, tmp_path / "run") == (
        f"error: {data / 'users.parquet'}: the users table has no rows (it needs a row for every "
        "user of the interactions (dataset.paths.users))"
    )


def test_float_ids_are_not_called_strings(data, tmp_path, capsys):
    path = data / "interactions_train.parquet"
    table = pq.read_table(path)
    ids = pa.array([i + 0.5 for i in table.column("user_id").to_pylist()], pa.float64())
    pq.write_table(table.set_column(0, "user_id", ids), path)
    line = train_error(capsys, data, tmp_path / "run")
    assert line.startswith(
        f"error: {path}: column 'user_id': values are numbers with a fraction (e.g. "
    )
    assert line.endswith(
        f") but integers in {data / 'users.parquet'} (ids are whole numbers or text: fix those "
        "values, or store the column as integers)"
    )


def test_the_timestamp_column_is_optional(data, tmp_path, capsys):
    for split in ("interactions_train", "interactions_val"):
        path = data / f"{split}.parquet"
        pq.write_table(pq.read_table(path).drop_columns(["timestamp"]), path)
    run = tmp_path / "run"
    sets = [a for s in [*TINY, "training.max_epochs=1"] for a in ("--set", s)]
    config = str(data / "config.yaml")
    assert main(["train", "retrieval", "--config", config, "--run-dir", str(run), *sets]) == 0
    assert (run / "model" / "config.yaml").is_file()


# --------------------------------------------------------------------------- paths


def test_a_parent_that_is_a_file_is_named(ranking_run, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "d"
    assert error(capsys, "data", "synth", "--out", str(out)) == (
        f"error: {out}: cannot write: {tmp_path / 'file'} is a file, not a directory (check --out)"
    )
    pq.write_table(pa.table({"user_id": [10003], "item_id": [50007]}), tmp_path / "pairs.parquet")
    out = tmp_path / "file" / "scores.csv"
    assert error(
        capsys,
        "score",
        str(ranking_run),
        "--pairs",
        str(tmp_path / "pairs.parquet"),
        "--out",
        str(out),
    ) == (
        f"error: {out}: cannot write: {tmp_path / 'file'} is a file, not a directory (check --out)"
    )
    assert (tmp_path / "file").read_text() == "x"


def test_a_checkpoints_file_is_found_at_start(tmp_path, capsys):
    """A fresh run refuses the directory as holding a run; --resume-or-start (what a job runs)
    starts over there and finds the file when it prepares the run directory, before an epoch."""
    run, name = tmp_path / "run", "checkpoints"
    run.mkdir()
    (run / name).write_text("mine")
    sets = [a for s in [*TINY, "training.max_epochs=1"] for a in ("--set", s)]
    argv = ["train", "retrieval", "--run-dir", str(run), "--resume-or-start", *sets]
    assert error(capsys, *argv) == (
        f"error: {run / name}: is a file, not a directory: the run writes its {name} there "
        "(remove or rename that file, or use another --run-dir)"
    )
    assert sorted(p.name for p in run.iterdir()) == [name]  # refused before any epoch
    assert (run / name).read_text() == "mine"


# --------------------------------------------------------------------------- config and submit


def test_a_key_after_a_yaml_merge_overrides_it(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(
        "ranking:\n  training: &t {lr: 0.1, batch_size: 64}\n"
        "retrieval:\n  training:\n    <<: *t\n    lr: 0.05\n"
    )
    training = resolved(capsys, "--config", str(path))["training"]
    assert (training["lr"], training["batch_size"]) == (0.05, 64)
    # A key given twice by the mapping itself is still a duplicate.
    path.write_text("retrieval:\n  training:\n    <<: {lr: 0.1}\n    lr: 0.05\n    lr: 0.2\n")
    assert error(capsys, "resolve", "retrieval", "--config", str(path)) == (
        f"error: {path}: invalid YAML: line 5, column 5: duplicate key 'lr' (also on line 4)"
    )


@pytest.mark.parametrize(
    "mounts, line",
    [
        (
            "type=volume,src=x",
            "error: --mounts: type=volume,src=x: no dst= (a volume mount needs src= and dst=) "
            "(e.g. type=volume,src=recjobs-runs,dst=/runs)",
        ),
        (
            "type=bind,dst=/data",
            "error: --mounts: type=bind,dst=/data: no src= (a bind mount needs src= and dst=) "
            "(e.g. type=bind,src=/data,dst=/data)",
        ),
        (
            "type=volume,source=x,target=",
            "error: --mounts: type=volume,src=x,dst=: no dst= (a volume mount needs src= and "
            "dst=) (e.g. type=volume,src=recjobs-runs,dst=/runs)",
        ),
    ],
)
def test_a_mount_without_src_or_dst_says_which(capsys, mounts, line):
    from torchx.specs.builders import materialize_appdef
    from torchx.specs.finder import get_component

    train_fn = get_component(f"{ROOT / 'components' / 'train.py'}:train").fn
    with pytest.raises(SystemExit) as exc:
        materialize_appdef(train_fn, ["--task", "retrieval", "--mounts", mounts])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_plot_of_nan_losses_says_what_it_found(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": s, "epoch": 0, "train/loss": float("nan")} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert error(capsys, "plot", str(run)) == (
        f"error: {run}: metrics.jsonl holds 3 records but nothing to draw: every value of "
        "train/loss is NaN or infinite (the run diverged; see its train.log)"
    )
    assert not (run / "curves.png").exists()
