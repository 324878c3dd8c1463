"""Property: whatever structure `resolve` is given, it answers with a config or one error line."""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recjobs.cli import main
from recjobs.config import resolve

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
