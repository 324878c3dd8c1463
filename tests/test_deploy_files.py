"""Static checks of what ships the job: k8s/ manifests, docker/Dockerfile, .dockerignore.

No cluster and no Docker daemon here: the manifests are parsed (and the Queue validated against
Volcano's CRD), the Dockerfile is read for the properties the README promises.
"""

from __future__ import annotations

import configparser
import fnmatch
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from runs import missing

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CRDS = ROOT.parent / "shared" / "volcano-crds"
CLUSTER_SCOPED_RBAC = {"ClusterRole", "ClusterRoleBinding"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomized() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in documents(K8S / name)]


def torchxconfig() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".torchxconfig")
    return parser


def test_kustomization_lists_the_cluster_setup():
    kinds = sorted(d["kind"] for d in kustomized())
    assert kinds == [
        "Namespace",
        "PersistentVolumeClaim",
        "Queue",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]


def test_torchxconfig_points_at_the_namespace_and_queue_of_k8s():
    kubernetes = torchxconfig()["kubernetes"]
    by_kind = {d["kind"]: d for d in kustomized()}
    assert kubernetes["namespace"] == by_kind["Namespace"]["metadata"]["name"] == "recjobs"
    assert kubernetes["queue"] == by_kind["Queue"]["metadata"]["name"]
    for doc in kustomized():
        if doc["kind"] not in ("Namespace", "Queue"):  # the two cluster-scoped kinds
            assert doc["metadata"]["namespace"] == "recjobs", doc["kind"]
    assert torchxconfig()["cli:run"]["scheduler"] == "local_cwd"


def test_rbac_is_namespaced_and_names_every_resource_and_verb():
    rbac = documents(K8S / "rbac.yaml")
    assert {d["kind"] for d in rbac} == {"ServiceAccount", "Role", "RoleBinding"}
    for doc in [d for f in K8S.glob("*.yaml") for d in documents(f)]:
        assert doc["kind"] not in CLUSTER_SCOPED_RBAC, f"{doc['kind']} in k8s/"
    (role,) = [d for d in rbac if d["kind"] == "Role"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    # What torchx run/status/list/log/cancel need, and nothing that changes other objects.
    assert granted == {
        ("batch.volcano.sh", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("batch.volcano.sh", "jobs/status"): {"get"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
        ("", "events"): {"get", "list", "watch"},
    }
    (binding,) = [d for d in rbac if d["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }


def test_queue_is_valid_against_the_volcano_crd():
    path = CRDS / "scheduling.volcano.sh_queues.yaml"
    if not path.is_file():
        missing(f"VOLCANO CRD SCHEMA MISSING: {path} not found; k8s/queue.yaml NOT validated")
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    (queue,) = documents(K8S / "queue.yaml")
    assert queue["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    validator = jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])
    assert [e.message for e in validator.iter_errors(queue)] == []
    assert list(validator.iter_errors({**queue, "spec": {"weight": "heavy"}}))  # it can fail


def test_runs_pvc_is_shared_by_the_nodes_of_a_job():
    (pvc,) = documents(K8S / "pvc.yaml")
    assert pvc["metadata"]["name"] == "recjobs-runs"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_wandb_secret_is_a_template_with_no_key_and_is_not_applied():
    (secret,) = documents(K8S / "wandb-secret.template.yaml")
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == torchxconfig()["kubernetes"]["wandb_secret"]
    assert secret["stringData"] == {"WANDB_API_KEY": "REPLACE_WITH_YOUR_WANDB_API_KEY"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "wandb-secret.template.yaml" not in kustomization["resources"]


def dockerfile() -> str:
    return (ROOT / "docker" / "Dockerfile").read_text()


def test_dockerfile_is_one_image_with_the_torch_the_makefile_installs():
    text = dockerfile()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    # Debian bookworm: its python3 is the 3.11 that docker/build-image.sh's wheels are made for.
    assert base and base[1] == "debian:bookworm-slim"
    assert re.findall(r"^FROM (.+)$", text, re.M) == ["${BASE_IMAGE}"]
    # The torch CI tests (the Makefile's, into the venv) is the torch the image ships.
    torch_spec = re.search(r"^ARG TORCH_SPEC=(\S+)$", text, re.M)
    makefile = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert torch_spec and makefile and torch_spec[1] == makefile[1] == "torch==2.13.0"
    assert 'python -m pip install "${TORCH_SPEC}" -r /tmp/requirements.txt' in text
    # No wheels are copied in: an offline build serves them on loopback (docker/build-image.sh).
    assert "/wheels" not in text and "docker/wheels" not in text


def test_dockerfile_installs_the_project_and_runs_as_non_root():
    text = dockerfile()
    assert re.search(r"^RUN python -m pip install --no-deps /tmp/src ", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] in ("${UID}", "1000")
    assert re.search(r"^ARG UID=1000$", text, re.M)
    # torchx gives the container its command; an ENTRYPOINT would swallow it on local_docker.
    assert not re.search(r"^ENTRYPOINT", text, re.M)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rules, enough for these patterns (last match wins, ! re-includes)."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, f"**/{pattern}") for p in prefixes
        ):
            result = not negate
    return result


def test_dockerignore_keeps_what_the_image_copies_and_drops_the_rest():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = re.findall(r"^COPY (.+) \S+$", dockerfile(), re.M)
    sources = [s for line in copied for s in line.split()]
    assert sources == [
        "pyproject.toml",
        "README.md",
        "recjobs",
        "config",
        "components",
    ]
    for source in sources:
        assert not ignored(source, patterns), source
    for private in (".venv", ".git", "runs/x/checkpoints/last.pt", "data/users.parquet", "wandb"):
        assert ignored(private, patterns), private
    assert ignored("recjobs/__pycache__/cli.cpython-311.pyc", patterns)
