"""Submit-time guardrails of the container schedulers (recjobs.submit.container_paths).

The matrix runs on AppDefs the components build (launch.train_app / recommend_app) through
`container_paths.check`; the CLI contract (one `error:` line, exit 2, nothing printed on
stdout; warnings on stderr, the job still submitted) through real `torchx run --dryrun`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recjobs.errors import UserError
from recjobs.submit import container_paths, launch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUNS = ["type=volume", "src=recjobs-runs", "dst=/runs"]
DATA = ["type=bind", "src=/srv/data", "dst=/data/"]
# What both components take: resources, image, environment, mounts, retries.
JOB = {
    "gpu": 0,
    "cpu": 2,
    "memMB": 4096,
    "h": None,
    "image": "registry.example.com/ml/recjobs:0.1.0",
    "env": None,
    "mounts": RUNS,
    "max_retries": 0,
}
TABLES = ("users", "items", "interactions_train", "interactions_val")


def train(*overrides: str, **kwargs):
    args = {
        "task": "retrieval",
        "config": None,
        "j": "1x1",
        **JOB,
        "run_dir": "/runs/${app_id}",
        "wandb_project": None,
        "wandb_mode": None,
    }
    return launch.train_app(list(overrides), **{**args, **kwargs})


def recommend(**kwargs):
    args = {
        "model_dir": "/runs/job1",
        "k": 10,
        "out": "/runs/job1-recs",
        "users": None,
        "candidates": None,
        "include_seen": False,
        "output_format": "parquet",
        "j": "1x2",
        **JOB,
    }
    return launch.recommend_app(**{**args, **kwargs})


def paths(**tables: str) -> list[str]:
    return [f"--set=dataset.paths.{t}={tables.get(t, f'/runs/data/{t}.parquet')}" for t in TABLES]


def refused(app, scheduler: str = "kubernetes") -> str:
    with pytest.raises(UserError) as caught:
        container_paths.check(app, scheduler, ephemeral_outputs=False)
    return caught.value.line()


@pytest.mark.parametrize("scheduler", ["local_docker", "kubernetes"])
def test_an_output_outside_every_mount_is_refused_unless_meant(scheduler):
    for run_dir, where in [
        (None, "'runs/${app_id}' is relative to the container's working directory"),
        ("/scratch/run", "'/scratch/run' is in no mount"),
        ("/runsX/run", "'/runsX/run' is in no mount"),  # a prefix of the name is not a parent
    ]:
        app = train(run_dir=run_dir)
        line = refused(app, scheduler)
        assert line.startswith(f"error: --run_dir: {where}: what the job writes there is lost"), (
            line
        )
        assert f"-cfg {container_paths.OPT_IN}=True" in line
        assert container_paths.check(app, scheduler, ephemeral_outputs=True) == []
    example = container_paths.EXAMPLE_MOUNT[scheduler]
    assert f"--mounts {example} --run_dir /runs/NAME" in refused(train(run_dir=None), scheduler)
    read_only = train(mounts=[*RUNS, "readonly"], run_dir="/runs/job")
    assert "'/runs/job' is on a read-only mount" in refused(read_only, scheduler)
    devices = train(mounts=["type=device", "src=/dev/fuse", "dst=/runs"], run_dir="/runs/job")
    assert "'/runs/job' is in no mount" in refused(devices, scheduler)  # a device holds no files
    # On the mount, at its root or below it, with or without a trailing slash: fine.
    for run_dir in ("/runs", "/runs/", "/runs/a/../b"):
        assert container_paths.check(train(run_dir=run_dir), scheduler, False) == []
    # The recommend job's --out the same way.
    assert refused(recommend(out=None), scheduler).startswith("error: --out: 'runs/${app_id}'")
    assert container_paths.check(recommend(), scheduler, False) == []


def test_inputs_the_container_cannot_see_are_refused_or_warned_about():
    line = refused(train(*paths(users="data/users.parquet")))
    assert line == (
        "error: dataset.paths.users: 'data/users.parquet' is relative: the container sees "
        "neither this machine's working directory nor its config file's folder (mount it, e.g. --mounts "
        "type=volume,src=YOUR-PVC,dst=/data, and give the path inside the container: /data/...)"
    )
    app = train(*paths(items="/srv/items.parquet", interactions_val="gs://b/val.parquet"))
    assert container_paths.check(app, "kubernetes", False) == [
        "dataset.paths.items: '/srv/items.parquet' is in no mount: it must exist inside the "
        "image (registry.example.com/ml/recjobs:0.1.0)"
    ]
    app = train(*paths(users="/data/users.parquet"), mounts=RUNS + DATA)
    assert container_paths.check(app, "local_docker", False) == []
    # The recommend job's inputs.
    assert refused(recommend(model_dir="runs/job1")).startswith("error: --model_dir: 'runs/job1'")
    assert refused(recommend(users="users.csv")).startswith("error: --users: 'users.csv'")
    warned = container_paths.check(recommend(candidates="/tmp/c.parquet"), "kubernetes", False)
    assert [w.split(":")[0] for w in warned] == ["--candidates"]


def test_a_config_files_relative_paths_reach_the_job_absolute_and_a_container_refuses_them(
    tmp_path, monkeypatch
):
    import json
    import shlex

    from recjobs.data import write_dataset

    monkeypatch.chdir(tmp_path)
    write_dataset("d", users=50, items=20, interactions=600, seed=1)  # users: users.parquet
    app = train(config="d/config.yaml")
    words = shlex.split(app.roles[0].args[1])
    sent = json.loads(words[words.index("--config-json") + 1].replace("$$", "$"))
    # The job (local_cwd too, from another working directory) reads this machine's files.
    assert sent["dataset"]["paths"] == {t: str(tmp_path / "d" / f"{t}.parquet") for t in TABLES}
    # A container has neither this machine's working directory nor the config's folder: the
    # path as written is refused, as one given relative with --set is.
    assert refused(app).startswith(
        "error: dataset.paths.users: 'users.parquet' is relative: the container sees neither "
        "this machine's working directory nor its config file's folder"
    )
    app = train(f"--set=dataset.paths.users={tmp_path}/d/users.parquet", config="d/config.yaml")
    assert refused(app).startswith("error: dataset.paths.items: 'items.parquet' is relative")


def test_an_empty_image_is_refused_and_the_default_one_warned_about_on_kubernetes():
    assert (
        refused(train(image=" "))
        == "error: --image: must not be empty (e.g. --image recjobs:latest)"
    )
    default = train(image=launch.DEFAULT_IMAGE)
    (warning,) = container_paths.check(default, "kubernetes", False)
    assert warning.startswith("--image recjobs:latest (the default): the cluster's nodes must")
    assert container_paths.check(default, "local_docker", False) == []  # built right there


def test_gpus_with_the_default_cpus_and_memory_get_a_warning_with_the_numbers():
    (warning,) = container_paths.check(train(gpu=8, j="1x8"), "kubernetes", False)
    assert warning.startswith("8 GPU(s) per node with 2 CPUs and 4096 MB (the defaults)")
    assert (
        container_paths.check(train(gpu=8, j="1x8", cpu=64, memMB=400000), "kubernetes", False)
        == []
    )
    assert container_paths.check(train(gpu=1, h="gpu.small"), "kubernetes", False) == []


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ([], "with 2 CPUs and 4096 MB (the defaults): too little"),
        (["--cpu", "2", "--memMB=4096"], "with 2 CPUs and 4096 MB: too little"),
        (["--cpu", "2"], "with 2 CPUs and 4096 MB (--memMB left at its default): too little"),
        (["--mem", "4096"], "with 2 CPUs and 4096 MB (--cpu left at its default): too little"),
        (["--", "--set=x.cpu=1"], "with 2 CPUs and 4096 MB (the defaults): too little"),
    ],
)
def test_the_gpu_warning_calls_only_untyped_values_the_defaults(typed, said):
    command_line = ["/venv/bin/torchx", "run", "components/train.py:train", "--gpu", "1", *typed]
    app = train(gpu=1, command_line=command_line)
    (warning,) = container_paths.check(app, "kubernetes", False)
    assert warning.startswith(f"1 GPU(s) per node {said}"), warning
    app = recommend(gpu=1, command_line=command_line)
    assert container_paths.check(app, "kubernetes", False)[0] == warning


def test_the_gpu_warning_for_small_explicit_values_does_not_call_them_defaults():
    # The README's development-cluster job: 1 CPU and 3000 MB were typed, not defaulted.
    typed = ["torchx", "run", "components/train.py:train", "--gpu", "1", "--cpu", "1"]
    typed += ["--memMB", "3000"]
    (warning,) = container_paths.check(
        train(gpu=1, cpu=1, memMB=3000, command_line=typed), "kubernetes", False
    )
    assert warning.startswith("1 GPU(s) per node with 1 CPUs and 3000 MB: too little"), warning
    # Outside `torchx run` (Python callers) a value equal to the default counts as defaulted.
    (warning,) = container_paths.check(train(gpu=1, cpu=1), "kubernetes", False)
    assert warning.startswith("1 GPU(s) per node with 1 CPUs and 4096 MB (--memMB left at")


def torchx_dryrun(scheduler: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "torchx"), "run", "-s", scheduler, "--dryrun", "--workspace", "", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["local_docker", "kubernetes"])
def test_torchx_run_refuses_with_one_line_and_exit_2_and_warns_without_stopping(scheduler):
    done = torchx_dryrun(scheduler, "components/train.py:train", "--task", "retrieval")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1].startswith("error: --run_dir: 'runs/${app_id}' is relative")
    assert "Traceback" not in done.stderr and done.stdout == ""

    done = torchx_dryrun(
        scheduler, *("components/train.py:train", "--task", "retrieval", "--gpu", "1"),
        *("--mounts", "type=bind,src=/tmp,dst=/runs", "--run_dir", "/runs/job"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning: 1 GPU(s) per node with 2 CPUs and 4096 MB (the defaults)" in done.stderr
    assert "=== SCHEDULER REQUEST ===" in done.stdout

    done = torchx_dryrun(
        scheduler, *("components/train.py:train", "--task", "retrieval", "--gpu", "1"),
        *("--cpu", "1", "--memMB", "3000"),
        *("--mounts", "type=bind,src=/tmp,dst=/runs", "--run_dir", "/runs/job"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning: 1 GPU(s) per node with 1 CPUs and 3000 MB: too little" in done.stderr
