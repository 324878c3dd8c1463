"""Submit-time side of the TorchX jobs: resolve the config, then describe the job.

`components/train.py` holds the thin, documented TorchX components (`train`, `recommend`); this
module does their work so that it can be unit-tested and so the component file stays a
signature plus a docstring. `recommend_app` (batch inference) is at the end.

What happens at submit time (in `torchx run`, `--dryrun` included):

1. The pass-through overrides are parsed with the same flags as `recjobs resolve`
   (`recjobs.config.resolver.add_override_arguments`) and the config is resolved with
   `recjobs.config.resolver.resolve()`. Any mistake is a `UserError` *before* anything is queued.
2. The resolved config travels inside the job as `--config-json`, so the container needs
   neither the config file nor the submitting machine's working directory, and the job
   trains on exactly what `recjobs resolve` printed (the trainer re-validates it and writes
   it to RUN_DIR/config.yaml).
3. The job is `torchrun` with c10d rendezvous running
   `python -m recjobs train ... --resume-or-start`, so a job the scheduler retries continues
   from RUN_DIR/checkpoints/last.pt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torchx import specs
from torchx.specs import macros

from recjobs.config.exported import load_config
from recjobs.config.resolver import Overrides, add_override_arguments, load_file, resolve
from recjobs.config.schema import TASKS, ResolvedConfig
from recjobs.errors import ConfigError, UserError
from recjobs.holdings import MODEL_FILES, found
from recjobs.streams import say
from recjobs.submit import container_paths, secret_env

ROLE_NAME = "train"
RECOMMEND_ROLE = "recommend"
DEFAULT_IMAGE = container_paths.DEFAULT_IMAGE
DEFAULT_CPU, DEFAULT_MEM_MB = container_paths.DEFAULT_CPU, container_paths.DEFAULT_MEM_MB
# One directory per job: a retry of the same job (same app id) finds its checkpoints again,
# while a new submission never resumes somebody else's run by accident.
DEFAULT_RUN_DIR = f"runs/{macros.app_id}"
RDZV_PORT = 29500
WANDB_MODES = ("online", "offline", "disabled")
OUTPUT_FORMATS = ("parquet", "csv")
# Under these modes W&B needs no key, so the job does not ask for the secret.
_WANDB_KEYLESS = ("offline", "disabled")

# Upper bounds of the components' sizes and counts (docs/reliability.md, "Bounds and blocking
# paths"): far beyond any real job, and low enough that a typo (-j 100000x100000) is refused at
# once instead of building a job spec of ten billion processes. MAX_PROCESSES is the largest
# WORLD_SIZE a job's processes accept (recjobs.training.torchrun_env.MAX_WORLD_SIZE).
MAX_NODES = 1024
MAX_PROCS_PER_NODE = 256
MAX_PROCESSES = 4096
MAX_RETRIES = 100
MAX_CPU = 1024
MAX_GPU = 64
MAX_MEM_MB = 16 * 1024 * 1024  # 16 TiB
MAX_K = 100_000  # `recjobs recommend --k` has the same bound (recjobs.cli.MAX_K)
MAX_TEXT = 4096  # an environment variable's name or value
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class Nodes:
    """`-j [MIN:]NxP`: nodes (elastic between min and max) x processes per node."""

    min_nodes: int
    max_nodes: int
    nproc_per_node: int

    @property
    def torchrun_nnodes(self) -> str:
        """torchrun's --nnodes: the same MIN:MAX range as the Volcano Job's minAvailable (MIN)
        and its pods (MAX), so a job that starts or restarts with MIN pods trains at that world
        size (resuming its checkpoint at another world size, see trainer._map_world)."""
        return self.spelled_nodes

    @property
    def spelled_nodes(self) -> str:
        """The nodes as -j spells them: `2`, or `1:4` when elastic."""
        if self.min_nodes == self.max_nodes:
            return str(self.max_nodes)
        return f"{self.min_nodes}:{self.max_nodes}"


# At most 9 digits each: int() of a long digit string is slow (and past 4300 digits an error).
_NODES = re.compile(r"^(?:(\d{1,9}):)?(\d{1,9})x(\d{1,9})$")


def parse_nodes(j: str) -> Nodes:
    match = _NODES.match(j.strip())
    if not match:
        raise UserError(
            "-j", f"expected [MIN:]NODESxPROCS, got {j!r}", "e.g. 1x2, 2x8 or elastic 1:4x8"
        )
    lo, hi, nproc = match.groups()
    max_nodes, per_node = int(hi), int(nproc)
    min_nodes = int(lo) if lo is not None else max_nodes
    if max_nodes < 1 or per_node < 1 or min_nodes < 1:
        raise UserError("-j", f"nodes and processes must be at least 1, got {j!r}")
    if min_nodes > max_nodes:
        raise UserError("-j", f"minimum nodes {min_nodes} exceed maximum nodes {max_nodes}")
    if max_nodes > MAX_NODES or per_node > MAX_PROCS_PER_NODE:
        raise UserError(
            "-j",
            f"at most {MAX_NODES} nodes of at most {MAX_PROCS_PER_NODE} processes, got {j!r}",
            "see docs/reliability.md for the bounds",
        )
    if max_nodes * per_node > MAX_PROCESSES:
        raise UserError(
            "-j",
            f"{max_nodes} x {per_node} = {max_nodes * per_node} processes, more than the "
            f"{MAX_PROCESSES} a job may have",
            "see docs/reliability.md for the bounds",
        )
    return Nodes(min_nodes, max_nodes, per_node)


def check_count(flag: str, value: int, low: int, high: int) -> int:
    """`value` of component argument `flag`, within [low, high]; else one error line."""
    if not low <= value <= high:
        raise UserError(flag, f"must be between {low} and {high}, got {value}")
    return value


def parse_flag(value: str | bool, flag: str) -> bool:
    """A component's yes/no argument. TorchX itself reads a `bool` parameter as true only
    when it is spelled `true`: `--include_seen yes` would quietly mean no. So the component
    takes the text and this reads the usual spellings, refusing the rest."""
    if isinstance(value, bool):
        return value
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise UserError(
        flag,
        f"expected true or false, got {value[:40]!r}",
        f"also accepted: {', '.join(_TRUE[1:])} / {', '.join(_FALSE[1:])}",
    )


# What torchrun sets in each process it starts (torch.distributed.elastic's local agent); a
# value from --env would either be replaced or, where it is not, give every process the same
# rank and break the rendezvous. -j says how many processes there are.
TORCHRUN_SETS = (
    "RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_NAME",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
TORCHRUN_PREFIX = "TORCHELASTIC_"
_ENV_EXAMPLE = "e.g. FOO=1,BAR=2"


def parse_env(text: str | dict[str, str] | None) -> dict[str, str] | None:
    """`--env FOO=1,BAR=2` as TorchX reads it (`,` or `;` between items; a value may hold
    commas, `A=1,2,B=3`), but what TorchX would read silently wrong or with a traceback is one
    error line: a word without `=`, an empty item (`A=1,,B=2`: TorchX makes A `1,`), an item
    without a value (`A=1,B=`: TorchX makes A `1,B`), a name given twice (TorchX keeps the
    last), names that are not environment variable names, and what torchrun sets itself."""
    if text is None:
        return None
    env = dict(text) if isinstance(text, dict) else _env_items(text)
    for name, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or len(name) > MAX_TEXT:
            raise UserError("--env", f"{name[:80]!r} is not an environment variable name")
        if len(value) > MAX_TEXT or "\0" in value:
            raise UserError(
                "--env", f"the value of {name} is longer than {MAX_TEXT} characters or holds a NUL"
            )
        if name in TORCHRUN_SETS or name.startswith(TORCHRUN_PREFIX):
            raise UserError(
                f"--env {name}",
                "set by torchrun for each process; a value here would give every process the "
                "same one",
                "leave it out: -j [MIN:]NODESxPROCS sets the job's processes",
            )
    return env


def _env_items(text: str) -> dict[str, str]:
    """NAME=VALUE items as TorchX's `to_dict` splits them: between two `=`, the last `,` or
    `;` ends one value and starts the next name."""
    pieces = [piece.strip() for piece in text.split("=")]
    if len(pieces) < 2 or not pieces[0]:
        raise UserError(
            "--env", f"expected NAME=VALUE[,NAME=VALUE...], got {text[:80]!r}", _ENV_EXAMPLE
        )
    names, values = [pieces[0]], []
    for piece in pieces[1:-1]:
        cut = max(piece.rfind(","), piece.rfind(";"))
        if cut == -1:  # `A=x=y`: a value with `=`, or a missing delimiter before a name
            raise UserError(
                "--env",
                f"expected NAME=VALUE[,NAME=VALUE...], got {text[:80]!r} ({piece[:40]!r} is "
                "neither a value followed by a name nor a name)",
                _ENV_EXAMPLE,
            )
        values.append(piece[:cut].strip())
        names.append(piece[cut + 1 :].strip())
    values.append(pieces[-1])
    env: dict[str, str] = {}
    for name, value in zip(names, values):
        if not name:
            raise UserError("--env", f"an item without a name in {text[:80]!r}", _ENV_EXAMPLE)
        if re.search(r"^[,;]|[,;]\s*[,;]|[,;]$", value):
            raise UserError(
                "--env",
                f"an empty item in {text[:80]!r} (after {name}=)",
                "separate items with one comma: " + _ENV_EXAMPLE,
            )
        if value == "":
            raise UserError(f"--env {name}", "has no value", f"write {name}='' for an empty value")
        if name in env:
            raise UserError(
                f"--env {name}",
                f"given twice ({env[name][:40]!r} and {value[:40]!r})",
                "give each variable once",
            )
        env[name] = "" if value in ("''", '""') else value
    return env


class _OverrideParser(argparse.ArgumentParser):
    """The override flags of `recjobs resolve`; a mistake is one `error:` line, not usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(
            "config overrides",
            message,
            "overrides go after `--`, e.g. -- --optimizer SGD --set=training.max_epochs=1",
        )


