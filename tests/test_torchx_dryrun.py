"""`torchx run --dryrun` for local_docker and kubernetes, exactly as the README shows them.

No Docker daemon and no cluster: the printed scheduler requests are parsed and checked for GPUs,
tolerations, node selectors, secret refs, mounts, retries and the resolved config, and every
generated Volcano Job is validated against Volcano's real CRD schema.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from runs import missing

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT.parent / "shared" / "volcano-crds"
BIN = Path(sys.executable).parent
SECRET = "k-0123456789-never-print-me"
OVERRIDES = ["--optimizer", "AdamW", "--set=training.max_epochs=2", "--set=shared.seed=7"]
# What --wandb_project adds to the overrides (see the component's docstring).
WANDB_SETS = ["--set=training.use_wandb=true", "--set=training.wandb_project=recsys"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TORCHXCONFIG": str(ROOT / ".torchxconfig"),
        "WANDB_API_KEY": SECRET,  # in the submitting environment, as a user would have it
    }
    done = subprocess.run(
        list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert SECRET not in done.stdout + done.stderr
    return done


def dryrun(
    scheduler: str,
    *args: str,
    cfg: str | None = None,
    component: str = "components/train.py:train",
) -> Any:
    cfg_args = ["-cfg", cfg] if cfg else []
    done = run(
        str(BIN / "torchx"),
        "run",
        "-s",
        scheduler,
        *cfg_args,
        "--dryrun",
        "--workspace",
        "",
        component,
        *args,
    )
    return yaml.load(done.stdout.split("=== SCHEDULER REQUEST ===")[1], Loader=_SpecLoader)


class _SpecLoader(yaml.SafeLoader):
    """Reads local_docker's request, which torchx prints as YAML of Python objects."""


