"""Builders: every torch.optim optimizer from config; the spec's schedulers against closed forms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recjobs.config.optim import (
    OPTIMIZERS,
    SCHEDULERS,
    build_optimizer,
    build_scheduler,
    current_lrs,
)
from recjobs.config.resolver import load_yaml, resolve_dict
from recjobs.errors import ConfigError
from recjobs.training import precision
from recjobs.training.precision import precision_policy

from lr_curves import LR, cosine, one_cycle, warm_restarts

ROOT = Path(__file__).resolve().parents[1]


def resolved_training(snippet: str, task: str = "retrieval") -> dict:
    raw = load_yaml(
        f"{task}:\n  training:\n    lr: {LR}\n"
        + "".join(f"    {line}\n" for line in snippet.splitlines()),
        "t",
    )
    return resolve_dict(raw, task).to_dict()[task]["training"]


# The loop cannot drive these as training.optimizer (test_refused_optimizers); SparseAdam is
# an embedding_optimizer (tests/test_sparse.py).
REFUSED = {
    "LBFGS": "error: retrieval.training.optimizer.name: LBFGS needs a closure that re-evaluates "
    "the loss at every step, which this training loop does not give (use Adam, AdamW or SGD)",
    "SparseAdam": "error: retrieval.training.optimizer: SparseAdam fails when it steps: "
    "SparseAdam does not support dense gradients, please consider Adam instead",
    # Matrices only: it passed resolve and submit once, then failed in every real run.
    "Muon": "error: retrieval.training.optimizer.name: Muon cannot train these models' "
    "parameters: Muon only supports 2D parameters whereas we found a parameter with size: "
    "torch.Size([2]) (every model here has bias vectors as well as matrices; use Adam, AdamW "
    "or SGD)",
}


@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - set(REFUSED)))
def test_every_optimizer_builds_from_config_and_steps(name):
    t = resolved_training(f"optimizer: {name}")
    assert t["optimizer"] == {"name": name, "lr": LR}
    torch.manual_seed(0)
    if name == "SparseAdam":  # needs sparse gradients: an embedding table
        model = torch.nn.Embedding(10, 4, sparse=True)
        inputs = torch.tensor([1, 2, 3])
    else:
        model = torch.nn.Linear(4, 3)
        inputs = torch.randn(8, 4)
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(model.parameters(), t["optimizer"])
    assert type(opt).__name__ == name and current_lrs(opt) == [LR]

    def closure():
        opt.zero_grad()
        loss = model(inputs).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), (
        "parameters did not move"
    )


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_optimizers(name):
    with pytest.raises(ConfigError) as err:
        resolved_training(f"optimizer: {name}")
    assert err.value.line() == REFUSED[name]


def test_optimizer_kwargs_reach_torch():
    t = resolved_training(
        "optimizer: {name: AdamW, weight_decay: 0.01, betas: [0.8, 0.9], eps: 1e-8}"
    )
    group = build_optimizer([torch.nn.Parameter(torch.zeros(2))], t["optimizer"]).param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (
        LR,
        0.01,
        (0.8, 0.9),
        1e-8,
    )


# --------------------------------------------------------------------------- LR curves


def run_schedule(
    training: dict, epochs: int, steps_per_epoch: int, metrics=None
) -> list[list[float]]:
    """The LR seen by every optimizer step, as [epoch][step], driving the hooks as the loop does."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], training["optimizer"])
    schedule = build_scheduler(
        opt, training["scheduler"], steps_per_epoch, epochs, training.get("max_steps")
    )
    seen = []
    for epoch in range(epochs):
        row = []
        for step in range(steps_per_epoch):
            row.append(current_lrs(opt)[0])
            opt.step()
            schedule.after_step()
            if metrics is not None and step == steps_per_epoch // 2:
                schedule.after_validation(
                    {"val/loss": metrics(epoch, mid=True)}, end_of_epoch=False
                )
        if metrics is not None:
            schedule.after_validation({"val/loss": metrics(epoch, mid=False)}, end_of_epoch=True)
        schedule.after_epoch()
        seen.append(row)
    return seen


