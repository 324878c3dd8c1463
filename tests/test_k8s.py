"""`torchx run -s kubernetes` against a real cluster: upstream Kubernetes and Volcano.

The cluster is the one `make k8s-up` (k8s/dev/cluster.sh) starts on this machine: API server,
controller manager, scheduler, kubelet with containerd and runc, CoreDNS, Volcano's scheduler,
controllers and admission webhook. Nothing is mocked. The node advertises nvidia.com/gpu and
is tainted like a GPU node; the containers train on its CPU.

Every torchx command runs as the `recjobs-submitter` ServiceAccount of k8s/rbac.yaml
(.k8s/kubeconfig), so the tests also prove that Role is enough. What a submitter must not do
(read pods' secrets, exec into pods, delete pods) the tests do with the admin kubeconfig,
standing in for the cluster: a lost pod, a Secret an admin created.

Without a running cluster the tests skip with the reason; with RECJOBS_REQUIRE_K8S=1 (what
.ci/run exports) or CI=true they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.utils.quantity import parse_quantity

from recjobs.training.checkpoint import load_checkpoint

from runs import ROOT, missing, resolve_printed

pytestmark = pytest.mark.k8s

STATE = Path("/var/lib/recjobs-k8s")  # k8s/dev/cluster.sh
SUBMITTER = ROOT / ".k8s" / "kubeconfig"
ADMIN = ROOT / ".k8s" / "admin.kubeconfig"
PV = STATE / "pv" / "recjobs-runs"  # the local volume the recjobs-runs PVC is bound to
NAMESPACE = "recjobs"
IMAGE = "recjobs:0.1.0"  # imported into containerd by cluster.sh (IfNotPresent: no registry)
BIN = Path(sys.executable).parent
TORCHX = str(BIN / "torchx")
JOB_UID = 1000
SECRET = "k8s-planted-0123456789abcdef0123456789-never-print-me"  # W&B wants 40+ characters
# Tiny data: seconds of training per epoch on one CPU.
TINY = [
    "--set=dataset.synth.users=300",
    "--set=dataset.synth.items=80",
    "--set=dataset.synth.interactions=4000",
    "--set=model.embedding_dim=8",
    "--set=model.hidden_dims=[16]",
    "--set=training.batch_size=256",
    "--set=training.log_steps=1",
]
# Two pods of one CPU each fit the 2-CPU node together (TorchX asks 100m less than --cpu).
SMALL = ["--cpu", "1", "--memMB", "3000"]


def unavailable(reason: str) -> None:
    reason = f"KUBERNETES TESTS NOT RUN: {reason}"
    if os.environ.get("RECJOBS_REQUIRE_K8S") == "1":
        pytest.fail(f"{reason} (RECJOBS_REQUIRE_K8S=1: the cluster must run here)", pytrace=False)
    missing(reason)


def kubectl_bin() -> str:
    try:
        return str(Path((STATE / "bin").read_text().strip()) / "kubectl")
    except OSError:
        return ""


def kubectl(*args: str, admin: bool = True, check: bool = True, timeout: int = 60) -> str:
    done = subprocess.run(
        [kubectl_bin(), "--kubeconfig", str(ADMIN if admin else SUBMITTER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout if check else done.stdout + done.stderr


def env() -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(SUBMITTER),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TORCHXCONFIG": str(ROOT / ".torchxconfig"),
        "PYTHONUNBUFFERED": "1",
    }


def torchx(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TORCHX, *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def cluster() -> None:
    if not (SUBMITTER.is_file() and ADMIN.is_file() and Path(kubectl_bin()).is_file()):
        unavailable("no development cluster here (make k8s-up starts one; root needed)")
    done = subprocess.run(
        [kubectl_bin(), "--kubeconfig", str(ADMIN), "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        unavailable(f"the development cluster does not answer: {done.stderr.strip()[-300:]}")


@pytest.fixture(autouse=True)
def no_job_outlives_its_test(cluster) -> Iterator[None]:
    """A failed test's job must not hold the node's 2 CPUs while the next test waits."""
    yield
    kubectl("-n", NAMESPACE, "delete", "vcjob", "--all", "--wait=true", check=False, timeout=120)


def submit(*args: str, component: str = "train") -> tuple[str, str]:
    """torchx run -s kubernetes ... as the submitter; returns (handle, Volcano Job name)."""
    done = torchx("run", "-s", "kubernetes", f"components/train.py:{component}", *args)
    assert done.returncode == 0, done.stderr[-4000:]
    handle = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(rf"kubernetes://torchx/{NAMESPACE}:([a-z0-9-]+)", handle)
    assert match, done.stdout
    return handle, match.group(1)


def state(handle: str) -> str:
    done = torchx("status", handle)
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r"State: (\w+)", done.stdout)
    assert match, done.stdout
    return match.group(1)


def wait_state(handle: str, wanted: set[str], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while True:
        current = state(handle)
        if current in wanted:
            return current
        assert current not in {"FAILED", "CANCELLED"} or current in wanted, diagnose(handle)
        assert time.monotonic() < deadline, f"{handle} still {current}\n{diagnose(handle)}"
        time.sleep(2)


def wait_for(what: str, condition, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} after {timeout} s"
        time.sleep(0.5)
    return value


def diagnose(handle: str) -> str:
    name = handle.rsplit(":", 1)[1]
    return "\n".join(
        [
            kubectl("-n", NAMESPACE, "get", "vcjob", name, "-o", "yaml", check=False)[-3000:],
            kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide", check=False),
            kubectl("-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp", check=False)[
                -3000:
            ],
        ]
    )


def pods(job: str) -> list[dict[str, Any]]:
    listed = json.loads(
        kubectl("-n", NAMESPACE, "get", "pods", "-l", f"volcano.sh/job-name={job}", "-o", "json")
    )
    return listed["items"]


def log(handle: str, replica: int, role: str = "train") -> str:
    done = torchx("log", f"{handle}/{role}/{replica}")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def strip_colours(text: str) -> str:
    """torchx log's output without the ANSI colour of its role/replica prefixes (a tty only)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def contained(sent: Any, stored: Any, path: str = "") -> list[str]:
    """Where `sent` is not in `stored`: a pruned field or a changed value (additions are fine).

    Volcano's mutating webhook re-serialises the tasks through Go types, so a field sent with
    its zero value (readOnly: false, nodeSelector: {}) may come back absent, and quantities
    in canonical form (1000m -> 1, 3000M -> 3G): those are the same value.
    """
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [f"{path}: {stored!r}"]
        problems = []
        for key, value in sent.items():
            if key in stored:
                problems += contained(value, stored[key], f"{path}.{key}")
            elif value not in (False, 0, "", None, {}, []):
                problems.append(f"{path}.{key}: pruned")
        return problems
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(sent) != len(stored):
            return [f"{path}: {len(sent)} items sent, stored {stored!r}"]
        return [
            p for i, (a, b) in enumerate(zip(sent, stored)) for p in contained(a, b, f"{path}[{i}]")
        ]
    if re.search(r"\.resources\.(limits|requests)\.", path):
        return (
            []
            if parse_quantity(sent) == parse_quantity(stored)
            else [f"{path}: {sent} != {stored}"]
        )
    return [] if sent == stored else [f"{path}: sent {sent!r}, stored {stored!r}"]


