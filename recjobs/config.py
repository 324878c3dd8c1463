"""Config resolution: YAML file + command-line overrides -> validated `ResolvedConfig`.

Precedence is CLI > file > defaults. The same `resolve()` runs in `recjobs resolve`,
`recjobs train` and at TorchX submit time, so a job trains on exactly what `resolve` printed.
Every mistake becomes a `ConfigError` naming the dotted key; the CLI prints it as one line.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recjobs import optim
from recjobs.coerce import coerce, key_text, show
from recjobs.errors import ConfigError
from recjobs.schema import (
    ARCHS,
    LOSSES,
    TASK_DEFAULTS,
    TASK_ONLY_KEYS,
    TASKS,
    DatasetConfig,
    EarlyStopping,
    ResolvedConfig,
    SharedConfig,
    TaskConfig,
    TrainingConfig,
)

# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-8` as a float and refuses duplicate keys.

    PyYAML follows YAML 1.1, where a float needs a dot: `eps: 1e-8` would be the string
    "1e-8" and crash the optimizer. A duplicate key would silently keep the last value.
    """


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (also on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(where, f"invalid YAML: {at}{problem}") from None


def parse_value(text: str) -> Any:
    """A command-line value, read as a YAML scalar or flow collection (`1e-6`, `[0.9,0.999]`)."""
    if text == "":
        return ""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506
    except yaml.YAMLError:
        return text  # not YAML (e.g. "a: b: c"): keep the string, the schema judges it


def load_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read config file: {type(exc).__name__}") from None
    data = load_yaml(text, str(path))
    if data is None:
        raise ConfigError(
            str(path),
            "config file is empty",
            "expected a mapping with a retrieval: or ranking: section",
        )
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"expected a mapping at the top level, got {show(data)}")
    return data


# --------------------------------------------------------------------------- overrides


@dataclass
class Overrides:
    """The command-line overrides of the spec, in the form argparse gives them."""

    optimizer: str | None = None
    optimizer_args: list[str] = field(default_factory=list)
    scheduler: str | None = None
    scheduler_args: list[str] = field(default_factory=list)
    scheduler_interval: str | None = None
    mixed_precision: bool | str | None = None
    sets: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Overrides:
        return cls(
            optimizer=ns.optimizer,
            optimizer_args=ns.optimizer_args or [],
            scheduler=ns.scheduler,
            scheduler_args=ns.scheduler_args or [],
            scheduler_interval=ns.scheduler_interval,
            mixed_precision=ns.mixed_precision,
            sets=ns.sets or [],
        )

    def to_argv(self) -> list[str]:
        """The same overrides as command-line arguments (for passing them on to a job)."""
        argv: list[str] = []
        if self.optimizer is not None:
            argv += ["--optimizer", self.optimizer]
        if self.optimizer_args:
            argv += ["--optimizer-args", *self.optimizer_args]
        if self.scheduler is not None:
            argv += ["--scheduler", self.scheduler]
        if self.scheduler_args:
            argv += ["--scheduler-args", *self.scheduler_args]
        if self.scheduler_interval is not None:
            argv += ["--scheduler-interval", self.scheduler_interval]
        if self.mixed_precision is False:
            argv += ["--no-mixed-precision"]
        elif self.mixed_precision is True:
            argv += ["--mixed-precision"]
        elif self.mixed_precision is not None:
            argv += ["--mixed-precision", str(self.mixed_precision)]
        for item in self.sets:
            argv += ["--set", item]
        return argv


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """The spec's override flags; shared by `resolve`, `train` and the TorchX component."""
    g = parser.add_argument_group("config overrides (command line > config file > defaults)")
    g.add_argument(
        "--optimizer",
        metavar="NAME",
        help="any torch.optim class; a different name drops the file's optimizer arguments",
    )
    g.add_argument(
        "--optimizer-args",
        nargs="+",
        metavar="K=V",
        help="optimizer keyword arguments, e.g. momentum=0.9",
    )
    g.add_argument(
        "--scheduler", metavar="NAME", help="any torch.optim.lr_scheduler class, or 'none'"
    )
    g.add_argument(
        "--scheduler-args",
        nargs="+",
        metavar="K=V",
        help="scheduler keyword arguments, e.g. step_size=10",
    )
    g.add_argument(
        "--scheduler-interval",
        choices=optim.INTERVALS,
        help="step the scheduler per epoch or per step",
    )
    g.add_argument(
        "--mixed-precision",
        nargs="?",
        const=True,
        metavar="fp16|bf16",
        help="enable mixed precision (fp16 when no value is given)",
    )
    g.add_argument(
        "--no-mixed-precision", dest="mixed_precision", action="store_const", const=False
    )
    g.add_argument(
        "--set",
        dest="sets",
        action="append",
        metavar="KEY=VALUE",
        help="any config key, relative to the task section (training.batch_size=2048) "
        "or absolute (shared.seed=1)",
    )


