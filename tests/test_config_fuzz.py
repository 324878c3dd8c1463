"""Property: whatever structure `resolve` is given, it answers with a config or one error line."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import signal
import time
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recjobs.cli import main
from recjobs.config.optim import (
    CLASS_ARG_RANGES,
    CONTAINERS,
    OPTIMIZER_ARG_RANGES,
    OPTIMIZERS,
    SCHEDULER_ARG_RANGES,
    SCHEDULERS,
)
from recjobs.config.resolver import resolve
from recjobs.config.schema import (
    TASK_ONLY_KEYS,
    ColumnsConfig,
    DatasetConfig,
    EarlyStopping,
    ModelConfig,
    Range,
    SharedConfig,
    SynthSize,
    TrainingConfig,
)

ROOT = Path(__file__).resolve().parents[1]

ERROR_LINE = re.compile(r"^error: \S.*?: \S.*\n$")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=False, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(
        ["Adam", "SGD", "StepLR", "OneCycleLR", "epoch", "step", "fp16", "1e-8", "two_tower", "dcn"]
    ),
)
keys = st.one_of(
    st.text(min_size=1, max_size=10),
    st.sampled_from(
        [
            "name",
            "lr",
            "interval",
            "optimizer",
            "scheduler",
            "training",
            "model",
            "columns",
            "batch_size",
            "milestones",
            "schedulers",
            "monitor",
            "enabled",
        ]
    ),
)
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def _default(task: str) -> dict:
    return resolve(task).to_dict()


def _paths(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))


@st.composite
def mutated_configs(draw):
    """A valid resolved config with one value swapped for a random structure."""
    task = draw(st.sampled_from(["retrieval", "ranking"]))
    config = _default(task)
    path = draw(st.sampled_from(list(_paths(config))))
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = draw(structures)
    return task, config


def _check(capsys, task: str, config) -> None:
    code = main(["resolve", task, "--config-json", json.dumps(config)])
    out, err = capsys.readouterr()
    assert code in (0, 2), err
    if code == 0:
        assert err == "" and json.loads(out)[task]
    else:
        assert out == "" and err.count("\n") == 1 and ERROR_LINE.match(err), err


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(task=st.sampled_from(["retrieval", "ranking"]), config=structures)
def test_random_structures(capsys, task, config):
    _check(capsys, task, config)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=mutated_configs())
def test_one_value_of_a_valid_config_replaced(capsys, case):
    _check(capsys, *case)


# --------------------------------------------------------------------------- YAML text

# Each generated input must be answered within this bound; the hostile inputs of the issue this
# guards against (alias bombs, multi-megabyte lists) ran for minutes.
TIME_BOUND_S = 10


class _Hang(BaseException):
    """Raised by the timer; a BaseException so that no `except Exception` swallows it."""


def _alarm(signum, frame):
    raise _Hang


def _answered_in_time(capsys, argv: list[str]) -> tuple[int, str, str]:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_BOUND_S)
    start = time.monotonic()
    try:
        code = main(argv)
    except _Hang:
        pytest.fail(f"no answer within {TIME_BOUND_S} s for {argv[:4]}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    assert time.monotonic() - start < TIME_BOUND_S
    return code, out, err


def _one_answer(code: int, out: str, err: str, task: str) -> None:
    assert code in (0, 2), err
    if code == 0:
        assert err == "" and json.loads(out)[task]
    else:
        assert out == "" and err.count("\n") == 1 and ERROR_LINE.match(err), err


# Scalars as YAML text: numbers in every notation (YAML 1.1's base 60 and octal included),
# explicit tags, huge and non-finite numbers, long and odd strings.
scalar_texts = st.one_of(
    st.sampled_from(
        [
            "1:30",
            "1:30.5",
            "010",
            "0o17",
            "0x1F",
            "0b101",
            "1_000",
            ".inf",
            "-.inf",
            ".nan",
            "1e400",
            "-1e400",
            "1e-8",
            "~",
            "null",
            "yes",
            "no",
            "on",
            "true",
            "''",
            '"\\n"',
            "!!int abc",
            "!!float x",
            "!!bool maybe",
            "!!binary aGk=",
            "!!str 5",
            "!!set {a}",
            "!!timestamp 2001-12-14",
            "!!python/name:os.system",
            "Adam",
            "StepLR",
            "epoch",
            "bf16",
            "two_tower",
            "recall@10",
            "model.pt",
            "../x",
            "/etc/passwd",
        ]
    ),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
    st.floats().map(
        lambda x: {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}.get(repr(x), repr(x))
    ),
    st.text(max_size=12).map(json.dumps),
    st.integers(min_value=0, max_value=100_000).map(lambda n: "x" * n),
)
ANCHORS = ("a", "b")


def _flow(inner):
    keys = st.one_of(scalar_texts, inner)  # keys of every YAML type: lists and mappings too
    return st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(keys, inner), max_size=4).map(
            lambda kvs: "{" + ", ".join(f"{k}: {v}" for k, v in kvs) + "}"
        ),
        st.tuples(st.sampled_from(ANCHORS), inner).map(lambda a: f"&{a[0]} {a[1]}"),
        st.sampled_from(ANCHORS).map(lambda a: f"*{a}"),
        st.integers(min_value=1, max_value=60).map(lambda d: "[" * d + "]" * d),
    )


flow_texts = st.recursive(scalar_texts, _flow, max_leaves=10)


@st.composite
def alias_bombs(draw) -> str:
    """`z0: &z0 [x, x, ...]`, `z1: &z1 [*z0, *z0, ...]`, ...: width ** levels values."""
    levels = draw(st.integers(min_value=1, max_value=10))
    width = draw(st.integers(min_value=2, max_value=10))
    lines = [f"z0: &z0 [{', '.join(['x'] * width)}]"]
    lines += [f"z{i}: &z{i} [{', '.join([f'*z{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n", f"*z{levels - 1}"


TEMPLATES = [
    "retrieval:\n  training:\n    {key}: {value}\n",
    "ranking:\n  model:\n    {key}: {value}\n",
    "{key}: {value}\nretrieval: {{}}\n",
    "retrieval: {value}\n",
    "retrieval:\n  {key}: {value}\n",
    "dataset:\n  synth: {value}\nretrieval: {{}}\n",
    "shared:\n  {key}: {value}\nretrieval: {{}}\n",
    "retrieval:\n  training:\n    optimizer: {{name: SGD, {key}: {value}}}\n",
    "retrieval:\n  training:\n    scheduler: {{name: StepLR, step_size: 2, {key}: {value}}}\n",
]
REAL_KEYS = [
    "lr",
    "batch_size",
    "optimizer",
    "scheduler",
    "eval_k",
    "seed",
    "early_stopping",
    "mixed_precision",
    "checkpoint",
    "encoder_cache",
    "users",
    "hidden_dims",
    "momentum",
    "gamma",
    "dropout",
    "training",
    "<<",
]


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    template=st.sampled_from(TEMPLATES),
    key=st.one_of(st.sampled_from(REAL_KEYS), flow_texts),
    value=flow_texts,
    bomb=st.one_of(st.none(), alias_bombs()),
)
def test_yaml_text_of_every_kind(tmp_path_factory, capsys, template, key, value, bomb):
    """Keys of every YAML type, deep nesting, aliases, bombs, huge numbers and strings: each
    file gives a config or one error line, in bounded time."""
    prefix, value = bomb if bomb else ("", value)
    task = "ranking" if template.startswith("ranking") else "retrieval"
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text(prefix + template.format(key=key, value=value), errors="surrogatepass")
    _one_answer(*_answered_in_time(capsys, ["resolve", task, "--config", str(path)]), task)


# --------------------------------------------------------------------------- numeric keys

SECTIONS = [
    ("dataset.synth", SynthSize),
    ("shared", SharedConfig),
    ("model", ModelConfig),
    ("training", TrainingConfig),
    ("training.early_stopping", EarlyStopping),
]


def numeric_keys() -> list[tuple[str, str, Range, type, bool, bool]]:
    """(key for --set, task, range, int or float, is a list, may be null) of each numeric key."""
    keys = []
    for prefix, cls in SECTIONS:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "range" not in f.metadata:
                continue
            hint = hints[f.name]
            args = typing.get_args(hint)
            kind = int if int in (hint, *args) or "int" in str(hint) else float
            # Ranking for its own keys, and for batch_size, which retrieval needs >= 2.
            only = TASK_ONLY_KEYS["ranking"]
            ranking = (*only["training"], *only["model"], "batch_size")
            task = "ranking" if f.name in ranking else "retrieval"
            is_list = typing.get_origin(hint) is tuple
            keys.append(
                (f"{prefix}.{f.name}", task, f.metadata["range"], kind, is_list, type(None) in args)
            )
    return keys


NUMERIC_KEYS = numeric_keys()


def _yaml_number(value) -> str:
    if isinstance(value, float):
        return {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}.get(repr(value), repr(value))
    return str(value)


def _boundaries(valid: Range, kind: type) -> list:
    edges = [valid.low, valid.high]
    if kind is int:
        near = [e + d for e in edges if math.isfinite(e) for d in (-1, 0, 1)]
        near = [int(v) for v in near]
        extremes = [0, -1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30]
    else:
        near = [
            math.nextafter(e, d) for e in edges if math.isfinite(e) for d in (-math.inf, math.inf)
        ]
        near += [e for e in edges if math.isfinite(e)]
        extremes = [0.0, -0.0, -1.0, 5e-324, 1e300, 10**30, 10**400 // 10**370]
    return near + extremes + [math.inf, -math.inf, math.nan, 1.5, True]


def _accepted(key: str, value, valid: Range, kind: type) -> bool | None:
    """What the schema documents: the type, 64 bits or finite, and the range. None: either
    (a huge learning rate is in range, and then the optimizer's trial steps judge it)."""
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int) and -(2**63) <= value < 2**63 and value in valid
    inside = math.isfinite(float(value)) and value in valid
    return None if inside and key == "training.lr" and value > 1e10 else inside


