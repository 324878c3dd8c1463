"""A planted W&B key must show up nowhere: specs, job args, run dir, logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runs import ROOT, TINY

BIN = Path(sys.executable).parent
SECRET = "wandb-fake-key-5f1e0c3a9b7d-never-print"


def env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TORCHXCONFIG": str(ROOT / ".torchxconfig"),
        "WANDB_API_KEY": SECRET,
        **extra,
    }


def every_file_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("scheduler", ["local_cwd", "local_docker", "kubernetes"])
def test_dry_run_specs_and_job_args_never_hold_the_key(scheduler):
    cmd = [str(BIN / "torchx"), "run", "-s", scheduler, "--dryrun", "--workspace", ""]
    cmd += [
        "components/train.py:train",
        "--task",
        "ranking",
        "--wandb_project",
        "recsys",
        "-j",
        "1x2",
        "--mounts",
        "type=bind,src=/tmp,dst=/runs",
        "--run_dir",
        "/runs/job",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--config-json" in done.stdout  # the job's args are in what we searched
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.slow
def test_a_real_job_with_wandb_keeps_the_key_out_of_logs_and_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        str(BIN / "torchx"),
        "run",
        "-s",
        "local_cwd",
        "components/train.py:train",
        "--task",
        "ranking",
    ]
    cmd += [
        "--config",
        "config/quickstart.yaml",
        "--run_dir",
        str(run_dir),
        "--wandb_project",
        "recsys",
    ]
    cmd += [
        "--wandb_mode",
        "offline",
        "--",
        *[f"--set={s}" for s in TINY],
        "--set=training.max_epochs=1",
    ]
    done = subprocess.run(
        cmd, cwd=ROOT, env=env(WANDB_SILENT="true"), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "W&B is off" not in done.stderr  # W&B really ran (offline)
    files = every_file_under(run_dir)
    names = {p.name for p in files}
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt", "model.pt"} <= names
    assert any(p.suffix == ".wandb" for p in files)
    assert SECRET not in done.stdout + done.stderr
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []
