"""`torchx run -s local_docker` for real: a private Docker daemon, the image, real containers.

The session fixture starts dockerd on a socket of its own with docker/with-dockerd.sh (data root
in the cache directory, so images survive between sessions; --iptables=false --ip-masq=false),
builds the image with docker/build-image.sh (base image by debootstrap, the wheelhouse the venv
was installed from: no registry; with unchanged inputs nothing is rebuilt) and stops the daemon
by its PID at the end, also when something failed, or when pytest itself is killed.

Where Docker cannot run (no dockerd, not root) the tests skip with a loud reason; with
RECJOBS_REQUIRE_DOCKER=1 (what .ci/run exports) or CI=true they fail instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from recjobs.training.checkpoint import load_checkpoint

from runs import ROOT, TINY, missing, resolve_printed

pytestmark = pytest.mark.docker

BIN = Path(sys.executable).parent
TORCHX = str(BIN / "torchx")
IMAGE = "recjobs:latest"  # launch.DEFAULT_IMAGE
JOB_UID = 1000  # the image's user (docker/Dockerfile, ARG UID)
APP_ID_LABEL = "torchx.pytorch.org/app-id"
CACHE = Path(
    os.environ.get("RECJOBS_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recjobs"
)
SETS = [f"--set={s}" for s in TINY]
ERROR_LINE = "error: retrieval.training.max_epoch: unknown key (did you mean max_epochs?)"


def unavailable(reason: str) -> None:
    reason = f"DOCKER TESTS NOT RUN: {reason}"
    if os.environ.get("RECJOBS_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{reason} (RECJOBS_REQUIRE_DOCKER=1: Docker must work here)", pytrace=False)
    missing(reason)


@dataclass
class Docker:
    """The private daemon: run `docker` and `torchx` against it."""

    host: str

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKER_HOST": self.host,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "TORCHXCONFIG": str(ROOT / ".torchxconfig"),
            "PYTHONUNBUFFERED": "1",  # torchx prints the app handle before it waits
        }

    def docker(self, *args: str, timeout: int = 120) -> str:
        done = subprocess.run(
            ["docker", *args], env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr[-2000:]}"
        return done.stdout

    def inspect(self, container: str) -> dict:
        return json.loads(self.docker("container", "inspect", container))[0]

    def inspect_image(self, image: str) -> dict:
        return json.loads(self.docker("image", "inspect", image))[0]

    def containers(self, *filters: str) -> list[str]:
        args = [a for f in filters for a in ("--filter", f)]
        return self.docker("ps", "-a", "-q", "--no-trunc", *args).split()

    def torchx_args(self, runs: Path, run_dir: str, *overrides: str) -> list[str]:
        return [
            TORCHX,
            "run",
            "-s",
            "local_docker",
            "components/train.py:train",
            "--task",
            "retrieval",
            "--config",
            "config/quickstart.yaml",
            "-j",
            "1x2",
            "--image",
            IMAGE,
            "--mounts",
            f"type=bind,src={runs},dst=/runs",
            "--run_dir",
            run_dir,
            "--",
            *overrides,
        ]

    def torchx(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=timeout
        )


def _start_daemon(log: Path) -> tuple[subprocess.Popen, Docker, int]:
    """docker/with-dockerd.sh around a command that prints DOCKER_HOST and waits for stdin's end.

    The fixture ends it by closing stdin (so does pytest's death: the pipe closes), and the
    script stops dockerd by its PID; the dockerd PID (its --pidfile) is also returned.
    """
    with log.open("wb") as stderr:
        wrapper = subprocess.Popen(
            [str(ROOT / "docker" / "with-dockerd.sh"), "sh", "-c", 'echo "$DOCKER_HOST"; cat'],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "RECJOBS_CACHE_DIR": str(CACHE)},
            text=True,
        )
    # The script waits up to 10 min for another private daemon on this cache to end.
    ready, _, _ = select.select([wrapper.stdout], [], [], 660)
    host = wrapper.stdout.readline().strip() if ready else ""
    if not host.startswith("unix://"):
        wrapper.kill()
        wrapper.wait()
        pytest.fail(f"docker/with-dockerd.sh did not start dockerd: {log.read_text()[-2000:]}")
    pidfile = Path(host.removeprefix("unix://")).parent / "dockerd.pid"
    return wrapper, Docker(host=host), int(pidfile.read_text())


def _stop_daemon(wrapper: subprocess.Popen, docker: Docker, pid: int) -> None:
    wrapper.stdin.close()  # the command ends; with-dockerd.sh stops dockerd (SIGTERM, SIGKILL)
    try:
        wrapper.wait(timeout=90)
    except subprocess.TimeoutExpired:
        wrapper.kill()
        wrapper.wait()
    # Still there only if the script could not stop it (checked by its command line, so that a
    # reused PID is left alone).
    with contextlib.suppress(OSError):
        if docker.host.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def docker(tmp_path_factory) -> Iterator[Docker]:
    """A private dockerd with the image built in it; stopped by its PID at the end."""
    if shutil.which("dockerd") is None:
        unavailable("dockerd not found (Debian: apt-get install docker.io)")
    if shutil.which("docker") is None:
        unavailable("the docker CLI not found (Debian: apt-get install docker.io)")
    if os.geteuid() != 0:
        unavailable("a private dockerd needs root")
    if shutil.which("debootstrap") is None and not any((CACHE / "base").glob("*.tar")):
        unavailable(
            "debootstrap not found (Debian: apt-get install debootstrap); it makes the base image"
        )

    with contextlib.ExitStack() as stack:
        wrapper, docker, pid = _start_daemon(tmp_path_factory.mktemp("dockerd") / "stderr")
        stack.callback(_stop_daemon, wrapper, docker, pid)
        # Containers of this session go when it ends (the daemon's data root is kept).
        stack.callback(_remove_new_containers, docker, set(docker.containers()))

        build = subprocess.run(
            [str(ROOT / "docker" / "build-image.sh"), IMAGE],
            env={**docker.env(), "PYTHON": sys.executable, "RECJOBS_CACHE_DIR": str(CACHE)},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert build.returncode == 0, f"docker/build-image.sh failed:\n{build.stderr}"
        # Images of earlier builds that this one replaced only take space.
        docker.docker("image", "prune", "-f")
        yield docker


def _remove_new_containers(docker: Docker, before: set[str]) -> None:
    new = [c for c in docker.containers() if c not in before]
    if new:
        docker.docker("rm", "-f", *new)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def app_id(stdout: str) -> str:
    handle = stdout.splitlines()[0]
    assert handle.startswith("local_docker://"), stdout
    return handle.rsplit("/", 1)[1]


def runs_dir(tmp_path: Path) -> Path:
    """The host directory mounted at /runs: writable by the job's user, as docs/deploy.md says."""
    runs = tmp_path / "runs"
    runs.mkdir()
    os.chown(runs, JOB_UID, JOB_UID)
    return runs


def test_the_image_runs_as_uid_1000_with_the_venvs_torch_and_recjobs_on_path(docker):
    out = docker.docker(
        "run",
        "--rm",
        IMAGE,
        "bash",
        "-c",
        "id -u; command -v python torchrun recjobs; "
        "python -c 'import torch, torchx; print(torch.__version__, torchx.__version__)'; "
        "ls /wheels 2>&1 || true",
    ).split()
    assert out[0] == str(JOB_UID)
    assert out[1:4] == ["/opt/venv/bin/python", "/opt/venv/bin/torchrun", "/opt/venv/bin/recjobs"]
    # The torch CI tests is the torch the image ships (the wheelhouse the venv came from) ...
    assert out[4] == torch.__version__ and out[5] == "0.7.0"
    # ... and the wheels it was installed from stayed in the build stage.
    assert "No such file or directory" in " ".join(out[6:])
    assert docker.inspect_image(IMAGE)["Config"]["User"] == str(JOB_UID)


def test_local_docker_ddp_job_trains_in_the_container_and_writes_the_mounted_run_dir(
    docker, tmp_path
):
    runs = runs_dir(tmp_path)
    overrides = [*SETS, "--set=training.max_epochs=2"]
    done = docker.torchx(*docker.torchx_args(runs, "/runs/job", *overrides))
    assert done.returncode == 0, done.stderr[-4000:]
    app = app_id(done.stdout)
    assert "Job finished: SUCCEEDED" in done.stderr
    # One DDP job of two processes in one container, not two runs.
    assert "on cpu x2" in done.stderr and "rank 1 of 2 joined on cpu" in done.stderr

    (container,) = docker.containers(f"label={APP_ID_LABEL}={app}")
    state = docker.inspect(container)
    assert state["State"]["ExitCode"] == 0
    assert state["Config"]["Image"] == IMAGE and state["Config"]["User"] == str(JOB_UID)

    run_dir = runs / "job"
    # The job trained on exactly what `recjobs resolve` prints on the submitting side.
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == resolve_printed(*overrides)
    metrics = records(run_dir)
    train = [r for r in metrics if "train/lr" in r]  # a short last batch has no train/loss
    val = [r for r in metrics if "val/loss" in r]
    steps = [r["step"] for r in train]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 4  # log_steps=1
    assert all(0.0 < r.get("train/loss", 1.0) < 20.0 for r in train)
    assert all(r["train/examples_per_s"] > 0 for r in train)
    assert train[0]["train/lr"] == pytest.approx(0.003)
    assert [r["epoch"] for r in val] == [0, 1] and val[-1]["step"] == steps[-1]
    for r in val:
        assert 0.0 < r["val/recall@10"] <= r["val/recall@50"] <= 1.0
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "model").is_dir()
    # Written by the container's non-root user, through the bind mount.
    written = [run_dir, *run_dir.rglob("*")]
    assert len(written) > 5
    assert {p.stat().st_uid for p in written} == {JOB_UID}, [
        (str(p), p.stat().st_uid) for p in written if p.stat().st_uid != JOB_UID
    ]


