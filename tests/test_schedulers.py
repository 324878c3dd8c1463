"""recjobs' registered TorchX schedulers: kubernetes and local_docker wrappers, and the registry.

The wrappers are exercised in-process through torchx's Runner, the same path `torchx run` takes.
"""

from __future__ import annotations

import pytest
from torchx.runner import get_runner
from torchx.schedulers import get_scheduler_factories
from torchx.schedulers.local_scheduler import CWDImageProvider, LocalScheduler
from torchx.specs import AppDef

from recjobs.submit import launch
from recjobs.submit.kubernetes_scheduler import RecjobsKubernetesScheduler, parse_toleration
from recjobs.submit.local_cwd_scheduler import RecjobsLocalCwdScheduler, where_lines
from recjobs.submit.local_docker_scheduler import RecjobsDockerScheduler

TORCHX_BUILTIN_SCHEDULERS = {
    "local_docker",
    "local_cwd",
    "slurm",
    "kubernetes",
    "kubernetes_mcad",
    "aws_batch",
    "aws_sagemaker",
    "gcp_batch",
    "ray",
    "lsf",
}


def app(**kwargs) -> AppDef:
    args = {
        "task": "ranking",
        "config": None,
        "j": "2x1",
        "gpu": 1,
        "cpu": 4,
        "memMB": 8000,
        "h": None,
        "image": "recjobs:test",
        "env": None,
        "mounts": ["type=volume", "src=recjobs-runs", "dst=/runs"],
        "max_retries": 0,
        "run_dir": "/runs/job",
        "wandb_project": "recsys",
        "wandb_mode": None,
    }
    return launch.train_app([], **{**args, **kwargs})


def test_every_torchx_builtin_scheduler_is_still_registered():
    factories = get_scheduler_factories()
    assert TORCHX_BUILTIN_SCHEDULERS <= set(factories)
    assert isinstance(factories["kubernetes"](session_name="t"), RecjobsKubernetesScheduler)
    assert isinstance(factories["local_docker"](session_name="t"), RecjobsDockerScheduler)
    local_cwd = factories["local_cwd"](session_name="t")
    assert isinstance(local_cwd, RecjobsLocalCwdScheduler) and isinstance(local_cwd, LocalScheduler)
    assert local_cwd._image_provider_class is CWDImageProvider  # as TorchX's local_cwd


def test_torchx_default_scheduler_is_unchanged_outside_this_repo():
    # TorchX's default scheduler (where no .torchxconfig names one) is the first entry of the
    # installed group: the build backend must keep pyproject.toml's order, which is TorchX's own.
    from torchx.schedulers import DEFAULT_SCHEDULER_MODULES, get_default_scheduler_name

    assert list(get_scheduler_factories()) == list(DEFAULT_SCHEDULER_MODULES)
    assert get_default_scheduler_name() == "local_docker"


@pytest.mark.parametrize(
    "text, toleration",
    [
        ("nvidia.com/gpu", {"key": "nvidia.com/gpu", "operator": "Exists"}),
        (
            "nvidia.com/gpu:NoSchedule",
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        ),
        ("dedicated:ml", {"key": "dedicated", "operator": "Equal", "value": "ml"}),
        (
            "dedicated:ml:NoExecute",
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
        ),
    ],
)
def test_toleration_syntax(text, toleration):
    assert parse_toleration(text) == toleration


def kube_job(app_def: AppDef, **cfg) -> dict:
    """The Volcano Job our kubernetes scheduler would create, as the API server receives it."""
    from kubernetes.client import ApiClient

    with get_runner() as runner:
        info = runner.dryrun(app_def, "kubernetes", cfg={"queue": "q", **cfg})
    return ApiClient().sanitize_for_serialization(info.request.resource)


def test_kubernetes_pods_get_tolerations_node_selector_secret_ref_and_fs_group():
    job = kube_job(
        app(h="gpu.small", j="2x1"),
        tolerations=["nvidia.com/gpu:NoSchedule", "pool:a100:NoSchedule"],
        node_selector={"nvidia.com/gpu.present": "true"},
        wandb_secret="team-wandb",
        fs_group=1000,
    )
    tasks = job["spec"]["tasks"]
    assert len(tasks) == 2
    for task in tasks:
        spec = task["template"]["spec"]
        assert spec["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "pool", "operator": "Equal", "value": "a100", "effect": "NoSchedule"},
        ]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert spec["securityContext"] == {"fsGroup": 1000, "fsGroupChangePolicy": "OnRootMismatch"}
        (container,) = spec["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        key = [e for e in container["env"] if e["name"] == "WANDB_API_KEY"]
        assert key == [
            {
                "name": "WANDB_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": "team-wandb", "key": "WANDB_API_KEY"}},
            }
        ]