def _split_kv(item: str, flag: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        example = {"--set": "training.batch_size=2048", "--scheduler-args": "step_size=10"}.get(
            flag, "momentum=0.9"
        )
        raise ConfigError(flag, f"expected KEY=VALUE, got {item!r}", f"e.g. {example}")
    return key, parse_value(text)


def _apply_set(raw: dict[str, Any], task: str, item: str) -> None:
    key, value = _split_kv(item, "--set")
    parts = key.split(".")
    if parts[0] == task:
        parts = parts[1:]
    elif parts[0] in TASKS:
        raise ConfigError(f"--set {key}", f"sets the {parts[0]} section but this is a {task} run")
    if parts[0] not in ("dataset", "shared"):
        parts = [task, *parts]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(
            f"--set {key}",
            "expected a dotted key",
            "e.g. training.batch_size=2048 or shared.seed=7",
        )
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and part == "optimizer" and parts[i - 1 : i] == ["training"]:
            child = node[part] = dict(TrainingConfig().optimizer)
        elif child is None:
            child = node[part] = {}
        elif isinstance(child, str) and part in ("optimizer", "scheduler"):
            child = node[part] = {"name": child}
        elif not isinstance(child, dict):
            raise ConfigError(
                f"--set {key}", f"{'.'.join(parts[: i + 1])} is {show(child)}, not a mapping"
            )
        node = child
    if parts == [task, "training", "lr"]:
        # A command-line training.lr beats an lr inside the file's optimizer mapping.
        opt = raw[task]["training"].get("optimizer")
        if isinstance(opt, dict):
            opt.pop("lr", None)
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], task: str, ov: Overrides) -> dict[str, Any]:
    """Apply CLI overrides to the raw file dict (a copy is returned)."""
    raw = copy.deepcopy(raw)
    if raw.get(task) is None:
        raw[task] = {}
    section = raw[task]
    if not isinstance(section, dict):
        raise ConfigError(task, f"expected a mapping, got {show(section)}")
    for item in ov.sets:
        _apply_set(raw, task, item)
    if raw[task].get("training") is None:
        raw[task]["training"] = {}
    training = raw[task]["training"]
    if not isinstance(training, dict):
        raise ConfigError(f"{task}.training", f"expected a mapping, got {show(training)}")

    training["optimizer"] = _override_component(
        training.get("optimizer", "Adam"),
        ov.optimizer,
        ov.optimizer_args,
        None,
        "--optimizer",
        keep=("lr",),
    )
    if ov.scheduler is not None and ov.scheduler.lower() in ("none", "null"):
        if ov.scheduler_args or ov.scheduler_interval:
            raise ConfigError("--scheduler-args", "given together with --scheduler none")
        training["scheduler"] = None
    else:
        training["scheduler"] = _override_component(
            training.get("scheduler"),
            ov.scheduler,
            ov.scheduler_args,
            ov.scheduler_interval,
            "--scheduler",
            keep=(),
        )
    if ov.mixed_precision is not None:
        training["mixed_precision"] = ov.mixed_precision
    return raw


def _override_component(
    current: Any,
    name: str | None,
    args: list[str],
    interval: str | None,
    flag: str,
    keep: tuple[str, ...],
) -> Any:
    """The precedence rules for --optimizer/--scheduler with their -args (and -interval)."""
    if isinstance(current, str):
        current = {"name": current}
    if name is not None:
        if isinstance(current, dict) and current.get("name") == name:
            pass  # same class: the file's kwargs stay, -args override them one by one
        else:
            kept = {k: current[k] for k in keep if isinstance(current, dict) and k in current}
            current = {"name": name, **kept}
    if args or interval:
        if current is None:
            what = f"{flag}-args" if args else f"{flag}-interval"
            raise ConfigError(what, f"there is no {flag[2:]} to apply it to", f"add {flag} NAME")
        if not isinstance(current, dict):
            raise ConfigError(
                f"{flag}-args", f"the config's {flag[2:]} is {show(current)}, not a mapping"
            )
        current = dict(current)
        for item in args:
            key, value = _split_kv(item, f"{flag}-args")
            if key in ("name", "interval"):
                raise ConfigError(
                    f"{flag}-args {key}",
                    f"set it with {flag if key == 'name' else flag + '-interval'}",
                )
            current[key] = value
        if interval:
            current["interval"] = interval
    return current


# --------------------------------------------------------------------------- validation


