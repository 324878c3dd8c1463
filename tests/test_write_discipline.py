"""Nothing lost: a command that fails, or is pointed at the wrong directory, leaves every file
that was there byte-identical (docs/reliability.md, "Nothing lost: the write discipline").

Every case runs the real CLI (`recjobs.cli.main`) on real tiny runs and data sets, snapshots
every file under the directories the command could touch, and compares after it failed. Two
documented exceptions: train.log only grows (a failed attempt appends its error line, which
`recjobs status` reads), and `.lock` holds the pid of the trainer that last held it. A SIGTERM
moves a run on to its new checkpoint: only the resume files may change then.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recjobs.cli import main
from recjobs.training import tasks, trainer

from runs import StopAfter

# A tiny ranking run: 1 epoch of 8 steps on the synthetic data set written to disk.
SYNTH = ["--users", "200", "--items", "60", "--interactions", "2400"]
SETS = [
    "model.embedding_dim=8",
    "model.hidden_dims=[16]",
    "model.scorer_hidden_dims=[16]",
    "training.batch_size=256",
    "training.max_epochs=1",
    "training.log_steps=3",
]
GROWS = {"train.log"}  # appended to, never rewritten
PID = {".lock"}  # the last trainer's pid


def train_argv(data: Path, run_dir: Path, *extra: str) -> list[str]:
    out = ["train", "ranking", "--config", str(data / "config.yaml"), "--run-dir", str(run_dir)]
    for item in SETS:
        out += ["--set", item]
    return [*out, *extra]


def snapshot(*roots: Path) -> dict[str, bytes | str]:
    """Every file, directory and link under `roots`: bytes, "dir", or "-> target"."""
    found: dict[str, bytes | str] = {}
    for root in roots:
        if root.is_symlink() or root.is_file():
            found[str(root)] = _entry(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                found[str(path)] = _entry(path)
    return found


def _entry(path: Path) -> bytes | str:
    if path.is_symlink():
        return f"-> {os.readlink(path)}"
    if path.is_dir():
        return "dir"
    return path.read_bytes()


def assert_kept(
    before: dict[str, bytes | str], *roots: Path, may_change: frozenset[str] = frozenset()
):
    """Every entry of `before` is still there, the same; names in `may_change` aside."""
    after = snapshot(*roots)
    for path, was in before.items():
        name = Path(path).name
        if name in may_change or name in PID:
            continue
        assert path in after, f"{path} is gone"
        if name in GROWS:
            assert isinstance(was, bytes) and after[path].startswith(was), f"{path} rewritten"
        else:
            assert after[path] == was, f"{path} changed"


def fails(capsys, argv: list[str], code: int = 2) -> str:
    """Run the CLI, expect `code` and one `error:` line on stderr; return that line."""
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """(a data set, a finished run trained on it), shared: each test copies the run."""
    base = tmp_path_factory.mktemp("made")
    data, run = base / "data", base / "run"
    assert main(["data", "synth", "--out", str(data), *SYNTH]) == 0
    assert main(train_argv(data, run)) == 0
    return data, run


def copy_run(made, tmp_path) -> tuple[Path, Path]:
    data, run = made
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    return data, copy


# --------------------------------------------------------------------------- the cases


def test_a_finished_run_without_checkpoints_is_never_started_over(made, tmp_path, capsys):
    data, run = copy_run(made, tmp_path)
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run, data)
    assert fails(capsys, train_argv(data, run, "--resume", "--set", "training.lr=1e30")) == (
        f"error: {run}: has no checkpoints/last.pt to resume (drop --resume to start a new run, "
        "or pass --resume-or-start to resume when there is a checkpoint and start a new run "
        "when there is none)"
    )
    line = fails(capsys, train_argv(data, run, "--resume-or-start", "--set", "training.lr=1e30"))
    assert line == (
        f"error: {run}: holds a finished run (summary.json, model) whose checkpoints/last.pt is "
        "gone: there is nothing to resume, and starting over would replace it (use another "
        "--run-dir)"
    )
    assert fails(capsys, train_argv(data, run)) == (
        f"error: {run}: already holds a run (config.yaml, metrics.jsonl, train.log, "
        "summary.json, model) (use another --run-dir)"
    )
    assert snapshot(run, data) == before  # refused before the lock: .lock, train.log too


def test_divergence_names_the_last_good_checkpoint_only_when_there_is_one(made, tmp_path, capsys):
    data, _ = made
    run = tmp_path / "fresh"
    line = fails(capsys, train_argv(data, run, "--set", "training.lr=1e30"), code=3)
    assert line.startswith("error: training: loss is not finite at step ") or line.startswith(
        "error: validation: "
    ), line
    assert "holds the last good state" not in line, line
    assert line.endswith(
        "none before it: nothing to resume; start again (--resume-or-start starts over in this "
        "--run-dir). Lower the learning rate or set grad_clip_norm)"
    ), line
    assert not (run / "checkpoints").exists()
    # The failed new run is a run: a second fresh start there is refused, and says how.
    assert fails(capsys, train_argv(data, run)).endswith(
        "(use another --run-dir, or pass --resume-or-start to start it over here (it has no "
        "checkpoint))"
    )


def _nan_loss(monkeypatch) -> None:
    real = tasks.RankingTask.loss

    def nan(self, model, batch):
        return real(self, model, batch) * float("nan")

    monkeypatch.setattr(tasks.RankingTask, "loss", nan)


def test_a_resume_that_diverges_puts_config_and_metrics_back(made, tmp_path, capsys, monkeypatch):
    """The resume rewrites config.yaml (max_epochs 2) and cuts metrics.jsonl back to its
    checkpoint before its first step; diverging before its first checkpoint, it puts both back,
    and the error's "holds the last good state" is true."""
    data, run = copy_run(made, tmp_path)
    before = snapshot(run, data)
    _nan_loss(monkeypatch)
    line = fails(capsys, train_argv(data, run, "--resume", "--set", "training.max_epochs=2"), 3)
    assert f"{run}/checkpoints/last.pt holds the last good state" in line, line
    assert_kept(before, run, data)
    assert (run / "train.log").read_text().splitlines()[-1].endswith(line)


