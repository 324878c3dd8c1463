"""`recjobs ... --help`: every argument of every subcommand says what it is, and its default."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator

import pytest

from recjobs.cli import build_parser


def commands(
    parser: argparse.ArgumentParser, name: str = "recjobs"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The real parser and every subcommand's, recursively (`recjobs data synth`, ...)."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from commands(sub, f"{name} {sub_name}")


def arguments() -> list[tuple[str, str, argparse.Action, argparse.ArgumentParser]]:
    found = []
    for command, parser in commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            label = "/".join(action.option_strings) or action.metavar or action.dest
            found.append((command, label, action, parser))
    return found


def shown_help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    """The help text as `--help` prints it (with %(default)s expanded)."""
    return parser._get_formatter()._expand_help(action)


def has_default(action: argparse.Action) -> bool:
    """A value the option takes when not given; flags (False) and "not set" (None) have none."""
    return action.default not in (None, False, argparse.SUPPRESS)


ARGUMENTS = arguments()


def test_the_walk_finds_every_subcommand_and_its_options():
    found = {command for command, *_ in ARGUMENTS}
    assert {"recjobs data synth", "recjobs data movielens", "recjobs train"} <= found
    assert ("recjobs data synth", "--users") in {(c, label) for c, label, *_ in ARGUMENTS}


@pytest.mark.parametrize(
    ("command", "label", "action", "parser"),
    ARGUMENTS,
    ids=[f"{command[8:]} {label}" for command, label, *_ in ARGUMENTS],
)
def test_every_argument_has_help_and_shows_its_default(command, label, action, parser):
    text = shown_help(action, parser) if action.help else ""
    assert len(text.split()) >= 3, f"{command} {label}: no help text"
    if has_default(action):
        assert f"(default: {action.default})" in text, f"{command} {label}: {text!r}"


def test_data_synth_help_prints_descriptions_and_defaults():
    done = subprocess.run(
        [sys.executable, "-m", "recjobs", "data", "synth", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stdout.split())
    for default in ("2000", "500", "60000", "42"):
        assert f"(default: {default})" in flat
    assert "users" in flat and "interactions" in flat
