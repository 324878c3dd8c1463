"""No blocking opens: a FIFO, a socket or a device at any path a command reads is one `error:`
line and exit 2, at once (recjobs.file_kind).

Each case runs `main()` in this process with a watchdog: were the command to block opening a
FIFO, the watchdog opens the FIFO's other end after WAIT_S, which lets the command go on, and
the case fails as a hang. Nothing waits when the command answers; WAIT_S is only a bound.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from recjobs.cli import main
from recjobs.errors import DataError
from recjobs.file_kind import require_regular, require_regular_tree, special_kind
from tests.runs import QUICKSTART, TINY

WAIT_S = 60.0


def _sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny retrieval run and the data set it was trained on."""
    root = tmp_path_factory.mktemp("blocking")
    assert main(["data", "synth", "--out", str(root / "data"), "--users", "300", "--items", "80",
                 "--interactions", "4000"]) == 0  # fmt: skip
    run = root / "run"
    argv = ["train", "retrieval", "--config", str(QUICKSTART), "--run-dir", str(run)]
    assert main([*argv, *_sets(*TINY, "training.max_epochs=1")]) == 0
    return root


def _answers_at_once(argv: list[str], fifos: list[Path], capsys) -> tuple[int, str]:
    """(exit code, stderr) of `recjobs ARGV`; fails when it blocked on one of `fifos`."""
    answered = threading.Event()
    unblocked: list[Path] = []

    def watchdog() -> None:
        if answered.wait(WAIT_S):
            return
        for fifo in fifos:  # the command is blocked in open(): give it a writer, then EOF
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                unblocked.append(fifo)
            except OSError:
                pass

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    try:
        code = main(argv)
    finally:
        answered.set()
        guard.join()
    assert not unblocked, f"recjobs {' '.join(argv)} blocked opening {unblocked}"
    return code, capsys.readouterr().err


def _fifo_at(path: Path) -> Path:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _one_error_line(err: str, path: Path) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [
        f"error: {path}: is a FIFO, not a regular file "
        "(reading it could wait forever; give a regular file)"
    ], err
    assert "Traceback" not in err


TRAIN_ON_DATA = [
    "train", "retrieval", "--config", "{root}/data/config.yaml", "--run-dir", "{root}/new",
    *_sets(*(f"dataset.paths.{t}={{root}}/data/{t}.parquet" for t in ("users", "items"))),
]  # fmt: skip

# (what becomes a FIFO, relative to the case's copy of `finished`; the command line, where
# {root} is that copy)
CASES = [
    ("config.yaml", ["resolve", "retrieval", "--config", "{root}/config.yaml"]),
    ("config.yaml", ["train", "retrieval", "--config", "{root}/config.yaml"]),
    ("data/users.parquet", TRAIN_ON_DATA),
    ("data/items.parquet/part-1.parquet", TRAIN_ON_DATA),
    ("run/config.yaml", ["train", "retrieval", "--run-dir", "{root}/run", "--resume"]),
    ("run/checkpoints/last.pt", ["train", "retrieval", "--run-dir", "{root}/run", "--resume"]),
    ("run/checkpoints/best.pt", ["train", "retrieval", "--run-dir", "{root}/run", "--resume"]),
    ("run/metrics.jsonl", ["train", "retrieval", "--run-dir", "{root}/run", "--resume"]),
    ("run/train.log", ["train", "retrieval", "--run-dir", "{root}/run", "--resume"]),
    ("users.csv", ["recommend", "{root}/run", "--out", "{root}/r.csv", "--users",
                   "{root}/users.csv"]),
    ("pairs.csv", ["recommend", "{root}/run", "--out", "{root}/r.csv", "--candidates",
                   "{root}/pairs.csv"]),
    ("pairs.csv", ["score", "{root}/run", "--out", "{root}/s.csv", "--pairs", "{root}/pairs.csv"]),
    ("run/model/config.yaml", ["recommend", "{root}/run", "--out", "{root}/r.csv"]),
    ("run/model/catalogue.pt", ["recommend", "{root}/run", "--out", "{root}/r.csv"]),
    ("run/model/encoders.json", ["recommend", "{root}/run", "--out", "{root}/r.csv"]),
    ("run/model/model.pt", ["recommend", "{root}/run", "--out", "{root}/r.csv"]),
    ("run/model/item_embeddings.pt", ["recommend", "{root}/run", "--out", "{root}/r.csv"]),
    ("run/model/export.json", ["recommend", "{root}/run", "--out", "{root}/r.csv"]),
    ("run/metrics.jsonl", ["plot", "{root}/run", "--out", "{root}/c.png"]),
    ("run/metrics.jsonl", ["status", "{root}/run"]),
    ("run/train.log", ["status", "{root}/run"]),
    ("run/config.yaml", ["status", "{root}/run"]),
    ("run/train.log", ["log", "{root}/run"]),
    ("run/train.log", ["log", "-f", "{root}/run"]),
    ("ml/u.data", ["data", "movielens", "--src", "{root}/ml", "--out", "{root}/ml-out"]),
]  # fmt: skip