def parse_overrides(argv: Sequence[str]) -> Overrides:
    """The pass-through arguments (everything after `--`) as `Overrides`."""
    parser = _OverrideParser(
        prog="torchx run components/train.py:train [component args] --", allow_abbrev=False
    )
    add_override_arguments(parser)
    return Overrides.from_args(parser.parse_args(list(argv)))


def with_wandb(overrides: Overrides, project: str | None) -> Overrides:
    """`--wandb_project P` is shorthand for `--set training.use_wandb=true ...project=P`."""
    if project is None:
        return overrides
    if not project.strip():
        raise UserError("--wandb_project", "must not be empty")
    for item in overrides.sets:
        key = item.partition("=")[0].strip()
        for own in ("training.use_wandb", "training.wandb_project"):
            if key in (own, *(f"{task}.{own}" for task in TASKS)):
                raise UserError(
                    "--wandb_project",
                    f"sets {own}, which the overrides set too (--set {key})",
                    "use one of them",
                )
    sets = [*overrides.sets, "training.use_wandb=true", f"training.wandb_project={project}"]
    return dataclasses.replace(overrides, sets=sets)


# The shortest spelling argparse accepts for the component flags that submit-time messages
# depend on: TorchX's component parser takes any unambiguous prefix (`--conf`, `--mem`), and
# these are unambiguous among both components' flags (`--co` could be --config or --cpu, `--m`
# --memMB, --mounts or --max_retries).
_SHORTEST = {"--config": "--con", "--cpu": "--cp", "--memMB": "--me"}


