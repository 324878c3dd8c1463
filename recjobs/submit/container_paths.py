"""What a containerized job can see: its image and its mounts, not the submitting machine.

A run directory outside every mount vanishes with the container, and so does the checkpoint a
retry would resume from; a relative data path names a file in the submitter's working
directory, which the container never had. Both fail long after submission (or, worse, finish
"successfully" into a deleted directory). So the components record in each role's metadata
which paths the job writes and reads (`record`), and the container schedulers
(recjobs.submit.kubernetes_scheduler, recjobs.submit.local_docker_scheduler) check them against the
role's mounts at submit time, `--dryrun` included (`check`): an output outside every mount is
refused unless the run option `ephemeral_outputs` says it is meant, a relative input is refused, and
an absolute input outside every mount, a GPU job with the default 2 CPUs / 4 GB and an image the
nodes may not be able to pull get a warning. local_cwd runs on the submitting machine and checks
nothing.

Like recjobs.submit.secret_env, this module imports nothing heavy: the schedulers load it on every
`torchx status`/`log`/`cancel`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from recjobs.streams import say

# The image components run unless told otherwise; on Kubernetes the nodes may not have it.
DEFAULT_IMAGE = "recjobs:latest"
# Role.metadata key: {"writes": {FLAG: PATH}, "reads": {FLAG: PATH}}.
METADATA_KEY = "recjobs/paths"
# Role.metadata key: the resource flags (--cpu, --memMB) the user left at their defaults.
DEFAULTED_KEY = "recjobs/defaulted"
OPT_IN = "ephemeral_outputs"
OPT_IN_HELP = (
    "allow --run_dir/--out outside every --mounts destination: the output is lost when the "
    "container ends, and a retried job starts over"
)
EXAMPLE_MOUNT = {
    "local_docker": "type=bind,src=$PWD/runs,dst=/runs",
    "kubernetes": "type=volume,src=recjobs-runs,dst=/runs",
}
EXAMPLE_DATA_MOUNT = {
    "local_docker": "type=bind,src=$PWD/data,dst=/data",
    "kubernetes": "type=volume,src=YOUR-PVC,dst=/data",
}
# The components' defaults: a GPU job asking only for these starves its GPUs.
DEFAULT_CPU, DEFAULT_MEM_MB = 2, 4096


def record(
    metadata: dict[str, Any],
    writes: Mapping[str, str],
    reads: Mapping[str, str],
    defaulted: Sequence[str] = (),
) -> None:
    """Note in a role's metadata the paths (by the flag or key that set them) the job uses,
    and which resource flags were left at their defaults (the GPU warning names them)."""
    metadata[METADATA_KEY] = {
        "writes": {k: v for k, v in writes.items() if v},
        "reads": {k: v for k, v in reads.items() if v},
    }
    metadata[DEFAULTED_KEY] = list(defaulted)


def check_at_submit(app: Any, scheduler: str, options: Mapping[str, Any]) -> None:
    """`check` as the schedulers' dry run needs it: warnings printed, an error as one line
    and exit code 2 (torchx prints a traceback for any other exception raised there)."""
    from recjobs.errors import UserError

    try:
        warnings = check(app, scheduler, bool(options.get(OPT_IN)))
    except UserError as exc:
        say(exc.line())
        raise SystemExit(exc.exit_code) from None
    for warning in warnings:
        say(f"warning: {warning}")


def check(app: Any, scheduler: str, ephemeral_outputs: bool) -> list[str]:
    """Raise UserError for what cannot work in a container; return warnings for what may not.

    `app` is the TorchX AppDef (typed loosely to keep torchx out of the imports).
    """
    from torchx.specs import BindMount, VolumeMount

    from recjobs.errors import UserError

    warnings: list[str] = []
    for role in app.roles:
        if not role.image.strip():
            raise UserError("--image", "must not be empty", "e.g. --image recjobs:latest")
        if len(role.image) > 4096 or any(c.isspace() or ord(c) < 32 for c in role.image):
            # the scheduler would put it into the job spec and fail to pull it, after submit
            raise UserError(
                "--image",
                f"{role.image[:80]!r} is not an image name (it holds a space or control character)",
                "e.g. recjobs:latest or registry.example.com/recjobs:1.0",
            )
        volumes = [m for m in role.mounts if isinstance(m, (BindMount, VolumeMount))]
        mounts = [_normal(m.dst_path) for m in volumes]
        writable = [_normal(m.dst_path) for m in volumes if not m.read_only]
        paths = role.metadata.get(METADATA_KEY, {})
        for flag, path in paths.get("writes", {}).items():
            if _is_url(path) or _under(path, writable) or ephemeral_outputs:
                continue
            if not _absolute(path):
                where = "is relative to the container's working directory"
            elif _under(path, mounts):
                where = "is on a read-only mount"
            else:
                where = "is in no mount"
            raise UserError(
                flag,
                f"{path!r} {where}: what the job writes there is lost when the container ends, "
                "and a retry cannot resume from it",
                f"put it on a volume: --mounts {EXAMPLE_MOUNT[scheduler]} {flag} /runs/NAME; "
                f"or pass -cfg {OPT_IN}=True if losing it is meant",
            )
        for key, path in paths.get("reads", {}).items():
            if _is_url(path) or _under(path, mounts):
                continue
            if not _absolute(path):
                raise UserError(
                    key,
                    f"{path!r} is relative: the container sees neither this machine's working "
                    "directory nor its config file's folder",
                    f"mount it, e.g. --mounts {EXAMPLE_DATA_MOUNT[scheduler]}, and give the path "
                    "inside the container: /data/...",
                )
            warnings.append(
                f"{key}: {path!r} is in no mount: it must exist inside the image ({role.image})"
            )
        resource = role.resource
        if resource.gpu > 0 and resource.cpu <= DEFAULT_CPU and resource.memMB <= DEFAULT_MEM_MB:
            warnings.append(
                f"{resource.gpu} GPU(s) per node with {resource.cpu} CPUs and {resource.memMB} MB"
                f"{_which_defaulted(role.metadata.get(DEFAULTED_KEY, []))}: too little to keep "
                "GPUs busy; ask for more with --cpu and --memMB (e.g. 8 CPUs and 32000 MB per "
                "GPU) or a named resource with -h"
            )
        if scheduler == "kubernetes" and role.image == DEFAULT_IMAGE:
            warnings.append(
                f"--image {role.image} (the default): the cluster's nodes must be able to pull "
                "it; push the image to a registry they reach and pass --image REGISTRY/NAME:TAG"
            )
    return warnings


def _which_defaulted(flags: Sequence[str]) -> str:
    """ " (the defaults)" only for values the user did not choose (explicit small values are
    still too little, but calling them defaults would be wrong)."""
    if set(flags) >= {"--cpu", "--memMB"}:
        return " (the defaults)"
    if flags:
        return f" ({flags[0]} left at its default)"
    return ""


def _is_url(path: str) -> bool:
    return "://" in path


def _absolute(path: str) -> bool:
    return path.startswith("/")


def _normal(path: str) -> str:
    return posixpath.normpath(path)


def _under(path: str, mounts: list[str]) -> bool:
    if not _absolute(path):
        return False
    path = _normal(path)
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)
