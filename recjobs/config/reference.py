"""docs/config.md, written from the schema: every key with its type, default, range and meaning.

`recjobs config-reference > docs/config.md` regenerates the page; a test compares the page with
`config_reference()` and fails when someone changed the schema and not the page. The meanings
are the `doc` of each field in `recjobs.config.schema`, so a new key without one fails here.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal, Union

from recjobs.config.schema import (
    IGNORED_KEYS,
    TASK_DEFAULTS,
    TASK_ONLY_KEYS,
    TASKS,
    DatasetConfig,
    SharedConfig,
    TaskConfig,
)

HEADER = """\
# Config reference

Generated from `recjobs/config/schema.py` by `recjobs config-reference > docs/config.md`; do not
edit by hand (`tests/test_config_reference.py` fails when this page is stale).

A config file has `dataset:`, `shared:` and one section per task (`retrieval:`, `ranking:`),
each with `columns:`, `model:` and `training:`. Keys below `TASK` are written under the task's
section (`retrieval.training.batch_size`); on the command line they are relative to it
(`--set training.batch_size=2048`). `recjobs resolve TASK` prints every key with its value.
Ranges are checked when the config is resolved; the YAML limits are in
[reliability.md](reliability.md).
"""


def config_reference() -> str:
    """The Markdown of docs/config.md."""
    lines = [HEADER]
    for title, prefix, cls in (
        ("dataset", "dataset", DatasetConfig),
        ("shared", "shared", SharedConfig),
    ):
        lines += [f"## `{title}`", "", *_table(prefix, cls, task_section=None), ""]
    for sub in ("columns", "model", "training"):
        hint = typing.get_type_hints(TaskConfig)[sub]
        lines += [f"## `TASK.{sub}`", "", *_table(f"TASK.{sub}", hint, task_section=sub), ""]
    lines += ["## Ignored keys", "", "| key | why |", "| --- | --- |"]
    lines += [f"| `TASK.{path}` | {why} |" for path, why in IGNORED_KEYS.items()]
    lines += [
        "",
        "Keys of the common config format that have no effect here. A config that sets one "
        "resolves with one warning and without it (a key that would change what trains is never "
        "ignored: it is an unknown key); a run directory's saved config drops it silently.",
        "",
    ]
    return "\n".join(lines)


def _table(prefix: str, cls: type, task_section: str | None) -> list[str]:
    rows = ["| key | type | default | valid | meaning |", "| --- | --- | --- | --- | --- |"]
    rows += _rows(prefix, cls, task_section, ())
    return rows


def _rows(prefix: str, cls: type, task_section: str | None, nested: tuple[str, ...]) -> list[str]:
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        doc = f.metadata.get("doc")
        if not doc:
            raise ValueError(f"{prefix}.{f.name} has no doc in recjobs.config.schema")
        name = f"{prefix}.{f.name}"
        meaning = _only_for(task_section, (*nested, f.name)) + _escape(doc)
        inner = _dataclass_of(hint)
        if inner is not None and not _nullable(hint) and f.name != "early_stopping":
            rows.append(f"| `{name}` | mapping | | | {meaning} (keys below) |")
        else:
            default = _default(f, task_section, (*nested, f.name))
            rows.append(
                f"| `{name}` | {_type_text(hint)} | {default} | {_valid(f, hint)} | {meaning} |"
            )
        if inner is not None:
            rows += _rows(name, inner, task_section, (*nested, f.name))
    return rows


def _only_for(task_section: str | None, path: tuple[str, ...]) -> str:
    if task_section is None or len(path) != 1:
        return ""
    owners = [t for t in TASKS if path[0] in TASK_ONLY_KEYS[t].get(task_section, ())]
    return f"*{owners[0]} only.* " if owners else ""


def _default(f: dataclasses.Field, task_section: str | None, path: tuple[str, ...]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if task_section is not None and len(path) == 1:
        per_task = {t: TASK_DEFAULTS[t][task_section].get(path[0], value) for t in TASKS}
        if len(set(map(_yaml, per_task.values()))) > 1:
            return "; ".join(f"{t}: {_yaml(v)}" for t, v in per_task.items())
    if dataclasses.is_dataclass(value):
        return ""
    return _yaml(value)


def _yaml(value: Any) -> str:
    """A default as it is written in a config file."""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {v}" for k, v in value.items())
        return f"`{{{inner}}}`"
    return f"`{json.dumps(value) if isinstance(value, list) else value}`"


def _valid(f: dataclasses.Field, hint: Any) -> str:
    valid = f.metadata.get("range")
    if valid is not None:
        return valid.text() + (" each" if _is_list(hint) else "")
    literals = [a for a in _flat(hint) if typing.get_origin(a) is Literal]
    choices = [str(v) for a in literals for v in typing.get_args(a)]
    if choices and bool in _flat(hint):
        choices = ["true", "false", *choices]
    return ", ".join(choices)


def _type_text(hint: Any) -> str:
    parts = []
    for arg in _flat(hint):
        if arg is type(None):
            parts.append("null")
        elif typing.get_origin(arg) is Literal:
            parts.append("string" if all(isinstance(v, str) for v in typing.get_args(arg)) else "")
        elif arg is bool:
            parts.append("bool")
        elif arg is int:
            parts.append("int")
        elif arg is float:
            parts.append("float")
        elif arg is str:
            parts.append("string")
        elif _is_list(arg):
            parts.append(f"list of {_type_text(typing.get_args(arg)[0])}")
        elif typing.get_origin(arg) is dict or dataclasses.is_dataclass(arg):
            parts.append("mapping")
        else:
            parts.append(getattr(arg, "__name__", str(arg)))
    return " or ".join(dict.fromkeys(p for p in parts if p))


def _flat(hint: Any) -> list[Any]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return list(typing.get_args(hint))
    return [hint]


def _is_list(hint: Any) -> bool:
    return typing.get_origin(hint) in (tuple, list)


def _nullable(hint: Any) -> bool:
    return type(None) in _flat(hint)


def _dataclass_of(hint: Any) -> Any:
    for arg in _flat(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
