"""Config resolution: YAML file + command-line overrides -> validated `ResolvedConfig`.

Precedence is CLI > file > defaults. The same `resolve()` runs in `recjobs resolve`,
`recjobs train` and at TorchX submit time, so a job trains on exactly what `resolve` printed.
Every mistake becomes a `ConfigError` naming the dotted key; the CLI prints it as one line.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recjobs.config.coerce import (
    MAX_SHOWN,
    brief,
    coerce,
    did_you_mean,
    key_text,
    show,
    yaml11_hint,
)
from recjobs.config.schema import (
    ARCHS,
    IGNORED_KEYS,
    INTERVALS,
    LOSSES,
    MAX_EVAL_K,
    MAX_LAYERS,
    TASK_DEFAULTS,
    TASK_ONLY_KEYS,
    TASKS,
    DataPaths,
    DatasetConfig,
    EarlyStopping,
    ResolvedConfig,
    SharedConfig,
    TaskConfig,
    TrainingConfig,
    synth_density_problem,
)
from recjobs.errors import ConfigError
from recjobs.file_kind import require_regular

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- YAML

# Limits on what a config may be. The largest example config is 2 KB, 7 levels deep and about
# 150 values; these are far above that and far below what makes PyYAML, deepcopy or an error
# message slow (alias bombs expand exponentially) or overflow the stack (deep nesting).
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_VALUES = 10_000  # scalars and collections, counting every alias as the values it repeats
MAX_NUMBER_CHARS = 100  # a YAML integer or float literal; int64 needs 20


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's numbers and booleans, no duplicate keys, only scalar keys.

    PyYAML follows YAML 1.1: a float needs a dot (`eps: 1e-8` would be the string "1e-8" and
    crash the optimizer), `1:30` is the base-60 integer 90, `010` the octal 8, `1_000` is 1000
    and yes/no/on/off are booleans. Here plain scalars read as YAML 1.2's core schema reads
    them, in files and in --set alike: `1e-8` is a float, `010` is 10, `0o10` is 8, `0x10` 16,
    and `1:30`, `1_000` and `yes` are text, which a number or boolean key then refuses, saying
    what to write (coerce.yaml11_reading). A duplicate key would silently keep the last value;
    a list as a key cannot be a config key and would crash the duplicate check.
    """