def test_train_into_a_data_set_is_refused(made, tmp_path, capsys):
    data, _ = made
    before = snapshot(data)
    for mode in ([], ["--resume-or-start"]):
        assert fails(capsys, train_argv(data, data, *mode)) == (
            f"error: {data}: holds a data set (users.parquet, items.parquet, "
            "interactions_train.parquet, interactions_val.parquet), not a run (use another "
            "--run-dir)"
        )
    assert snapshot(data) == before  # not even a .lock or a train.log


def test_train_into_an_exported_model_is_refused(made, tmp_path, capsys):
    data, run = copy_run(made, tmp_path)
    before = snapshot(run)
    assert fails(capsys, train_argv(data, run / "model")) == (
        f"error: {run / 'model'}: holds an exported model (catalogue.pt, export.json), not a "
        "run (use another --run-dir)"
    )
    assert snapshot(run) == before


@pytest.mark.parametrize("kept", ["export.json", "catalogue.pt"])
def test_a_model_folder_is_known_by_either_file_only_an_export_writes(made, tmp_path, capsys, kept):
    """export.json is written last by the export: a model whose catalogue.pt was deleted is
    still a model (and an export from before export.json is one by its catalogue.pt). Neither
    `train --run-dir` nor `data synth --out` takes it, nor does an output go inside it."""
    data, run = copy_run(made, tmp_path)
    model = tmp_path / "copied-model"
    shutil.copytree(run / "model", model)
    for name in ("export.json", "catalogue.pt"):
        if name != kept:
            (model / name).unlink()
    before = snapshot(model)
    held = f"holds an exported model ({kept})"
    assert fails(capsys, train_argv(data, model)) == (
        f"error: {model}: {held}, not a run (use another --run-dir)"
    )
    assert fails(capsys, ["data", "synth", "--out", str(model), "--force"]) == (
        f"error: {model}: {held}, not a data set (use another --out)"
    )
    out = model / "recommendations.csv"
    assert fails(capsys, _output_argv("recommend", run, out, tmp_path)) == (
        f"error: {out}: is in {model}, an exported model's folder, whose files it could replace "
        "(write it elsewhere, e.g. beside the run)"
    )
    assert snapshot(model) == before