@pytest.mark.parametrize(("fifo", "argv"), CASES, ids=[f"{a[0]}:{f}" for f, a in CASES])
def test_a_fifo_at_a_path_a_command_reads_is_one_line_at_once(
    finished, tmp_path, capsys, fifo, argv
):
    root = tmp_path / "copy"
    shutil.copytree(finished, root)
    # A table in parts (as Spark writes it) and MovieLens files, to put a FIFO among.
    parts = root / "data" / "items.parquet"
    whole = parts.read_bytes()
    parts.unlink()
    parts.mkdir()
    (parts / "part-0.parquet").write_bytes(whole)
    (root / "ml").mkdir()
    for name in ("u.data", "u.user", "u.item"):
        (root / "ml" / name).write_text("")
    path = _fifo_at(root / fifo)
    before = {p: p.read_bytes() for p in (root / "run").rglob("*") if p.is_file()}

    code, err = _answers_at_once([a.format(root=root) for a in argv], [path], capsys)

    assert code == 2, err
    _one_error_line(err, path)
    after = {p: p.read_bytes() for p in (root / "run").rglob("*") if p.is_file()}
    log = root / "run" / "train.log"
    if log in before:  # the log only gains the run's last word
        assert after.pop(log).startswith(before.pop(log))
    assert after == before  # refused before anything of the run was written