def named_on_command_line(command_line: Sequence[str], flag: str) -> bool | None:
    """Whether `torchx run`'s command line names the component argument `flag`; None when it
    is not `torchx run`.

    TorchX hands the component .torchxconfig's `[component:...]` values and the signature's
    defaults as if they were arguments, so only the command line tells what the user typed.
    The overrides after `--` are not the component's.
    """
    if not command_line or "torchx" not in command_line[0].rsplit("/", 1)[-1]:
        return None
    words = list(command_line[1:])
    words = words[: words.index("--")] if "--" in words else words
    shortest = _SHORTEST.get(flag, flag)
    for word in words:
        name = word.split("=", 1)[0]
        if len(name) >= len(shortest) and flag.startswith(name):
            return True
    return False


def config_given(command_line: Sequence[str]) -> bool | None:
    """Whether `torchx run`'s command line names `--config`; None when it is not `torchx run`."""
    return named_on_command_line(command_line, "--config")


def defaulted_resources(
    cpu: int,
    memMB: int,  # noqa: N803
    h: str | None,
    command_line: Sequence[str],
) -> list[str]:
    """The flags of --cpu and --memMB that were left at the components' defaults.

    Not named on `torchx run`'s command line and equal to the signature's default (a value
    from .torchxconfig is the user's choice); outside `torchx run`, equal to the default. A
    named resource (-h) replaces both.
    """
    if h:
        return []
    values = {"--cpu": (cpu, DEFAULT_CPU), "--memMB": (memMB, DEFAULT_MEM_MB)}
    return [
        flag
        for flag, (value, default) in values.items()
        if value == default and not named_on_command_line(command_line, flag)
    ]


