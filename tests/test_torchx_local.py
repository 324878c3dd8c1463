"""`torchx run` for real on this machine (local_cwd), as the README shows it.

The training run is one 2-process DDP job on CPU with tiny data: a few seconds of training; the
batch-inference job (components/train.py:recommend) is two processes writing a part each.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recjobs.config.resolver import Overrides, resolve
from recjobs.data import load_task_data, steps_per_epoch

from runs import shard_sizes

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TORCHX = str(BIN / "torchx")
TINY = [
    "dataset.synth.users=300",
    "dataset.synth.items=80",
    "dataset.synth.interactions=6000",
    "training.max_epochs=1",
    "training.log_steps=2",
]


def env() -> dict[str, str]:
    # The job's torchrun is the venv's; only the repository's .torchxconfig applies.
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TORCHXCONFIG": str(ROOT / ".torchxconfig"),
    }


def run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout
    )


def resolve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "recjobs", "resolve", *args)


@pytest.mark.slow
def test_local_cwd_outside_the_venv_says_torchrun_is_missing_instead_of_a_bare_failed(tmp_path):
    """TorchX starts the job anyway and reports FAILED with no reason when the job's program is
    not on PATH (torchx run by its full path, venv not activated): refused in one line, exit
    2, nothing started or written."""
    outside = {**env(), "PATH": "/usr/bin:/bin"}
    assert not any(Path(d, "torchrun").exists() for d in outside["PATH"].split(os.pathsep))
    done = subprocess.run(
        [TORCHX, "run", "-s", "local_cwd", "components/train.py:train", "--task", "retrieval",
         "-j", "1x2", "--run_dir", str(tmp_path / "run"), "--", *(f"--set={s}" for s in TINY)],
        cwd=ROOT, env=outside, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: local_cwd: torchrun is not on PATH, so the job's processes could not start "
        "(run torchx from the project's venv: . .venv/bin/activate, or put .venv/bin on PATH)"
    )
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_local_cwd_ddp_job_trains_on_exactly_the_resolved_config(tmp_path):
    run_dir = tmp_path / "run"
    sets = [f"--set={s}" for s in TINY]
    submit = [
        TORCHX,
        "run",
        "-s",
        "local_cwd",
        "components/train.py:train",
        "--task",
        "retrieval",
        "--config",
        "config/quickstart.yaml",
        "-j",
        "1x2",
        "--run_dir",
        str(run_dir),
        "--",
        "--optimizer",
        "SGD",
        "--optimizer-args",
        "momentum=0.9",
        *sets,
    ]
    done = run(*submit)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.startswith("local_cwd://")
    # One DDP job of two processes (the world size the process group reports), not two runs.
    assert "on cpu x2" in done.stderr
    assert "[rank 1] recjobs.training.trainer: rank 1 of 2 joined on cpu" in done.stderr
    # Where to look from another terminal (torchx status/log do not see local_cwd jobs).
    assert f"recjobs: run directory {run_dir}, its log {run_dir}/train.log\n" in done.stderr
    status = run(sys.executable, "-m", "recjobs", "status", str(run_dir), timeout=60)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"{run_dir}: finished\n  done at step "), status.stdout

    printed = resolve_cli(
        "retrieval",
        "--config",
        "config/quickstart.yaml",
        "--optimizer",
        "SGD",
        "--optimizer-args",
        "momentum=0.9",
        *sets,
    )
    assert printed.returncode == 0, printed.stderr
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == json.loads(printed.stdout)

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/lr" in r]  # a short last batch has no train/loss
    val = [r for r in records if "val/loss" in r]
    config = resolve(
        "retrieval",
        ROOT / "config" / "quickstart.yaml",
        Overrides(optimizer="SGD", optimizer_args=["momentum=0.9"], sets=TINY),
    )
    per_epoch = steps_per_epoch(min(shard_sizes(config, 2)), 512)  # each rank its own users
    # Every log_steps (2) steps, and at the epoch's end.
    assert [r["step"] for r in train] == sorted({*range(2, per_epoch + 1, 2), per_epoch})
    assert all(r["train/lr"] == pytest.approx(0.003) for r in train)
    assert len(val) == 1 and val[0]["step"] == per_epoch and val[0]["epoch"] == 0
    assert 0.0 < val[0]["val/recall@10"] <= val[0]["val/recall@50"] <= 1.0
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "model").is_dir()

    # Every job passes --resume-or-start: the same job submitted again (what a scheduler retry does)
    # continues from the run directory's last checkpoint instead of starting over.
    again = run(*submit[: -len(sets)], *sets, "--set=training.max_epochs=2")
    assert again.returncode == 0, again.stderr[-4000:]
    assert (
        f"resumed from {run_dir}/checkpoints/last.pt at epoch 1, step {per_epoch}" in again.stderr
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val/loss" in r] == [0, 1]
    assert max(r["step"] for r in records) == 2 * per_epoch


@pytest.mark.slow
def test_local_cwd_recommend_job_writes_parts_holding_every_user_once(tmp_path):
    import pyarrow.parquet as pq

    from recjobs.training import trainer

    config = resolve(
        "retrieval",
        ROOT / "config" / "quickstart.yaml",
        Overrides(sets=[*TINY, "model.embedding_dim=8", "model.hidden_dims=[16]"]),
    )
    trainer.train(config, tmp_path / "run")
    out = tmp_path / "recs"
    done = run(
        TORCHX,
        "run",
        "-s",
        "local_cwd",
        "components/train.py:recommend",
        "--model_dir",
        str(tmp_path / "run"),
        "--k",
        "7",
        "-j",
        "1x2",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "[rank 1]" in done.stderr  # two processes, each writing its share
    parts = sorted(out.iterdir())
    assert [p.name for p in parts] == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    tables = [pq.read_table(p) for p in parts]
    users = [set(t.column("user_id").to_pylist()) for t in tables]
    assert not users[0] & users[1]
    assert users[0] | users[1] == set(load_task_data(config).encoders.user_id.values())
    assert all(t.num_rows == 7 * len(u) for t, u in zip(tables, users))


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["local_cwd", "kubernetes"])
def test_an_invalid_config_fails_at_submit_with_the_resolve_line_and_launches_nothing(
    tmp_path, scheduler
):
    run_dir = tmp_path / "run"
    bad = ["--set=training.max_epoch=3"]
    expected = resolve_cli("retrieval", "--config", "config/quickstart.yaml", *bad)
    assert expected.returncode == 2
    dryrun = ["--dryrun"] if scheduler == "kubernetes" else []
    done = run(
        TORCHX,
        "run",
        "-s",
        scheduler,
        *dryrun,
        "components/train.py:train",
        "--task",
        "retrieval",
        "--config",
        "config/quickstart.yaml",
        "--run_dir",
        str(run_dir),
        "--",
        *bad,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == expected.stderr.strip()
    assert expected.stderr.strip() == (
        "error: retrieval.training.max_epoch: unknown key (did you mean max_epochs?)"
    )
    assert "Traceback" not in done.stderr
    # Nothing was submitted: no app handle, no spec, no run directory.
    assert done.stdout == ""
    assert not run_dir.exists()


@pytest.mark.slow
def test_torchx_run_without_arguments_is_the_quickstart_job_on_local_cwd():
    done = run(TORCHX, "run", "--dryrun")
    assert done.returncode == 0, done.stderr[-3000:]
    request = done.stdout.split("=== SCHEDULER REQUEST ===")[1]
    assert "'app_id': 'recjobs-retrieval-" in request
    # local_cwd prints its request as a Python literal (pprint).
    bash, dash_c, command = ast.literal_eval(request.strip())["role_params"]["train"][0]["args"]
    assert (bash, dash_c) == ("bash", "-c")
    assert "recjobs train retrieval --config-json" in command
    sent = json.loads(command.split("--config-json '")[1].split("' --run-dir")[0])
    assert sent == resolve("retrieval", ROOT / "config" / "quickstart.yaml").to_dict()


def test_torchx_builtins_are_still_listed():
    done = run(TORCHX, "builtins", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "dist.ddp" in done.stdout and "utils.echo" in done.stdout