def test_kubernetes_adds_nothing_unasked():
    job = kube_job(app(wandb_project=None))
    spec = job["spec"]["tasks"][0]["template"]["spec"]
    assert "tolerations" not in spec and "securityContext" not in spec
    assert spec["nodeSelector"] == {}
    assert not [e for e in spec["containers"][0]["env"] if e["name"] == "WANDB_API_KEY"]


def test_kubernetes_refuses_a_literal_key_and_bad_tolerations(capsys):
    literal = app(wandb_project=None)
    literal.roles[0].env["WANDB_API_KEY"] = "k-do-not-print"
    capsys.readouterr()  # the component's submission line
    with pytest.raises(SystemExit) as exc:
        kube_job(literal)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: role train env: WANDB_API_KEY is a literal value")
    assert "k-do-not-print" not in err

    job = app()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        kube_job(job, tolerations=["nvidia.com/gpu:NoSchedul"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "error: -cfg tolerations: 'nvidia.com/gpu:NoSchedul': unknown effect 'NoSchedul' "
        "(one of NoSchedule, PreferNoSchedule, NoExecute)\n"
    )


class FakeDocker:
    """Just enough of docker.DockerClient for DockerScheduler.schedule()."""

    def __init__(self) -> None:
        self.started: list[dict] = []
        outer = self

        class Images:
            def pull(self, image: str) -> None:
                pass

        class Networks:
            def create(self, **kwargs: object) -> None:
                pass

        class Containers:
            def run(self, image: str, command: list[str], detach: bool, **kwargs: object) -> None:
                outer.started.append(kwargs)

        self.images, self.networks, self.containers = Images(), Networks(), Containers()


def test_local_docker_passes_the_key_from_the_environment_only_at_container_start(monkeypatch):
    import docker

    fake = FakeDocker()
    monkeypatch.setattr(docker, "from_env", lambda: fake)
    monkeypatch.setenv("WANDB_API_KEY", "k-from-env")
    with get_runner() as runner:
        info = runner.dryrun(app(j="1x1"), "local_docker", cfg={})
        printed = repr(info)
        runner.schedule(info)
    assert "k-from-env" not in printed
    assert "k-from-env" not in repr(info)  # the stored request was not touched
    (started,) = fake.started
    assert started["environment"]["WANDB_API_KEY"] == "k-from-env"
    assert started["device_requests"][0]["Count"] == 1


def test_local_docker_gives_no_key_to_jobs_without_wandb(monkeypatch):
    import docker

    fake = FakeDocker()
    monkeypatch.setattr(docker, "from_env", lambda: fake)
    monkeypatch.setenv("WANDB_API_KEY", "k-from-env")
    with get_runner() as runner:
        runner.schedule(runner.dryrun(app(j="1x1", wandb_project=None), "local_docker", cfg={}))
    assert "WANDB_API_KEY" not in fake.started[0]["environment"]


def test_a_pending_jobs_reasons_are_its_latest_distinct_warnings():
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from recjobs.submit.kubernetes_scheduler import pending_reasons

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def event(name, reason, message, minutes, type_="Normal"):
        return SimpleNamespace(
            involved_object=SimpleNamespace(name=name),
            reason=reason,
            message=message,
            type=type_,
            last_timestamp=t0 + timedelta(minutes=minutes),
            event_time=None,
            metadata=SimpleNamespace(creation_timestamp=t0),
        )

    gpu = "resource in cluster is overused: overused nvidia.com/gpu"
    events = [
        event("job-a-0f3c", "Unschedulable", gpu, 1),
        event("job-a-0f3c", "Unschedulable", gpu, 3),
        event("job-a-train-0-0", "Failed", "Back-off pulling image", 2, "Warning"),
        event("job-a-train-0-0", "Scheduled", "assigned to node", 4),  # not a reason
        event("job-ab-1234", "Unschedulable", "another job's", 5),  # a prefix is not the job
    ]
    assert pending_reasons(events, "job-a") == [gpu, "Back-off pulling image"]
    assert pending_reasons(events, "job-a", most=1) == [gpu]
    assert pending_reasons([], "job-a") == []


# --------------------------------------------------------------------------- torchx log HANDLE

# A finished 2-node job's Volcano Job as Volcano v1.14.1 leaves it: once the job has completed,
# the job controller's killPods keeps the pods (PodRetainPhaseSoft) but counts only pods it
# failed to delete, so status.taskStatusCount (and succeeded) are gone; spec is as submitted.
FINISHED_STATUS = {
    "state": {"phase": "Completed", "lastTransitionTime": "2026-01-01T00:10:00Z"},
    "minAvailable": 2,
    "version": 2,
    "conditions": [{"status": "Completed", "lastTransitionTime": "2026-01-01T00:10:00Z"}],
}


class FakeVolcanoApi:
    """The two CustomObjectsApi reads `describe` makes; the status subresource returns the
    whole object, as the API server does."""

    def __init__(self, job: dict):
        self.job = job

    def get_namespaced_custom_object_status(self, group, version, namespace, plural, name):
        assert (group, plural, namespace, name) == ("batch.volcano.sh", "jobs", "recjobs", "j1")
        return self.job

    get_namespaced_custom_object = get_namespaced_custom_object_status


class FakeCoreApi:
    """CoreV1Api's pod log read: each pod's log, found by the pod name torchx derives."""

    logs = {
        "j1-train-0-0": "2026-01-01T00:00:01Z rank 0 says hello\n",
        "j1-train-1-0": "2026-01-01T00:00:02Z rank 1 says hello\n",
    }

    def __init__(self, api_client):
        pass

    def read_namespaced_pod_log(self, name, namespace, timestamps):
        assert namespace == "recjobs" and timestamps
        return self.logs[name]


def test_torchx_log_of_a_finished_job_reads_every_replica(monkeypatch):
    """`torchx log kubernetes://torchx/recjobs:j1` (no role, no replica) through torchx's own
    `torchx log` code (cmd_log.get_logs and the Runner). Mocked: the Kubernetes API server
    (Volcano Job reads and pod logs), because no cluster runs here; tests/test_k8s.py runs the
    same against the development cluster."""
    import io

    import kubernetes.client
    from torchx.cli.cmd_log import get_logs
    from torchx.runner import Runner
    from torchx.schedulers.kubernetes_scheduler import KubernetesScheduler

    job = kube_job(app(j="2x1"))
    job["metadata"]["name"] = "j1"
    job["status"] = FINISHED_STATUS
    scheduler = RecjobsKubernetesScheduler(session_name="torchx", client=object())
    monkeypatch.setattr(scheduler, "_custom_objects_api", lambda: FakeVolcanoApi(job))
    monkeypatch.setattr(kubernetes.client, "CoreV1Api", FakeCoreApi)

    # The cause: torchx's own describe finds no roles in such a status.
    assert KubernetesScheduler.describe(scheduler, "recjobs:j1").roles == []
    described = scheduler.describe("recjobs:j1")
    assert [(r.name, r.num_replicas) for r in described.roles] == [("train", 2)]
    assert str(described.state) == "SUCCEEDED"

    out = io.StringIO()
    runner = Runner("torchx", scheduler_factories={"kubernetes": lambda *a, **k: scheduler})
    get_logs(out, "kubernetes://torchx/recjobs:j1", regex=None, runner=runner)
    colourless = out.getvalue().replace("\x1b[32m", "").replace("\x1b[0m", "")
    assert sorted(colourless.splitlines()) == [
        "train/0 2026-01-01T00:00:01Z rank 0 says hello",
        "train/1 2026-01-01T00:00:02Z rank 1 says hello",
    ]


def test_roles_of_tasks_counts_replicas_per_role_and_skips_foreign_tasks():
    from recjobs.submit.kubernetes_scheduler import roles_of_tasks

    spec = {"tasks": [{"name": "train-0"}, {"name": "train-1"}, {"name": "eval-0"}]}
    spec["tasks"].append({"name": "sidecar"})  # not torchx's <role>-<replica> form
    assert [(r.name, r.num_replicas) for r in roles_of_tasks(spec)] == [("train", 2), ("eval", 1)]
    assert roles_of_tasks({}) == []


def test_max_retries_says_what_volcano_does_instead_of_torchxs_stale_warning(capsys):
    import warnings

    job_app = app(max_retries=3)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job = kube_job(job_app)
    assert not [w for w in caught if "Volcano" in str(w.message)]  # torchx's, about v1.3
    assert job["spec"]["maxRetry"] == 3  # Volcano: at most 3 runs, so 2 restarts
    assert capsys.readouterr().err.splitlines() == [
        "note: role train: --max_retries 3 on Volcano runs the job at most 3 time(s) in all, "
        "i.e. 2 restart(s) after a failed or evicted pod (Volcano's maxRetry counts the first "
        "run); each restart resumes from the run directory's last checkpoint"
    ]
    kube_job(app(max_retries=0))
    assert "note:" not in capsys.readouterr().err


def test_local_cwd_names_the_run_directory_with_the_app_id_filled_in():
    default = app(run_dir=launch.DEFAULT_RUN_DIR)
    assert where_lines(default, "recjobs-ranking-x1") == [
        "recjobs: run directory runs/recjobs-ranking-x1, its log runs/recjobs-ranking-x1/train.log",
        "recjobs: from another terminal: recjobs status runs/recjobs-ranking-x1; recjobs log "
        "runs/recjobs-ranking-x1 -f (torchx status and log do not see local_cwd jobs)",
    ]