@pytest.mark.parametrize(
    "key, task, valid, kind, is_list, nullable", NUMERIC_KEYS, ids=[k[0] for k in NUMERIC_KEYS]
)
def test_every_numeric_key_across_its_boundaries(capsys, key, task, valid, kind, is_list, nullable):
    """Accepted exactly inside the documented range; outside, one line naming the key."""
    where = key if key.startswith(("dataset", "shared")) else f"{task}.{key}"
    values = _boundaries(valid, kind) + ([None] if nullable else [])
    for value in values:
        text = _yaml_number(value) if value is not None else "null"
        text = f"[{text}]" if is_list else text
        # The synthetic data set's size is also bounded by its density (at most half of the
        # user-item pairs); these keep that bound out of the way of each key's own range.
        roomy = {
            "dataset.synth.users": ["dataset.synth.interactions=10"],
            "dataset.synth.items": ["dataset.synth.interactions=10"],
            "dataset.synth.interactions": [
                "dataset.synth.users=100000",
                "dataset.synth.items=100000",
            ],
        }.get(key, [])
        sets = [a for s in [*roomy, f"{key}={text}"] for a in ("--set", s)]
        code, out, err = _answered_in_time(capsys, ["resolve", task, *sets])
        expected = value is None or _accepted(key, value, valid, kind)
        _one_answer(code, out, err, task)
        if expected is not None:
            assert (code == 0) == expected, (key, value, err)
        if code and expected is False:
            named = (
                (f"error: {where}: ", f"error: {where}[0]: ") if is_list else (f"error: {where}: ",)
            )
            assert err.startswith(named), (value, err)