def test_a_socket_and_a_device_are_refused_too(tmp_path, capsys):
    sock_path = tmp_path / "config.yaml"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        assert main(["resolve", "retrieval", "--config", str(sock_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {sock_path}: is a socket, not a regular")
    assert main(["resolve", "retrieval", "--config", "/dev/zero"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: /dev/zero: is a character device, not a regular file"
    )


def test_regular_files_directories_links_and_missing_paths_pass(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("f", "link", "dangling", "nowhere", "."):
        assert special_kind(tmp_path / name) is None
    for name in ("f", "link", "nowhere", "."):
        require_regular(tmp_path / name)
    with pytest.raises(DataError, match=r"dangling: is a symbolic link to .*nowhere, which does"):
        require_regular(tmp_path / "dangling", DataError)  # never taken for a missing file
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "fifo-link").symlink_to(tmp_path / "pipe")  # a link is judged by its target
    assert special_kind(tmp_path / "fifo-link") == "a FIFO"
    (tmp_path / "parts" / "deep").mkdir(parents=True)
    os.mkfifo(tmp_path / "parts" / "deep" / "p.parquet")
    with pytest.raises(DataError, match=r"parts/deep/p.parquet: is a FIFO"):
        require_regular_tree(tmp_path / "parts", DataError)


# --------------------------------------------------------------------------- links to nothing

# Paths a command reads, as a symbolic link that leads nowhere: each used to be taken for a
# missing file. `train --resume` then trained from defaults (config.yaml: "was trained with a
# different config"), skipped best.pt (exporting the last weights as the best), started
# metrics.jsonl over or wrote train.log through the link, creating its target (exit 0);
# `recommend` took a model without export.json for an older export; `plot` said "no
# metrics.jsonl here"; `status` and `log` called a finished run "not started", and `log -f`
# waited for it for ever. Now: one line naming the link, exit 2, nothing written.
RESUME = ["train", "retrieval", "--run-dir", "{root}/run", "--resume"]
LINK_CASES = [
    ("config.yaml", ["resolve", "retrieval", "--config", "{root}/config.yaml"]),
    ("data/users.parquet", TRAIN_ON_DATA),
    ("run/config.yaml", RESUME),
    ("run/checkpoints/best.pt", RESUME),
    ("run/metrics.jsonl", RESUME),
    ("run/train.log", RESUME),
    ("users.csv", ["recommend", "{root}/run", "--out", "{root}/r.csv", "--users",
                   "{root}/users.csv"]),
    ("run/model/export.json", ["recommend", "{root}/run", "--out", "{root}/r.csv"]),
    ("run/metrics.jsonl", ["plot", "{root}/run", "--out", "{root}/c.png"]),
    ("run/train.log", ["status", "{root}/run"]),
    ("run/train.log", ["log", "{root}/run"]),
    ("run/train.log", ["log", "-f", "{root}/run"]),
]  # fmt: skip


@pytest.mark.parametrize("kind", ["dangling", "loop"])
@pytest.mark.parametrize(("link", "argv"), LINK_CASES, ids=[f"{a[0]}:{f}" for f, a in LINK_CASES])
def test_a_link_that_leads_nowhere_is_named_never_taken_for_absence(
    finished, tmp_path, capsys, link, argv, kind
):
    root = tmp_path / "copy"
    shutil.copytree(finished, root)
    path = root / link
    target = root / "nowhere"
    if path.exists():
        path.unlink()
    if kind == "dangling":
        path.symlink_to(target)
        problem = f"is a symbolic link to {target}, which does not exist"
    else:
        path.symlink_to(path.with_name("other"))
        path.with_name("other").symlink_to(path)
        problem = "is a loop of symbolic links"
    before = {p: p.read_bytes() for p in (root / "run").rglob("*") if p.is_file()}

    code, err = _answers_at_once([a.format(root=root) for a in argv], [], capsys)

    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {path}: {problem} (restore what it points to, or remove the link)"]
    assert "Traceback" not in err
    after = {p: p.read_bytes() for p in (root / "run").rglob("*") if p.is_file()}
    log = root / "run" / "train.log"
    if log in before:  # the log only gains the run's last word
        assert after.pop(log).startswith(before.pop(log))
    assert after == before and not target.exists()  # nothing written, not even through it


def test_a_finished_run_whose_train_log_is_gone_is_still_finished(finished, tmp_path, capsys):
    """status said "not started", and `log -f` waited for ever for the log."""
    from recjobs.training import run_status

    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    (run / "train.log").unlink()
    assert main(["status", str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{run}: finished"

    def no_waiting(seconds: float) -> None:
        raise AssertionError("log -f waited for a run that has ended")

    said = io.StringIO()
    assert run_status.follow_log(run, io.BytesIO(), say=said, sleep=no_waiting) == 0
    assert said.getvalue() == (
        f"recjobs log: {run} finished: train.log is missing; summary.json, model show the run "
        "finished\n"
    )
    (run / "summary.json").unlink()
    shutil.rmtree(run / "model")
    said = io.StringIO()
    assert run_status.follow_log(run, io.BytesIO(), say=said, sleep=no_waiting) == 1
    assert said.getvalue().startswith(f"recjobs log: {run} stopped: train.log is missing; the run ")