_FLOAT = re.compile(
    r"""^(?:[-+]?[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9]+(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_YAML12_TAGS = ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int", "tag:yaml.org,2002:bool")
# YAML 1.1 only, not in 1.2's core schema: plain `2024-01-01` was a date (a run named so was
# refused: "expected a string, got a date") and plain `=` the value key, which SafeLoader
# cannot construct (`--set training.wandb_run_name==` was "invalid YAML"). Both are text now.
_YAML11_ONLY_TAGS = ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in _YAML12_TAGS + _YAML11_ONLY_TAGS]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))


def _number_text(loader: _Loader, node: yaml.ScalarNode, what: str) -> str:
    text = loader.construct_scalar(node)
    if len(text) > MAX_NUMBER_CHARS:
        raise yaml.constructor.ConstructorError(
            None, None, f"{what} of {len(text)} characters is too long", node.start_mark
        )
    return text.replace("_", "")


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = _number_text(loader, node, "integer")
    try:
        if text[:2] in ("0o", "0x"):
            return int(text[2:], {"0o": 8, "0x": 16}[text[:2]])
        return int(text, 10)
    except ValueError:  # an explicit !!int tag on something else
        raise yaml.constructor.ConstructorError(
            None, None, f"{brief(text)} is not an integer", node.start_mark
        ) from None


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> float:
    text = _number_text(loader, node, "number").lower()
    special = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
    if text in special:
        return special[text]
    try:
        return float(text)
    except ValueError:  # an explicit !!float tag on something else
        raise yaml.constructor.ConstructorError(
            None, None, f"{brief(text)} is not a number", node.start_mark
        ) from None


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict:
    # Duplicates among the mapping's own keys only: a key after a merge (`<<: *defaults`
    # then `lr: 0.05`) overrides the merged one, as YAML's merge key specifies.
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
            raise yaml.constructor.ConstructorError(
                None, None, f"a {kind} cannot be a key", key_node.start_mark
            )
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {brief(key)} (also on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


class _TooBig(Exception):
    """Text that is valid YAML but beyond the limits above; the message says which."""


def _check_limits(text: str) -> None:
    """Walk the YAML events (PyYAML's parser is iterative) before building anything.

    Counts every value as often as aliases repeat it, so `&a [*b, *b, ...]` chains that expand
    to billions of values are refused from their few hundred bytes.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise _TooBig(f"{len(text)} characters, more than the limit of {MAX_CONFIG_BYTES}")
    sizes: dict[str, int] = {}  # anchor -> values it stands for
    open_sizes: list[int] = []  # values so far in each collection being read
    open_anchors: list[str | None] = []
    total = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:  # `a: &a [*a]`: a list that contains itself
                at = event.start_mark
                raise _TooBig(f"line {at.line + 1}: *{event.anchor} is inside &{event.anchor}")
            added = sizes.get(event.anchor, 1)
        elif isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            added = 1
            if isinstance(event, yaml.ScalarEvent) and event.anchor:
                sizes[event.anchor] = 1
        else:
            added = 0
        total += added
        if total > MAX_VALUES:
            at = event.start_mark
            raise _TooBig(
                f"line {at.line + 1}: more than {MAX_VALUES} values"
                + (" once aliases are expanded" if sizes else "")
            )
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_sizes) == MAX_DEPTH:
                at = event.start_mark
                raise _TooBig(f"line {at.line + 1}: nested more than {MAX_DEPTH} levels deep")
            open_sizes.append(1)
            open_anchors.append(event.anchor)
        elif isinstance(event, yaml.CollectionEndEvent):
            size, anchor = open_sizes.pop(), open_anchors.pop()
            if anchor:
                sizes[anchor] = size
            if open_sizes:
                open_sizes[-1] += size
        elif added and open_sizes:
            open_sizes[-1] += added


def _load(text: str) -> Any:
    """yaml.load within the limits; YAMLError for bad YAML, _TooBig beyond the limits."""
    _check_limits(text)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        # PyYAML's own constructors (an explicit !!bool maybe, !!timestamp junk) raise these.
        problem = f"a value its tag does not allow ({_first_line(exc)})"
        raise yaml.constructor.ConstructorError(None, None, problem, None) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or _first_line(exc)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"invalid YAML: {at}{problem}"


def load_yaml(text: str, where: str) -> Any:
    """Parse a config's text; ConfigError naming `where` for bad YAML or one beyond the limits."""
    try:
        return _load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(where, _yaml_problem(exc)) from None
    except _TooBig as exc:
        raise ConfigError(where, f"beyond the limits of a config: {exc}", _LIMITS_HINT) from None


_LIMITS_HINT = "a recjobs config is a few KB; see docs/reliability.md for the limits"


def parse_value(text: str, where: str = "--set") -> Any:
    """A command-line value, read as a YAML scalar or flow collection (`1e-6`, `[0.9,0.999]`).

    Text that is not YAML at all (`a: b: c`) stays a string for the schema to judge; YAML that
    parses but cannot be a value (a list as a key, a duplicate key) or is too big is an error.
    """
    if not text.strip():
        # YAML reads '  ' as null: `--set training.artifact_dir=' '` would quietly mean the
        # default. As text, the schema judges it (every string key refuses a blank one).
        return text
    try:
        value = _load(text)
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(where, _yaml_problem(exc)) from None
    except yaml.YAMLError:
        return text
    except _TooBig as exc:
        raise ConfigError(where, f"beyond the limits of a config: {exc}", _LIMITS_HINT) from None
    if _ends_in_comment(text):
        # In a file a comment shows as one; typed on a command line, `run #3` read as 'run'
        # and `#3` as null without a word.
        raise ConfigError(
            where,
            f"{brief(text)} ends in a YAML comment (a # at the start or after a space), so it "
            f"would read as {show(value)}",
            "quote the value to keep the #, e.g. --set \"training.wandb_run_name='run #3'\"",
        )
    return value


def _ends_in_comment(text: str) -> bool:
    """Whether YAML drops part of `text` as a comment: something after its last token."""
    try:
        tokens = list(yaml.scan(text, Loader=_Loader))
    except yaml.YAMLError:
        return False
    end = max(
        (t.end_mark.index for t in tokens if not isinstance(t, yaml.StreamEndToken)), default=0
    )
    return text[end:].lstrip().startswith("#")


def load_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    require_regular(path, ConfigError)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded: --config /dev/zero must not hang
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise ConfigError(str(path), f"cannot read config file: {type(exc).__name__}") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            str(path), f"config file is larger than {MAX_CONFIG_BYTES} bytes", _LIMITS_HINT
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(path),
            f"cannot read config file: not UTF-8 text (byte {exc.start})",
            "save it as UTF-8",
        ) from None
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
        action="extend",  # given again, it adds (argparse's default dropped the first list)
        metavar="K=V",
        help="optimizer keyword arguments, e.g. momentum=0.9; each key once",
    )
    g.add_argument(
        "--scheduler", metavar="NAME", help="any torch.optim.lr_scheduler class, or 'none'"
    )
    g.add_argument(
        "--scheduler-args",
        nargs="+",
        action="extend",
        metavar="K=V",
        help="scheduler keyword arguments, e.g. step_size=10; each key once",
    )
    g.add_argument(
        "--scheduler-interval",
        choices=INTERVALS,
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
        "--no-mixed-precision",
        dest="mixed_precision",
        action="store_const",
        const=False,
        help="turn mixed precision off (training.mixed_precision: off)",
    )
    g.add_argument(
        "--set",
        dest="sets",
        action="append",
        metavar="KEY=VALUE",
        help="any config key, relative to the task section (training.batch_size=2048) "
        "or absolute (shared.seed=1); repeatable, a later one of the same key wins",
    )


