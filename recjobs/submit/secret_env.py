"""Secret environment variables: a job names them, each scheduler delivers them its own way.

A secret such as `WANDB_API_KEY` must never be a literal in a job spec, its arguments or its
logs: `torchx run --dryrun` prints the whole spec, Kubernetes stores it in etcd and shows it to
anyone who can read jobs. So the TorchX component only records the *names* of the variables
the job needs (in the role's metadata), and the scheduler decides where the value comes from:

- kubernetes (recjobs.submit.kubernetes_scheduler): `env.valueFrom.secretKeyRef` into a Kubernetes
  Secret;
- local_docker (recjobs.submit.local_docker_scheduler): copied from the submitting environment
  when the containers start, after the dry-run spec was built and printed;
- local_cwd: nothing to do, the job's processes inherit the submitting environment.

This module is the contract between the two sides and imports nothing heavy, because the
schedulers load on every `torchx status`/`log`/`cancel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WANDB_API_KEY = "WANDB_API_KEY"
# Variables that are secret whoever sets them: refused as literal values in a job's env.
SECRET_NAMES = (WANDB_API_KEY,)
# Role.metadata key: the list of secret variable names this role needs at run time.
METADATA_KEY = "recjobs/secret_env"


def request(metadata: dict[str, Any], names: list[str]) -> None:
    """Record in a role's metadata that the role needs these secret variables."""
    wanted = list(metadata.get(METADATA_KEY, []))
    metadata[METADATA_KEY] = wanted + [n for n in names if n not in wanted]


def requested(metadata: Mapping[str, Any]) -> list[str]:
    """The secret variable names a role asked for (empty when it needs none)."""
    return list(metadata.get(METADATA_KEY, []))


def literal_secrets(env: Mapping[str, str]) -> list[str]:
    """Secret names that appear as literal values in an env mapping (they must not)."""
    return [name for name in SECRET_NAMES if name in env]
