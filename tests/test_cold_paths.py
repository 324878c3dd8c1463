"""The set-up scripts on a new machine: empty caches, the case CI's warm cache never shows.

A registry garbage collection that refused an empty root once broke every fresh machine while CI
stayed green on machines whose cache already held images. Each cold path that can run in
seconds runs here, for real:
- the registry's garbage collection on an empty root (k8s/dev/cluster.sh, the real `registry`
  binary the cluster was built with; needs the dev cluster's binaries: k8s-marked);
- a private dockerd on an empty data root, stopped normally and by a signal to its process
  group, leaving no mount (its network namespace) or process behind (docker/with-dockerd.sh;
  docker-marked);
- the wheelhouse made into an empty cache (docker/wheelhouse.sh), offline from the wheels the
  venv was installed from.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runs import ROOT, missing

CACHE = Path(
    os.environ.get("RECJOBS_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recjobs"
)
K8S_STATE = Path("/var/lib/recjobs-k8s")  # k8s/dev/cluster.sh


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        targets = [line.split()[4] for line in mountinfo]
    return [t for t in targets if t == path or t.startswith(path + "/")]


# --------------------------------------------------------------------------- registry


def _registry_binary() -> Path:
    try:
        binary = Path((K8S_STATE / "bin").read_text().strip()) / "registry"
    except OSError:
        binary = Path("/nonexistent")
    if not binary.is_file():
        reason = "COLD-PATH TEST NOT RUN: no dev-cluster binaries here (make k8s-up builds them)"
        if os.environ.get("RECJOBS_REQUIRE_K8S") == "1":
            pytest.fail(reason, pytrace=False)
        missing(reason)
    return binary


def _collect_garbage(tmp_path: Path, registry_root: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage:\n  filesystem: {{rootdirectory: {registry_root}}}\n  delete: {{enabled: true}}\n"
        "http: {addr: 127.0.0.1:0}\n"
    )
    script = (
        f'source "{ROOT}/k8s/dev/cluster.sh"; bin="{_registry_binary().parent}"; '
        f'logs="{tmp_path}"; collect_registry_garbage "{config}" "{registry_root}"'
    )
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)


@pytest.mark.k8s
def test_registry_garbage_collection_on_an_empty_root(tmp_path):
    """A new machine: the registry root does not even exist yet."""
    done = _collect_garbage(tmp_path, tmp_path / "registry")
    assert done.returncode == 0, done.stderr


@pytest.mark.k8s
def test_registry_garbage_collection_after_a_first_push_cut_off_before_its_layers(tmp_path):
    """A push writes under repositories/ before its first layer reaches blobs/; cut off there,
    the root has no blobs/, which `registry garbage-collect` refuses: nothing to collect."""
    root = tmp_path / "registry"
    (root / "docker" / "registry" / "v2" / "repositories" / "ml" / "recjobs").mkdir(parents=True)
    done = _collect_garbage(tmp_path, root)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "registry.log").exists()  # skipped, not run


@pytest.mark.k8s
def test_registry_garbage_collection_runs_on_a_root_with_repositories_and_blobs(tmp_path):
    """The guard skips only those roots: with both folders the real collection runs."""
    root = tmp_path / "registry"
    for folder in ("repositories", "blobs"):
        (root / "docker" / "registry" / "v2" / folder).mkdir(parents=True)
    done = _collect_garbage(tmp_path, root)
    assert done.returncode == 0, done.stderr + (tmp_path / "registry.log").read_text()
    assert "0 blobs marked" in (tmp_path / "registry.log").read_text()  # the binary ran


# --------------------------------------------------------------------------- dockerd


def _dockerd_or_skip() -> None:
    import shutil

    reason = None
    if os.geteuid() != 0:
        reason = "not root"
    elif not shutil.which("dockerd"):
        reason = "no dockerd (apt-get install docker.io)"
    if reason:
        reason = f"COLD-PATH TEST NOT RUN: {reason}"
        if os.environ.get("RECJOBS_REQUIRE_DOCKER") == "1":
            pytest.fail(reason, pytrace=False)
        missing(reason)


def _leftovers(run_dir: str, data_root: Path) -> list[str]:
    processes = subprocess.run(
        ["pgrep", "-af", f"dockerd .*{data_root}|containerd.* {run_dir}/"],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    mounts = _mounts_under(run_dir) + _mounts_under(str(data_root))
    return mounts + processes + ([run_dir] if Path(run_dir).exists() else [])


@pytest.mark.docker
def test_private_dockerd_on_an_empty_data_root_leaves_nothing(tmp_path):
    _dockerd_or_skip()
    cache = tmp_path / "cache"  # does not exist: the script makes it
    done = subprocess.run(
        [
            str(ROOT / "docker" / "with-dockerd.sh"),
            "bash",
            "-c",
            'echo "${DOCKER_HOST#unix://}"; docker info --format "{{.Images}}"',
        ],
        env={**os.environ, "RECJOBS_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    socket, images = done.stdout.split()
    assert images == "0"
    assert _leftovers(str(Path(socket).parent), cache / "docker") == []


@pytest.mark.docker
@pytest.mark.parametrize("how", ["SIGTERM to the process group", "the daemon killed"])
def test_private_dockerd_stopped_with_a_container_running_leaves_nothing(tmp_path, how):
    """Ctrl-C or a CI timeout signals the whole process group, the daemon included; a daemon
    that does not stop in time is killed (or crashes). A container running then has its network
    namespace mounted (nsfs) under the daemon's run directory and a shim of its own: once the
    mount stayed behind; after a killed daemon, the shim and the container's process too."""
    _dockerd_or_skip()
    cache = tmp_path / "cache"
    ready = tmp_path / "ready"
    # The image is one static binary that waits for a signal (as PID 1 it ignores SIGTERM).
    context = tmp_path / "image"
    context.mkdir()
    (context / "wait.c").write_text("#include <unistd.h>\nint main(void) { for (;;) pause(); }\n")
    compiled = subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(context / "wait"), str(context / "wait.c")],
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stderr  # gcc and libc6-dev: .ci/run installs them
    (context / "Dockerfile").write_text('FROM scratch\nCOPY wait /wait\nENTRYPOINT ["/wait"]\n')
    go = tmp_path / "go"  # the daemon is killed only once the test has seen the mount
    then = "exec sleep 600"
    if how == "the daemon killed":
        then = (
            f'while [ ! -e "{go}" ]; do sleep 0.1; done; pid=$(cat "$run/dockerd.pid"); '
            'kill -KILL "$pid"; while kill -0 "$pid"; do sleep 0.1; done'
        )
    proc = subprocess.Popen(
        [
            str(ROOT / "docker" / "with-dockerd.sh"),
            "bash",
            "-c",
            'run=$(dirname "${DOCKER_HOST#unix://}") '
            f'&& DOCKER_BUILDKIT=0 docker build -q -t cold-path-wait "{context}" >/dev/null '
            "&& id=$(docker run -d --network bridge cold-path-wait) "
            '&& echo "$run $(docker inspect -f "{{.State.Pid}}" "$id")" '
            f'>"{ready}.tmp" && mv "{ready}.tmp" "{ready}" && {then}',
        ],
        env={**os.environ, "RECJOBS_CACHE_DIR": str(cache)},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the private dockerd did not come up"
            time.sleep(0.1)
        run_dir, container_pid = ready.read_text().split()
        assert _mounts_under(run_dir), "expected the container's netns mount while it runs"
        if how == "SIGTERM to the process group":
            os.killpg(proc.pid, signal.SIGTERM)
        go.touch()
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == (143 if how == "SIGTERM to the process group" else 0)
    assert _leftovers(run_dir, cache / "docker") == []
    assert _ends(int(container_pid)), "the container's process still runs"


def _ends(pid: int, seconds: float = 30) -> bool:
    """Whether `pid` is gone or a zombie (killed, not yet reaped by init) within `seconds`:
    SIGKILL takes effect asynchronously."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- wheelhouse


def _source_wheelhouse() -> Path:
    """The wheelhouse `make setup` installed this venv from (torch and the build backend)."""
    sources = [
        d
        for d in sorted((CACHE / "wheels").glob("py311-*"))
        if any(d.glob("torch-*.whl")) and any(d.glob("scikit_build_core-*.whl"))
    ]
    if not sources:
        missing(f"COLD-PATH TEST NOT RUN: no wheelhouse in {CACHE}/wheels (make setup makes one)")
    return sources[-1]


def _wheelhouse_offline(cache: Path, source: Path) -> subprocess.CompletedProcess[str]:
    """docker/wheelhouse.sh into `cache`, with pip offline on the wheels in `source`."""
    return subprocess.run(
        [str(ROOT / "docker" / "wheelhouse.sh")],
        env={
            **os.environ,
            "PYTHON": sys.executable,
            "RECJOBS_CACHE_DIR": str(cache),
            "PIP_ARGS": f"--no-index --find-links {source}",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_wheelhouse_into_an_empty_cache(tmp_path):
    """docker/wheelhouse.sh on a new machine: the cache folder does not exist. Offline here:
    pip takes the wheels the venv was installed from (--no-index --find-links), so this checks
    the script's cold path (folders, the requirements read from pyproject.toml, pip wheel) and
    that the result is complete, not PyPI."""
    cache = tmp_path / "empty-cache"
    try:
        _check_wheelhouse_into_an_empty_cache(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # a second copy of torch: 3 GB of a CI disk


def _check_wheelhouse_into_an_empty_cache(cache: Path) -> None:
    done = _wheelhouse_offline(cache, _source_wheelhouse())
    assert done.returncode == 0, done.stderr[-3000:]
    wheels = Path(done.stdout.strip())
    assert wheels.parent == cache / "wheels" and wheels.is_dir()
    names = {w.name.split("-")[0].lower() for w in wheels.glob("*.whl")}
    # torch, the runtime dependencies and the build backend (the image installs offline from it).
    assert {"torch", "torchx", "pyarrow", "scikit_build_core"} <= names, sorted(names)
    # Everything the venv could install from the source wheelhouse, this one has too.
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheels),
            "--ignore-installed",
            "torch==2.13.0",
            "torchx",
            "pyarrow",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]


def test_a_wheelhouse_run_cut_off_by_a_full_disk_leaves_no_partial_wheel(tmp_path):
    """pip reuses a file in its wheel folder by name, unchecked: a wheel cut short by a full disk
    must never reach the wheelhouse, or every later run installs a broken torch. Here the cache
    is a 64 MiB tmpfs, far too small for torch."""
    source = _source_wheelhouse()
    if os.geteuid() != 0:
        missing("COLD-PATH TEST NOT RUN: mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], check=True)
    try:
        done = _wheelhouse_offline(small, source)
        assert done.returncode != 0 and "No space left on device" in done.stderr, done.stderr
        (wheels,) = (small / "wheels").glob("py311-*")
        complete = {w.name: w.stat().st_size for w in source.glob("*.whl")}
        assert {w.name: w.stat().st_size for w in wheels.glob("*.whl")} == {
            w.name: complete[w.name] for w in wheels.glob("*.whl")
        }
        assert not list((small / "wheels").glob(".partial.*"))  # the failed run's folder is gone
    finally:
        subprocess.run(["umount", str(small)], check=True)