def _split_kv(item: str, flag: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        example = {"--set": "training.batch_size=2048", "--scheduler-args": "step_size=10"}.get(
            flag, "momentum=0.9"
        )
        raise ConfigError(flag, f"expected KEY=VALUE, got {brief(item)}", f"e.g. {example}")
    return key, parse_value(text, f"{flag} {_flag_key(key)}")


def _given_twice(flag: str, key: str, first: str, second: str) -> ConfigError:
    """A KEY=VALUE flag that names one key twice: argparse keeps both, and the last would win
    without a word."""
    return ConfigError(
        f"{flag} {key}",
        f"given twice ({brief(first)} and {brief(second)})",
        "give each key once",
    )


def _flag_key(key: str) -> str:
    """A KEY of a KEY=VALUE flag as an error message names it: as typed when short."""
    return key if len(key) <= MAX_SHOWN and key.isprintable() else brief(key)


def _apply_set(raw: dict[str, Any], task: str, item: str) -> tuple[str, ...]:
    """Apply one `--set KEY=VALUE`; return the full dotted path it set."""
    key, value = _split_kv(item, "--set")
    where = f"--set {_flag_key(key)}"
    parts = key.split(".")
    if parts[0] in TASKS and parts[0] != task:
        raise ConfigError(where, f"sets the {parts[0]} section but this is a {task} run")
    if parts[0] == task:
        parts = parts[1:]
    if parts and parts[0] not in ("dataset", "shared"):
        parts = [task, *parts]
    if not parts:
        parts = [task]
    if not all(parts):
        raise ConfigError(
            where, "expected a dotted key", "e.g. training.batch_size=2048 or shared.seed=7"
        )
    if tuple(parts) in _sections(task):
        # `--set training={batch_size: 8}` would replace the file's whole training section:
        # its lr, optimizer, ... silently back to the defaults.
        raise ConfigError(
            where,
            f"names the whole {'.'.join(parts)} section; set its keys one by one",
            "e.g. training.batch_size=2048 or shared.seed=7",
        )
    if tuple(parts) == (task, "training", "early_stopping") and isinstance(value, dict):
        # early_stopping is a section too; only its true/false shorthand is one value.
        raise ConfigError(
            where,
            "names the whole training.early_stopping section; set its keys one by one",
            "e.g. training.early_stopping.metric=loss, or training.early_stopping=true",
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
                where, f"{_flag_key('.'.join(parts[: i + 1]))} is {show(child)}, not a mapping"
            )
        node = child
    if parts == [task, "training", "lr"]:
        # A command-line training.lr beats an lr inside the file's optimizer mapping.
        opt = raw[task]["training"].get("optimizer")
        if isinstance(opt, dict):
            opt.pop("lr", None)
    node[parts[-1]] = value
    return tuple(parts)


def _sections(task: str) -> set[tuple[str, ...]]:
    """Dotted paths of the schema's sections (mappings of keys, not values)."""
    return {
        ("dataset",),
        ("dataset", "synth"),
        ("shared",),
        (task,),
        *((task, sub) for sub in TASK_DEFAULTS[task]),
    }


def apply_overrides(raw: dict[str, Any], task: str, ov: Overrides) -> dict[str, Any]:
    """Apply CLI overrides to the raw file dict (a copy is returned)."""
    return _apply_overrides(raw, task, ov)[0]


def _apply_overrides(
    raw: dict[str, Any], task: str, ov: Overrides
) -> tuple[dict[str, Any], set[tuple[str, ...]]]:
    """apply_overrides, and the dotted paths --set set."""
    raw = copy.deepcopy(raw)
    if raw.get(task) is None:
        raw[task] = {}
    section = raw[task]
    if not isinstance(section, dict):
        raise ConfigError(task, f"expected a mapping, got {show(section)}")
    # A later --set of a key replaces an earlier one (documented): a script adds its own
    # settings to a base list. Within one --optimizer-args or --scheduler-args a key given
    # twice is refused (_override_component).
    set_paths = {_apply_set(raw, task, item) for item in ov.sets}
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
    return raw, set_paths


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
        given: dict[str, str] = {}
        for item in args:
            key, value = _split_kv(item, f"{flag}-args")
            if key in given:
                raise _given_twice(f"{flag}-args", _flag_key(key), given[key], item)
            given[key] = item
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
    """Check a mapping against a schema dataclass: unknown keys, types, ranges, nested sections."""
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a mapping, got {show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            reason = IGNORED_KEYS.get(f"{_schema_path(where)}.{key}")
            if reason:
                log.warning("%s.%s: ignored, %s (delete it from the config)", where, key, reason)
                continue
            raise unknown_key(f"{where}.{key_text(key)}", key, list(fields))
    missing = [name for name, f in fields.items() if name not in data and _required(f)]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}", "missing key", "required: " + ", ".join(missing))
    values = {}
    for name, f in fields.items():
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
            _check_range(f, values[name], key, nullable=type(None) in typing.get_args(hint))
            _check_not_blank(f, values[name], key)
            _check_no_home_shorthand(values[name], key)
    return cls(**values)


def _check_not_blank(f: dataclasses.Field, value: Any, where: str) -> None:
    """Every string of the schema is a name or a path: '' or '  ' would name nothing (the
    working directory, a column nobody has) or be taken for the default without a word."""
    texts = [value] if isinstance(value, str) else value if isinstance(value, tuple) else []
    for i, text in enumerate(texts):
        if isinstance(text, str) and not text.strip():
            at = where if isinstance(value, str) else f"{where}[{i}]"
            _check(False, at, f"must not be empty or blank, got {show(text)}", _blank_hint(f))


# The keys that hold a local path (the others are names: a column may well start with ~).
_PATH_KEYS = ("training.artifact_dir", "dataset.paths.")


def _check_no_home_shorthand(value: Any, where: str) -> None:
    """`~/runs` is the shell's shorthand, and no shell reads a config file or the text after
    `--set key=`: the run would go to a folder named `~` in the working directory, and on the
    TorchX side `~` is another machine's home anyway. Refused, with the path to write."""
    if not (isinstance(value, str) and value.startswith("~")):
        return
    if not _schema_path(where).startswith(_PATH_KEYS):
        return
    _check(
        False,
        where,
        f"{show(value)} starts with ~, the shell's shorthand for a home folder, which "
        "recjobs does not expand (it would name a folder called ~...)",
        f"write the whole path, e.g. {os.path.expanduser('~')}{value[1:].partition('/')[1]}"
        f"{value[1:].partition('/')[2]}"
        if value.startswith("~/")
        else "write the whole path",
    )


def _blank_hint(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else None
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    if isinstance(default, tuple) and default:
        default = default[0]
    if isinstance(default, str):
        return f"e.g. {default}"
    unset = f.metadata.get("doc", "").partition("null: ")[2]
    if f.default is None:
        return f"or null: {unset}" if unset else "or null to leave it unset"
    return "a local path or a URL"


def _schema_path(where: str) -> str:
    """A section's dotted path without its task: `retrieval.training` -> `training`."""
    parts = where.split(".")
    return ".".join(parts[1:] if parts[0] in TASKS else parts)


def drop_ignored_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """A run's own saved config (config.yaml, model/config.yaml) without the keys that have no
    effect (IGNORED_KEYS): runs written by an older version load and resume without a warning."""
    raw = copy.deepcopy(raw)
    for path in IGNORED_KEYS:
        *sections, name = path.split(".")
        for task in TASKS:
            node = raw.get(task)
            for section in sections:
                node = node.get(section) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(name, None)
    return raw


def unknown_key(where: str, key: Any, valid: list[str], what: str = "unknown key") -> ConfigError:
    """The error for a key that is not in `valid`, with a did-you-mean or the valid keys."""
    close = did_you_mean(key, valid)
    hint = f"did you mean {close[0]}?" if close else "valid keys: " + ", ".join(valid)
    return ConfigError(where, what, hint)


def _check_range(f: dataclasses.Field, value: Any, where: str, nullable: bool) -> None:
    """The field's documented range (schema.Range), for a number or each number of a list."""
    valid = f.metadata.get("range")
    if valid is None or value is None:
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item in valid, f"{where}[{i}]", valid.problem(item))
    else:
        _check(value in valid, where, valid.problem(value, nullable))


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
        where,
        f"expected true, false, fp16, bf16 or off, got {show(value)}",
        yaml11_hint(value) or "true means fp16",
    )