def submission_line(
    task: str, config: str | None, overrides: Overrides, command_line: Sequence[str] = ()
) -> str:
    """One line saying what a training job trains: its task, config file and overrides.

    Printed at submit (dry runs too) because the repository's .torchxconfig silently supplies
    `--config config/quickstart.yaml`.
    """
    if config is None:
        source = "the built-in defaults (no --config)"
    else:
        given = config_given(command_line)
        source = config + (" (from .torchxconfig)" if given is False else "")
    argv = overrides.to_argv()
    count = sum(1 for word in argv if word.startswith("--"))
    if count == 0:
        changes = "no overrides"
    else:
        changes = f"{count} override{'s' if count > 1 else ''}: {shlex.join(argv)}"
    return f"recjobs: task {task}, config {source}, {changes}"


def config_json(cfg: ResolvedConfig) -> str:
    """The resolved config as the job receives it: compact JSON, `$` escaped for TorchX.

    Schedulers substitute macros (`${app_id}`) in the job's arguments with
    `string.Template`, which also turns `$$` into `$`; escaping every `$` makes the text the
    job sees byte-for-byte the JSON of `cfg`, whatever strings the config holds.
    """
    return json.dumps(cfg.to_dict(), separators=(",", ":")).replace("$", "$$")


class _Raw(str):
    """A shell word that must not be quoted (it holds a `${VAR:=default}` expansion)."""


def torchrun_command(
    nodes: Nodes, task: str, cfg: ResolvedConfig, run_dir: str, rdzv_port: int = RDZV_PORT
) -> str:
    """The job's shell command: torchrun (c10d rendezvous) running `recjobs train
    --resume-or-start`: the first attempt starts the run, a retry resumes it."""
    train = [
        "train",
        task,
        "--config-json",
        config_json(cfg),
        "--run-dir",
        run_dir,
        "--resume-or-start",
    ]
    return _torchrun(nodes, train, rdzv_port)


def _torchrun(nodes: Nodes, recjobs_args: list[str], rdzv_port: int = RDZV_PORT) -> str:
    """`exec torchrun ... -m recjobs ARGS`, quoted for bash; see torchrun_command."""
    if nodes.max_nodes == 1:
        # One agent hosts the store itself; port 0 lets it pick a free one (no clashes between
        # jobs sharing a machine).
        endpoint: str = "localhost:0"
    else:
        # Every replica but rank 0 gets the scheduler's rank-0 host in the variable that
        # `rank0_env` names (`$$` is TorchX's escape for a literal `$`); rank 0 uses localhost.
        endpoint = _Raw(f"$${{{macros.rank0_env}:=localhost}}:{rdzv_port}")
    words: list[str] = [
        "torchrun",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        endpoint,
        "--rdzv_id",
        macros.app_id,
        "--nnodes",
        nodes.torchrun_nnodes,
        "--nproc_per_node",
        str(nodes.nproc_per_node),
        "-m",
        "recjobs",
        *recjobs_args,
    ]
    quoted = " ".join(w if isinstance(w, _Raw) else shlex.quote(w) for w in words)
    # exec: torchrun becomes the container's main process and gets the SIGTERM of a
    # preemption itself; it passes it on to the workers, which write a checkpoint before
    # exiting, instead of a PID-1 bash ignoring it until the grace period ends in SIGKILL.
    return f"exec {quoted}"