def _build_dataclass(
    cls: type, data: Any, where: str, special: dict[str, Any] | None = None
) -> Any:
    """Check a mapping against a schema dataclass: unknown keys, types, nested sections."""
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a mapping, got {show(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "valid keys: " + ", ".join(names)
            raise ConfigError(f"{where}.{key_text(key)}", "unknown key", hint)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f)]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}", "missing key", "required: " + ", ".join(missing))
    values = {}
    for name in names:
        if name not in data:
            continue
        key = f"{where}.{name}"
        value, hint = data[name], hints[name]
        if special and name in special:
            values[name] = special[name](value, key)
        elif dataclasses.is_dataclass(hint):
            values[name] = _build_dataclass(hint, value, key)
        elif _optional_dataclass(hint) and value is not None:
            values[name] = _build_dataclass(_optional_dataclass(hint), value, key)
        else:
            values[name] = coerce(value, hint, key)
    return cls(**values)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _optional_dataclass(hint: Any) -> Any:
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _mixed_precision(value: Any, where: str) -> str:
    table = {True: "fp16", False: "off", "fp16": "fp16", "bf16": "bf16", "off": "off"}
    if isinstance(value, (bool, str)) and value in table:
        return table[value]
    raise ConfigError(
        where, f"expected true, false, fp16, bf16 or off, got {show(value)}", "true means fp16"
    )


def _check(cond: bool, where: str, problem: str, hint: str | None = None) -> None:
    if not cond:
        raise ConfigError(where, problem, hint)


def validation_metrics(task: str, training: TrainingConfig) -> list[str]:
    """The metric names (without `val/`) a run of this task logs at validation."""
    if task == "retrieval":
        return ["loss"] + [f"{m}@{k}" for k in training.eval_k for m in ("recall", "ndcg", "hit")]
    return ["loss", "auc", "logloss"] if training.loss_func == "bce" else ["loss", "rmse", "mae"]


def _validate_section(task: str, section: TaskConfig, raw_section: dict[str, Any]) -> TaskConfig:
    tr, model, cols = section.training, section.model, section.columns
    p = task
    for other in TASKS:
        if other == task:
            continue
        for sub, keys in TASK_ONLY_KEYS[other].items():
            for key in keys:
                if key in (raw_section.get(sub) or {}):
                    raise ConfigError(f"{p}.{sub}.{key}", f"only applies to {other}, not {task}")
    _check(
        model.model_arch in ARCHS[task],
        f"{p}.model.model_arch",
        f"{model.model_arch!r} is not a {task} model",
        "one of " + ", ".join(ARCHS[task]),
    )
    _check(
        tr.loss_func in LOSSES[task],
        f"{p}.training.loss_func",
        f"{tr.loss_func!r} is not a {task} loss",
        "one of " + ", ".join(LOSSES[task]),
    )
    if task == "ranking" and tr.loss_func == "mse":
        _check(
            cols.label_col is not None,
            f"{p}.columns.label_col",
            "loss_func mse needs a label column",
            "e.g. label_col: rating",
        )
    positive = {
        "training.batch_size": tr.batch_size,
        "training.max_epochs": tr.max_epochs,
        "training.log_steps": tr.log_steps,
        "training.lr": tr.lr,
        "training.temperature": tr.temperature,
        "training.negatives_per_pos": tr.negatives_per_pos,
        "model.embedding_dim": model.embedding_dim,
        "model.cross_layers": model.cross_layers,
    }
    for key, value in positive.items():
        _check(value > 0, f"{p}.{key}", f"must be greater than 0, got {value}")
    for key, value in {
        "training.eval_steps": tr.eval_steps,
        "training.checkpoint_steps": tr.checkpoint_steps,
        "training.num_workers": tr.num_workers,
    }.items():
        _check(value >= 0, f"{p}.{key}", f"must be 0 or more, got {value}")
    for key, value in {
        "training.max_steps": tr.max_steps,
        "training.eval_max_users": tr.eval_max_users,
        "training.grad_clip_norm": tr.grad_clip_norm,
    }.items():
        _check(
            value is None or value > 0, f"{p}.{key}", f"must be greater than 0 or null, got {value}"
        )
    for key, dims in {
        "model.hidden_dims": model.hidden_dims,
        "model.scorer_hidden_dims": model.scorer_hidden_dims,
        "training.eval_k": tr.eval_k,
    }.items():
        _check(
            len(dims) > 0 and all(d > 0 for d in dims),
            f"{p}.{key}",
            f"expected a non-empty list of positive integers, got {list(dims)}",
        )
    _check(0 <= model.dropout < 1, f"{p}.model.dropout", f"must be in [0, 1), got {model.dropout}")
    for key in ("user_id", "item_id", "interaction_user_col", "interaction_item_col"):
        _check(bool(getattr(cols, key)), f"{p}.columns.{key}", "must be a non-empty column name")

    metrics = validation_metrics(task, tr)
    es = tr.early_stopping
    metric = (
        es.metric
        or {
            "retrieval": f"recall@{tr.eval_k[0]}",
            "ranking": "auc" if tr.loss_func == "bce" else "rmse",
        }[task]
    )
    metric = optim._metric_name(metric, f"{p}.training.early_stopping.metric", metrics)
    _check(
        es.patience >= 1,
        f"{p}.training.early_stopping.patience",
        f"must be at least 1, got {es.patience}",
    )
    _check(
        es.min_delta >= 0,
        f"{p}.training.early_stopping.min_delta",
        f"must be 0 or more, got {es.min_delta}",
    )
    es = dataclasses.replace(es, metric=metric, mode=es.mode or optim.metric_mode(metric))

    opt = optim.resolve_optimizer(tr.optimizer, tr.lr, f"{p}.training.optimizer")
    emb_opt = optim.resolve_embedding_optimizer(
        tr.embedding_optimizer, opt, f"{p}.training.embedding_optimizer"
    )
    sched = optim.resolve_scheduler(tr.scheduler, opt, f"{p}.training.scheduler", "loss", metrics)
    tr = dataclasses.replace(
        tr,
        optimizer=opt,
        embedding_optimizer=emb_opt,
        lr=opt["lr"],
        scheduler=sched,
        early_stopping=es,
        artifact_dir=tr.artifact_dir or f"artifacts/{task}",
    )
    return dataclasses.replace(section, training=tr)