def _check(cond: bool, where: str, problem: str, hint: str | None = None) -> None:
    if not cond:
        raise ConfigError(where, problem, hint)


# Names the export writes into model/ itself (recjobs.training.export); a configured file name
# must not replace them.
_MODEL_DIR_NAMES = ("config.yaml", "item_embeddings.pt", "catalogue.pt", "export.json")


def _check_file_name(value: str, where: str, example: str) -> None:
    """A file name the run writes inside its run dir: never a path that leads elsewhere."""
    plain = (
        value not in ("", ".", "..")
        and len(value) <= 255
        and not any(c in value for c in "/\\\0")
        and value.isprintable()
    )
    _check(
        plain,
        where,
        f"must be a plain file name inside the run dir's model/, got {show(value)}",
        f"no '/', '..' or control characters; e.g. {example}",
    )
    _check(
        value not in _MODEL_DIR_NAMES,
        where,
        f"{value} is a file the export writes itself",
        f"e.g. {example}",
    )


def validation_metrics(task: str, training: TrainingConfig) -> list[str]:
    """The metric names (without `val/`) a run of this task logs at validation."""
    if task == "retrieval":
        return ["loss"] + [f"{m}@{k}" for k in training.eval_k for m in ("recall", "ndcg", "hit")]
    return ["loss", "auc", "logloss"] if training.loss_func == "bce" else ["loss", "rmse", "mae"]


