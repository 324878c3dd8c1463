"""Config resolution: the spec's examples and overrides, precedence, YAML number handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recjobs.cli import main
from recjobs.config.resolver import Overrides, load_yaml, parse_value, resolve, resolve_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"


def run_resolve(capsys, *argv: str) -> dict:
    assert main(["resolve", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def training(resolved: dict, task: str = "retrieval") -> dict:
    return resolved[task]["training"]


# --------------------------------------------------------------------------- the spec's examples


def test_example_1_simple(capsys):
    t = training(
        run_resolve(capsys, "retrieval", "--config", str(CONFIG / "example_1_simple.yaml"))
    )
    assert t["optimizer"] == {"name": "AdamW", "lr": 0.001}
    assert (t["batch_size"], t["max_epochs"], t["scheduler"], t["mixed_precision"]) == (
        1024,
        10,
        None,
        "off",
    )


def test_example_2_optimizer_lr_wins(capsys, tmp_path):
    t = training(
        run_resolve(
            capsys, "retrieval", "--config", str(CONFIG / "example_2_advanced_optimizer.yaml")
        )
    )
    assert t["optimizer"] == {
        "name": "AdamW",
        "lr": 0.001,
        "weight_decay": 0.01,
        "betas": [0.9, 0.999],
    }
    # The optimizer mapping's own lr wins over training.lr.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "retrieval:\n  training:\n    lr: 0.5\n    optimizer: {name: AdamW, lr: 0.003}\n"
    )
    t = training(run_resolve(capsys, "retrieval", "--config", str(cfg)))
    assert t["optimizer"]["lr"] == 0.003 and t["lr"] == 0.003


def test_example_3_scheduler(capsys):
    t = training(
        run_resolve(capsys, "retrieval", "--config", str(CONFIG / "example_3_scheduler.yaml"))
    )
    assert t["optimizer"] == {"name": "AdamW", "lr": 0.001, "weight_decay": 0.01}
    assert t["scheduler"] == {
        "name": "CosineAnnealingLR",
        "interval": "epoch",
        "T_max": 50,
        "eta_min": 1e-6,
    }
    assert isinstance(t["scheduler"]["eta_min"], float)


def test_example_4_mixed_precision(capsys):
    t = training(
        run_resolve(capsys, "retrieval", "--config", str(CONFIG / "example_4_mixed_precision.yaml"))
    )
    assert t["mixed_precision"] == "fp16"
    assert (t["temperature"], t["eval_steps"], t["log_steps"], t["batch_size"]) == (
        0.05,
        500,
        100,
        32768,
    )
    assert t["optimizer"]["betas"] == [0.9, 0.999]


def test_example_5_sgd(capsys):
    t = training(
        run_resolve(capsys, "ranking", "--config", str(CONFIG / "example_5_sgd_momentum.yaml")),
        "ranking",
    )
    assert t["optimizer"] == {
        "name": "SGD",
        "lr": 2.0,
        "momentum": 0.9,
        "weight_decay": 0.0001,
        "nesterov": True,
    }
    assert t["scheduler"] == {"name": "StepLR", "interval": "epoch", "step_size": 3, "gamma": 0.3}
    assert t["mixed_precision"] == "fp16"


def test_example_advanced_both_tasks(capsys):
    path = str(CONFIG / "example_advanced.yaml")
    t = training(run_resolve(capsys, "retrieval", "--config", path))
    assert t["scheduler"]["name"] == "SequentialLR" and t["scheduler"]["milestones"] == [2]
    assert [s["name"] for s in t["scheduler"]["schedulers"]] == ["LinearLR", "CosineAnnealingLR"]
    assert t["optimizer"]["eps"] == 1e-8 and t["mixed_precision"] == "bf16"
    r = training(run_resolve(capsys, "ranking", "--config", path), "ranking")
    assert r["scheduler"] == {
        "name": "ReduceLROnPlateau",
        "interval": "epoch",
        "monitor": "auc",
        "mode": "max",
        "factor": 0.5,
        "patience": 1,
    }
    assert r["early_stopping"] == {
        "enabled": True,
        "metric": "auc",
        "patience": 5,
        "mode": "max",
        "min_delta": 0.0,
    }


@pytest.mark.parametrize(
    "snippet, expected",
    [
        ("optimizer: AdamW", {"name": "AdamW", "lr": 0.001}),
        (
            "optimizer: {name: AdamW, weight_decay: 0.01, betas: [0.9, 0.999], eps: 1e-8}",
            {
                "name": "AdamW",
                "lr": 0.001,
                "weight_decay": 0.01,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
            },
        ),
        (
            "optimizer: {name: Adam, weight_decay: 0.0, betas: [0.9, 0.999]}",
            {"name": "Adam", "lr": 0.001, "weight_decay": 0.0, "betas": [0.9, 0.999]},
        ),
        (
            "optimizer: {name: SGD, momentum: 0.9, weight_decay: 0.0001, nesterov: true}",
            {"name": "SGD", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0001, "nesterov": True},
        ),
        (
            "optimizer: {name: RMSprop, alpha: 0.99, momentum: 0.9}",
            {"name": "RMSprop", "lr": 0.001, "alpha": 0.99, "momentum": 0.9},
        ),
    ],
)
def test_spec_optimizer_snippets(snippet, expected):
    raw = load_yaml(f"retrieval:\n  training:\n    lr: 0.001\n    {snippet}\n", "x")
    assert (
        resolve_dict(raw, "retrieval").to_dict()["retrieval"]["training"]["optimizer"] == expected
    )


@pytest.mark.parametrize(
    "snippet, expected",
    [
        (
            "{name: StepLR, step_size: 10, gamma: 0.1, interval: epoch}",
            {"name": "StepLR", "interval": "epoch", "step_size": 10, "gamma": 0.1},
        ),
        (
            "{name: StepLR, step_size: 10, gamma: 0.5, interval: epoch}",
            {"name": "StepLR", "interval": "epoch", "step_size": 10, "gamma": 0.5},
        ),
        (
            "{name: CosineAnnealingLR, T_max: 50, eta_min: 1e-6, interval: epoch}",
            {"name": "CosineAnnealingLR", "interval": "epoch", "T_max": 50, "eta_min": 1e-6},
        ),
        (
            "{name: ExponentialLR, gamma: 0.95, interval: epoch}",
            {"name": "ExponentialLR", "interval": "epoch", "gamma": 0.95},
        ),
        (
            "{name: OneCycleLR, max_lr: 0.01, total_steps: 10000, interval: step}",
            {"name": "OneCycleLR", "interval": "step", "max_lr": 0.01, "total_steps": 10000},
        ),
        (
            "{name: ReduceLROnPlateau, mode: min, factor: 0.1, patience: 5, interval: epoch}",
            {
                "name": "ReduceLROnPlateau",
                "interval": "epoch",
                "monitor": "loss",
                "mode": "min",
                "factor": 0.1,
                "patience": 5,
            },
        ),
        (
            "{name: CosineAnnealingWarmRestarts, T_0: 5, T_mult: 2, eta_min: 1e-6, interval: epoch}",
            {
                "name": "CosineAnnealingWarmRestarts",
                "interval": "epoch",
                "T_0": 5,
                "T_mult": 2,
                "eta_min": 1e-6,
            },
        ),
        (
            "{name: StepLR, step_size: 3}",
            {"name": "StepLR", "interval": "epoch", "step_size": 3},
        ),  # epoch is the default
        (
            "{name: OneCycleLR, max_lr: 0.01}",
            {"name": "OneCycleLR", "interval": "step", "max_lr": 0.01},
        ),  # only legal interval
    ],
)
def test_spec_scheduler_snippets(snippet, expected):
    raw = load_yaml(
        f"retrieval:\n  training:\n    optimizer: AdamW\n    scheduler: {snippet}\n", "x"
    )
    assert (
        resolve_dict(raw, "retrieval").to_dict()["retrieval"]["training"]["scheduler"] == expected
    )


# --------------------------------------------------------------------------- the spec's CLI examples


def test_cli_change_optimizer(capsys):
    t = training(
        run_resolve(
            capsys,
            "retrieval",
            "--config",
            str(CONFIG / "example_3_scheduler.yaml"),
            "--optimizer",
            "Adam",
        )
    )
    # Another optimizer: the file's AdamW kwargs (weight_decay) do not carry over.
    assert t["optimizer"] == {"name": "Adam", "lr": 0.001}
    assert t["scheduler"]["name"] == "CosineAnnealingLR"


def test_cli_optimizer_with_args_beats_file(capsys):
    # The source project crashed here: the file's optimizer silently won over the flags.
    argv = [
        "retrieval",
        "--config",
        str(CONFIG / "example_2_advanced_optimizer.yaml"),
        "--optimizer",
        "SGD",
    ]
    t = training(
        run_resolve(capsys, *argv, "--optimizer-args", "momentum=0.9", "weight_decay=0.0001")
    )
    assert t["optimizer"] == {"name": "SGD", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0001}


def test_cli_add_scheduler(capsys):
    argv = ["retrieval", "--config", str(CONFIG / "example_1_simple.yaml"), "--scheduler", "StepLR"]
    t = training(
        run_resolve(
            capsys,
            *argv,
            "--scheduler-args",
            "step_size=10",
            "gamma=0.5",
            "--scheduler-interval",
            "epoch",
        )
    )
    assert t["scheduler"] == {"name": "StepLR", "interval": "epoch", "step_size": 10, "gamma": 0.5}


def test_cli_mixed_precision_flags(capsys):
    path = str(CONFIG / "example_1_simple.yaml")
    assert (
        training(run_resolve(capsys, "retrieval", "--config", path, "--mixed-precision"))[
            "mixed_precision"
        ]
        == "fp16"
    )
    assert (
        training(run_resolve(capsys, "retrieval", "--config", path, "--mixed-precision", "bf16"))[
            "mixed_precision"
        ]
        == "bf16"
    )
    path4 = str(CONFIG / "example_4_mixed_precision.yaml")
    assert (
        training(run_resolve(capsys, "retrieval", "--config", path4, "--no-mixed-precision"))[
            "mixed_precision"
        ]
        == "off"
    )


def test_cli_combine_all(capsys):
    argv = [
        "retrieval",
        "--config",
        str(CONFIG / "example_1_simple.yaml"),
        "--optimizer",
        "AdamW",
        "--optimizer-args",
        "weight_decay=0.01",
    ]
    argv += [
        "--scheduler",
        "CosineAnnealingLR",
        "--scheduler-args",
        "T_max=50",
        "eta_min=1e-6",
        "--mixed-precision",
    ]
    t = training(run_resolve(capsys, *argv))
    assert t["optimizer"] == {"name": "AdamW", "lr": 0.001, "weight_decay": 0.01}
    assert t["scheduler"] == {
        "name": "CosineAnnealingLR",
        "interval": "epoch",
        "T_max": 50,
        "eta_min": 1e-6,
    }
    assert t["mixed_precision"] == "fp16"


@pytest.mark.parametrize(
    ("options_first", "task_first"),
    [
        (
            ["--optimizer", "SGD", "--optimizer-args", "momentum=0.9", "retrieval"],
            ["retrieval", "--optimizer", "SGD", "--optimizer-args", "momentum=0.9"],
        ),
        (["--mixed-precision", "retrieval"], ["retrieval", "--mixed-precision"]),
        (["--mixed-precision", "bf16", "ranking"], ["ranking", "--mixed-precision", "bf16"]),
        (
            [
                "--scheduler",
                "StepLR",
                "--scheduler-args",
                "step_size=3",
                "ranking",
                "--set=shared.seed=3",
            ],
            [
                "ranking",
                "--scheduler",
                "StepLR",
                "--scheduler-args",
                "step_size=3",
                "--set=shared.seed=3",
            ],
        ),
        (
            [
                "--set",
                "training.lr=0.5",
                "--optimizer-args",
                "eps=1e-6",
                "ranking",
                "weight_decay=0.1",
            ],
            [
                "ranking",
                "--set",
                "training.lr=0.5",
                "--optimizer-args",
                "eps=1e-6",
                "weight_decay=0.1",
            ],
        ),
    ],
)
def test_the_task_may_stand_after_the_options(capsys, options_first, task_first):
    expected = run_resolve(capsys, *task_first)
    assert run_resolve(capsys, *options_first) == expected
    # train reads the command line the same way.
    from recjobs.cli import _resolve_args, build_parser

    parsed = build_parser().parse_args(["train", *options_first, "--run-dir", "r"])
    assert _resolve_args(parsed).to_dict() == expected


def test_a_config_file_named_like_a_task_is_not_the_task(capsys):
    assert main(["resolve", "--config", "retrieval"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: recjobs resolve: the following arguments are required: task (see --help)"
    )
    assert main(["resolve", "--optimizer-args", "retrieval"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: recjobs resolve: argument --optimizer-args: expected at least one argument"
    )


# --------------------------------------------------------------------------- precedence rules


def _resolve_text(tmp_path, text: str, **ov) -> dict:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return resolve("retrieval", path, Overrides(**ov)).to_dict()["retrieval"]["training"]


FILE_SGD = "retrieval:\n  training:\n    lr: 0.01\n    optimizer: {name: SGD, momentum: 0.5, weight_decay: 0.1}\n"
FILE_STEP = "retrieval:\n  training:\n    scheduler: {name: StepLR, step_size: 4, gamma: 0.3, interval: step}\n"


def test_same_optimizer_keeps_file_kwargs_and_overrides_one_by_one(tmp_path):
    t = _resolve_text(tmp_path, FILE_SGD, optimizer="SGD", optimizer_args=["momentum=0.9"])
    assert t["optimizer"] == {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.1}


def test_optimizer_args_alone_edit_file_optimizer(tmp_path):
    t = _resolve_text(tmp_path, FILE_SGD, optimizer_args=["nesterov=true", "dampening=0"])
    assert t["optimizer"] == {
        "name": "SGD",
        "lr": 0.01,
        "momentum": 0.5,
        "weight_decay": 0.1,
        "nesterov": True,
        "dampening": 0.0,
    }


def test_other_optimizer_drops_file_kwargs_keeps_lr(tmp_path):
    t = _resolve_text(tmp_path, FILE_SGD, optimizer="Adam")
    assert t["optimizer"] == {"name": "Adam", "lr": 0.01}


def test_cli_lr_beats_file_optimizer_lr(tmp_path):
    text = "retrieval:\n  training:\n    optimizer: {name: AdamW, lr: 0.003}\n"
    assert _resolve_text(tmp_path, text, sets=["training.lr=0.1"])["optimizer"]["lr"] == 0.1
    assert _resolve_text(tmp_path, text, optimizer_args=["lr=0.2"])["optimizer"]["lr"] == 0.2


def test_scheduler_rules(tmp_path):
    same = _resolve_text(tmp_path, FILE_STEP, scheduler="StepLR", scheduler_args=["gamma=0.9"])
    assert same["scheduler"] == {"name": "StepLR", "interval": "step", "step_size": 4, "gamma": 0.9}
    other = _resolve_text(
        tmp_path, FILE_STEP, scheduler="ExponentialLR", scheduler_args=["gamma=0.9"]
    )
    assert other["scheduler"] == {"name": "ExponentialLR", "interval": "epoch", "gamma": 0.9}
    interval = _resolve_text(tmp_path, FILE_STEP, scheduler_interval="epoch")
    assert interval["scheduler"] == {
        "name": "StepLR",
        "interval": "epoch",
        "step_size": 4,
        "gamma": 0.3,
    }
    assert _resolve_text(tmp_path, FILE_STEP, scheduler="none")["scheduler"] is None


def test_set_overrides_relative_and_absolute(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("shared: {seed: 1}\nretrieval:\n  training: {batch_size: 64}\n")
    ov = Overrides(
        sets=[
            "training.batch_size=2048",
            "shared.seed=7",
            "model.hidden_dims=[32,16]",
            "retrieval.training.max_epochs=2",
        ]
    )
    d = resolve("retrieval", path, ov).to_dict()
    assert d["retrieval"]["training"]["batch_size"] == 2048 and d["shared"]["seed"] == 7
    assert (
        d["retrieval"]["model"]["hidden_dims"] == [32, 16]
        and d["retrieval"]["training"]["max_epochs"] == 2
    )
    ov = Overrides(sets=["training.optimizer.weight_decay=0.05", "dataset.synth.users=300"])
    d = resolve("retrieval", path, ov).to_dict()
    assert d["retrieval"]["training"]["optimizer"] == {
        "name": "Adam",
        "lr": 0.001,
        "weight_decay": 0.05,
    }
    assert d["dataset"]["synth"]["users"] == 300


def test_defaults_without_a_file():
    d = resolve("ranking").to_dict()
    assert (
        d["ranking"]["model"]["model_arch"] == "dlrm"
        and d["ranking"]["training"]["loss_func"] == "bce"
    )
    assert "temperature" not in d["ranking"]["training"]
    assert d["dataset"]["paths"] is None


EXAMPLES = [
    (path, task)
    for path in sorted(CONFIG.glob("*.yaml"))
    for task in ("retrieval", "ranking")
    if task in load_yaml(path.read_text(), str(path))
]


@pytest.mark.parametrize("path, task", EXAMPLES, ids=[f"{p.name}-{t}" for p, t in EXAMPLES])
def test_resolve_is_idempotent(path, task):
    raw = load_yaml(path.read_text(), str(path))
    once = resolve_dict(raw, task).to_dict()
    assert resolve_dict(json.loads(json.dumps(once)), task).to_dict() == once


# --------------------------------------------------------------------------- YAML numbers


@pytest.mark.parametrize(
    "text, value",
    [
        ("1e-8", 1e-8),
        ("5e-4", 5e-4),
        ("1E6", 1e6),
        ("-2e+3", -2000.0),
        ("1.5e-3", 1.5e-3),
        (".5", 0.5),
        ("3", 3),
        ("true", True),
        ("[0.9,0.999]", [0.9, 0.999]),
        ("adam", "adam"),
    ],
)
def test_scalars_in_overrides(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_exponent_floats_in_file(tmp_path):
    text = "retrieval:\n  training:\n    lr: 5e-4\n    optimizer: {name: AdamW, eps: 1e-8}\n    scheduler: {name: CosineAnnealingLR, T_max: 5, eta_min: 1E-6}\n"
    t = _resolve_text(tmp_path, text)
    assert t["optimizer"] == {"name": "AdamW", "lr": 5e-4, "eps": 1e-8}
    assert t["scheduler"]["eta_min"] == 1e-6


# --------------------------------------------------------------------------- entry points


def test_python_m_and_console_script_agree():
    args = [
        "resolve",
        "retrieval",
        "--config",
        str(CONFIG / "example_3_scheduler.yaml"),
        "--optimizer",
        "SGD",
    ]
    a = subprocess.run(
        [sys.executable, "-m", "recjobs", *args], capture_output=True, text=True, check=True
    )
    b = subprocess.run(
        [str(Path(sys.executable).parent / "recjobs"), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert json.loads(a.stdout)["retrieval"]["training"]["optimizer"]["name"] == "SGD"


def test_user_error_has_no_traceback():
    p = subprocess.run(
        [sys.executable, "-m", "recjobs", "resolve", "retrieval", "--set", "training.max_epoch=3"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and p.stdout == ""
    assert (
        p.stderr == "error: retrieval.training.max_epoch: unknown key (did you mean max_epochs?)\n"
    )