def test_synth_never_replaces_a_run_and_a_data_set_only_with_force(made, tmp_path, capsys):
    data, run = copy_run(made, tmp_path)
    before = snapshot(run)
    for force in ([], ["--force"]):
        assert fails(capsys, ["data", "synth", "--out", str(run), *force]) == (
            f"error: {run}: holds a run (metrics.jsonl, train.log, summary.json, model, "
            "checkpoints), not a data set (use another --out)"
        )
    assert fails(capsys, ["data", "synth", "--out", str(run / "model")]).startswith(
        f"error: {run / 'model'}: holds an exported model (catalogue.pt, export.json), not a data set"
    )
    assert snapshot(run) == before

    other = tmp_path / "data"
    shutil.copytree(data, other)
    before = snapshot(other)
    assert fails(capsys, ["data", "synth", "--out", str(other), *SYNTH, "--seed", "7"]) == (
        f"error: {other}: already holds a data set (config.yaml, users.parquet, items.parquet, "
        "interactions_train.parquet, interactions_val.parquet) (pass --force to replace it, or "
        "use another --out)"
    )
    assert snapshot(other) == before
    assert main(["data", "synth", "--out", str(other), *SYNTH, "--seed", "7", "--force"]) == 0
    after = snapshot(other)
    assert after.keys() == before.keys()
    assert after[str(other / "users.parquet")] != before[str(other / "users.parquet")]