def _validate_section(task: str, section: TaskConfig, raw_section: dict[str, Any]) -> TaskConfig:
    # torch (seconds to import) only where a config is resolved: `recjobs status` and
    # `recjobs log` build the same command line without it.
    from recjobs.config import optim

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
    _check(
        len(cols.multi_delimiter) == 1 and cols.multi_delimiter not in '\r\n"',
        f"{p}.columns.multi_delimiter",
        f"expected one character, got {brief(cols.multi_delimiter)}",
        'e.g. "|" or ";" (not a newline or a double quote)',
    )
    for entity, ident in (("user", cols.user_id), ("item", cols.item_id)):
        seen: dict[str, str] = {ident: f"{entity}_id"}
        for kind in ("cat", "num", "multi"):
            key = f"{entity}_{kind}_cols"
            for col in getattr(cols, key):
                _check(
                    col not in seen or seen[col] == key,
                    f"{p}.columns.{key}",
                    f"column {brief(col)} is also in {seen.get(col)}",
                    "a column is one kind of feature: categorical, numeric or multi-valued",
                )
                seen[col] = key
    if task == "retrieval":
        _check(
            tr.batch_size >= 2,
            f"{p}.training.batch_size",
            f"must be at least 2 for retrieval, got {tr.batch_size}",
            "in-batch softmax uses the other items of a batch as negatives; with one the loss "
            "is 0 and nothing is learnt",
        )
    for key, dims, most in (
        ("model.hidden_dims", model.hidden_dims, MAX_LAYERS),
        ("model.scorer_hidden_dims", model.scorer_hidden_dims, MAX_LAYERS),
        ("training.eval_k", tr.eval_k, MAX_EVAL_K),
    ):
        _check(
            0 < len(dims) <= most,
            f"{p}.{key}",
            f"expected a non-empty list of at most {most} positive integers, got {brief(dims)}",
        )
    _check_file_name(tr.checkpoint, f"{p}.training.checkpoint", "model.pt")

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
    es = dataclasses.replace(es, metric=metric, mode=es.mode or optim.metric_mode(metric))

    opt = optim.resolve_optimizer(tr.optimizer, tr.lr, f"{p}.training.optimizer", tr.device)
    emb_opt = optim.resolve_embedding_optimizer(
        tr.embedding_optimizer, opt, f"{p}.training.embedding_optimizer", tr.device
    )
    sched = optim.resolve_scheduler(
        tr.scheduler,
        opt,
        f"{p}.training.scheduler",
        "loss",
        metrics,
        embedding_optimizer=emb_opt if tr.sparse_embeddings is not False else None,
        # A per-epoch schedule steps exactly max_epochs times unless max_steps cuts the run.
        epochs=tr.max_epochs if tr.max_steps is None else None,
    )
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
            raise unknown_key(f"{task}.{key_text(key)}", key, list(TASK_DEFAULTS[task]))
    special = {"training": lambda v, w: _build_dataclass(TrainingConfig, v, w, _TRAINING_SPECIAL)}
    built = _build_dataclass(TaskConfig, merged, task, special)
    return _validate_section(task, built, section)


