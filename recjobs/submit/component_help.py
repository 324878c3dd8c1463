"""`torchx run COMPONENT --help` for the recjobs components, with correct labels.

TorchX builds a component's help from its signature and its docstring's `Args:`, and its
formatter appends "(required)" or "(default: VALUE)" to every argument itself, so a docstring
must not name the default again. One label it gets wrong cannot be fixed in the signature: the
pass-through overrides (`*overrides`, everything after `--`) become an argparse REMAINDER
positional, which argparse marks required, so TorchX labels them "(required)" although none is
needed. `install()` swaps in a formatter that leaves that label off; it affects only the
`torchx` process that loaded a recjobs component file.

It also makes the parser's usage errors one line, as every other refusal of a component is
(`error: --cpu: invalid int value: '1.5' (see the component's --help)`, exit 2): argparse
printed the component's whole usage, a dozen lines, before its own error line.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any, NoReturn

from torchx.specs import builders, file_linter

from recjobs.streams import say


class ComponentHelpFormatter(file_linter.TorchXArgumentHelpFormatter):
    """TorchX's component help formatter, minus "(required)" on the pass-through overrides."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.nargs == argparse.REMAINDER:
            return action.help or ""
        return super()._get_help_string(action)


def usage_error_line(message: str, component: str) -> str:
    """argparse's error `message` about `component`'s arguments as recjobs' one line:
    `argument -j/--j: expected one argument` -> `error: -j: expected one argument (...)`."""
    hint = f"see torchx run ... {component} --help"
    match = re.fullmatch(r"argument ([^/:\s]+)(?:/\S+)?: (.*)", message, flags=re.DOTALL)
    if match:
        return f"error: {match[1]}: {match[2]} ({hint})"
    return f"error: {component} component: {message} ({hint})"


def _with_one_line_errors(create: Callable[..., argparse.ArgumentParser]) -> Callable[..., Any]:
    if getattr(create, "one_line_errors", False):
        return create

    def created(cmpnt_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        parser = create(cmpnt_fn, *args, **kwargs)

        def error(message: str) -> NoReturn:
            say(usage_error_line(message, cmpnt_fn.__name__))
            raise SystemExit(2)

        parser.error = error  # type: ignore[method-assign]
        return parser

    created.one_line_errors = True  # type: ignore[attr-defined]
    return created


def install() -> None:
    """Make `torchx run ... --help` use `ComponentHelpFormatter` (TorchX 0.7 builds the parser in
    `torchx.specs.builders` with the formatter it imported there), and its usage errors one
    line (where this TorchX builds the parser in `_create_args_parser`; else its own)."""
    builders.TorchXArgumentHelpFormatter = ComponentHelpFormatter  # type: ignore[misc]
    if hasattr(builders, "_create_args_parser"):
        builders._create_args_parser = _with_one_line_errors(builders._create_args_parser)