def test_a_config_yaml_alone_is_replaced_only_with_force(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("mine: 1\n")
    assert fails(capsys, ["data", "synth", "--out", str(tmp_path), *SYNTH]).startswith(
        f"error: {tmp_path}: already holds a data set (config.yaml) (pass --force"
    )
    assert (tmp_path / "config.yaml").read_text() == "mine: 1\n"


def test_a_forced_synth_that_cannot_write_one_file_replaces_none(made, tmp_path, capsys):
    data, _ = made
    other = tmp_path / "data"
    shutil.copytree(data, other)
    (other / "interactions_val.parquet").unlink()
    (other / "interactions_val.parquet").mkdir()  # in the way of the fourth file
    before = snapshot(other)
    line = fails(capsys, ["data", "synth", "--out", str(other), *SYNTH, "--seed", "7", "--force"])
    assert line == (
        f"error: {other}/interactions_val.parquet: cannot write: Is a directory (check --out)"
    )
    assert snapshot(other) == before


@pytest.mark.parametrize("flag", ["--resume", "--resume-or-start"])
def test_a_dangling_last_checkpoint_is_named_and_nothing_is_rewritten(made, tmp_path, capsys, flag):
    data, run = copy_run(made, tmp_path)
    last = run / "checkpoints" / "last.pt"
    last.unlink()
    last.symlink_to(tmp_path / "gone.pt")
    before = snapshot(run, data)
    assert fails(capsys, train_argv(data, run, flag)) == (
        f"error: {last}: is a symbolic link to {tmp_path / 'gone.pt'}, which does not exist "
        "(restore what it points to, or remove the link)"
    )
    assert snapshot(run, data) == before


@pytest.mark.parametrize(
    "held",
    [("model", "config.yaml", "train.log"), ("config.yaml",), ("train.log",), ("summary.json",)],
    ids=lambda held: "+".join(held),
)
def test_a_fresh_run_refuses_a_directory_holding_any_run_file(made, tmp_path, capsys, held):
    data, run = copy_run(made, tmp_path)
    for name in ("checkpoints", "metrics.jsonl", "model", "config.yaml", "train.log"):
        if name not in held:
            shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    if "summary.json" not in held:
        (run / "summary.json").unlink()
    before = snapshot(run)
    line = fails(capsys, train_argv(data, run))
    assert line.startswith(f"error: {run}: already holds a run ("), line
    assert sorted(line.split("(")[1].split(")")[0].split(", ")) == sorted(held)
    assert snapshot(run) == before


def test_a_new_run_failing_before_it_wrote_leaves_no_train_log(made, tmp_path, capsys):
    """A setting found late (capturable needs CUDA) fails a new run before it writes: no
    train.log is left to make the directory look like a run, so the corrected command runs."""
    data, _ = made
    run = tmp_path / "run"
    assert fails(capsys, [*train_argv(data, run), "--optimizer-args", "capturable=true"])
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert main(train_argv(data, run)) == 0


# --------------------------------------------------------------------------- the property


def _late_config(monkeypatch, argv):  # found only once the device is known
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return [*argv, "--optimizer-args", "capturable=true"], 2


def _data_error(monkeypatch, argv):  # the validation table went bad since the config was made
    data = Path(argv[argv.index("--config") + 1]).parent
    (data / "interactions_val.parquet").write_bytes(b"not parquet")
    return argv, 2


def _divergence(monkeypatch, argv):
    _nan_loss(monkeypatch)
    return argv, 3


def _sigterm(monkeypatch, argv):
    StopAfter.n = 3
    monkeypatch.setattr(trainer, "StopSignal", StopAfter)
    return argv, 143


def _disk_full(monkeypatch, argv):  # every metrics record fails to append
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    return argv, 2


FAILURES = {
    "late config": _late_config,
    "data error": _data_error,
    "divergence": _divergence,
    "SIGTERM": _sigterm,
    "disk full": _disk_full,
}
# What a SIGTERM may change: it moves the run on to a new checkpoint (docs/reliability.md).
RESUME_FILES = frozenset({"last.pt", "last.prev.pt", "metrics.jsonl", "config.yaml"})


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("command", ["train", "train --resume"])
def test_a_failing_train_keeps_every_file_that_was_there(
    tmp_path, capsys, monkeypatch, command, failure
):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["data", "synth", "--out", str(data), *SYNTH]) == 0
    argv = train_argv(data, run)
    if command == "train --resume":
        assert main(argv) == 0
        argv = [*argv, "--resume", "--set", "training.max_epochs=2"]
    else:
        run.mkdir()
        (run / "notes.txt").write_text("the user's own file\n")
    before = snapshot(run, data)
    argv, code = FAILURES[failure](monkeypatch, argv)
    if failure == "data error":
        before = snapshot(run, data)  # the corrupted table is the new "before"
    capsys.readouterr()
    assert main(argv) == code, capsys.readouterr().err
    monkeypatch.undo()
    assert_kept(before, run, data, may_change=RESUME_FILES if failure == "SIGTERM" else frozenset())


def _bad_ids(monkeypatch, argv, tmp_path):  # the ids file lacks its column
    (tmp_path / "ids.csv").write_text("who\n1\n")
    flag = "--users" if argv[0] == "recommend" else "--pairs"
    return [*argv, flag, str(tmp_path / "ids.csv")], tmp_path / "ids.csv"


def _unreadable_model(monkeypatch, argv, tmp_path):  # the weights were cut short
    model = Path(argv[1])
    (model / "model.pt").write_bytes((model / "model.pt").read_bytes()[:100])
    if argv[0] == "score":
        argv = [*argv, "--pairs", str(tmp_path / "ids.csv")]
    return argv, model


@pytest.mark.parametrize("failure", [_bad_ids, _unreadable_model], ids=["bad ids", "bad model"])
@pytest.mark.parametrize("command", ["recommend", "score"])
def test_a_failing_recommend_or_score_keeps_its_out_file(
    made, tmp_path, capsys, monkeypatch, command, failure
):
    _, run = copy_run(made, tmp_path)
    out = tmp_path / "out.csv"
    out.write_text("user_id,item_id,score\nkeep,me,1\n")
    (tmp_path / "ids.csv").write_text("user_id,item_id\nu0,i0\n")
    argv = [command, str(run / "model"), "--out", str(out)]
    argv, where = failure(monkeypatch, argv, tmp_path)
    before = snapshot(out, run)
    assert fails(capsys, argv).startswith(f"error: {where}"), where
    assert_kept(before, out, run)


