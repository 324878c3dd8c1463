"""Optimizers and LR schedulers from config: validation, building, and when to step.

Any class in `torch.optim` and `torch.optim.lr_scheduler` is accepted. Keyword arguments are
checked against the class's own signature (names and type hints), then the object is built
once on a dummy parameter so that torch's own value checks (negative lr, beta >= 1, a
scheduler that needs momentum) fail at resolve time, on the submitting machine, instead of
in the job.
"""

from __future__ import annotations

import inspect
import math
import typing
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import lr_scheduler

from recjobs.config.coerce import brief, coerce, describe, did_you_mean, key_text
from recjobs.config.schema import INT32_MAX, INTERVALS, Range
from recjobs.errors import ConfigError

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    name: obj
    for name, obj in vars(torch.optim).items()
    if inspect.isclass(obj)
    and issubclass(obj, torch.optim.Optimizer)
    and obj is not torch.optim.Optimizer
}
SCHEDULERS: dict[str, type] = {
    name: obj
    for name, obj in vars(lr_scheduler).items()
    if inspect.isclass(obj)
    and issubclass(obj, lr_scheduler.LRScheduler)
    and not name.startswith("_")
    and obj is not lr_scheduler.LRScheduler
}
# Schedulers whose whole point is a per-iteration curve; `interval: epoch` would silently
# stretch it over max_epochs steps, so it is an error and the default interval is `step`.
PER_STEP_ONLY = ("OneCycleLR", "CyclicLR")
# Nested-scheduler containers: their `schedulers:` list holds scheduler dicts.
CONTAINERS = ("SequentialLR", "ChainedScheduler")
# Arguments recjobs sets itself; a config that sets them would break resume or the loop.
RESERVED = {"params", "optimizer", "last_epoch", "verbose", "schedulers"}
PLACEHOLDER_TOTAL_STEPS = 1000  # only for the resolve-time trial build of OneCycleLR
# The resolve-time trial: the optimizer steps this many times on a trial parameter, the
# scheduler (with that optimizer) this many times, so that the checks torch makes only when
# stepping (a closure, dense vs sparse gradients, a division by T_max) fail on the submitting
# machine, and a learning rate a schedule turns negative or infinite is seen.
TRIAL_OPTIMIZER_STEPS = 3
TRIAL_SCHEDULER_STEPS = 30

_COUNT = Range(1, INT32_MAX)
_NON_NEGATIVE = Range(0)
_POSITIVE = Range(0, low_open=True)
# Valid ranges of torch arguments beyond what torch itself checks: values torch accepts but
# that divide by zero when stepping, turn training into gradient ascent (a negative learning
# rate) or into a no-op. An argument gets its range wherever a class has an argument of that name.
# (torch checks eps, weight_decay, momentum and most others itself.)
OPTIMIZER_ARG_RANGES = {
    "lr": _POSITIVE,  # torch takes 0: a run that never changes a weight
    # torch takes any momentum >= 0 and any dampening: at 1 and above the momentum buffer
    # never decays (SGD, RMSprop: the steps grow without bound), and dampening >= 1 scales the
    # gradient out of the buffer (no step at 1, gradient ascent above).
    "momentum": Range(0, 1, high_open=True),
    "dampening": Range(0, 1, high_open=True),
    "lambd": _NON_NEGATIVE,  # ASGD: a negative decay term makes its step size grow to inf
    "alpha": _NON_NEGATIVE,
    "t0": _NON_NEGATIVE,
}
SCHEDULER_ARG_RANGES = {
    "step_size": _COUNT,
    "T_max": _COUNT,
    "T_0": _COUNT,
    "T_mult": _COUNT,
    "total_iters": _COUNT,
    "total_steps": _COUNT,
    "epochs": _COUNT,
    "steps_per_epoch": _COUNT,
    "step_size_up": _COUNT,
    "step_size_down": _COUNT,
    "milestones": Range(0, INT32_MAX),
    "gamma": _POSITIVE,
    "eta_min": _NON_NEGATIVE,
    "base_lr": _NON_NEGATIVE,
    "max_lr": _NON_NEGATIVE,
    "min_lr": _NON_NEGATIVE,
    "power": _NON_NEGATIVE,
    "div_factor": _POSITIVE,
    "final_div_factor": _POSITIVE,
    "patience": Range(0, INT32_MAX),
    "cooldown": Range(0, INT32_MAX),
    "threshold": _NON_NEGATIVE,
    "eps": _NON_NEGATIVE,
}
# Where one name means something else in one class: ReduceLROnPlateau multiplies by `factor`.
# ConstantLR multiplies by `factor` until total_iters, then divides by it: 0 holds the learning
# rate at 0 and then divides by zero.
CLASS_ARG_RANGES = {
    "ReduceLROnPlateau": {"factor": Range(0, 1, low_open=True, high_open=True)},
    "ConstantLR": {"factor": Range(0, 1, low_open=True)},
}