def _python_object(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    value = loader.construct_mapping(node, deep=True)
    return value.get("dictitems", value)  # docker's dict subclasses keep their items there


_SpecLoader.add_multi_constructor("tag:yaml.org,2002:python/", _python_object)


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """What `recjobs resolve` prints for the dry runs' task, config and overrides."""
    done = run(
        sys.executable,
        "-m",
        "recjobs",
        "resolve",
        "ranking",
        "--config",
        "config/quickstart.yaml",
        *OVERRIDES,
        *WANDB_SETS,
    )
    return json.loads(done.stdout)


def sent_config(command: str) -> dict[str, Any]:
    words = shlex.split(command)
    assert words[:2] == ["exec", "torchrun"]
    assert words[words.index("-m") + 1 : words.index("-m") + 4] == ["recjobs", "train", "ranking"]
    assert words[-1] == "--resume-or-start"
    return json.loads(words[words.index("--config-json") + 1])


def test_submit_names_the_task_config_and_overrides_it_trains():
    """The repository's .torchxconfig supplies --config; the dry run says so on stderr."""
    torchx = str(BIN / "torchx")
    readme = [torchx, "run", "-s", "local_cwd", "--dryrun", "components/train.py:train"]
    done = run(*readme, "--", "--optimizer", "SGD", "--set=training.max_epochs=1")
    assert (
        "recjobs: task retrieval, config config/quickstart.yaml (from .torchxconfig), "
        "2 overrides: --optimizer SGD --set training.max_epochs=1"
    ) in done.stderr.splitlines()
    done = run(*readme, "--task", "ranking", "--config", "config/quickstart.yaml")
    assert (
        "recjobs: task ranking, config config/quickstart.yaml, no overrides"
        in done.stderr.splitlines()
    )


# --------------------------------------------------------------------------- kubernetes


@pytest.fixture(scope="module")
def volcano_job() -> dict[str, Any]:
    return dryrun(
        "kubernetes",
        "--task",
        "ranking",
        "--config",
        "config/quickstart.yaml",
        "-j",
        "2x8",
        "--gpu",
        "8",
        "--cpu",
        "32",
        "--memMB",
        "200000",
        "--image",
        "registry.example.com/ml/recjobs:1.0",
        "--mounts",
        "type=volume,src=recjobs-runs,dst=/runs",
        "--run_dir",
        "/runs/${app_id}",
        "--max_retries",
        "3",
        "--wandb_project",
        "recsys",
        "--",
        *OVERRIDES,
        # -cfg beats .torchxconfig; tolerations, queue and fs_group come from .torchxconfig.
        cfg="node_selector=nvidia.com/gpu.product:NVIDIA-A100-SXM4-80GB,wandb_secret=team-wandb",
    )


def test_kubernetes_job_is_two_gpu_nodes_finding_rank_zero(volcano_job):
    assert volcano_job["kind"] == "Job" and volcano_job["spec"]["queue"] == "recjobs"
    tasks = volcano_job["spec"]["tasks"]
    assert [t["name"] for t in tasks] == ["train-0", "train-1"]
    endpoints = []
    for task in tasks:
        (container,) = task["template"]["spec"]["containers"]
        assert container["image"] == "registry.example.com/ml/recjobs:1.0"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"
        assert container["command"][:2] == ["bash", "-c"]
        words = shlex.split(container["command"][2])
        assert words[words.index("--nnodes") + 1] == "2"
        assert words[words.index("--nproc_per_node") + 1] == "8"
        endpoints.append(words[words.index("--rdzv_endpoint") + 1])
    # Rank 0 hosts the c10d store; the other node reads rank 0's host from Volcano's variable.
    assert endpoints == [
        "${TORCHX_RANK0_HOST:=localhost}:29500",
        "${VC_TRAIN_0_HOSTS:=localhost}:29500",
    ]


def test_kubernetes_pods_tolerate_and_select_gpu_nodes(volcano_job):
    for task in volcano_job["spec"]["tasks"]:
        spec = task["template"]["spec"]
        assert spec["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}


def test_kubernetes_wandb_key_comes_from_the_secret(volcano_job):
    for task in volcano_job["spec"]["tasks"]:
        env = task["template"]["spec"]["containers"][0]["env"]
        (key,) = [e for e in env if e["name"] == "WANDB_API_KEY"]
        assert key == {
            "name": "WANDB_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "team-wandb", "key": "WANDB_API_KEY"}},
        }


def test_kubernetes_run_dir_is_on_the_pvc_and_retries_resume(volcano_job):
    name = volcano_job["metadata"]["name"]
    spec = volcano_job["spec"]
    assert spec["maxRetry"] == 3
    for task in spec["tasks"]:
        assert task["maxRetry"] == 3
        assert {"event": "PodEvicted", "action": "RestartJob"} in task["policies"]
        pod = task["template"]["spec"]
        assert {"name": "mount-0", "persistentVolumeClaim": {"claimName": "recjobs-runs"}} in pod[
            "volumes"
        ]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"mountPath": "/runs", "name": "mount-0", "readOnly": False} in mounts
        assert pod["securityContext"]["fsGroup"] == 1000
        words = shlex.split(pod["containers"][0]["command"][2])
        # The same directory on every retry of this job: the retry resumes from its checkpoint.
        assert words[words.index("--run-dir") + 1] == f"/runs/{name}"


def test_kubernetes_job_trains_on_exactly_what_recjobs_resolve_printed(volcano_job, resolved):
    for task in volcano_job["spec"]["tasks"]:
        assert sent_config(task["template"]["spec"]["containers"][0]["command"][2]) == resolved
    assert resolved["ranking"]["training"]["optimizer"]["name"] == "AdamW"


# --------------------------------------------------------------------------- Volcano CRD


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields forbidden.

    The API server silently prunes fields a structural schema does not declare, so a field in
    the wrong place would vanish instead of failing; here it fails.
    """
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_validator(file: str) -> jsonschema.protocols.Validator:
    path = CRDS / file
    if not path.is_file():
        missing(
            f"VOLCANO CRD SCHEMA MISSING: {path} not found; the generated Volcano Jobs are NOT "
            "validated (the tests expect the shared CRDs next to the repository)"
        )
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["served"]]
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def test_generated_volcano_jobs_are_valid_against_the_crd(volcano_job):
    validator = crd_validator("batch.volcano.sh_jobs.yaml")
    errors = [e.message for e in validator.iter_errors(volcano_job)]
    assert errors == []
    single = dryrun(
        "kubernetes",
        *("--task", "retrieval", "-j", "1:3x2", "-h", "gpu.medium"),
        cfg="ephemeral_outputs=True",  # no mounts: the run directory would go with the pod
    )
    assert [e.message for e in validator.iter_errors(single)] == []
    assert [t["minAvailable"] for t in single["spec"]["tasks"]] == [1, 0, 0]  # elastic 1..3
    assert (
        single["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ]
        == "2"
    )


def test_crd_validation_can_fail(volcano_job):
    validator = crd_validator("batch.volcano.sh_jobs.yaml")
    misplaced = copy.deepcopy(volcano_job)
    container = misplaced["spec"]["tasks"][0]["template"]["spec"]["containers"][0]
    container["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert list(validator.iter_errors(misplaced))
    wrong = copy.deepcopy(volcano_job)
    wrong["spec"]["tasks"][0]["policies"][0]["event"] = "PodPreempted"
    assert list(validator.iter_errors(wrong))


# --------------------------------------------------------------------------- local_docker


@pytest.fixture(scope="module")
def bind_src(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def docker_containers(bind_src) -> list[dict[str, Any]]:
    return dryrun(
        "local_docker",
        "--task",
        "ranking",
        "--config",
        "config/quickstart.yaml",
        "-j",
        "1x2",
        "--gpu",
        "2",
        "--image",
        "recjobs:latest",
        "--mounts",
        f"type=bind,src={bind_src},dst=/runs",
        "--run_dir",
        "/runs/${app_id}",
        "--max_retries",
        "2",
        "--wandb_project",
        "recsys",
        "--",
        *OVERRIDES,
    )


def test_local_docker_gets_gpus_bind_mount_retries_and_the_resolved_config(
    docker_containers, bind_src, resolved
):
    (container,) = docker_containers
    kwargs = container["kwargs"]
    assert container["image"] == "recjobs:latest"
    assert kwargs["device_requests"] == [
        {
            "Driver": "",
            "Count": 2,
            "DeviceIDs": [],
            "Capabilities": [["compute", "utility"]],
            "Options": {},
        }
    ]
    assert kwargs["mounts"] == [
        {"Target": "/runs", "Source": str(bind_src), "Type": "bind", "ReadOnly": False}
    ]
    assert kwargs["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert container["command"][:2] == ["bash", "-c"]
    words = shlex.split(container["command"][2])
    assert words[words.index("--nproc_per_node") + 1] == "2"
    assert words[words.index("--run-dir") + 1].startswith("/runs/recjobs-ranking-")
    assert sent_config(container["command"][2]) == resolved
    # The key is not in the spec (run() also checked that the whole output lacks it); the
    # scheduler adds it when the container starts (tests/test_schedulers.py).
    assert "WANDB_API_KEY" not in kwargs["environment"]


# --------------------------------------------------------------------------- batch inference

# The README's batch-inference commands: the training job's run directory on the runs volume.
RECOMMEND_ARGS = ["--model_dir", "/runs/recjobs-retrieval-abc123", "--k", "100"]


def recommend_words(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[:2] == ["exec", "torchrun"]
    return words[words.index("-m") + 1 :]


def test_kubernetes_recommend_job_shards_over_pods_on_the_runs_volume():
    job = dryrun(
        "kubernetes",
        *RECOMMEND_ARGS,
        "-j",
        "2x1",
        "--image",
        "registry.example.com/ml/recjobs:0.1.0",
        "--mounts",
        "type=volume,src=recjobs-runs,dst=/runs",
        "--out",
        "/runs/${app_id}",
        component="components/train.py:recommend",
    )
    name = job["metadata"]["name"]
    assert name.startswith("recjobs-recommend-")
    tasks = job["spec"]["tasks"]
    assert [t["name"] for t in tasks] == ["recommend-0", "recommend-1"]
    for task in tasks:
        pod = task["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "registry.example.com/ml/recjobs:0.1.0"
        words = shlex.split(container["command"][2])
        assert words[words.index("--nnodes") + 1] == "2"
        assert recommend_words(container["command"][2]) == [
            "recjobs",
            "recommend",
            "/runs/recjobs-retrieval-abc123",
            "--k",
            "100",
            "--out",
            f"/runs/{name}",
            "--parts",
            "parquet",
        ]
        assert {"name": "mount-0", "persistentVolumeClaim": {"claimName": "recjobs-runs"}} in pod[
            "volumes"
        ]
        assert "WANDB_API_KEY" not in json.dumps(container)
    validator = crd_validator("batch.volcano.sh_jobs.yaml")
    assert [e.message for e in validator.iter_errors(job)] == []


def test_local_docker_recommend_job_binds_the_runs_directory(bind_src):
    (container,) = dryrun(
        "local_docker",
        *RECOMMEND_ARGS,
        "-j",
        "1x2",
        "--mounts",
        f"type=bind,src={bind_src},dst=/runs",
        "--out",
        "/runs/recs",
        "--output_format",
        "csv",
        component="components/train.py:recommend",
    )
    assert container["image"] == "recjobs:latest"
    assert container["kwargs"]["mounts"] == [
        {"Target": "/runs", "Source": str(bind_src), "Type": "bind", "ReadOnly": False}
    ]
    words = shlex.split(container["command"][2])
    assert words[words.index("--nproc_per_node") + 1] == "2"
    assert recommend_words(container["command"][2])[-4:] == [
        "--out",
        "/runs/recs",
        "--parts",
        "csv",
    ]


def test_elastic_nodes_submit_the_minimum_as_the_volcano_jobs_min_available():
    """`-j 1:2x1`: the Job starts (or restarts after losing a pod) with one pod, and torchrun
    in each pod accepts one or two nodes; a fixed `-j 2x1` needs both."""
    elastic = dryrun(
        "kubernetes", "--task", "retrieval", "-j", "1:2x1", cfg="ephemeral_outputs=True"
    )
    assert elastic["spec"]["minAvailable"] == 1
    assert [t["minAvailable"] for t in elastic["spec"]["tasks"]] == [1, 0]
    for task in elastic["spec"]["tasks"]:
        words = " ".join(task["template"]["spec"]["containers"][0]["command"])
        assert " --nnodes 1:2 --nproc_per_node 1 " in words
    fixed = dryrun("kubernetes", "--task", "retrieval", "-j", "2x1", cfg="ephemeral_outputs=True")
    assert fixed["spec"]["minAvailable"] == 2
    assert "minAvailable" not in fixed["spec"]["tasks"][0] or all(
        t["minAvailable"] == 1 for t in fixed["spec"]["tasks"]
    )


@pytest.mark.parametrize(
    "nodes, line",
    [
        ("0:2x1", "error: -j: nodes and processes must be at least 1, got '0:2x1'"),
        ("2:1x1", "error: -j: minimum nodes 2 exceed maximum nodes 1"),
    ],
)
def test_elastic_nodes_out_of_order_are_refused_at_submit(nodes, line):
    cmd = [str(BIN / "torchx"), "run", "-s", "kubernetes", "--dryrun", "--workspace", ""]
    cmd += ["components/train.py:train", "--task", "retrieval", "-j", nodes]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    ours = [x for x in done.stderr.strip().splitlines() if not x.startswith("torchx ")]
    assert ours == [line]  # besides torchx's own log lines (the .torchxconfig it read)
    assert "SCHEDULER REQUEST" not in done.stdout