CLOSED_FORMS = {
    "{name: StepLR, step_size: 3, gamma: 0.5}": lambda n: LR * 0.5 ** (n // 3),
    "{name: CosineAnnealingLR, T_max: 7, eta_min: 1e-6}": lambda n: cosine(n, 7, 1e-6),
    "{name: ExponentialLR, gamma: 0.95}": lambda n: LR * 0.95**n,
    "{name: CosineAnnealingWarmRestarts, T_0: 2, T_mult: 2, eta_min: 1e-6}": lambda n: (
        warm_restarts(n, 2, 2, 1e-6)
    ),
    "{name: MultiStepLR, milestones: [2, 5], gamma: 0.1}": lambda n: (
        LR * 0.1 ** ((n >= 2) + (n >= 5))
    ),
    "{name: LinearLR, start_factor: 0.25, total_iters: 4}": lambda n: (
        LR * (0.25 + 0.75 * min(n, 4) / 4)
    ),
    # Linear warm-up for 2 units, then cosine over 5: the spec-style "warmup then cosine" block.
    "{name: SequentialLR, milestones: [2], schedulers: [{name: LinearLR, start_factor: 0.5, total_iters: 2}, {name: CosineAnnealingLR, T_max: 5}]}": (
        lambda n: LR * (0.5 + 0.5 * n / 2) if n < 2 else cosine(n - 2, 5, 0.0)
    ),
}


@pytest.mark.parametrize("interval", ["epoch", "step"])
@pytest.mark.parametrize("snippet", list(CLOSED_FORMS), ids=lambda s: s.split(",")[0][7:])
def test_schedule_matches_closed_form(snippet, interval):
    spec = snippet[:-1] + f", interval: {interval}}}"
    t = resolved_training(f"scheduler: {spec}")
    epochs, spe = 8, 3
    seen = run_schedule(t, epochs, spe)
    form = CLOSED_FORMS[snippet]
    for e in range(epochs):
        for s in range(spe):
            n = e if interval == "epoch" else e * spe + s
            assert seen[e][s] == pytest.approx(form(n), rel=1e-9, abs=1e-12), (e, s)


def test_one_cycle_derives_total_steps_from_the_run():
    t = resolved_training("scheduler: {name: OneCycleLR, max_lr: 0.5}")
    assert t["scheduler"] == {"name": "OneCycleLR", "interval": "step", "max_lr": 0.5}
    epochs, spe = 4, 5
    flat = [lr for row in run_schedule(t, epochs, spe) for lr in row]
    assert flat == pytest.approx([one_cycle(n, epochs * spe, 0.5) for n in range(epochs * spe)])
    assert max(flat) == pytest.approx(0.5)


def test_one_cycle_explicit_total_steps_and_max_steps():
    t = resolved_training(
        "max_steps: 12\nscheduler: {name: OneCycleLR, max_lr: 0.5, total_steps: 12, interval: step}"
    )
    flat = [lr for row in run_schedule(t, 3, 4) for lr in row]
    assert flat == pytest.approx([one_cycle(n, 12, 0.5) for n in range(12)])


def test_one_cycle_too_short_fails_before_training():
    t = resolved_training("scheduler: {name: OneCycleLR, max_lr: 0.5, total_steps: 10}")
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], t["optimizer"])
    with pytest.raises(ConfigError) as err:
        build_scheduler(opt, t["scheduler"], steps_per_epoch=5, max_epochs=3)
    assert err.value.line() == (
        "error: training.scheduler.total_steps: OneCycleLR ends after 10 steps but this run takes 15 (omit total_steps to derive it)"
    )


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_reduce_on_plateau_uses_the_monitored_metric(interval):
    t = resolved_training(
        f"scheduler: {{name: ReduceLROnPlateau, mode: min, factor: 0.1, patience: 1, interval: {interval}}}"
    )
    # Loss improves for two epochs, then stalls: the LR must drop after `patience` bad validations.
    losses = {0: 1.0, 1: 0.5}
    seen = run_schedule(t, 6, 4, metrics=lambda epoch, mid: losses.get(epoch, 0.9))
    firsts = [row[0] for row in seen]
    if interval == "epoch":
        # Stepped at epoch-end validations only: bad at epochs 2, 3 -> reduce after epoch 3.
        assert firsts == pytest.approx([LR, LR, LR, LR, LR * 0.1, LR * 0.1])
    else:
        # Stepped at every validation (mid-epoch and epoch end): two bad ones by the end of epoch 2.
        assert firsts[:3] == pytest.approx([LR, LR, LR]) and firsts[3] == pytest.approx(LR * 0.1)
        assert firsts[5] < LR * 0.1 + 1e-12


def test_reduce_on_plateau_is_never_stepped_without_a_metric():
    t = resolved_training("scheduler: {name: ReduceLROnPlateau, patience: 0}")
    seen = run_schedule(t, 4, 3)  # no validations at all
    assert {lr for row in seen for lr in row} == {LR}


def test_every_config_buildable_scheduler_is_known():
    # LambdaLR/MultiplicativeLR need callables; everything else must resolve with its required args.
    required = {
        "StepLR": "step_size: 2",
        "MultiStepLR": "milestones: [1]",
        "ConstantLR": "",
        "LinearLR": "",
        "ExponentialLR": "gamma: 0.9",
        "PolynomialLR": "",
        "CosineAnnealingLR": "T_max: 3",
        "ReduceLROnPlateau": "",
        "CyclicLR": "base_lr: 0.01, max_lr: 0.1",
        "CosineAnnealingWarmRestarts": "T_0: 2",
        "OneCycleLR": "max_lr: 0.1",
        "SequentialLR": "milestones: [1], schedulers: [{name: ConstantLR}, {name: ConstantLR}]",
        "ChainedScheduler": "schedulers: [{name: ConstantLR}, {name: ExponentialLR, gamma: 0.9}]",
    }
    assert set(required) | {"LambdaLR", "MultiplicativeLR"} == set(SCHEDULERS)
    for name, args in required.items():
        t = resolved_training(f"scheduler: {{name: {name}{', ' + args if args else ''}}}")
        seen = run_schedule(t, 3, 2)
        assert all(lr > 0 for row in seen for lr in row), name