def _task_section(task: str, raw: dict[str, Any]) -> TaskConfig:
    section = raw.get(task)
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(task, f"expected a mapping, got {show(section)}")
    merged = {}
    for sub, defaults in TASK_DEFAULTS[task].items():
        given = section.get(sub)
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise ConfigError(f"{task}.{sub}", f"expected a mapping, got {show(given)}")
        merged[sub] = {**defaults, **given}
    for key in section:
        if key not in merged:
            names = list(TASK_DEFAULTS[task])
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            raise ConfigError(
                f"{task}.{key_text(key)}",
                "unknown key",
                f"did you mean {close[0]}?" if close else "valid keys: " + ", ".join(names),
            )
    special = {"training": lambda v, w: _build_dataclass(TrainingConfig, v, w, _TRAINING_SPECIAL)}
    built = _build_dataclass(TaskConfig, merged, task, special)
    return _validate_section(task, built, section)


def _early_stopping(value: Any, where: str) -> EarlyStopping:
    if isinstance(value, bool):
        return EarlyStopping(enabled=value)
    return _build_dataclass(EarlyStopping, value, where)


_TRAINING_SPECIAL = {
    # Checked in _validate_section, against torch's signatures, once lr is known.
    "optimizer": lambda v, w: v,
    "embedding_optimizer": lambda v, w: v,
    "scheduler": lambda v, w: v,
    "mixed_precision": _mixed_precision,
    "early_stopping": _early_stopping,
}


def resolve_dict(
    raw: dict[str, Any], task: str, overrides: Overrides | None = None
) -> ResolvedConfig:
    """Resolve an already-loaded config mapping (a file's content or a resolved config)."""
    if task not in TASKS:
        raise ConfigError("task", f"unknown task {task!r}", "one of " + ", ".join(TASKS))
    if not isinstance(raw, dict):
        raise ConfigError("config", f"expected a mapping at the top level, got {show(raw)}")
    _check_top_level(raw)
    raw = apply_overrides(raw, task, overrides or Overrides())
    dataset = _build_dataclass(DatasetConfig, _or_empty(raw.get("dataset")), "dataset")
    for key, value in dataclasses.asdict(dataset.synth).items():
        _check(value > 0, f"dataset.synth.{key}", f"must be greater than 0, got {value}")
    shared = _build_dataclass(SharedConfig, _or_empty(raw.get("shared")), "shared")
    section = _task_section(task, raw)
    return ResolvedConfig(task=task, dataset=dataset, shared=shared, section=section)


def _check_top_level(raw: dict[str, Any]) -> None:
    allowed = ["dataset", "shared", *TASKS]
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "valid keys: " + ", ".join(allowed)
            raise ConfigError(key_text(key), "unknown top-level key", hint)


def _or_empty(value: Any) -> Any:
    return {} if value is None else value


def resolve(
    task: str, config_path: str | Path | None = None, overrides: Overrides | None = None
) -> ResolvedConfig:
    """Load, merge, override and validate. No file: the built-in defaults (synthetic data)."""
    raw = load_file(config_path) if config_path is not None else {}
    _check_top_level(raw)
    if config_path is not None and task not in raw:
        present = ", ".join(map(str, raw)) or "nothing"
        raise ConfigError(
            str(config_path),
            f"no {task}: section (found {present})",
            f"add a top-level {task}: mapping",
        )
    return resolve_dict(raw, task, overrides)