def _parameters(cls: type) -> dict[str, tuple[Any, Any]]:
    """name -> (type hint, default or inspect.Parameter.empty) for a class's __init__.

    Annotations are evaluated one by one: torch writes some as strings naming types that are
    only imported for type checkers (Callable); such a hint stays a string and is judged by
    its text.
    """
    module = vars(inspect.getmodule(cls) or typing)
    params = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint: Any = p.annotation
        if isinstance(hint, str):
            try:
                hint = eval(hint, {**vars(typing), **module})  # noqa: S307 - torch's own annotations
            except Exception:
                pass
        if hint is inspect.Parameter.empty or (isinstance(hint, str) and "Callable" not in hint):
            hint = type(p.default) if p.default not in (inspect.Parameter.empty, None) else Any
        params[name] = (hint, p.default)
    return params


def _needs_callable(hint: Any) -> bool:
    return "Callable" in str(hint)


def _pick(name: Any, table: dict[str, type], where: str, what: str) -> type:
    if not isinstance(name, str) or not name:
        raise ConfigError(where, f"expected the name of a {what}, got {brief(name)}")
    if name in table:
        return table[name]
    lowered = {n.lower(): n for n in table}
    close = [lowered[name.lower()]] if name.lower() in lowered else []
    close = close or did_you_mean(name, table, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"one of {', '.join(sorted(table))}"
    raise ConfigError(where, f"unknown {what} {brief(name)}", hint)


def _arg_ranges(cls: type) -> dict[str, Range]:
    table = OPTIMIZER_ARG_RANGES if cls in OPTIMIZERS.values() else SCHEDULER_ARG_RANGES
    return {**table, **CLASS_ARG_RANGES.get(cls.__name__, {})}


def _check_arg_range(value: Any, valid: Range | None, where: str) -> None:
    """`valid` for a number, or for each number of a list (None entries are torch defaults)."""
    if valid is None or isinstance(value, bool):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_arg_range(item, valid, f"{where}[{i}]")
    elif isinstance(value, (int, float)) and value not in valid:
        raise ConfigError(where, valid.problem(value))


def _check_kwargs(cls: type, kwargs: dict[str, Any], where: str, skip: set[str]) -> dict[str, Any]:
    params = _parameters(cls)
    ranges = _arg_ranges(cls)
    accepted = sorted(n for n in params if n not in RESERVED | skip)
    out = {}
    for key, value in kwargs.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}.{key_text(key)}", "argument names must be strings")
        if key in RESERVED:
            raise ConfigError(f"{where}.{key}", "is set by recjobs and cannot be configured")
        if key not in params:
            close = did_you_mean(key, accepted)
            hint = (
                (f"did you mean {close[0]}? " if close else "")
                + f"{cls.__name__} accepts: "
                + ", ".join(accepted)
            )
            raise ConfigError(
                f"{where}.{key_text(key)}", f"unknown argument for {cls.__name__}", hint
            )
        hint_type, _ = params[key]
        if _needs_callable(hint_type):
            raise ConfigError(
                f"{where}.{key}", "needs a Python callable, which a config cannot express"
            )
        out[key] = coerce(value, hint_type, f"{where}.{key}")
        _check_arg_range(out[key], ranges.get(key), f"{where}.{key}")
    missing = [
        n
        for n, (_, default) in params.items()
        if default is inspect.Parameter.empty and n not in RESERVED | skip and n not in out
    ]
    if missing:
        needs_callable = [n for n in missing if _needs_callable(params[n][0])]
        if needs_callable:
            raise ConfigError(
                where,
                f"{cls.__name__} needs a Python callable ({needs_callable[0]}), "
                "which a config cannot express",
                "use LinearLR, ConstantLR, PolynomialLR or SequentialLR instead",
            )
        raise ConfigError(
            where,
            f"{cls.__name__} needs {', '.join(missing)}",
            f"e.g. {missing[0]}: <{describe(params[missing[0]][0])}>",
        )
    return out