def _early_stopping(value: Any, where: str) -> EarlyStopping:
    if isinstance(value, bool):
        return EarlyStopping(enabled=value)
    if yaml11_hint(value):
        raise ConfigError(
            where, f"expected true, false or a mapping, got {show(value)}", yaml11_hint(value)
        )
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
    """Resolve an already-loaded config mapping (a resolved config: --config-json, a run's
    saved config.yaml). Its relative dataset paths are read from the working directory."""
    return _resolve_raw(raw, task, overrides, {})


def _resolve_raw(
    raw: dict[str, Any],
    task: str,
    overrides: Overrides | None,
    file_paths: dict[str, tuple[str, str]],
) -> ResolvedConfig:
    """resolve_dict, with the config file's relative dataset paths already anchored at its
    folder (`file_paths`: role -> (as written, absolute))."""
    if task not in TASKS:
        raise ConfigError("task", f"unknown task {brief(task)}", "one of " + ", ".join(TASKS))
    if not isinstance(raw, dict):
        raise ConfigError("config", f"expected a mapping at the top level, got {show(raw)}")
    _check_top_level(raw)
    raw, set_paths = _apply_overrides(raw, task, overrides or Overrides())
    dataset = _build_dataclass(DatasetConfig, _or_empty(raw.get("dataset")), "dataset")
    if dataset.paths is None:  # the synthetic data set trains: its size must make one
        synth = dataset.synth
        problem = synth_density_problem(synth.users, synth.items, synth.interactions)
        _check(problem is None, "dataset.synth.interactions", problem or "", _DENSITY_HINT)
    # What --set gave is read from the working directory, even where the file had the role.
    file_paths = {
        role: given
        for role, given in file_paths.items()
        if ("dataset", "paths") not in set_paths and ("dataset", "paths", role) not in set_paths
    }
    dataset, relative = _absolute_data_paths(dataset, file_paths)
    shared = _build_dataclass(SharedConfig, _or_empty(raw.get("shared")), "shared")
    _check_file_name(shared.encoder_cache, "shared.encoder_cache", "encoders.json")
    section = _task_section(task, raw)
    _check(
        section.training.checkpoint != shared.encoder_cache,
        "shared.encoder_cache",
        f"is the same file as {task}.training.checkpoint ({section.training.checkpoint})",
        "give the weights and the vocabularies different names",
    )
    return ResolvedConfig(
        task=task, dataset=dataset, shared=shared, section=section, relative_paths=relative
    )


