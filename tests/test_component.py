"""The TorchX component `components/train.py:train`: the AppDef it builds and how it refuses input.

Arguments go through torchx's own argument parser (`materialize_appdef`), exactly as
`torchx run ... components/train.py:train ARGS` passes them, so these tests see what users see.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torchx import specs
from torchx.specs.builders import materialize_appdef
from torchx.specs.file_linter import get_fn_docstring, validate
from torchx.specs.finder import get_component

from recjobs.config.resolver import Overrides, resolve
from recjobs.errors import ConfigError
from recjobs.submit import launch, secret_env

ROOT = Path(__file__).resolve().parents[1]
COMPONENT = ROOT / "components" / "train.py"
QUICKSTART = str(ROOT / "config" / "quickstart.yaml")
BASH = shutil.which("bash") or "/bin/bash"


@pytest.fixture(scope="module")
def train_fn():
    return get_component(f"{COMPONENT}:train").fn


def app_for(train_fn, *args: str) -> specs.AppDef:
    return materialize_appdef(train_fn, list(args))


def job_words(role: specs.Role, **env: str) -> list[str]:
    """The words bash hands to torchrun, after the scheduler's macro substitution.

    bash itself runs the command with `exec torchrun` swapped for printing its arguments, so
    quoting, `$$` escapes and the rank-0 `${VAR:=localhost}` expansion are all checked for real.
    """
    values = specs.macros.Values(
        img_root="", app_id="app-123", replica_id="0", rank0_env="RANK0_HOST_VAR"
    )
    command = values.apply(role).args[1]
    assert command.startswith("exec torchrun ")
    shown = command.replace("exec torchrun ", "printf '%s\\0' ", 1)
    out = subprocess.run(
        [BASH, "-c", shown], capture_output=True, text=True, check=True, env={"PATH": "", **env}
    ).stdout
    return out.split("\0")[:-1]


def flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_component_passes_torchx_linter_and_documents_every_parameter(train_fn):
    assert validate(str(COMPONENT), "train") == []
    _, described = get_fn_docstring(train_fn)
    import inspect

    params = list(inspect.signature(train_fn).parameters)
    assert params[0] == "overrides" and {"task", "config", "j", "gpu", "h", "mounts"} <= set(params)
    undocumented = [p for p in params if not described[p].strip()]
    assert undocumented == []


def component_help(component: str, cwd: Path) -> dict[str, str]:
    """`torchx run components/train.py:COMPONENT --help`, for real: argument -> its help text."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHXCONFIG"}
    env["COLUMNS"] = "2000"
    torchx = Path(sys.executable).parent / "torchx"
    done = subprocess.run(
        # as the README writes it: .torchxconfig's section names the relative path
        [str(torchx), "run", f"{os.path.relpath(COMPONENT, cwd)}:{component}", "--help"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    helps = {}
    # With a wide terminal argparse writes one line per argument: "  -j str, --j str   HELP".
    for line in done.stdout.splitlines():
        match = re.match(r"^  (?:-\w+ \w+, )?(--\w+|str)(?: \w+)?  +(.*)$", line)
        if match and match.group(1) != "--help":
            helps[match.group(1).lstrip("-")] = match.group(2)
    return helps


@pytest.mark.parametrize("component", ["train", "recommend"])
@pytest.mark.parametrize("where", ["repository", "elsewhere"])
def test_component_help_labels_each_argument_once_and_correctly(component, where, tmp_path):
    """Every argument with a default shows exactly one "(default: ...)"; only arguments
    without one say "(required)", and the optional overrides after `--` say neither."""
    import inspect

    fn = get_component(f"{COMPONENT}:{component}").fn
    params = inspect.signature(fn).parameters
    helps = component_help(component, ROOT if where == "repository" else tmp_path)
    named = {"str" if p.kind is p.VAR_POSITIONAL else name for name, p in params.items()}
    assert set(helps) == named
    # .torchxconfig gives `train` a task, so it is required only outside the repository.
    required = {"model_dir"} | ({"task"} if where == "elsewhere" else set())
    for name, text in helps.items():
        has_default = name != "str" and name not in required
        assert text.count("(default:") == (1 if has_default else 0), (name, text)
        assert ("(required)" in text) == (name in required), (name, text)
    if component == "train":
        assert helps["str"].startswith("optional config overrides")
        assert helps["run_dir"].endswith("(default: runs/${app_id})")
        expected = "config/quickstart.yaml" if where == "repository" else "None"
        assert helps["config"].endswith(f"the built-in defaults (default: {expected})")
    else:
        assert helps["out"].endswith("(default: runs/${app_id})")


def test_submit_line_names_built_in_defaults_and_wandb_overrides(train_fn, capsys):
    app_for(train_fn, "--task", "ranking", "--wandb_project", "p", "--", "--optimizer", "SGD")
    assert capsys.readouterr().err.splitlines() == [
        "recjobs: task ranking, config the built-in defaults (no --config), 3 overrides: "
        "--optimizer SGD --set training.use_wandb=true --set training.wandb_project=p"
    ]


@pytest.mark.parametrize(
    ("command_line", "given"),
    [
        (["/v/bin/torchx", "run", "c.py:train", "--config", "a.yaml"], True),
        (["torchx", "run", "c.py:train", "--config=a.yaml"], True),
        (["torchx", "run", "c.py:train", "--conf", "a.yaml"], True),
        (["torchx", "run", "c.py:train", "--cpu", "4", "--", "--config", "x"], False),
        (["torchx", "run"], False),
        (["pytest"], None),
        ([], None),
    ],
)
def test_config_given_reads_torchx_run_command_line(command_line, given):
    assert launch.config_given(command_line) is given
    origin = launch.submission_line("retrieval", "a.yaml", Overrides(), command_line)
    assert origin.endswith(" (from .torchxconfig), no overrides") is (given is False)


def test_one_node_two_processes_runs_recjobs_train_under_torchrun(train_fn):
    app = app_for(
        train_fn,
        "--task",
        "retrieval",
        "--config",
        QUICKSTART,
        "-j",
        "1x2",
        "--",
        "--optimizer",
        "SGD",
        "--optimizer-args",
        "momentum=0.9",
        "nesterov=true",
        "--set=training.max_epochs=1",
        "--set=shared.seed=7",
    )
    assert app.name == "recjobs-retrieval"
    (role,) = app.roles
    assert (role.name, role.entrypoint, role.num_replicas, role.min_replicas) == (
        "train",
        "bash",
        1,
        1,
    )
    assert role.image == launch.DEFAULT_IMAGE and role.max_retries == 0 and role.mounts == []
    words = job_words(role)
    assert words[:10] == [
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "localhost:0",
        "--rdzv_id",
        "app-123",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
    ]
    assert words[10:14] == ["-m", "recjobs", "train", "retrieval"]
    assert flag(words, "--run-dir") == "runs/app-123"  # one directory per job by default
    assert words[-1] == "--resume-or-start"
    expected = resolve(
        "retrieval",
        QUICKSTART,
        Overrides(
            optimizer="SGD",
            optimizer_args=["momentum=0.9", "nesterov=true"],
            sets=["training.max_epochs=1", "shared.seed=7"],
        ),
    ).to_dict()
    sent = json.loads(flag(words, "--config-json"))
    assert sent == expected
    assert sent["retrieval"]["training"]["optimizer"] == {
        "name": "SGD",
        "lr": 0.003,
        "momentum": 0.9,
        "nesterov": True,
    }


def test_two_nodes_find_rank_zero_through_the_schedulers_rank0_host(train_fn):
    app = app_for(train_fn, "--task", "ranking", "-j", "2x8", "--gpu", "8")
    (role,) = app.roles
    assert (role.num_replicas, role.min_replicas, role.resource.gpu) == (2, 2, 8)
    assert role.port_map == {"c10d": launch.RDZV_PORT}
    # Not rank 0: the scheduler's variable holds rank 0's host.
    words = job_words(role, RANK0_HOST_VAR="train-0.svc")
    assert flag(words, "--rdzv_endpoint") == "train-0.svc:29500"
    assert (flag(words, "--nnodes"), flag(words, "--nproc_per_node")) == ("2", "8")
    # Rank 0 itself (the variable unset or empty): localhost.
    assert flag(job_words(role), "--rdzv_endpoint") == "localhost:29500"


def test_elastic_min_max_nodes_pass_through(train_fn):
    (role,) = app_for(train_fn, "--task", "ranking", "-j", "1:4x8", "--gpu", "8").roles
    assert (role.min_replicas, role.num_replicas) == (1, 4)
    assert flag(job_words(role), "--nnodes") == "1:4"


def test_dollar_signs_in_the_config_reach_the_job_unchanged(train_fn):
    # Schedulers run string.Template over the arguments; the config must survive it verbatim.
    name = "a$b-${app_id}-$$"
    (role,) = app_for(
        train_fn, "--task", "retrieval", "--", f"--set=training.wandb_run_name={name}"
    ).roles
    sent = json.loads(flag(job_words(role), "--config-json"))
    assert sent["retrieval"]["training"]["wandb_run_name"] == name


def test_resources_mounts_retries_and_env(train_fn):
    app = app_for(
        train_fn,
        "--task",
        "retrieval",
        "-j",
        "1x2",
        "--cpu",
        "8",
        "--gpu",
        "2",
        "--memMB",
        "30000",
        "--image",
        "ghcr.io/acme/recjobs:1.2",
        "--mounts",
        "type=volume,src=recjobs-runs,dst=/runs",
        "--max_retries",
        "3",
        "--run_dir",
        "/runs/${app_id}",
        "--env",
        "FOO=1,NCCL_DEBUG=INFO",
        "--wandb_mode",
        "offline",
    )
    (role,) = app.roles
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (8, 2, 30000)
    assert role.image == "ghcr.io/acme/recjobs:1.2"
    assert role.mounts == [specs.VolumeMount(src="recjobs-runs", dst_path="/runs")]
    assert role.max_retries == 3
    assert flag(job_words(role), "--run-dir") == "/runs/app-123"
    assert role.env["FOO"] == "1" and role.env["NCCL_DEBUG"] == "INFO"
    assert role.env["WANDB_MODE"] == "offline"
    assert secret_env.requested(role.metadata) == []  # W&B is off in this config


def test_named_resource_sets_the_gpus(train_fn):
    (role,) = app_for(train_fn, "--task", "ranking", "-h", "gpu.small", "--gpu", "4").roles
    # -h wins over --gpu, as in torchx's builtins.
    assert role.resource == specs.named_resources["gpu.small"]
    assert role.resource.gpu == 1


def test_wandb_project_turns_wandb_on_and_asks_for_the_key_by_name_only(train_fn):
    (role,) = app_for(train_fn, "--task", "retrieval", "--wandb_project", "recsys").roles
    training = json.loads(flag(job_words(role), "--config-json"))["retrieval"]["training"]
    assert (training["use_wandb"], training["wandb_project"]) == (True, "recsys")
    assert secret_env.requested(role.metadata) == ["WANDB_API_KEY"]
    assert "WANDB_API_KEY" not in role.env


@pytest.mark.parametrize(
    "args, line",
    [
        (["--task", "retrieval", "-j", "2"], "error: -j: expected [MIN:]NODESxPROCS, got '2'"),
        (["--task", "retrieval", "-j", "3:2x1"], "error: -j: minimum nodes 3 exceed maximum"),
        (["--task", "recsys"], "error: --task: expected one of retrieval, ranking, got 'recsys'"),
        (["--task", "ranking", "-j", "1x2", "-h", "gpu.small"], "error: -j: 2 processes per"),
        (["--task", "ranking", "-h", "gpu.smal"], "error: -h: No named resource found for"),
        (["--task", "ranking", "--gpu", "-1"], "error: --gpu: must be at least 0, got -1"),
        (["--task", "ranking", "--mounts", "type=nfs,src=a,dst=/b"], "error: --mounts: invalid"),
        (["--task", "ranking", "--run_dir", "s3://b/r"], "error: --run_dir: 's3://b/r': URLs"),
        (["--task", "ranking", "--wandb_mode", "on"], "error: --wandb_mode: expected one of"),
        (
            ["--task", "ranking", "--", "training.lr=1"],
            "error: config overrides: unrecognized arguments: training.lr=1 (overrides go after",
        ),
        (
            ["--task", "ranking", "--", "--optimizer", "Adma"],
            "error: ranking.training.optimizer.name: unknown optimizer 'Adma'",
        ),
    ],
)
def test_bad_input_is_one_error_line_and_exit_code_2(train_fn, capsys, args, line):
    with pytest.raises(SystemExit) as exc:
        app_for(train_fn, *args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err


def test_a_config_error_is_exactly_what_recjobs_resolve_says(train_fn, capsys):
    with pytest.raises(ConfigError) as expected:
        resolve("retrieval", QUICKSTART, Overrides(sets=["training.max_epoch=3"]))
    with pytest.raises(SystemExit) as exc:
        app_for(
            train_fn,
            "--task",
            "retrieval",
            "--config",
            QUICKSTART,
            "--",
            "--set=training.max_epoch=3",
        )
    assert exc.value.code == 2
    assert capsys.readouterr().err == expected.value.line() + "\n"
    assert expected.value.line() == (
        "error: retrieval.training.max_epoch: unknown key (did you mean max_epochs?)"
    )


def test_a_secret_passed_as_env_is_refused_without_echoing_it(train_fn, capsys):
    with pytest.raises(SystemExit) as exc:
        app_for(train_fn, "--task", "retrieval", "--env", "WANDB_API_KEY=k-do-not-print")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --env: WANDB_API_KEY must not be passed as a value")
    assert "k-do-not-print" not in err


def test_overrides_without_the_double_dash_are_an_error_not_dropped(train_fn, capsys):
    with pytest.raises(SystemExit) as exc:
        app_for(train_fn, "--task", "retrieval", "--set=training.max_epochs=1")
    assert exc.value.code == 2
    assert "unrecognized arguments: --set=training.max_epochs=1" in capsys.readouterr().err


def test_parse_nodes_and_quoting_helpers():
    assert launch.parse_nodes("2x8") == launch.Nodes(2, 2, 8)
    assert launch.parse_nodes("1:3x4").torchrun_nnodes == "1:3"
    assert launch.config_json(resolve("ranking")).count("$") == 0
    cmd = launch.torchrun_command(
        launch.parse_nodes("1x1"), "ranking", resolve("ranking"), "/runs/x y"
    )
    assert shlex.split(cmd)[shlex.split(cmd).index("--run-dir") + 1] == "/runs/x y"


# --------------------------------------------------------------------------- batch inference


def test_recommend_component_is_linted_documented_and_runs_recjobs_recommend(capsys):
    import inspect

    recommend_fn = get_component(f"{COMPONENT}:recommend").fn
    assert validate(str(COMPONENT), "recommend") == []
    _, described = get_fn_docstring(recommend_fn)
    params = list(inspect.signature(recommend_fn).parameters)
    assert [p for p in params if not described[p].strip()] == []
    app = materialize_appdef(
        recommend_fn,
        ["--model_dir", "/runs/r 1", "--k", "50", "-j", "2x4", "--users", "/runs/u.csv"],
    )
    (role,) = app.roles
    assert (app.name, role.name, role.num_replicas) == ("recjobs-recommend", "recommend", 2)
    words = job_words(role, RANK0_HOST_VAR="train-0")
    assert flag(words, "--nproc_per_node") == "4"
    assert flag(words, "--rdzv_endpoint") == "train-0:29500"
    assert words[words.index("-m") + 1 :] == [
        "recjobs",
        "recommend",
        "/runs/r 1",
        "--k",
        "50",
        "--out",
        "runs/app-123",
        "--parts",
        "parquet",
        "--users",
        "/runs/u.csv",
    ]
    with pytest.raises(SystemExit) as exc:
        materialize_appdef(recommend_fn, ["--model_dir", "s3://bucket/run", "--k", "5"])
    assert exc.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .startswith(
            "error: --model_dir: 's3://bucket/run': URLs are not supported by recjobs recommend"
        )
    )


@pytest.mark.parametrize("flag", ["--run_dir", "--out"])
def test_an_empty_path_is_refused_not_the_default(train_fn, flag, capsys):
    fn = train_fn if flag == "--run_dir" else get_component("components/train.py:recommend").fn
    extra = ["--task", "retrieval"] if flag == "--run_dir" else ["--model_dir", "/runs/r"]
    with pytest.raises(SystemExit) as exc:
        materialize_appdef(fn, [*extra, flag, " "])
    assert exc.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"error: {flag}: an empty path (name a directory, or leave {flag} out for runs/<app id>)"
        )
    )