def _local_path(path: str, flag: str, who: str) -> None:
    """The jobs read and write run directories with local file operations (atomic renames,
    fsync, torch.load); a URL would silently become a local folder named "s3:". An empty path
    would silently mean the default or the working directory."""
    if not path.strip():
        raise UserError(
            flag, "an empty path", f"name a directory, or leave {flag} out for runs/<app id>"
        )
    if path.startswith("~"):  # `--run_dir=~/x`: no shell expanded it, and jobs do not
        raise UserError(
            flag,
            f"{path[:60]!r} starts with ~, which the shell did not expand and the job does not "
            "(it would name a folder called ~...)",
            "write the whole path",
        )
    if "://" in path:
        raise UserError(
            flag,
            f"{path!r}: URLs are not supported by {who}",
            "mount a volume and use a path on it, e.g. --mounts type=volume,src=recjobs-runs,"
            f"dst=/runs {flag} /runs/NAME",
        )


def model_task(model_dir: str) -> str | None:
    """The task of the model in `model_dir` (a run directory or its model/) when this machine
    can read it, so that a job that could only fail is refused at submit; None when the model
    is not here (the path is one inside the job's container, say): the job itself checks then.
    A model folder's config.yaml is read as `recjobs recommend` reads it
    (recjobs.config.exported): empty, not YAML, not a mapping or a bad value is one line naming
    that file. A run that has not exported yet (its own config.yaml, no model/) gives its task.

    Raises:
        UserError: the model's (or the run's) config.yaml cannot be read or resolved.
    """
    folder = Path(model_dir)
    for candidate, is_model in ((folder / "model", True), (folder, found(folder, MODEL_FILES))):
        if is_model and (candidate / "config.yaml").exists():
            return load_config(candidate).task
    run_config = folder / "config.yaml"
    if not run_config.exists():  # a FIFO exists: load_file refuses it by name
        return None
    raw = load_file(run_config)  # bounded, and refuses a FIFO rather than blocking on it
    tasks = [task for task in TASKS if task in raw]
    if len(tasks) != 1:
        raise ConfigError(
            str(run_config),
            f"expected exactly one of {' or '.join(TASKS)}: (found {', '.join(map(str, raw))})",
            "give a run directory written by recjobs train, or its model/",
        )
    return tasks[0]


def _resource(cpu: int, gpu: int, memMB: int, h: str | None) -> specs.Resource:  # noqa: N803
    if h:
        try:
            return specs.resource(h=h)
        except KeyError as exc:
            raise UserError("-h", str(exc.args[0]) if exc.args else f"unknown {h!r}") from None
    for flag, value, least, most in (
        ("--cpu", cpu, 1, MAX_CPU),
        ("--gpu", gpu, 0, MAX_GPU),
        ("--memMB", memMB, 1, MAX_MEM_MB),
    ):
        if value < least:
            raise UserError(flag, f"must be at least {least}, got {value}")
        check_count(flag, value, least, most)
    return specs.Resource(cpu=cpu, gpu=gpu, memMB=memMB)


def _mounts(
    mounts: list[str] | None,
) -> list[specs.BindMount | specs.VolumeMount | specs.DeviceMount]:
    if not mounts:
        return []
    _check_mount_keys(mounts)
    try:
        return specs.parse_mounts(mounts)
    except (KeyError, ValueError) as exc:
        problem = str(exc.args[0]) if exc.args else type(exc).__name__
        raise UserError(
            "--mounts", problem, "e.g. type=volume,src=recjobs-runs,dst=/runs"
        ) from None


# What each mount type needs (TorchX's parse_mounts reports a missing one as KeyError('dst')).
_MOUNT_NEEDS = {"bind": ("src", "dst"), "volume": ("src", "dst"), "device": ("src",)}
_MOUNT_KEY_NAMES = {
    "source": "src",
    "destination": "dst",
    "target": "dst",
    "read_only": "readonly",
}


