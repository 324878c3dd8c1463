"""Checking plain YAML values against Python type hints.

One mechanism serves the config schema (`recjobs.config.schema` dataclasses) and the keyword
arguments of any `torch.optim` optimizer or `lr_scheduler` class (their signatures), so a
type error reads the same wherever it comes from. Values are converted only where the
meaning cannot change: an int where a float is expected, a list where a tuple is expected.
"""

from __future__ import annotations

import collections.abc
import difflib
import math
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
    text = key if isinstance(key, str) else None
    if text is not None and len(text) <= MAX_SHOWN and re.fullmatch(r"[A-Za-z0-9_@/+-]+", text):
        return text
    return brief(key)


# How much of a user's value an error message quotes: enough to recognise it, never so much
# that a multi-megabyte value makes the message itself the problem.
MAX_SHOWN = 60
_MAX_ITEMS = 5
_INT64 = (-(2**63), 2**63 - 1)


def brief(value: Any) -> str:
    """repr() of a user's value, bounded: long strings, big numbers and lists are shortened."""
    if isinstance(value, str):
        if len(value) <= MAX_SHOWN:
            return repr(value)
        return f"{value[: MAX_SHOWN - 20]!r}... ({len(value)} characters)"
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() <= 200:  # str() of a huge int is slow, and refused past 4300 digits
            return repr(value)
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, (list, tuple)):
        items = [brief(v) for v in value[:_MAX_ITEMS]]
        more = f", ... ({len(value)} items)" if len(value) > _MAX_ITEMS else ""
        return "[" + ", ".join(items) + more + "]"
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value) if isinstance(value, (bytes, bytearray)) and len(value) <= 40 else ""
    return text or f"a {type(value).__name__}"


def show(value: Any) -> str:
    """A user's value in an error message: its YAML type and a bounded repr."""
    if isinstance(value, str):
        return f"string {brief(value)}"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return f"list {brief(list(value))}"
    return brief(value)


def did_you_mean(name: Any, choices: Any, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """Close matches of a misspelt name; none for long names (difflib is quadratic)."""
    if not isinstance(name, str) or len(name) > MAX_SHOWN:
        return []
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=cutoff)


class _Mismatch(Exception):
    pass


class _OutOfRange(Exception):
    """The value has the right type but no machine type holds it (inf, a 100-digit integer).

    `at` is where inside the value: "[2]" for the third item of a list, ".eps" in a mapping.
    """

    def __init__(self, problem: str, at: str = ""):
        super().__init__(problem)
        self.problem, self.at = problem, at

    def inside(self, step: str) -> _OutOfRange:
        return _OutOfRange(self.problem, step + self.at)


_YAML11_TRUE = ("yes", "Yes", "YES", "on", "On", "ON")
_YAML11_FALSE = ("no", "No", "NO", "off", "Off", "OFF")
_UNDERSCORED = re.compile(r"[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?")


def yaml11_reading(value: Any) -> str | None:
    """What YAML 1.1 (PyYAML, and recjobs before it read YAML 1.2) made of a value that
    recjobs now reads as text, written as it should be: 'true' for `yes`, '1000' for `1_000`;
    None for any other value."""
    if not isinstance(value, str):
        return None
    if value in _YAML11_TRUE or value in _YAML11_FALSE:
        return "true" if value in _YAML11_TRUE else "false"
    if "_" in value and len(value) <= MAX_SHOWN and _UNDERSCORED.fullmatch(value):
        return value.replace("_", "").lstrip("+")
    return None


def yaml11_hint(value: Any) -> str | None:
    """The fix for a value YAML 1.1 read as a boolean or number and YAML 1.2 reads as text."""
    reading = yaml11_reading(value)
    if reading is None:
        return None
    return (
        f"YAML 1.1 read {value} as {reading}, YAML 1.2 (what recjobs reads) as text: "
        f"write {reading}"
    )


def coerce(value: Any, hint: Any, where: str, hint_text: str | None = None) -> Any:
    """Return `value` converted to `hint`, or raise ConfigError naming `where`."""
    if hint is Any and yaml11_reading(value) is not None:
        # Nothing types it: torch would get the text 'yes' (true in Python) for a flag.
        raise ConfigError(where, f"{show(value)} is ambiguous", yaml11_hint(value))
    try:
        return _coerce(value, hint)
    except _Mismatch:
        raise ConfigError(
            where,
            f"expected {describe(hint)}, got {show(value)}",
            yaml11_hint(value) or hint_text,
        ) from None
    except _OutOfRange as exc:
        raise ConfigError(where + exc.at, exc.problem, hint_text) from None


def _finite(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        raise _OutOfRange(f"must fit in a 64-bit integer, got {brief(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _OutOfRange(f"must be a finite number, got {value}")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _within(item, f"[{i}]", _finite)
    if isinstance(value, dict):
        for key, item in value.items():
            _within(item, f".{key_text(key)}", _finite)
    return value


def _within(value: Any, step: str, check: Any, *args: Any) -> Any:
    """check(value, *args) for an item of a collection, naming the item when out of range."""
    try:
        return check(value, *args)
    except _OutOfRange as exc:
        raise exc.inside(step) from None


def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return _finite(value)
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
            return _finite(value)
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return _finite(float(value))
            except OverflowError:  # an integer beyond float's range
                raise _OutOfRange(f"must be a finite number, got {brief(value)}") from None
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
        # An _OutOfRange is not caught: the type fitted, the value is what is wrong.
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
            return tuple(
                _within(v, f"[{i}]", _coerce, a) for i, (v, a) in enumerate(zip(value, args))
            )
        inner = args[0] if args else Any
        items = [_within(v, f"[{i}]", _coerce, inner) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return _finite(value)
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