def test_local_docker_recommend_job_writes_every_users_top_k_once_as_the_python_api_does(
    docker, tmp_path
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recjobs import Recommender
    from recjobs.config.resolver import Overrides, resolve
    from recjobs.training import trainer

    runs = runs_dir(tmp_path)
    config = resolve("retrieval", ROOT / "config" / "quickstart.yaml", Overrides(sets=TINY))
    trainer.train(config, runs / "job")  # on the host: the container only reads the model
    done = docker.torchx(
        TORCHX,
        "run",
        "-s",
        "local_docker",
        "components/train.py:recommend",
        "--model_dir",
        "/runs/job",
        "--k",
        "5",
        "-j",
        "1x2",
        "--image",
        IMAGE,
        "--mounts",
        f"type=bind,src={runs},dst=/runs",
        "--out",
        "/runs/recs",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "[rank 1]" in done.stderr  # two processes in the container, a part each
    parts = sorted((runs / "recs").iterdir())
    assert [p.name for p in parts] == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    assert {p.stat().st_uid for p in parts} == {JOB_UID}
    got = pa.concat_tables([pq.read_table(p) for p in parts])
    # Every user exactly once, and the container's answer is the host's Python API's.
    want = Recommender.load(runs / "job").topk(k=5)
    assert got.column("user_id").to_pylist() == want.column("user_id").to_pylist()
    assert got.column("item_id").to_pylist() == want.column("item_id").to_pylist()
    assert got.column("rank").to_pylist() == want.column("rank").to_pylist()
    assert got.column("score").to_pylist() == pytest.approx(
        want.column("score").to_pylist(), abs=1e-5
    )
    assert len(set(got.column("user_id").to_pylist())) * 5 == got.num_rows == 5 * 300


def test_an_invalid_config_fails_at_submit_and_starts_no_container(docker, tmp_path):
    runs = runs_dir(tmp_path)
    before = docker.containers()
    done = docker.torchx(
        *docker.torchx_args(runs, "/runs/job", *SETS, "--set=training.max_epoch=3"), timeout=120
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == ERROR_LINE
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert docker.containers() == before
    assert list(runs.iterdir()) == []


def test_docker_stop_leaves_a_checkpoint_and_the_resubmitted_job_resumes_from_it(docker, tmp_path):
    runs = runs_dir(tmp_path)
    # Runs until stopped: many epochs, no early stopping, a checkpoint every 5 steps.
    endless = [
        *SETS,
        "--set=training.max_epochs=100000",
        "--set=training.early_stopping.enabled=false",
        "--set=training.checkpoint_steps=5",
    ]
    last = runs / "job" / "checkpoints" / "last.pt"
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        first = subprocess.Popen(
            docker.torchx_args(runs, "/runs/job", *endless),
            cwd=ROOT,
            env=docker.env(),
            stdout=stdout,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 240
        while not (last.exists() and out.read_text()):
            assert first.poll() is None, err.read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.5)
        (container,) = docker.containers(f"label={APP_ID_LABEL}={app_id(out.read_text())}")
        docker.docker("stop", container, timeout=60)  # SIGTERM, SIGKILL after 10 s
        assert first.wait(timeout=120) != 0  # the job did not succeed ...
    finally:
        if first.poll() is None:
            first.kill()
    stopped = docker.inspect(container)["State"]
    log = err.read_text()
    # ... it was stopped by SIGTERM: torchrun (PID 1 thanks to `exec`) passed it on and the
    # workers wrote a checkpoint; no SIGKILL at the end of the grace period (exit 137).
    assert stopped["ExitCode"] != 137 and not stopped["OOMKilled"], (stopped, log[-6000:])
    assert re.search(
        r"SIGTERM (at step \d+|after epoch \d+): checkpoint written to /runs/job/checkpoints/last\.pt",
        log,
    ), log[-4000:]
    checkpoint = load_checkpoint(last)
    epoch, step = checkpoint["epoch"], checkpoint["step"]
    assert step > 0

    # The same job again (what a retry does): it resumes and runs 3 more steps.
    again = docker.torchx(
        *docker.torchx_args(runs, "/runs/job", *endless, f"--set=training.max_steps={step + 3}")
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert (
        f"resumed from /runs/job/checkpoints/last.pt at epoch {epoch}, step {step}" in again.stderr
    )
    steps = [r["step"] for r in records(runs / "job") if "train/lr" in r]
    assert steps == list(range(1, step + 4))  # nothing lost, nothing repeated