def _check_mount_keys(mounts: list[str]) -> None:
    """Each mount's missing or empty src/dst, named with an example of the whole mount; an
    empty item, and a key given twice in one mount (TorchX keeps the last)."""
    groups: list[dict[str, str]] = []
    for opt in mounts:
        if not opt.strip():
            raise UserError(
                "--mounts",
                f"an empty item in {','.join(mounts)[:120]!r}",
                "separate items with one comma, e.g. type=volume,src=recjobs-runs,dst=/runs",
            )
        key, _, value = opt.partition("=")
        if key == "type":
            groups.append({"type": value})
        elif groups:
            name = _MOUNT_KEY_NAMES.get(key, key)
            if name in groups[-1]:
                raise UserError(
                    f"--mounts {name}",
                    f"given twice in one mount ({groups[-1][name][:60]!r} and {value[:60]!r})",
                    "give each key once; start another mount with type=",
                )
            groups[-1][name] = value
    for group in groups:
        kind = group["type"]
        missing = [k for k in _MOUNT_NEEDS.get(kind, ()) if not group.get(k)]
        if missing:
            given = ",".join(f"{k}={v}" for k, v in group.items())
            raise UserError(
                "--mounts",
                f"{given}: no {missing[0]}= (a {kind} mount needs "
                + " and ".join(f"{k}=" for k in _MOUNT_NEEDS[kind])
                + ")",
                {
                    "bind": "e.g. type=bind,src=/data,dst=/data",
                    "volume": "e.g. type=volume,src=recjobs-runs,dst=/runs",
                    "device": "e.g. type=device,src=/dev/fuse",
                }[kind],
            )


def _env(env: dict[str, str] | str | None, wandb_mode: str | None) -> dict[str, str]:
    env = dict(parse_env(env) or {})
    leaked = secret_env.literal_secrets(env)
    if leaked:
        raise UserError(
            "--env",
            f"{leaked[0]} must not be passed as a value (it would be printed and stored in the "
            "job spec)",
            "set it in your environment (local) or in the Kubernetes Secret (see docs/deploy.md)",
        )
    if wandb_mode is not None:
        if wandb_mode not in WANDB_MODES:
            raise UserError(
                "--wandb_mode", f"expected one of {', '.join(WANDB_MODES)}, got {wandb_mode!r}"
            )
        env["WANDB_MODE"] = wandb_mode
    # Logs show up as they happen in `torchx log` / `kubectl logs`, not at buffer flushes.
    env.setdefault("PYTHONUNBUFFERED", "1")
    # torchrun's own logging: warnings only, unless the caller asks for more.
    env.setdefault("LOGLEVEL", "WARNING")
    return env


def train_app(
    overrides: Sequence[str],
    *,
    task: str,
    config: str | None,
    j: str,
    gpu: int,
    cpu: int,
    memMB: int,  # noqa: N803 - TorchX's name for it (-memMB) in every builtin component
    h: str | None,
    image: str,
    env: dict[str, str] | str | None,
    mounts: list[str] | None,
    max_retries: int,
    run_dir: str | None,
    wandb_project: str | None,
    wandb_mode: str | None,
    command_line: Sequence[str] = (),
) -> specs.AppDef:
    """The AppDef of one training job; every argument is the component's (see its docstring).

    `command_line` is `torchx run`'s argv; with it the job's one-line summary on stderr says
    whether the config came from .torchxconfig, and the container schedulers' warnings whether
    --cpu and --memMB were left at their defaults. Raises UserError for anything wrong, before a
    job exists.
    """
    if task not in TASKS:
        raise UserError("--task", f"expected one of {', '.join(TASKS)}, got {task!r}")
    nodes = parse_nodes(j)
    resource = _resource(cpu, gpu, memMB, h)
    check_count("--max_retries", max_retries, 0, MAX_RETRIES)
    if resource.gpu > 0 and nodes.nproc_per_node > resource.gpu:
        raise UserError(
            "-j",
            f"{nodes.nproc_per_node} processes per node but {resource.gpu} GPU(s) per node",
            f"use -j {nodes.spelled_nodes}x{resource.gpu} (one process per GPU)",
        )
    if max_retries < 0:
        raise UserError("--max_retries", f"must be 0 or more, got {max_retries}")
    run_dir = DEFAULT_RUN_DIR if run_dir is None else run_dir
    _local_path(run_dir, "--run_dir", "the trainer")
    if config is not None and not config.strip():  # not "no config": the built-in defaults
        raise UserError("--config", "an empty path", "name a YAML file, or leave --config out")
    job_env = _env(env, wandb_mode)
    role_mounts = _mounts(mounts)

    effective = with_wandb(parse_overrides(overrides), wandb_project)
    cfg = resolve(task, config, effective)
    say(submission_line(task, config, effective, command_line))

    role = specs.Role(
        name=ROLE_NAME,
        image=image,
        entrypoint="bash",
        args=["-c", torchrun_command(nodes, task, cfg, run_dir)],
        env=job_env,
        num_replicas=nodes.max_nodes,
        min_replicas=nodes.min_nodes,
        resource=resource,
        port_map={"c10d": RDZV_PORT},
        max_retries=max_retries,
        mounts=role_mounts,
    )
    if cfg.training.use_wandb and wandb_mode not in _WANDB_KEYLESS:
        secret_env.request(role.metadata, [secret_env.WANDB_API_KEY])
    data = dataclasses.asdict(cfg.dataset.paths) if cfg.dataset.paths else {}
    # A path given relative (to the config file's folder, or by --set to the working
    # directory) is absolute on this machine in the resolved config; a container has neither.
    data.update(cfg.relative_paths)
    container_paths.record(
        role.metadata,
        writes={"--run_dir": run_dir},
        reads={f"dataset.paths.{table}": path for table, path in data.items()},
        defaulted=defaulted_resources(cpu, memMB, h, command_line),
    )
    return specs.AppDef(name=f"recjobs-{task}", roles=[role])