# --------------------------------------------------------------------------- dataset paths
#
# A relative dataset path in a config file is read from the file's folder, so that a data set
# folder with its config.yaml (`recjobs data synth --out D` writes `users: users.parquet`) can
# be copied or moved and still trains on its own files; one given on the command line (--set)
# is read from the working directory. The resolved config holds absolute paths: what a run
# saves, and what a TorchX job receives, names the same files wherever it is read.


def _local_relative(path: Any) -> bool:
    """A path to anchor: a relative local path (not a URL, not blank: the schema refuses that)."""
    return (
        isinstance(path, str) and bool(path.strip()) and "://" not in path
    ) and not os.path.isabs(path)


def _config_file_paths(raw: dict[str, Any], config_path: str | Path) -> dict[str, tuple[str, str]]:
    """The relative dataset paths of a config file, anchored at the file's folder:
    role -> (as written, absolute). A path that meant another file before (when relative
    paths were read from the working directory) is refused: see _check_same_file."""
    dataset = raw.get("dataset")
    paths = dataset.get("paths") if isinstance(dataset, dict) else None
    if not isinstance(paths, dict):
        return {}
    folder = Path(config_path).absolute().parent
    found = {}
    for role, text in paths.items():
        _check_no_home_shorthand(text, f"dataset.paths.{role}")
        if _local_relative(text):
            beside = folder / text
            _check_same_file(role, text, folder, Path(text).absolute(), config_path)
            found[role] = (text, str(beside))
    return found


def _check_same_file(role: Any, text: str, folder: Path, here: Path, config: str | Path) -> None:
    """A config that worked before this rule must not silently change meaning: refuse a path
    that is found from the working directory (its old reading, `here`) but names nothing, or
    another file, from the config's folder (its new one)."""
    beside = folder / text
    if beside == here or not here.exists():
        return
    if beside.exists():
        try:
            if os.path.samefile(beside, here):
                return
        except OSError:
            pass
        problem, hint = (
            "names another file",
            f"write the one you mean as an absolute path: {here} or {beside}",
        )
    else:
        problem = "does not exist"
        hint = f"write {os.path.relpath(here, folder)} (from the config's folder) or {here}"
    raise ConfigError(
        f"dataset.paths.{key_text(role)}",
        f"{brief(text)} in {config} is read from the config file's folder: {beside}, which "
        f"{problem}; from the working directory, as before, it is {here}",
        hint,
    )


def _absolute_data_paths(
    dataset: DatasetConfig, file_paths: dict[str, tuple[str, str]]
) -> tuple[DatasetConfig, dict[str, str]]:
    """The dataset with absolute local paths (relative ones read from the working directory:
    given by --set or in a resolved config; a config file's are already anchored), and which
    were relative as given (role -> text): a container does not see this machine's files."""
    if dataset.paths is None:
        return dataset, {}
    absolute, relative = {}, {}
    for role, path in dataclasses.asdict(dataset.paths).items():
        if _local_relative(path):
            relative[role], path = path, str(Path(path).absolute())
        elif role in file_paths and path == file_paths[role][1]:
            relative[role] = file_paths[role][0]
        absolute[role] = path
    return dataclasses.replace(dataset, paths=DataPaths(**absolute)), relative


def with_absolute_paths(dataset: Any) -> Any:
    """A saved config's `dataset` section (a checkpoint's) with its relative local paths read
    from the working directory, as they were read when it was saved (older versions saved
    them as given); anything else as it is."""
    if not isinstance(dataset, dict) or not isinstance(dataset.get("paths"), dict):
        return dataset
    paths = {
        role: str(Path(path).absolute()) if _local_relative(path) else path
        for role, path in dataset["paths"].items()
    }
    return {**dataset, "paths": paths}


_DENSITY_HINT = "fewer interactions, or more users or items"


def _check_top_level(raw: dict[str, Any]) -> None:
    allowed = ["dataset", "shared", *TASKS]
    for key in raw:
        if key not in allowed:
            raise unknown_key(key_text(key), key, allowed, "unknown top-level key")


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
    file_paths = _config_file_paths(raw, config_path) if config_path is not None else {}
    if file_paths:
        paths = {**raw["dataset"]["paths"], **{r: a for r, (_, a) in file_paths.items()}}
        raw = {**raw, "dataset": {**raw["dataset"], "paths": paths}}
    return _resolve_raw(raw, task, overrides, file_paths)