@pytest.mark.parametrize("command", ["recommend", "score"])
def test_recommend_and_score_never_replace_a_data_set_table(made, tmp_path, capsys, command):
    data, run = copy_run(made, tmp_path)
    other = tmp_path / "data"
    shutil.copytree(data, other)
    (tmp_path / "pairs.csv").write_text("user_id,item_id\nu0,i0\n")
    before = snapshot(other)
    argv = [command, str(run / "model"), "--out", str(other / "users.parquet")]
    if command == "score":
        argv += ["--pairs", str(tmp_path / "pairs.csv")]
    assert fails(capsys, argv) == (
        f"error: {other / 'users.parquet'}: is a table of the data set in its folder (use "
        "another --out)"
    )
    assert snapshot(other) == before


def _output_argv(command: str, run: Path, out: Path, tmp_path: Path) -> list[str]:
    if command == "plot":
        return ["plot", str(run), "-o", str(out)]
    (tmp_path / "pairs.csv").write_text("user_id,item_id\n10000,50000\n")
    flag = "--pairs" if command == "score" else "--candidates"  # a ranking model
    return [command, str(run), "--out", str(out), flag, str(tmp_path / "pairs.csv")]


@pytest.mark.parametrize(
    "where",
    ["run/model/out", "run/checkpoints/out", "run/model/sub/out", "copied-model/out"],
)
@pytest.mark.parametrize("command", ["recommend", "score", "plot"])
def test_an_output_inside_a_run_s_model_or_checkpoints_is_refused(
    made, tmp_path, capsys, command, where
):
    """The next export replaces model/ whole (the output would be lost) and a name there could
    replace the model's own files: refused before anything is read or written."""
    _, run = copy_run(made, tmp_path)
    shutil.copytree(run / "model", tmp_path / "copied-model")
    out = tmp_path / (where + (".png" if command == "plot" else ".csv"))
    argv = _output_argv(command, run, out, tmp_path)
    before = snapshot(tmp_path)
    line = fails(capsys, argv)
    folder = {
        "run/model/out": run / "model",
        "run/checkpoints/out": run / "checkpoints",
        "run/model/sub/out": run / "model",
        "copied-model/out": tmp_path / "copied-model",
    }[where]
    what = {
        "model": "the run's model/ folder, which its next export replaces whole",
        "checkpoints": "the run's checkpoints/ folder, which its trainer writes",
        "copied-model": "an exported model's folder, whose files it could replace",
    }[folder.name]
    assert line == (
        f"error: {out}: is in {folder}, {what} (write it elsewhere, e.g. beside the run)"
    )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["FIFO", "socket", "directory"])
@pytest.mark.parametrize("command", ["recommend", "score", "plot"])
def test_an_output_that_is_not_a_regular_file_is_never_replaced(
    made, tmp_path, capsys, command, kind
):
    import socket

    _, run = copy_run(made, tmp_path)
    out = tmp_path / ("out.png" if command == "plot" else "out.csv")
    listening = None
    if kind == "FIFO":
        os.mkfifo(out)
    elif kind == "socket":
        listening = socket.socket(socket.AF_UNIX)
        listening.bind(str(out))
    else:
        out.mkdir()
    try:
        line = fails(capsys, _output_argv(command, run, out, tmp_path))
    finally:
        if listening is not None:
            listening.close()
    if kind == "directory":
        hint = "name a file" if command == "plot" else "name a .parquet or .csv file, or write "
        assert line.startswith(f"error: {out}: is a directory ({hint}"), line
        assert out.is_dir()
        return
    article = {"FIFO": "a FIFO", "socket": "a socket"}[kind]
    assert line == (
        f"error: {out}: is {article}, not a regular file (an output replaces only a regular file)"
    )
    assert (stat.S_ISFIFO if kind == "FIFO" else stat.S_ISSOCK)(out.lstat().st_mode)


