"""The environment recjobs reads, and a stdout whose reader went away.

Environment variables (RECJOBS_LOG_LEVEL; torchrun's RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) that cannot be used are one `error:` line naming the variable, exit 2,
before anything is written. `recjobs CMD | head -c 10`: the command stops quietly, exit 0, as
Unix tools do (no BrokenPipeError traceback).
"""

from __future__ import annotations

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
        "error: WORLD_SIZE: must be a whole number, got 'abc' (torchrun sets it; unset it to "
        "run as a single process)",
    ),
    (
        {"WORLD_SIZE": "100000000"},
        "error: WORLD_SIZE: must be between 1 and 4096, got 100000000 (torchrun sets it; unset "
        "it to run as a single process)",
    ),
    (
        {"RANK": "%(message)s"},
        "error: RANK: must be a whole number, got '%(message)s' (torchrun sets it; unset it to "
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
        "error: LOCAL_RANK: must be a whole number, got 'zero' (torchrun sets it; unset it to "
        "run as a single process)",
    ),
    (
        {"WORLD_SIZE": "2", "RANK": "0"},
        "error: MASTER_ADDR: not set, but WORLD_SIZE > 1 asks for a job of several processes "
        "(start the job with torchrun (or recjobs' TorchX component), or unset WORLD_SIZE)",
    ),
    (
        {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"},
        "error: MASTER_PORT: must be a whole number, got 'http' (torchrun sets it; unset it to "
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


@pytest.mark.parametrize(
    "argv",
    [
        ["resolve", "retrieval"],
        ["config-reference"],
        ["data", "synth", "--out", "{tmp}/data", "--users", "50", "--items", "20"],
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
