"""`torchx run COMPONENT --help` for the recjobs components, with correct labels.

TorchX builds a component's help from its signature and its docstring's `Args:`, and its
formatter appends "(required)" or "(default: VALUE)" to every argument itself, so a docstring
must not name the default again. One label it gets wrong cannot be fixed in the signature: the
pass-through overrides (`*overrides`, everything after `--`) become an argparse REMAINDER
positional, which argparse marks required, so TorchX labels them "(required)" although none is
needed. `install()` swaps in a formatter that leaves that label off; it affects only the
`torchx` process that loaded a recjobs component file.
"""

from __future__ import annotations

import argparse

from torchx.specs import builders, file_linter


class ComponentHelpFormatter(file_linter.TorchXArgumentHelpFormatter):
    """TorchX's component help formatter, minus "(required)" on the pass-through overrides."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.nargs == argparse.REMAINDER:
            return action.help or ""
        return super()._get_help_string(action)


def install() -> None:
    """Make `torchx run ... --help` use `ComponentHelpFormatter` (TorchX 0.7 builds the parser in
    `torchx.specs.builders` with the formatter it imported there)."""
    builders.TorchXArgumentHelpFormatter = ComponentHelpFormatter  # type: ignore[misc]