# --------------------------------------------------------------------------- precision


def test_precision_policy(caplog, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)  # see test_bf16_*
    cpu = torch.device("cpu")
    assert precision_policy("off", cpu).dtype is None
    bf16 = precision_policy("bf16", cpu)
    assert bf16.dtype is torch.bfloat16 and not bf16.use_scaler
    with bf16.autocast():
        assert torch.randn(2, 2).matmul(torch.randn(2, 2)).dtype is torch.bfloat16
    fp16 = precision_policy("fp16", cpu)
    assert fp16.mode == "off" and fp16.dtype is None and not fp16.grad_scaler().is_enabled()
    assert [r.message for r in caplog.records] == [
        "mixed_precision fp16 needs CUDA; training in fp32 on cpu"
    ]
    gpu = precision_policy("fp16", torch.device("cuda"))
    assert gpu.dtype is torch.float16 and gpu.use_scaler


@pytest.mark.parametrize(
    "path", sorted((ROOT / "config").glob("example_*.yaml")), ids=lambda p: p.name
)
def test_spec_examples_build_their_optimizer_and_scheduler(path):
    raw = load_yaml(path.read_text(), str(path))
    for task in (t for t in ("retrieval", "ranking") if t in raw):
        t = resolve_dict(raw, task).to_dict()[task]["training"]
        model = torch.nn.Linear(3, 2)
        opt = build_optimizer(model.parameters(), t["optimizer"])
        assert type(opt).__name__ == t["optimizer"]["name"]
        assert opt.param_groups[0]["lr"] == t["optimizer"]["lr"]
        for key, value in t["optimizer"].items():
            if key != "name":
                assert opt.param_groups[0][key] == (
                    tuple(value) if isinstance(value, list) else value
                )
        schedule = build_scheduler(
            opt, t["scheduler"], steps_per_epoch=10, max_epochs=t["max_epochs"]
        )
        if t["scheduler"] is not None:
            assert type(schedule.scheduler).__name__ == t["scheduler"]["name"]
            assert schedule.interval == t["scheduler"]["interval"]


# --------------------------------------------------------------------------- whole-run rehearsal


def _train(run_dir, *sets: str, resume: bool = False) -> int:
    from recjobs.cli import main

    from runs import QUICKSTART, TINY

    argv = ["train", "retrieval", "--run-dir", str(run_dir)]
    argv += ["--config", str(QUICKSTART)] if not resume else ["--resume"]
    return main([*argv, *[f"--set={s}" for s in (*TINY, *sets)]])


def _snapshot(run_dir) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "schedule, expected",
    [
        (  # a per-step schedule's length is known once the data is: at train start
            "{name: SequentialLR, interval: step, milestones: [2], schedulers: "
            "[{name: ConstantLR, factor: 0.5, total_iters: 1}, "
            "{name: OneCycleLR, max_lr: 0.05, total_steps: 5}]}",
            "error: training.scheduler: SequentialLR fails at scheduler step 8 of this run's 28: "
            "Tried to step 6 times. The specified number of total steps is 5",
        ),
        (
            "{name: CyclicLR, base_lr: 0, max_lr: 0, cycle_momentum: false}",
            "error: training.scheduler: CyclicLR holds the learning rate at 0 for the whole run "
            "(28 scheduler steps): no weight would change",
        ),
    ],
    ids=["nested OneCycleLR too short", "learning rate 0 throughout"],
)
def test_a_per_step_schedule_that_cannot_run_stops_before_the_first_step(
    tmp_path, capsys, schedule, expected
):
    run_dir = tmp_path / "run"
    sets = ["training.max_epochs=2", f"training.scheduler={schedule}"]
    assert _train(run_dir, *sets) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(expected), err[-1]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()


def test_a_one_cycle_run_resumed_with_more_epochs_is_refused_before_it_trains(tmp_path, capsys):
    """The docs allow a resume with more epochs; a derived one-cycle schedule cannot follow
    (it used to fail mid-run with `Tried to step N times`, after the run dir was rewritten)."""
    run_dir = tmp_path / "run"
    sets = ["training.max_epochs=2", "training.scheduler={name: OneCycleLR, max_lr: 0.05}"]
    assert _train(run_dir, *sets) == 0
    before = _snapshot(run_dir)
    capsys.readouterr()
    assert _train(run_dir, "training.max_epochs=3", resume=True) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "error: training.scheduler: OneCycleLR fails at scheduler step 29 of this run's 42"
    ), err
    assert "resume with the first run's max_epochs/max_steps, or start a new run" in err
    # Nothing of the finished run was touched; train.log only grows, by the attempt's line,
    # which `recjobs status` shows without taking it for the run's end.
    after = _snapshot(run_dir)
    log = str(run_dir / "train.log")
    assert {k: v for k, v in after.items() if k != log} == {
        k: v for k, v in before.items() if k != log
    }
    assert after[log].startswith(before[log])
    grown = after[log][len(before[log]) :].decode().splitlines()
    assert grown[-1].endswith(f"an attempt ended before it changed the run (exit 2): {err}")