def readme_dev_cluster_commands() -> list[list[str]]:
    """The README's commands for the development cluster, word by word, as a user types them."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- dev-cluster -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md: no ```bash block after <!-- dev-cluster -->"
    commands = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line:
            commands.append(shlex.split(line))
    return commands


# --------------------------------------------------------------------------- the tests


def test_the_submitter_role_allows_what_torchx_needs_and_nothing_more(cluster):
    def can(verb: str, resource: str) -> bool:
        answer = kubectl("auth", "can-i", verb, resource, "-n", NAMESPACE, admin=False, check=False)
        return answer.strip().splitlines()[0] == "yes"

    for verb, resource in [
        ("create", "jobs.batch.volcano.sh"),
        ("get", "jobs.batch.volcano.sh"),
        ("delete", "jobs.batch.volcano.sh"),
        ("get", "pods"),
        ("get", "pods/log"),
        ("list", "events"),
    ]:
        assert can(verb, resource), f"the submitter cannot {verb} {resource}"
    for verb, resource in [
        ("get", "secrets"),
        ("create", "pods"),
        ("delete", "pods"),
        ("create", "pods/exec"),
        ("create", "queues.scheduling.volcano.sh"),
        ("list", "nodes"),
        ("create", "persistentvolumes"),
    ]:
        assert not can(verb, resource), f"the submitter can {verb} {resource}"
    # Nothing outside its namespace either.
    assert (
        kubectl(
            "auth",
            "can-i",
            "create",
            "jobs.batch.volcano.sh",
            "-n",
            "default",
            admin=False,
            check=False,
        )
        .strip()
        .startswith("no")
    )


def test_an_invalid_config_is_refused_at_submit_and_nothing_reaches_the_cluster(cluster):
    before = kubectl("-n", NAMESPACE, "get", "vcjob", "-o", "name")
    done = torchx(
        "run", "-s", "kubernetes", "components/train.py:train", "--task", "retrieval",
        "--image", IMAGE, "--", "--set=training.max_epoch=3",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: retrieval.training.max_epoch: unknown key (did you mean max_epochs?)"
    )
    assert "Traceback" not in done.stderr
    assert kubectl("-n", NAMESPACE, "get", "vcjob", "-o", "name") == before


def test_readme_job_runs_two_pods_that_rendezvous_and_train_on_the_pvc(cluster):
    """The README's development-cluster commands, as written: run, status, log."""
    commands = readme_dev_cluster_commands()
    run = next(c for c in commands if c[:2] == ["torchx", "run"])
    assert "-j" in run and run[run.index("-j") + 1] == "2x1", run
    overrides = run[run.index("--") + 1 :] if "--" in run else []
    sent = dryrun_resource(run)
    handle, job = submit(*run[run.index("components/train.py:train") + 1 :])
    wait_state(handle, {"SUCCEEDED"}, timeout=420)

    # The API server stored the Volcano Job as sent: nothing pruned or changed by the CRD's
    # structural schema (Volcano's webhook may only add defaults).
    stored = json.loads(kubectl("-n", NAMESPACE, "get", "vcjob", job, "-o", "json"))
    sent = json.loads(json.dumps(sent).replace(sent["metadata"]["name"], job))
    assert sent["spec"]["maxRetry"] == 0  # no --max_retries
    # Volcano's mutating webhook takes 0 for "unset" and writes its default, 3; torchx adds no
    # restart policies without --max_retries, so no pod failure restarts the job anyway.
    assert contained(sent["spec"], stored["spec"]) == [".maxRetry: sent 0, stored 3"]
    assert stored["spec"]["minAvailable"] == 2  # the webhook's default: both pods, gang-scheduled

    # Two pods on the node, each asking for a GPU the node advertises; rank 1 found rank 0's
    # c10d store through Volcano's hostname for it and cluster DNS.
    listed = pods(job)
    assert sorted(p["metadata"]["name"] for p in listed) == [f"{job}-train-0-0", f"{job}-train-1-0"]
    for pod in listed:
        (container,) = pod["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod["spec"]["nodeName"] == "recjobs-node"
        assert pod["status"]["phase"] == "Succeeded"
        command = shlex.split(container["command"][2])
        assert command[command.index("--nnodes") + 1] == "2"
    rank0, rank1 = log(handle, 0), log(handle, 1)
    (pod1,) = [p for p in listed if p["metadata"]["name"] == f"{job}-train-1-0"]
    (hosts,) = [e for e in pod1["spec"]["containers"][0]["env"] if e["name"] == "VC_TRAIN_0_HOSTS"]
    # From the ConfigMap of Volcano's svc plugin (deleted with the job's end): rank 0's pod's
    # hostname in the job's headless service. Unset, rank 1 would look for the store on
    # localhost and the job could not have succeeded.
    assert hosts["valueFrom"]["configMapKeyRef"] == {
        "name": f"{job}-svc",
        "key": "VC_TRAIN_0_HOSTS",
    }
    words = shlex.split(pod1["spec"]["containers"][0]["command"][2])
    assert words[words.index("--rdzv_endpoint") + 1] == "${VC_TRAIN_0_HOSTS:=localhost}:29500"
    assert "on cpu x2" in rank0, rank0[-3000:]
    assert "no CUDA device" in rank0  # device: auto on a node without real GPUs says so
    assert "Traceback" not in rank0 + rank1
    # `torchx log HANDLE` (every replica, as TorchX documents it) on the finished job: both
    # pods' lines, prefixed by role/replica (recjobs' describe lists the Job's tasks, which
    # Volcano no longer counts in status.taskStatusCount once the job has finished).
    done = torchx("log", handle)
    assert done.returncode == 0, done.stderr[-2000:]
    prefixes = {line.split(" ", 1)[0] for line in strip_colours(done.stdout).splitlines()}
    assert prefixes == {"train/0", "train/1"}, done.stdout[-2000:]
    assert "on cpu x2" in done.stdout

    # Rank 0 wrote the run directory on the PVC as uid 1000 (the pods' fsGroup made the volume
    # writable), on exactly the config `recjobs resolve` prints for the same overrides.
    run_dir = PV / job
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == resolve_printed(*overrides)
    val = [r for r in records(run_dir) if "val/loss" in r]
    assert val and all(0.0 < r["val/recall@10"] <= 1.0 for r in val)
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "model").is_dir()
    owners = {p.stat().st_uid for p in [run_dir, *run_dir.rglob("*")]}
    assert owners == {JOB_UID}, owners


