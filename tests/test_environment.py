"""The environment recjobs reads, and standard streams that cannot be written.

Environment variables (RECJOBS_LOG_LEVEL; torchrun's RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) that cannot be used are one `error:` line naming the variable, exit 2,
before anything is written. `recjobs CMD | head -c 10`: the command stops quietly, exit 0, as
Unix tools do (no BrokenPipeError traceback). A stdout on a full disk (`>/dev/full`) is one
`error: stdout:` line and exit 2; a stderr there loses the lines but keeps the exit code.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recjobs.cli import main
from tests.runs import QUICKSTART, ROOT, TINY

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in (*TORCHRUN_VARS, "RECJOBS_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    # main() sets up logging once per process; let each case set it up again.
    root = logging.getLogger()
    kept = root.handlers[:]
    yield
    root.handlers[:] = kept


ENVIRONMENTS = [
    (
        {"RECJOBS_LOG_LEVEL": "BOGUS"},
        "error: RECJOBS_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, "
        "got 'BOGUS'",
    ),
    (
        {"WORLD_SIZE": "abc"},
        "error: WORLD_SIZE: must be a whole number in ASCII digits, got 'abc' (torchrun sets it; unset it to "
        "run as a single process)",
    ),
    (
        {"WORLD_SIZE": "100000000"},
        "error: WORLD_SIZE: must be between 1 and 4096, got 100000000 (torchrun sets it; unset "
        "it to run as a single process)",
    ),
    (
        {"RANK": "%(message)s"},
        "error: RANK: must be a whole number in ASCII digits, got '%(message)s' (torchrun sets it; unset it to "
        "run as a single process)",
    ),
    (
        {"RANK": "-1"},
        "error: RANK: must be between 0 and 4095, got -1 (torchrun sets it; unset it to run as "
        "a single process)",
    ),
    (
        {"WORLD_SIZE": "2", "RANK": "2"},
        "error: RANK: must be below WORLD_SIZE (2), got 2 (torchrun sets it; unset it to run "
        "as a single process)",
    ),
    (
        {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "zero"},
        "error: LOCAL_RANK: must be a whole number in ASCII digits, got 'zero' (torchrun sets it; unset it to "
        "run as a single process)",
    ),
    (
        # Python's int() reads an Arabic-Indic three; torchrun never writes one
        {"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "\u0663"},
        "error: LOCAL_RANK: must be a whole number in ASCII digits, got '\u0663' (torchrun "
        "sets it; unset it to run as a single process)",
    ),
    (
        {"WORLD_SIZE": "\uff12"},  # a full-width two
        "error: WORLD_SIZE: must be a whole number in ASCII digits, got '\uff12' (torchrun "
        "sets it; unset it to run as a single process)",
    ),
    (
        {"RANK": "1_0", "WORLD_SIZE": "16"},
        "error: RANK: must be a whole number in ASCII digits, got '1_0' (torchrun sets it; "
        "unset it to run as a single process)",
    ),
    (
        {"WORLD_SIZE": "9" * 5000},
        "error: WORLD_SIZE: must be between 1 and 4096, got '" + "9" * 40 + "' (torchrun "
        "sets it; unset it to run as a single process)",
    ),
    (
        {"WORLD_SIZE": "2", "RANK": "0"},
        "error: MASTER_ADDR: not set, but WORLD_SIZE > 1 asks for a job of several processes "
        "(start the job with torchrun (or recjobs' TorchX component), or unset WORLD_SIZE)",
    ),
    (
        {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"},
        "error: MASTER_PORT: must be a whole number in ASCII digits, got 'http' (torchrun sets it; unset it to "
        "run as a single process)",
    ),
]


@pytest.mark.parametrize(("env", "expected"), ENVIRONMENTS, ids=lambda v: str(v)[:40])
def test_an_unusable_environment_is_one_line_before_anything_is_written(
    monkeypatch, capsys, tmp_path, env, expected
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    run = tmp_path / "run"
    argv = ["train", "retrieval", "--config", str(QUICKSTART), "--run-dir", str(run)]
    code = main([*argv, *[a for s in TINY for a in ("--set", s)]])
    err = capsys.readouterr().err
    assert (code, err) == (2, expected + "\n")
    assert not run.exists()


def test_a_lowercase_log_level_and_a_rank_are_taken():
    env = {**os.environ, "RECJOBS_LOG_LEVEL": "debug", "RANK": "0", "WORLD_SIZE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging; from recjobs.cli import _set_up_logging; _set_up_logging(); "
            "logging.getLogger('recjobs.test').debug('shown')",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert " DEBUG [rank 0] recjobs.test: shown" in done.stderr  # the level and the rank's format


def _closed_pipe_run(argv: list[str]) -> subprocess.CompletedProcess:
    """`recjobs ARGV` writing to a pipe whose reader has already gone (`| head -c 0`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "recjobs", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    finally:
        os.close(write_end)


# A data set small enough to write in a moment, for the commands that write one.
SMALL_SYNTH = ["data", "synth", "--out", "{tmp}/data", "--users", "50", "--items", "20"]
SMALL_SYNTH += ["--interactions", "400"]


@pytest.mark.parametrize(
    "argv",
    [
        ["resolve", "retrieval"],
        ["config-reference"],
        SMALL_SYNTH,
        ["status", "{tmp}"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_reader_that_went_away_ends_the_command_quietly(tmp_path, argv):
    done = _closed_pipe_run([a.format(tmp=tmp_path) for a in argv])
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    if argv[0] == "data":  # the work itself was done; only the printed path was lost
        assert (Path(tmp_path) / "data" / "config.yaml").is_file()


@pytest.mark.parametrize("closed", [">&-", "2>&-", "<&- >&- 2>&-"])
def test_a_command_with_closed_standard_streams_runs_without_a_traceback(tmp_path, closed):
    recjobs = Path(sys.executable).parent / "recjobs"
    script = f'"{recjobs}" resolve retrieval {closed}; echo "rc=$?" >&3'
    done = subprocess.run(
        ["bash", "-c", f"exec 3>&1; {{ {script}; }} 2>{tmp_path / 'err'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip().splitlines()[-1] == "rc=0", done.stdout[-500:]
    assert "Traceback" not in (tmp_path / "err").read_text()


FULL = "/dev/full"  # every write fails with ENOSPC: a disk that filled up under the command
STDOUT_LOST = (
    "error: stdout: cannot write: No space left on device (what the command printed is "
    "incomplete; files it wrote are whole; send its output somewhere with room)"
)


def _run_with(argv: list[str], stdout: str | None, stderr: str | None, tmp_path: Path):
    """`recjobs ARGV` with stdout and/or stderr on /dev/full; the other one captured."""
    with open(stdout or os.devnull, "w") as out_target, open(stderr or os.devnull, "w") as err_t:
        return subprocess.run(
            [sys.executable, "-m", "recjobs", *argv],
            stdout=out_target if stdout else subprocess.PIPE,
            stderr=err_t if stderr else subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


@pytest.mark.skipif(not os.path.exists(FULL), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize(
    "argv",
    [
        ["resolve", "retrieval"],
        ["config-reference"],
        ["--help"],
        ["status", "{tmp}"],
        SMALL_SYNTH,
    ],
    ids=lambda argv: argv[0],
)
def test_a_stdout_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, argv):
    done = _run_with([a.format(tmp=tmp_path) for a in argv], FULL, None, tmp_path)
    assert (done.returncode, done.stderr.splitlines()[-1:]) == (2, [STDOUT_LOST]), done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    if argv[0] == "data":  # the work itself was done; only the printed path was lost
        assert yaml_paths_exist(tmp_path / "data")


def yaml_paths_exist(data: Path) -> bool:
    return (
        all((data / f"{t}.parquet").is_file() for t in ("users", "items"))
        and (data / "config.yaml").is_file()
    )


@pytest.mark.skipif(not os.path.exists(FULL), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["resolve", "retrieval", "--set", "bad.key=1"], 2),  # a usage error stays 2
        (["resolve", "--bogus"], 2),
        (["resolve", "retrieval"], 0),  # a command that worked stays 0; its logs are lost
    ],
    ids=["config-error", "usage-error", "success"],
)
def test_a_stderr_that_cannot_be_written_keeps_the_exit_code(tmp_path, argv, code):
    done = _run_with(argv, None, FULL, tmp_path)
    assert done.returncode == code
    if code == 0:
        assert json.loads(done.stdout)["retrieval"]
    else:
        assert done.stdout == ""


@pytest.mark.skipif(not os.path.exists(FULL), reason="needs /dev/full (Linux)")
def test_both_streams_full_is_still_exit_2_without_a_traceback(tmp_path):
    done = _run_with(["resolve", "retrieval"], FULL, FULL, tmp_path)
    assert done.returncode == 2


# `torchx run` with a recjobs component or scheduler: TorchX prints the dry run itself and lets
# any exception become a traceback; the component and the schedulers watch its stdout
# (recjobs.streams.TorchxStdout) and print their own lines with the CLI's `say`.
TORCHX_TRAIN = ["run", "--dryrun", "-s", "local_cwd", "components/train.py:train"]
TORCHX_TRAIN += ["--task", "retrieval", "--config", "config/quickstart.yaml"]
TORCHX_ECHO = [
    "run",
    "--dryrun",
    "-s",
    "local_cwd",
    "utils.echo",
    "--msg",
    "hi",
]  # ours: the scheduler


def _torchx_with(args: list[str], stdout: str | None, stderr: str | None):
    torchx = Path(sys.executable).parent / "torchx"
    with open(stdout or os.devnull, "w") as out_target, open(stderr or os.devnull, "w") as err_t:
        return subprocess.run(
            [str(torchx), *args],
            stdout=out_target if stdout else subprocess.PIPE,
            stderr=err_t if stderr else subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=ROOT,
        )


@pytest.mark.skipif(not os.path.exists(FULL), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize(
    ("args", "full", "code"),
    [
        (TORCHX_TRAIN, "stdout", 2),  # was a traceback from torchx's print, exit 1
        (TORCHX_ECHO, "stdout", 2),
        (TORCHX_TRAIN, "stderr", 0),  # was exit 1: the component's own line raised
        ([*TORCHX_TRAIN, "--env", "FOO"], "stderr", 2),  # refused: still 2, line lost
    ],
    ids=["train-stdout", "scheduler-stdout", "train-stderr", "refused-stderr"],
)
def test_torchx_with_a_stream_that_cannot_be_written_is_no_traceback(args, full, code):
    done = _torchx_with(
        args, FULL if full == "stdout" else None, FULL if full == "stderr" else None
    )
    assert done.returncode == code, (done.stdout or "")[-300:] + (done.stderr or "")[-2000:]
    if full == "stdout":
        assert done.stderr.splitlines()[-1] == STDOUT_LOST, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    elif code == 0:
        assert "recjobs train retrieval" in done.stdout
    else:
        assert done.stdout == ""


def test_torchx_whose_reader_went_away_ends_quietly():
    torchx = Path(sys.executable).parent / "torchx"
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader that is gone before the first write: EPIPE at once
    try:
        done = subprocess.run(
            [str(torchx), *TORCHX_TRAIN],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