@pytest.mark.parametrize("command", ["recommend", "score", "plot"])
def test_an_existing_output_file_is_replaced_atomically(made, tmp_path, capsys, command):
    """A new file takes the old one's name by rename (a new inode): a reader holding the old
    file keeps reading it whole, and no temporary file is left."""
    _, run = copy_run(made, tmp_path)
    out = tmp_path / ("out.png" if command == "plot" else "out.csv")
    out.write_bytes(b"an earlier output")
    inode = out.stat().st_ino
    with open(out, "rb") as reader:
        assert main(_output_argv(command, run, out, tmp_path)) == 0
        assert reader.read() == b"an earlier output"
    assert out.stat().st_ino != inode and out.read_bytes() != b"an earlier output"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == []


def test_a_failing_plot_keeps_the_image_and_the_runs(made, tmp_path, capsys):
    _, run = copy_run(made, tmp_path)
    image = run / "curves.png"
    image.write_bytes(b"an earlier plot")
    (run / "metrics.jsonl").write_text("")  # nothing to draw
    before = snapshot(run)
    fails(capsys, ["plot", str(run)])
    fails(capsys, ["plot", str(run), "-o", str(image)])
    assert snapshot(run) == before


def test_a_fresh_run_beside_a_running_one_names_the_running_one(made, tmp_path, capsys):
    """The lock holder is asked first: "another trainer is using it", not "it holds a run"."""
    from recjobs.training.rundir import RunDir

    data, run = copy_run(made, tmp_path)
    with RunDir(run).lock():
        before = snapshot(run)
        assert fails(capsys, train_argv(data, run)) == (
            f"error: {run}: another trainer is using this run dir (pid {os.getpid()}) (wait for "
            "it or use another --run-dir)"
        )
        assert snapshot(run) == before


def test_ctrl_c_during_a_forced_synth_replaces_nothing(made, tmp_path, capsys, monkeypatch):
    """SIGINT (KeyboardInterrupt) while the third table is written: the data set --force was
    replacing is whole, and no temporary file is left."""
    import pyarrow.parquet as pq

    data, _ = made
    other = tmp_path / "data"
    shutil.copytree(data, other)
    before = snapshot(other)
    real, calls = pq.ParquetWriter.write_table, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", interrupted)
    line = fails(
        capsys, ["data", "synth", "--out", str(other), *SYNTH, "--seed", "7", "--force"], 130
    )
    assert line == f"error: interrupted (SIGINT): {other} is as it was (nothing of it replaced)"
    assert len(calls) == 3
    assert snapshot(other) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_while_a_data_set_is_committed_waits_for_the_last_rename(
    made, tmp_path, capsys, monkeypatch, signum
):
    """A signal in the middle of the five renames is acted on after the last: the data set
    --force replaced is all new, and the line says so (not "as it was")."""
    from recjobs import atomic

    data, _ = made
    other = tmp_path / "data"
    shutil.copytree(data, other)
    real, renames = os.replace, []

    def replace(src, dst):
        renames.append(dst)
        if len(renames) == 2:
            os.kill(os.getpid(), signum)
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    line = fails(
        capsys,
        ["data", "synth", "--out", str(other), *SYNTH, "--seed", "7", "--force"],
        128 + signum,
    )
    monkeypatch.undo()
    name = signal.Signals(signum).name
    assert line == f"error: interrupted ({name}): {other} holds the new data set, whole"
    assert [Path(p).name for p in renames] == [
        "users.parquet",
        "items.parquet",
        "interactions_train.parquet",
        "interactions_val.parquet",
        "config.yaml",
    ]
    fresh = tmp_path / "fresh"
    assert main(["data", "synth", "--out", str(fresh), *SYNTH, "--seed", "7"]) == 0
    made_fresh = {  # the same data set (its config.yaml names its own folder)
        path.replace(str(fresh), str(other)): content.replace(
            str(fresh).encode(), str(other).encode()
        )
        for path, content in snapshot(fresh).items()
    }
    assert snapshot(other) == made_fresh


# A real `recjobs` process whose writer waits just before it renames its finished temporary file
# over --out (reading stdin, which the test never writes): the observable event is the line it
# prints there. Only that wait is added; the signal, the handler and the clean-up are real.
_HOLD_BEFORE_RENAME = """
import os, sys
real = os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.basename(src).startswith(".tmp-") and str(dst) == os.environ["HOLD_AT"]:
        print("recjobs-test: the output is written, before its rename", file=sys.stderr, flush=True)
        sys.stdin.readline()
    return real(src, dst, *args, **kwargs)
os.replace = replace
from recjobs.__main__ import run
sys.argv = ["recjobs", *sys.argv[1:]]
raise SystemExit(run())
"""