def _trial_parameters() -> list[torch.nn.Parameter]:
    # Shaped like every model's parameters: matrices (embedding tables, Linear weights) and
    # vectors (Linear biases), so an optimizer that cannot take one of them (Muon: matrices
    # only) is refused here, not at the first step of every real run.
    return [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- optimizer


def resolve_optimizer(
    value: Any, lr: float, where: str, device: str = "auto", sparse: bool = False
) -> dict[str, Any]:
    """Normalise `training.optimizer` (a name or {name, **kwargs}) to {name, lr, **kwargs}.

    `lr` is `training.lr`; an `lr` inside the optimizer mapping wins over it. `device` is
    `training.device`; `sparse`: the optimizer gets sparse gradients (embedding tables).

    Raises:
        ConfigError: unknown name or argument, a value out of range, an optimizer this loop
            cannot drive (a closure, differentiable, capturable on the CPU), or one that fails
            or produces non-finite weights in a trial of a few steps.
    """
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(
            where,
            f"expected an optimizer name or a mapping with 'name', got {brief(value)}",
            "e.g. optimizer: AdamW",
        )
    if "name" not in value:
        raise ConfigError(
            where, "missing 'name'", "e.g. optimizer: {name: AdamW, weight_decay: 0.01}"
        )
    cls = _pick(value["name"], OPTIMIZERS, f"{where}.name", "optimizer")
    kwargs = {k: v for k, v in value.items() if k != "name"}
    kwargs.setdefault("lr", lr)
    kwargs = _check_kwargs(cls, kwargs, where, skip=set())
    _check_loop_can_drive(cls, kwargs, where)
    if device == "cpu":
        check_device({"name": cls.__name__, **kwargs}, "cpu", where, "training.device is cpu")
    try:
        cls([torch.nn.Parameter(torch.zeros(2, 2))], **_trial_kwargs(kwargs))
    except Exception as exc:  # torch's own value checks, e.g. "Invalid learning rate: -1.0"
        raise ConfigError(where, _first_line(exc)) from None
    try:
        trial = _trial_optimizer(cls, kwargs)
    except Exception as exc:  # it takes matrices but not the models' bias vectors (Muon)
        raise ConfigError(
            f"{where}.name",
            f"{cls.__name__} cannot train these models' parameters: {_first_line(exc)}",
            "every model here has bias vectors as well as matrices; use Adam, AdamW or SGD",
        ) from None
    _trial_steps(trial, cls.__name__, where, sparse)
    return {"name": cls.__name__, "lr": kwargs.pop("lr"), **kwargs}


def _check_loop_can_drive(cls: type, kwargs: dict[str, Any], where: str) -> None:
    closure = inspect.signature(cls.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ConfigError(
            f"{where}.name",
            f"{cls.__name__} needs a closure that re-evaluates the loss at every step, which "
            "this training loop does not give",
            "use Adam, AdamW or SGD",
        )
    if kwargs.get("differentiable"):
        raise ConfigError(
            f"{where}.differentiable",
            "differentiable optimizers are for differentiating through the optimizer step, "
            "which this training loop never does (torch refuses to step them on weights)",
            "drop it",
        )


def check_device(optimizer: dict[str, Any], device_type: str, where: str, why: str) -> None:
    """ConfigError for an optimizer flag the training device cannot honour.

    `capturable` keeps optimizer state on the GPU for CUDA graphs; torch refuses it for CPU
    tensors at the first step. Checked at resolve time for `device: cpu`, and by the trainer
    once `device: auto` has become a device.
    """
    if optimizer.get("capturable") and device_type == "cpu":
        raise ConfigError(
            f"{where}.capturable",
            f"capturable needs a CUDA device, but {why}",
            "drop capturable, or train on a GPU",
        )


def _trial_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # The trial runs on the CPU; capturable (CUDA only) is judged by check_device instead.
    return {k: v for k, v in kwargs.items() if k != "capturable"}


def _trial_optimizer(cls: type, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    return cls(_trial_parameters(), **_trial_kwargs(kwargs))


def _fake_gradients(optimizer: torch.optim.Optimizer, sparse: bool) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            if sparse and p.dim() == 1:  # only tables get sparse gradients
                p.grad = None
            elif sparse:  # one row of a table, as an nn.Embedding(sparse=True) gives
                p.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, p.shape[1]), p.shape)
            else:
                p.grad = torch.ones_like(p)


def _trial_steps(optimizer: torch.optim.Optimizer, name: str, where: str, sparse: bool) -> None:
    """Step the trial optimizer: torch checks some arguments only when it steps."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(TRIAL_OPTIMIZER_STEPS):
                _fake_gradients(optimizer, sparse)
                optimizer.step()
    except Exception as exc:
        raise ConfigError(where, f"{name} fails when it steps: {_first_line(exc)}") from None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise ConfigError(
            where,
            f"{name} makes a trial weight infinite or NaN within {TRIAL_OPTIMIZER_STEPS} steps",
            "check lr and the other arguments",
        )


# torch.optim classes that accept sparse gradients (none of them with weight decay).
SPARSE_CAPABLE = ("SparseAdam", "Adagrad", "SGD")
# Below this many rows in the largest table, dense updates cost little: `auto` keeps them.
SPARSE_AUTO_ROWS = 100_000


def resolve_embedding_optimizer(
    value: Any, dense: dict[str, Any], where: str, device: str = "auto"
) -> dict[str, Any]:
    """The optimizer for embedding tables when sparse updates are on.

    Null derives it from the dense optimizer: SGD -> SGD (momentum/nesterov/dampening carried
    over), Adagrad -> Adagrad (lr_decay/eps/initial_accumulator_value), anything else ->
    SparseAdam (betas/eps carried over when the dense optimizer has them). Weight decay never
    applies to tables here: torch's sparse updates do not support it.
    """
    if value is None:
        name = dense["name"] if dense["name"] in ("SGD", "Adagrad") else "SparseAdam"
        carry = {
            "SGD": ("momentum", "nesterov", "dampening"),
            "Adagrad": ("lr_decay", "eps", "initial_accumulator_value"),
            "SparseAdam": ("betas", "eps"),
        }[name]
        value = {"name": name, "lr": dense["lr"], **{k: dense[k] for k in carry if k in dense}}
        if name == "SparseAdam" and "betas" in value:
            value["betas"] = list(value["betas"])
    # Judged by name first: a trial with sparse gradients would fail less clearly.
    name = value.get("name") if isinstance(value, dict) else value
    if isinstance(name, str) and name in OPTIMIZERS and name not in SPARSE_CAPABLE:
        raise ConfigError(
            f"{where}.name",
            f"{name} does not accept sparse gradients",
            "one of " + ", ".join(SPARSE_CAPABLE),
        )
    decay = value.get("weight_decay") if isinstance(value, dict) else None
    if isinstance(decay, (int, float)) and not isinstance(decay, bool) and decay != 0:
        raise _sparse_weight_decay(where)
    resolved = resolve_optimizer(value, dense["lr"], where, device, sparse=True)
    if resolved["name"] not in SPARSE_CAPABLE:
        raise ConfigError(
            f"{where}.name",
            f"{resolved['name']} does not accept sparse gradients",
            "one of " + ", ".join(SPARSE_CAPABLE),
        )
    if resolved.get("weight_decay"):
        raise _sparse_weight_decay(where)
    return resolved


def _sparse_weight_decay(where: str) -> ConfigError:
    return ConfigError(
        f"{where}.weight_decay",
        "weight decay does not work with sparse gradients",
        "drop it, or set sparse_embeddings: false",
    )


def sparse_decision(setting: bool | str, cardinalities: list[int], nccl: bool) -> tuple[bool, str]:
    """Whether embedding tables get sparse gradients, and why (for the log)."""
    largest = max(cardinalities)
    if setting is False:
        return False, "sparse_embeddings is false"
    if nccl:
        if setting is True:
            raise ConfigError(
                "training.sparse_embeddings",
                "NCCL cannot all-reduce sparse gradients",
                "use sparse_embeddings: auto or false for multi-GPU jobs",
            )
        return False, "NCCL DDP cannot all-reduce sparse gradients"
    if setting is True:
        return True, "sparse_embeddings is true"
    if largest >= SPARSE_AUTO_ROWS:
        return True, f"largest table has {largest:,} rows >= {SPARSE_AUTO_ROWS:,}"
    return False, f"largest table has {largest:,} rows < {SPARSE_AUTO_ROWS:,}"


@dataclass
class Optimizers:
    """The optimizer for dense parameters, and the one for embedding tables when they are sparse."""

    dense: torch.optim.Optimizer
    embeddings: torch.optim.Optimizer | None = None

    @property
    def all(self) -> list[torch.optim.Optimizer]:
        return [self.dense] if self.embeddings is None else [self.dense, self.embeddings]

    def zero_grad(self) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def lr_record(self) -> dict[str, float]:
        """train/lr for the dense optimizer (train/lr/<group> with several groups), plus
        train/lr/embeddings when the tables have their own optimizer."""
        lrs = current_lrs(self.dense)
        if len(lrs) == 1:
            record = {"train/lr": lrs[0]}
        else:
            names = [g.get("name", str(i)) for i, g in enumerate(self.dense.param_groups)]
            record = {f"train/lr/{n}": lr for n, lr in zip(names, lrs)}
        if self.embeddings is not None:
            record["train/lr/embeddings"] = current_lrs(self.embeddings)[0]
        return record

    def state_dict(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.all]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for opt, state in zip(self.all, states, strict=True):
            opt.load_state_dict(state)


def build_optimizers(
    model: torch.nn.Module, optimizer: dict[str, Any], embedding_optimizer: dict[str, Any] | None
) -> Optimizers:
    """One optimizer for everything, or (with `embedding_optimizer`) one for the nn.Embedding
    and nn.EmbeddingBag tables and `optimizer` for the rest."""
    if embedding_optimizer is None:
        return Optimizers(build_optimizer(model.parameters(), optimizer))
    tables = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
    }
    dense = [p for p in model.parameters() if id(p) not in tables]
    sparse = [p for p in model.parameters() if id(p) in tables]
    return Optimizers(
        build_optimizer(dense, optimizer), build_optimizer(sparse, embedding_optimizer)
    )


def clip_grad_norm(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ that also takes sparse gradients (torch's does not); no host sync."""
    grads = [p.grad for p in parameters if p.grad is not None]
    squares = [(g.coalesce().values() if g.is_sparse else g).float().pow(2).sum() for g in grads]
    total = torch.stack(squares).sum().sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total


def build_optimizer(params_or_groups: Any, optimizer: dict[str, Any]) -> torch.optim.Optimizer:
    """Build the configured optimizer. `optimizer` is a resolved `training.optimizer` dict."""
    cls = OPTIMIZERS[optimizer["name"]]
    kwargs = _check_kwargs(
        cls, {k: v for k, v in optimizer.items() if k != "name"}, "training.optimizer", set()
    )
    return cls(params_or_groups, **kwargs)


# --------------------------------------------------------------------------- scheduler


def resolve_scheduler(
    value: Any,
    optimizer: dict[str, Any],
    where: str,
    monitor_default: str,
    valid_metrics: list[str],
    embedding_optimizer: dict[str, Any] | None = None,
    epochs: int | None = None,
) -> dict[str, Any] | None:
    """Normalise `training.scheduler` to None or {name, interval, **kwargs}.

    ReduceLROnPlateau also gets `monitor` (a validation metric) and a `mode` derived from it.
    The scheduler is built and stepped on trial optimizers (`optimizer`, and
    `embedding_optimizer` with sparse gradients when given). `epochs`: the run's length in
    epochs when it is known here; a per-epoch schedule is then rehearsed over all of it (a
    per-step one is, once the trainer knows the steps per epoch).

    Raises:
        ConfigError: unknown name or argument, a value out of range, or a schedule that fails
            in the trial or sets a negative or non-finite learning rate.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(
            where,
            f"expected a mapping with 'name', got {brief(value)}",
            "e.g. scheduler: {name: StepLR, step_size: 10}",
        )
    if "name" not in value:
        raise ConfigError(where, "missing 'name'", "e.g. scheduler: {name: StepLR, step_size: 10}")
    name = _pick(value["name"], SCHEDULERS, f"{where}.name", "scheduler").__name__
    interval = value.get("interval", "step" if name in PER_STEP_ONLY else "epoch")
    if interval not in INTERVALS:
        raise ConfigError(f"{where}.interval", f"expected 'epoch' or 'step', got {brief(interval)}")
    if name in PER_STEP_ONLY and interval != "step":
        raise ConfigError(
            f"{where}.interval", f"{name} must be stepped per iteration", "use interval: step"
        )
    spec = {k: v for k, v in value.items() if k not in ("interval",)}
    extra: dict[str, Any] = {}
    if name == "ReduceLROnPlateau":
        monitor = _metric_name(
            spec.pop("monitor", monitor_default), f"{where}.monitor", valid_metrics
        )
        spec.setdefault("mode", metric_mode(monitor))
        extra["monitor"] = monitor
    elif "monitor" in spec:
        raise ConfigError(f"{where}.monitor", f"only ReduceLROnPlateau takes a monitor, not {name}")
    resolved = _resolve_one(spec, where)
    # Trial against the real optimizer config: catches e.g. CyclicLR's momentum check.
    _trial_schedule(resolved, optimizer, where, sparse=False)
    if embedding_optimizer is not None:
        _trial_schedule(resolved, embedding_optimizer, where, sparse=True)
    if epochs is not None and interval == "epoch":
        cls = OPTIMIZERS[optimizer["name"]]
        trial = _trial_optimizer(cls, {k: v for k, v in optimizer.items() if k != "name"})
        rehearse_schedule(
            resolved,
            [trial],
            lambda opt: _build(opt, resolved, None, epochs, PLACEHOLDER_TOTAL_STEPS),
            epochs,
            where=where,
        )
    return {
        "name": name,
        "interval": interval,
        **extra,
        **{k: v for k, v in resolved.items() if k != "name"},
    }


def _trial_schedule(
    spec: dict[str, Any], optimizer: dict[str, Any], where: str, sparse: bool
) -> None:
    """Build the scheduler on a trial optimizer and step both, watching the learning rate."""
    cls = OPTIMIZERS[optimizer["name"]]
    trial = _trial_optimizer(cls, {k: v for k, v in optimizer.items() if k != "name"})
    plateau = spec["name"] == "ReduceLROnPlateau"
    steps = min(TRIAL_SCHEDULER_STEPS, _trial_horizon(spec))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler = _build(
                trial, spec, steps_per_epoch=None, max_epochs=1, max_steps=PLACEHOLDER_TOTAL_STEPS
            )
            for step in range(1, steps + 1):
                _fake_gradients(trial, sparse)
                trial.step()
                if plateau:  # a metric that never improves: it reduces as often as it can
                    scheduler.step(1.0)
                else:
                    scheduler.step()
                check_learning_rates(trial, spec["name"], step, where)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(where, _first_line(exc)) from None


def _trial_horizon(spec: dict[str, Any]) -> int:
    """Steps the trial may take: a OneCycleLR with explicit total_steps refuses more."""
    if spec["name"] in CONTAINERS:
        return min(_trial_horizon(child) for child in spec["schedulers"])
    if spec["name"] == "OneCycleLR":
        if spec.get("total_steps"):
            return spec["total_steps"]
        if spec.get("epochs"):
            return spec["epochs"] * (spec.get("steps_per_epoch") or 1)
    return TRIAL_SCHEDULER_STEPS


def check_learning_rates(
    optimizer: torch.optim.Optimizer, scheduler: str, step: int, where: str
) -> None:
    """ConfigError when a schedule has set a negative or non-finite learning rate.

    A negative one turns training into gradient ascent without any error from torch.
    """
    for lr in current_lrs(optimizer):
        if not (math.isfinite(lr) and lr >= 0):
            raise ConfigError(
                where,
                f"{scheduler} sets the learning rate to {lr:.6g} after {step} steps",
                "a learning rate must stay finite and 0 or more; check gamma, factors and "
                "eta_min/min_lr",
            )


def _resolve_one(spec: dict[str, Any], where: str, nested: bool = False) -> dict[str, Any]:
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(
            where,
            "expected a mapping with 'name'",
            "e.g. {name: LinearLR, start_factor: 0.1, total_iters: 5}",
        )
    cls = _pick(spec["name"], SCHEDULERS, f"{where}.name", "scheduler")
    name = cls.__name__
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if nested:
        for key in ("interval", "monitor"):
            if key in kwargs:
                raise ConfigError(
                    f"{where}.{key}", "belongs on the outer scheduler, not a nested one"
                )
    if name in CONTAINERS:
        children = kwargs.pop("schedulers", None)
        if not isinstance(children, list) or not children:
            raise ConfigError(
                f"{where}.schedulers", f"{name} needs a non-empty list of scheduler mappings"
            )
        checked = _check_kwargs(cls, kwargs, where, skip={"schedulers"})
        resolved_children = [
            _resolve_one(c, f"{where}.schedulers[{i}]", nested=True) for i, c in enumerate(children)
        ]
        if name == "SequentialLR":
            _check_milestones(checked.get("milestones"), len(children), f"{where}.milestones")
        return {"name": name, "schedulers": resolved_children, **checked}
    if nested and name == "OneCycleLR" and "total_steps" not in kwargs and "epochs" not in kwargs:
        raise ConfigError(
            f"{where}.total_steps", "a nested OneCycleLR needs an explicit total_steps"
        )
    return {"name": name, **_check_kwargs(cls, kwargs, where, skip=set())}


def _check_milestones(milestones: Any, children: int, where: str) -> None:
    """SequentialLR hands over at each milestone in turn; torch takes them in any order, and a
    milestone at or before the previous one means a sub-schedule that never runs."""
    if not isinstance(milestones, list) or len(milestones) != children - 1:
        raise ConfigError(
            where,
            f"expected a list of {children - 1} step or epoch numbers (one per hand-over between "
            f"the {children} schedulers), got {brief(milestones)}",
        )
    for before, after in zip(milestones, milestones[1:]):
        if after <= before:
            raise ConfigError(
                where,
                f"must increase strictly, got {milestones}: the scheduler between {before} and "
                f"{after} would never run",
            )


def metric_mode(metric: str) -> str:
    """min for losses and errors, max for accuracy-like metrics."""
    return "min" if metric.split("@")[0] in ("loss", "logloss", "rmse", "mae") else "max"


def _metric_name(value: Any, where: str, valid: list[str]) -> str:
    if not isinstance(value, str):
        raise ConfigError(
            where, f"expected a metric name, got {brief(value)}", "one of " + ", ".join(valid)
        )
    bare = value.removeprefix("val/")
    if bare not in valid:
        close = did_you_mean(bare, valid)
        hint = f"did you mean {close[0]}?" if close else "one of " + ", ".join(valid)
        raise ConfigError(where, f"unknown validation metric {brief(value)}", hint)
    return bare


def total_train_steps(steps_per_epoch: int, max_epochs: int, max_steps: int | None) -> int:
    total = steps_per_epoch * max_epochs
    return min(total, max_steps) if max_steps else total


def _build(
    optimizer: torch.optim.Optimizer,
    spec: dict[str, Any],
    steps_per_epoch: int | None,
    max_epochs: int,
    max_steps: int | None,
) -> Any:
    cls = SCHEDULERS[spec["name"]]
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "interval", "monitor")}
    if spec["name"] in CONTAINERS:
        kwargs["schedulers"] = [
            _build(optimizer, c, steps_per_epoch, max_epochs, max_steps) for c in spec["schedulers"]
        ]
    elif spec["name"] == "OneCycleLR" and "total_steps" not in kwargs and "epochs" not in kwargs:
        kwargs["total_steps"] = (
            total_train_steps(steps_per_epoch, max_epochs, max_steps)
            if steps_per_epoch
            else max_steps
        )
    return cls(optimizer=optimizer, **kwargs)


# A run's whole schedule is rehearsed before its first step (about 3 µs a scheduler step);
# beyond this many scheduler steps only the first ones are.
REHEARSAL_STEPS = 2_000_000


def rehearse_schedule(
    spec: dict[str, Any],
    optimizers: list[torch.optim.Optimizer],
    build: Any,
    run_steps: int,
    states: list[dict[str, Any]] | None = None,
    where: str = "training.scheduler",
) -> None:
    """Step a copy of the schedule through every scheduler step of the run, on trial optimizers
    with the real ones' param groups: what torch would only reject mid-run (a OneCycleLR, nested
    or resumed with more epochs, stepped past its cycle), and a schedule that holds the learning
    rate at 0 for the whole run, become a ConfigError before the first step. `build` makes the
    scheduler for an optimizer; `states`, when resuming, are the checkpoint's scheduler states
    (the rehearsal then starts where they stopped). ReduceLROnPlateau (it follows a metric) is
    not rehearsed.

    Raises:
        ConfigError: the schedule fails, sets a negative or non-finite learning rate, or is at 0
            for every remaining step.
    """
    if spec["name"] == "ReduceLROnPlateau" or run_steps <= 0:
        return
    for index, real in enumerate(optimizers):
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [p]}
            for g, p in zip(real.param_groups, _trial_parameters() * len(real.param_groups))
        ]
        trial = type(real)(groups)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scheduler steps without optimizer steps
            scheduler = build(trial)
            done = 0
            if states is not None:
                scheduler.load_state_dict(states[index])
                done = _steps_taken(states[index])
            remaining = min(run_steps - done, REHEARSAL_STEPS)
            all_zero = bool(current_lrs(trial)) and max(current_lrs(trial)) == 0
            for step in range(done + 1, done + remaining + 1):
                try:
                    scheduler.step()
                except Exception as exc:
                    raise ConfigError(
                        where,
                        f"{spec['name']} fails at scheduler step {step} of this run's {run_steps}: "
                        f"{_first_line(exc)}",
                        _ran_out_hint(spec, states is not None),
                    ) from None
                check_learning_rates(trial, spec["name"], step, where)
                # The learning rate of step k is the one set after k - 1 scheduler steps.
                if step < done + remaining:
                    all_zero = all_zero and max(current_lrs(trial)) == 0
        if remaining > 0 and all_zero:
            raise ConfigError(
                where,
                f"{spec['name']} holds the learning rate at 0 for "
                + ("the rest of" if states is not None else "the whole")
                + f" run ({remaining} scheduler steps): no weight would change",
                "check the schedule's factors and learning rates (factor, gamma, base_lr, max_lr, "
                "eta_min) against its length",
            )


def _steps_taken(state: dict[str, Any]) -> int:
    """Scheduler steps a saved state has taken (ChainedScheduler keeps them in its children)."""
    if "last_epoch" in state:
        return int(state["last_epoch"])
    return int(state["_schedulers"][0]["last_epoch"])


def _ran_out_hint(spec: dict[str, Any], resuming: bool) -> str:
    if resuming:
        return (
            "a resumed run keeps the schedule it started with; one that ends (OneCycleLR's "
            "cycle, derived from the first run's length) cannot be stretched without a jump "
            "in the learning rate: resume with the first run's max_epochs/max_steps, or start a "
            "new run"
        )
    return (
        "give each OneCycleLR a total_steps of at least the steps it runs (or omit it at the "
        "top level)"
    )


@dataclass
class LRSchedule:
    """A scheduler plus the rule for when to step it; the loop calls the three hooks.

    - `interval: step`  -> after every optimizer step;
    - `interval: epoch` -> at the end of every epoch;
    - ReduceLROnPlateau -> after a validation, with the monitored metric: only at epoch-end
      validations for `interval: epoch`, after every validation for `interval: step`.
    """

    schedulers: list[Any]  # one per optimizer, all built from the same config
    interval: str = "epoch"
    monitor: str | None = None
    steps: int = 0  # scheduler steps taken in this process, for messages
    # For the rehearsal of the rest of the run on resume: the spec, how to build it on an
    # optimizer, and the scheduler steps the whole run takes.
    spec: dict[str, Any] | None = None
    build: Any = None
    run_steps: int = 0

    @property
    def scheduler(self) -> Any | None:
        """The dense optimizer's scheduler (None without a scheduler)."""
        return self.schedulers[0] if self.schedulers else None

    def after_step(self) -> None:
        if self.monitor is None and self.interval == "step":
            self._step()

    def after_epoch(self) -> None:
        if self.monitor is None and self.interval == "epoch":
            self._step()

    def after_validation(self, metrics: dict[str, float], end_of_epoch: bool) -> None:
        if self.monitor is None or not (self.interval == "step" or end_of_epoch):
            return
        value = metrics[f"val/{self.monitor}"]
        if math.isfinite(value):
            self._step(value)

    def _step(self, *metric: float) -> None:
        self.steps += 1
        for s in self.schedulers:
            s.step(*metric)
            # The resolve-time trial sees the first steps only; a schedule that turns the
            # learning rate negative later (StepLR after many epochs) stops here instead.
            check_learning_rates(s.optimizer, type(s).__name__, self.steps, "training.scheduler")

    def state_dict(self) -> list[dict[str, Any]]:
        return [s.state_dict() for s in self.schedulers]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        if self.spec is not None:  # the rest of the run, before any of it is trained
            optimizers = [s.optimizer for s in self.schedulers]
            rehearse_schedule(self.spec, optimizers, self.build, self.run_steps, states)
        for s, state in zip(self.schedulers, states, strict=True):
            s.load_state_dict(state)