def recommend_app(
    *,
    model_dir: str,
    k: int,
    out: str | None,
    users: str | None,
    candidates: str | None,
    include_seen: bool | str,
    output_format: str,
    j: str,
    gpu: int,
    cpu: int,
    memMB: int,  # noqa: N803 - TorchX's name for it
    h: str | None,
    image: str,
    env: dict[str, str] | str | None,
    mounts: list[str] | None,
    max_retries: int,
    command_line: Sequence[str] = (),
) -> specs.AppDef:
    """The AppDef of one batch-inference job; every argument is the `recommend` component's.

    `command_line` is `torchx run`'s argv (see `train_app`).

    The job is torchrun (same rendezvous, image, mounts and resources as training) running
    `recjobs recommend MODEL_DIR --k K --out OUT --parts FORMAT` in every process: process
    RANK of WORLD_SIZE writes OUT/part-RANK-of-WORLD_SIZE.FORMAT with its contiguous share of
    the users, so the parts hold every user exactly once. The processes do not communicate;
    a retried job writes the same parts again.

    Raises UserError for anything wrong, before a job exists.
    """
    check_count("--k", k, 1, MAX_K)
    include_seen = parse_flag(include_seen, "--include_seen")
    if output_format not in OUTPUT_FORMATS:
        raise UserError(
            "--output_format", f"expected one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}"
        )
    if not model_dir:
        raise UserError("--model_dir", "must not be empty", "the run directory of a training job")
    nodes = parse_nodes(j)
    resource = _resource(cpu, gpu, memMB, h)
    check_count("--max_retries", max_retries, 0, MAX_RETRIES)
    out = DEFAULT_RUN_DIR if out is None else out
    for flag, path in (("--model_dir", model_dir), ("--out", out)):
        _local_path(path, flag, "recjobs recommend")
    for flag, path in (("--users", users), ("--candidates", candidates)):
        if path is not None and not path.strip():  # '' would quietly mean "none given"
            raise UserError(flag, "an empty path", f"name a file, or leave {flag} out")
    if not candidates and model_task(model_dir) == "ranking":
        raise UserError(
            "--candidates",
            f"{model_dir} holds a ranking model, which scores given candidates and does not "
            "search the catalogue",
            "pass --candidates FILE of user_id,item_id pairs, e.g. a retrieval job's parts",
        )
    args = ["recommend", model_dir, "--k", str(k), "--out", out, "--parts", output_format]
    for flag, path in (("--users", users), ("--candidates", candidates)):
        if path:
            args += [flag, path]
    if include_seen:
        args.append("--include-seen")
    role = specs.Role(
        name=RECOMMEND_ROLE,
        image=image,
        entrypoint="bash",
        args=["-c", _torchrun(nodes, args)],
        env=_env(env, None),
        num_replicas=nodes.max_nodes,
        min_replicas=nodes.min_nodes,
        resource=resource,
        port_map={"c10d": RDZV_PORT},
        max_retries=max_retries,
        mounts=_mounts(mounts),
    )
    container_paths.record(
        role.metadata,
        writes={"--out": out},
        reads={"--model_dir": model_dir, "--users": users or "", "--candidates": candidates or ""},
        defaulted=defaulted_resources(cpu, memMB, h, command_line),
    )
    return specs.AppDef(name="recjobs-recommend", roles=[role])