def signalled_at(argv: list[str], event: str, signum: int, hold_at: Path) -> tuple[int, str]:
    """Run `recjobs ARGV` in a real process, send `signum` once it prints `event` on stderr:
    (its exit code, its stderr)."""
    program = [sys.executable, "-c", _HOLD_BEFORE_RENAME, *argv]
    env = {**os.environ, "HOLD_AT": str(hold_at)}
    proc = subprocess.Popen(
        program, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if event in line:
                break
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signum)
        lines.append(proc.stderr.read())
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stdin.close()
    return proc.returncode, "".join(lines)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", ["recommend", "score", "plot"])
def test_a_stop_signal_before_the_output_s_rename_keeps_the_old_output(
    made, tmp_path, command, signum
):
    """SIGTERM used to end `recommend`, `score` and `plot` silently, leaving their `.tmp-*`
    file beside --out; now: one line naming the signal, exit 128 + its number, the earlier
    output byte-identical and no temporary file."""
    _, run = copy_run(made, tmp_path)
    out = tmp_path / ("out.png" if command == "plot" else "out.csv")
    out.write_bytes(b"an earlier output")
    argv = _output_argv(command, run, out, tmp_path)
    before = snapshot(tmp_path)
    code, err = signalled_at(argv, "before its rename", signum, out)
    name = signal.Signals(signum).name
    assert code == 128 + signum, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: interrupted ({name}): {out} is as it was (nothing of it replaced)"]
    assert snapshot(tmp_path) == before  # no .tmp-* file, the old output whole


def test_a_stop_signal_before_a_first_output_leaves_nothing(made, tmp_path):
    _, run = copy_run(made, tmp_path)
    out = tmp_path / "new" / "recommendations.parquet"
    argv = _output_argv("recommend", run, out, tmp_path)
    code, err = signalled_at(argv, "before its rename", signal.SIGTERM, out)
    assert code == 143, err
    assert err.splitlines()[-1] == f"error: interrupted (SIGTERM): nothing was written to {out}"
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_target_that_is_a_link_to_nothing_is_named(made, tmp_path, capsys, kind):
    """mkdir and open call such a link "File exists": `data synth --out` said `cannot write:
    File exists`, `train --run-dir` "a parent of it is a file", and `plot` of a loop was a
    RuntimeError traceback. Nothing is written through the link."""
    data, run = copy_run(made, tmp_path)
    link, target = tmp_path / "link", tmp_path / "nowhere"
    if kind == "dangling":
        link.symlink_to(target)
        problem = f"{link} is a symbolic link to {target}, which does not exist"
    else:
        link.symlink_to(tmp_path / "other")
        (tmp_path / "other").symlink_to(link)
        problem = f"{link} is a loop of symbolic links"
    synth = ["data", "synth", "--out", str(link / "data"), *SYNTH]
    assert fails(capsys, synth) == f"error: {link / 'data'}: cannot write: {problem} (check --out)"
    assert fails(capsys, train_argv(data, link)) == (
        f"error: {link}: {problem.removeprefix(f'{link} ')} (use another --run-dir)"
    )
    assert fails(capsys, train_argv(data, link / "run")) == (
        f"error: {link / 'run'}: {problem} (use another --run-dir)"
    )
    assert fails(capsys, ["plot", str(link)]).startswith(f"error: {link}: ")
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["link", "run", *(["other"] if kind == "loop" else [])]
    )


def test_a_failing_recommend_parts_creates_no_folder(made, tmp_path, capsys):
    """The parts folder used to be created before the model was read."""
    out = tmp_path / "parts"
    assert fails(capsys, ["recommend", str(tmp_path / "nowhere"), "--out", str(out),
                          "--parts", "parquet"]).startswith(f"error: {tmp_path / 'nowhere'}: not found")  # fmt: skip
    assert not out.exists()