def test_every_numeric_key_has_a_documented_range():
    """Each int or float key of the schema carries a Range, and docs/reliability.md lists it."""
    doc = (ROOT / "docs" / "reliability.md").read_text()
    for prefix, cls in SECTIONS + [("columns", ColumnsConfig), ("dataset", DatasetConfig)]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if re.search(r"\b(int|float)\b", str(hints[f.name])):
                assert "range" in f.metadata, f"{prefix}.{f.name} has no documented range"
                row = f"| `{prefix}.{f.name}` | {f.metadata['range'].text()} |"
                assert row in doc, f"docs/reliability.md lacks {row}"


# --------------------------------------------------------------------------- torch arguments

# Arguments a class cannot do without, valid, so that the fuzzed one is judged alone.
REQUIRED_ARGS = {
    "StepLR": {"step_size": 2},
    "MultiStepLR": {"milestones": [2]},
    "CosineAnnealingLR": {"T_max": 5},
    "CosineAnnealingWarmRestarts": {"T_0": 3},
    "CyclicLR": {"base_lr": 0.001, "max_lr": 0.01},
    "OneCycleLR": {"max_lr": 0.01},
}
SCHEDULER_NAMES = sorted(
    n for n in SCHEDULERS if n not in ("LambdaLR", "MultiplicativeLR", *CONTAINERS)
)
numbers = st.one_of(
    st.sampled_from([0, -1, 1, 2, 10**30, 0.0, -0.5, 0.5, 1.0, 1e300, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**20),
)


@st.composite
def torch_arguments(draw):
    kind = draw(st.sampled_from(["optimizer", "scheduler"]))
    names = sorted(OPTIMIZERS) if kind == "optimizer" else SCHEDULER_NAMES
    name = draw(st.sampled_from(names))
    cls = OPTIMIZERS[name] if kind == "optimizer" else SCHEDULERS[name]
    args = sorted(
        inspect.signature(cls.__init__).parameters.keys()
        - {"self", "params", "optimizer", "last_epoch", "verbose"}
    )
    arg = draw(st.sampled_from(args))
    value = draw(numbers)
    return kind, name, arg, value


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=torch_arguments())
def test_torch_arguments_at_their_boundaries(capsys, case):
    """Any number for any argument of any optimizer or scheduler: a config or one line; a value
    outside the documented range of that argument is always refused."""
    kind, name, arg, value = case
    given_args = {**REQUIRED_ARGS.get(name, {}), arg: value}
    texts = [
        f"{k}={_yaml_number(v) if not isinstance(v, list) else v}" for k, v in given_args.items()
    ]
    argv = ["resolve", "retrieval", f"--{kind}", name, f"--{kind}-args", *texts]
    code, out, err = _answered_in_time(capsys, argv)
    _one_answer(code, out, err, "retrieval")
    ranges = OPTIMIZER_ARG_RANGES if kind == "optimizer" else SCHEDULER_ARG_RANGES
    valid = {**ranges, **CLASS_ARG_RANGES.get(name, {})}.get(arg)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if valid is not None and number and not (math.isfinite(value) and value in valid):
        assert code == 2, (case, out)
