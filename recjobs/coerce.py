"""Checking plain YAML values against Python type hints.

One mechanism serves the config schema (`recjobs.schema` dataclasses) and the keyword
arguments of any `torch.optim` optimizer or `lr_scheduler` class (their signatures), so a
type error reads the same wherever it comes from. Values are converted only where the
meaning cannot change: an int where a float is expected, a list where a tuple is expected.
"""

from __future__ import annotations

import collections.abc
import re
import types
import typing
from typing import Any, Literal, Union

from recjobs.errors import ConfigError

_SEQUENCES = (tuple, list, collections.abc.Sequence, collections.abc.Iterable)


def describe(hint: Any) -> str:
    """How a type reads in an error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "any value"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args if _configurable(a))
    if origin in _SEQUENCES:
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
        inner = args[0] if args else Any
        return f"a list of {_plural(describe(inner))}"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _plural(text: str) -> str:
    for single, many in (
        ("an integer", "integers"),
        ("a number", "numbers"),
        ("a string", "strings"),
    ):
        if text == single:
            return many
    return text


def _configurable(hint: Any) -> bool:
    """Whether a plain YAML value can ever satisfy the hint (tensors, callables cannot)."""
    if hint in (Any, bool, int, float, str, type(None), dict, list, tuple):
        return True
    origin = typing.get_origin(hint)
    if origin is Literal:
        return True
    if origin in (Union, types.UnionType):
        return any(_configurable(a) for a in typing.get_args(hint))
    return origin in (*_SEQUENCES, dict)


def key_text(key: Any) -> str:
    """A user-given key as it reads inside a dotted error path: quoted unless it is plain."""
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_@/+-]+", text) else repr(key)


def show(value: Any) -> str:
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return f"list {list(value)!r}"
    return repr(value)


class _Mismatch(Exception):
    pass


def coerce(value: Any, hint: Any, where: str, hint_text: str | None = None) -> Any:
    """Return `value` converted to `hint`, or raise ConfigError naming `where`."""
    try:
        return _coerce(value, hint)
    except _Mismatch:
        raise ConfigError(
            where, f"expected {describe(hint)}, got {show(value)}", hint_text
        ) from None


def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        # Exact types first so that `int | float` keeps an int and `float | list` keeps a list.
        members = [a for a in args if _configurable(a)]
        for member in sorted(members, key=lambda a: 0 if _exact(value, a) else 1):
            try:
                return _coerce(value, member)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin in _SEQUENCES or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        inner = args[0] if args else Any
        items = [_coerce(v, inner) for v in value]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    raise _Mismatch  # tensors, callables, modules: nothing in YAML can be one


def _exact(value: Any, hint: Any) -> bool:
    if hint is float:
        return isinstance(value, float)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    if hint is type(None):
        return value is None
    return False