def build_scheduler(
    optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer],
    scheduler: dict[str, Any] | None,
    steps_per_epoch: int,
    max_epochs: int,
    max_steps: int | None = None,
) -> LRSchedule:
    """Build the configured scheduler (a resolved `training.scheduler`) with its stepping rule.

    OneCycleLR without total_steps gets total_steps = the steps this run takes; an explicit
    one shorter than the run is an error now rather than a crash when it runs out.
    """
    optimizers = optimizer if isinstance(optimizer, list) else [optimizer]
    if scheduler is None:
        return LRSchedule([])
    total = total_train_steps(steps_per_epoch, max_epochs, max_steps)
    if scheduler["name"] == "OneCycleLR":
        given = scheduler.get("total_steps") or (
            scheduler.get("epochs", 0) * scheduler.get("steps_per_epoch", 0)
            if "epochs" in scheduler
            else None
        )
        if given is not None and given < total:
            raise ConfigError(
                "training.scheduler.total_steps",
                f"OneCycleLR ends after {given} steps but this run takes {total}",
                "omit total_steps to derive it",
            )

    def build(opt: torch.optim.Optimizer) -> Any:
        return _build(opt, scheduler, steps_per_epoch, max_epochs, max_steps)

    interval = scheduler.get("interval", "epoch")
    run_steps = total if interval == "step" else math.ceil(total / steps_per_epoch)
    rehearse_schedule(scheduler, optimizers, build, run_steps)
    return LRSchedule(
        [build(opt) for opt in optimizers],
        interval,
        scheduler.get("monitor"),
        spec=scheduler,
        build=build,
        run_steps=run_steps,
    )


def current_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [float(group["lr"]) for group in optimizer.param_groups]