def dryrun_resource(run: list[str]) -> dict[str, Any]:
    """What `torchx run --dryrun` would send for the same command line."""
    words = [*run[:2], "--dryrun", *run[2:]]
    done = torchx(*words[1:])
    assert done.returncode == 0, done.stderr[-3000:]
    return yaml.safe_load(done.stdout.split("=== SCHEDULER REQUEST ===")[1])


def test_a_lost_pod_is_restarted_by_volcano_and_the_job_resumes_from_its_checkpoint(cluster):
    """kubectl delete pod (node drained, spot VM gone): Volcano restarts the job, which resumes.

    Also: W&B's key reaches the container from the Secret `wandb`, and appears in no job spec,
    pod spec, log or run directory file.
    """
    kubectl("-n", NAMESPACE, "delete", "secret", "wandb", "--ignore-not-found")
    kubectl(
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "wandb",
        f"--from-literal=WANDB_API_KEY={SECRET}",
    )
    # About 16 steps an epoch; a checkpoint every 10 steps, the first validation after epoch 0.
    handle, job = submit(
        "--task", "retrieval", "--config", "config/quickstart.yaml", "-j", "1x1", "--gpu", "1",
        *SMALL, "--image", IMAGE, "--mounts", "type=volume,src=recjobs-runs,dst=/runs",
        "--run_dir", "/runs/${app_id}", "--max_retries", "2",
        # Online W&B needs the key (offline asks for no Secret). Nothing outside is reachable
        # from the pods: W&B gives up after the init timeout and training goes on without it.
        "--wandb_project", "recjobs-ci", "--env", "WANDB_INIT_TIMEOUT=10", "--",
        *TINY, "--set=training.max_epochs=40", "--set=training.checkpoint_steps=10",
        "--set=training.early_stopping.enabled=false",
    )  # fmt: skip
    run_dir = PV / job
    last = run_dir / "checkpoints" / "last.pt"
    wait_for("a checkpoint on the PVC", last.exists, timeout=300)
    (pod,) = pods(job)
    name = pod["metadata"]["name"]
    # The key is in the container's environment (checked inside it, printing nothing) ...
    check = kubectl(
        "-n", NAMESPACE, "exec", name, "--", "sh", "-c",
        f'test "$WANDB_API_KEY" = "{SECRET}" && echo key-matches',
    )  # fmt: skip
    assert check.strip() == "key-matches"
    # ... through a secretKeyRef, not a literal value.
    (env_key,) = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "WANDB_API_KEY"]
    assert env_key == {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "WANDB_API_KEY"}},
    }

    kubectl("-n", NAMESPACE, "delete", "pod", name, "--wait=false")
    assert wait_state(handle, {"SUCCEEDED"}, timeout=420) == "SUCCEEDED"
    stored = json.loads(kubectl("-n", NAMESPACE, "get", "vcjob", job, "-o", "json"))
    assert stored["status"].get("retryCount", 0) >= 1, stored["status"]
    (second,) = pods(job)
    assert second["metadata"]["uid"] != pod["metadata"]["uid"]

    # The restarted pod resumed from the checkpoint the stopped one wrote: every step once.
    resumed = log(handle, 0)
    checkpoint = load_checkpoint(last)
    match = re.search(
        rf"resumed from /runs/{job}/checkpoints/last\.pt at epoch (\d+), step (\d+)", resumed
    )
    assert match, resumed[-3000:]
    assert int(match.group(2)) > 0
    steps = [r["step"] for r in records(run_dir) if "train/lr" in r]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] == checkpoint["step"]

    # The key is nowhere but in the Secret.
    spec_text = kubectl("-n", NAMESPACE, "get", "vcjob", job, "-o", "yaml")
    pod_text = kubectl(
        "-n", NAMESPACE, "get", "pods", "-l", f"volcano.sh/job-name={job}", "-o", "yaml"
    )
    assert SECRET not in spec_text + pod_text + resumed
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_two_pod_job_with_global_negatives_validates_as_the_same_job_on_local_cwd(
    cluster, tmp_path
):
    """Two pods, `training.negatives: global`, validation sharded over the ranks: the job
    succeeds on the cluster, and its val/recall@10 and val/loss equal a `torchx run -s
    local_cwd -j 1x2` of the same config and seed (each rank one thread on both sides, as
    torchrun sets it for two local processes, so the float sums are done in the same order:
    recall to 1e-9, the loss to 1e-5 relative)."""
    sets = [
        *TINY, "--set=training.negatives=global", "--set=training.max_epochs=2",
        "--set=training.early_stopping.enabled=false",
    ]  # fmt: skip
    local = tmp_path / "local"
    done = torchx(
        "run", "-s", "local_cwd", "components/train.py:train", "--task", "retrieval",
        "--config", "config/quickstart.yaml", "-j", "1x2", "--run_dir", str(local), "--", *sets,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    handle, job = submit(
        "--task", "retrieval", "--config", "config/quickstart.yaml", "-j", "2x1", *SMALL,
        "--image", IMAGE, "--mounts", "type=volume,src=recjobs-runs,dst=/runs",
        "--run_dir", "/runs/${app_id}", "--env", "OMP_NUM_THREADS=1", "--", *sets,
    )  # fmt: skip
    assert wait_state(handle, {"SUCCEEDED"}, timeout=600) == "SUCCEEDED"
    rank0 = log(handle, 0)
    assert "on cpu x2" in rank0 and "Traceback" not in rank0 + log(handle, 1)
    on_cluster = [r for r in records(PV / job) if "val/loss" in r]
    on_local = [r for r in records(local) if "val/loss" in r]
    assert [r["step"] for r in on_cluster] == [r["step"] for r in on_local] and len(on_local) == 2
    for there, here in zip(on_cluster, on_local):
        assert there["val/recall@10"] == pytest.approx(here["val/recall@10"], abs=1e-9)
        assert there["val/loss"] == pytest.approx(here["val/loss"], rel=1e-5)
    assert 0.0 < on_local[-1]["val/recall@10"] <= 1.0


def test_an_elastic_job_that_loses_a_pod_finishes_from_its_checkpoint(cluster):
    """`-j 1:2x1`: Volcano's minAvailable is 1 (the gang may run with one pod) and torchrun
    gets --nnodes 1:2. A pod deleted mid-run (a lost node): the job either comes back at two
    pods or goes on at one, from its last checkpoint either way, and succeeds; every step is
    trained once and the resumed attempt says at which world it continued."""
    handle, job = submit(
        "--task", "retrieval", "--config", "config/quickstart.yaml", "-j", "1:2x1", *SMALL,
        "--image", IMAGE, "--mounts", "type=volume,src=recjobs-runs,dst=/runs",
        "--run_dir", "/runs/${app_id}", "--max_retries", "3", "--",
        *TINY, "--set=training.max_epochs=30", "--set=training.checkpoint_steps=5",
        "--set=training.early_stopping.enabled=false",
    )  # fmt: skip
    stored = json.loads(kubectl("-n", NAMESPACE, "get", "vcjob", job, "-o", "json"))
    assert stored["spec"]["minAvailable"] == 1
    run_dir = PV / job
    last = run_dir / "checkpoints" / "last.pt"
    wait_for("a checkpoint on the PVC", last.exists, timeout=420)
    lost = f"{job}-train-1-0"
    (first,) = [p for p in pods(job) if p["metadata"]["name"] == lost]
    kubectl("-n", NAMESPACE, "delete", "pod", lost, "--wait=false")
    assert wait_state(handle, {"SUCCEEDED"}, timeout=900) == "SUCCEEDED", diagnose(handle)
    # The run went on from a checkpoint: one resumed attempt at least, and no step twice.
    text = (run_dir / "train.log").read_text()
    match = re.search(r"resumed from /runs/\S+/checkpoints/last\.pt at epoch \d+, step (\d+)", text)
    assert match and int(match.group(1)) > 0, text[-3000:]
    steps = [r["step"] for r in records(run_dir) if "train/lr" in r]
    assert steps == sorted(set(steps)), steps
    assert [r["epoch"] for r in records(run_dir) if "val/loss" in r] == list(range(30))
    # A pod that came back is a new one; a job that went on at one pod says so.
    names = {p["metadata"]["uid"] for p in pods(job)}
    assert first["metadata"]["uid"] not in names
    world_changed = re.search(r"resumed at world 1 \(was 2\)", text)
    assert world_changed or len(pods(job)) == 2, text[-3000:]


def test_a_job_asking_for_more_gpus_than_the_node_has_stays_pending_and_says_why(cluster):
    """The node advertises 4 nvidia.com/gpu: a pod asking for 8 is never placed, and what the
    submitter can see (torchx status, kubectl describe, events) says so."""
    handle, job = submit(
        "--task", "retrieval", "--config", "config/quickstart.yaml", "-j", "1x8", "--gpu", "8",
        *SMALL, "--image", IMAGE, "--mounts", "type=volume,src=recjobs-runs,dst=/runs",
        "--run_dir", "/runs/${app_id}", "--", *TINY,
    )  # fmt: skip

    def why() -> str:
        done = torchx("status", handle)
        assert done.returncode == 0, done.stderr[-2000:]
        match = re.search(
            r"State: PENDING\n.*Msg: (.*overused nvidia.com/gpu.*)", done.stdout, re.S
        )
        return match.group(1).splitlines()[0] if match else ""

    # Volcano's scheduler does not admit the gang (8 GPUs asked, 4 on the node) and says so in
    # an event on the pod group, which `torchx status` shows (recjobs' kubernetes scheduler).
    message = wait_for("torchx status naming the missing GPUs", why, timeout=120)
    assert message.startswith("resource in cluster is overused: overused nvidia.com/gpu"), message
    # The submitter sees the same in the namespace's events.
    events = json.loads(kubectl("-n", NAMESPACE, "get", "events", "-o", "json", admin=False))
    assert any(
        e["involvedObject"]["name"].startswith(f"{job}-") and "nvidia.com/gpu" in e["message"]
        for e in events["items"]
    )
    # No pod is created for a gang that cannot be placed, and it stays so.
    time.sleep(10)
    assert pods(job) == [] and state(handle) == "PENDING"


def test_a_two_pod_recommend_job_writes_every_users_top_k_once_on_the_pvc(cluster):
    """Batch inference (components/train.py:recommend) on a model on the PVC: two pods, a part
    each, together every user once, and the same answer as the Python API on this machine."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recjobs import Recommender
    from recjobs.config.resolver import Overrides, resolve
    from recjobs.training import trainer

    # The model: trained here, straight onto the volume (the pods only read it).
    sets = [s.removeprefix("--set=") for s in TINY]
    model = PV / f"trained-here-{os.getpid()}"
    config = resolve("retrieval", ROOT / "config" / "quickstart.yaml", Overrides(sets=sets))
    trainer.train(config, model)
    handle, job = submit(
        "--model_dir", f"/runs/{model.name}", "--k", "5", "-j", "2x1", *SMALL,
        "--image", IMAGE, "--mounts", "type=volume,src=recjobs-runs,dst=/runs",
        "--out", "/runs/${app_id}", component="recommend",
    )  # fmt: skip
    wait_state(handle, {"SUCCEEDED"}, timeout=300)
    assert sorted(p["metadata"]["name"] for p in pods(job)) == [
        f"{job}-recommend-0-0",
        f"{job}-recommend-1-0",
    ]
    assert "Traceback" not in log(handle, 0, "recommend") + log(handle, 1, "recommend")
    parts = sorted((PV / job).iterdir())
    assert [p.name for p in parts] == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    assert {p.stat().st_uid for p in parts} == {JOB_UID}
    got = pa.concat_tables([pq.read_table(p) for p in parts])
    want = Recommender.load(model).topk(k=5)
    for column in ("user_id", "item_id", "rank"):
        assert got.column(column).to_pylist() == want.column(column).to_pylist(), column
    assert got.column("score").to_pylist() == pytest.approx(
        want.column("score").to_pylist(), abs=1e-5
    )
    assert got.num_rows == 5 * len(set(got.column("user_id").to_pylist())) == 5 * 300


def test_torchx_status_log_and_cancel_work_for_the_submitter(cluster):
    handle, job = submit(
        "--task", "ranking", "-j", "1x1", *SMALL, "--image", IMAGE,
        "--mounts", "type=volume,src=recjobs-runs,dst=/runs", "--run_dir", "/runs/${app_id}",
        "--", *TINY, "--set=training.max_epochs=100000", "--set=training.early_stopping.enabled=false",
    )  # fmt: skip
    assert wait_state(handle, {"RUNNING"}, timeout=240) == "RUNNING"
    wait_for("training log lines", lambda: "training ranking" in log(handle, 0), timeout=240)
    listed = torchx("list", "-s", "kubernetes")
    assert listed.returncode == 0 and job in listed.stdout, listed.stderr[-2000:]
    done = torchx("cancel", handle)
    assert done.returncode == 0, done.stderr[-2000:]
    # The Job goes, and its pods with it.
    wait_for("the cancelled job's pods to go", lambda: not pods(job), timeout=120)
    gone = kubectl("-n", NAMESPACE, "get", "vcjob", job, check=False)
    assert "NotFound" in gone or "Terminat" in gone or "Abort" in gone, gone
