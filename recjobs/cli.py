"""`recjobs` command line: resolve | train | data synth | data movielens.

User errors (config, data, checkpoint) print one line `error: <where>: <what> (<hint>)` on
stderr and exit with code 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from recjobs.config import Overrides, add_override_arguments, load_yaml, resolve, resolve_dict
from recjobs.errors import UserError
from recjobs.schema import TASKS, ResolvedConfig, SharedConfig, SynthSize

EXIT_INTERRUPTED = 130  # 128 + SIGINT


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line in our error format (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(self.prog, message, "see --help")


def _task_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=TASKS, help="which model to train")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="YAML config; default: built-in defaults")
    source.add_argument(
        "--config-json",
        metavar="JSON",
        help="the config inline, e.g. a resolved config passed to a job by the TorchX component",
    )
    add_override_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recjobs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("resolve", help="print the fully resolved config as JSON")
    _task_args(p)
    p.set_defaults(run=_resolve)

    p = sub.add_parser("train", help="train a model (under torchrun: one DDP job)")
    _task_args(p)
    p.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where config, metrics, checkpoints and model go (default: training.artifact_dir)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from DIR/checkpoints/last.pt if it exists"
    )
    p.set_defaults(run=_train)

    data = sub.add_parser("data", help="make training data").add_subparsers(
        dest="data_command", required=True, parser_class=_Parser
    )
    p = data.add_parser("synth", help="write the synthetic data set and a matching config")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--interactions", type=int, default=60000)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(run=_synth)
    p = data.add_parser(
        "movielens", help="convert MovieLens ml-100k / ml-1m files you have into the layout"
    )
    p.add_argument(
        "--src",
        required=True,
        metavar="DIR",
        help="folder holding u.data/u.user/u.item or ratings.dat/users.dat/movies.dat",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.set_defaults(run=_movielens)
    return parser


def _resolve_args(args: argparse.Namespace) -> ResolvedConfig:
    overrides = Overrides.from_args(args)
    if args.config_json is not None:
        return resolve_dict(load_yaml(args.config_json, "--config-json"), args.task, overrides)
    return resolve(args.task, args.config, overrides)


def _resolve(args: argparse.Namespace) -> int:
    cfg = _resolve_args(args)
    json.dump(cfg.to_dict(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    from recjobs.trainer import EXIT_PREEMPTED, Preempted, train

    cfg = _resolve_args(args)
    try:
        train(cfg, args.run_dir, resume=args.resume)
    except Preempted as exc:
        logging.getLogger("recjobs").warning("%s", exc)
        return exc.exit_code or EXIT_PREEMPTED
    return 0


def _synth(args: argparse.Namespace) -> int:
    from recjobs.data import write_dataset

    # The same ranges as dataset.synth.* and shared.seed in a config.
    fields = {
        f.name: f for f in (*dataclasses.fields(SynthSize), *dataclasses.fields(SharedConfig))
    }
    for name in ("users", "items", "interactions", "seed"):
        valid = fields[name].metadata["range"]
        if getattr(args, name) not in valid:
            raise UserError(f"--{name}", valid.problem(getattr(args, name)))
    with _output_errors(args.out):
        path = write_dataset(args.out, args.users, args.items, args.interactions, args.seed)
    print(path)
    return 0


@contextlib.contextmanager
def _output_errors(out: str) -> Iterator[None]:
    """An --out that is a file, not writable or full: one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise UserError(
            str(exc.filename or out), f"cannot write: {exc.strerror or exc}", "check --out"
        ) from None


def _movielens(args: argparse.Namespace) -> int:
    from recjobs.data import convert_movielens

    if not 0 < args.val_fraction < 1:
        raise UserError("--val-fraction", f"must be between 0 and 1, got {args.val_fraction}")
    with _output_errors(args.out):
        path = convert_movielens(args.src, args.out, val_fraction=args.val_fraction)
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("RECJOBS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        if os.environ.get("RANK") is None
        else f"%(asctime)s %(levelname)s [rank {os.environ['RANK']}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UserError as exc:
        # backslashreplace: a message quoting odd input (lone surrogates) must still print.
        print(exc.line().encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # Ctrl-C before the trainer took over SIGINT (while resolving, or in `data`): nothing
        # of a run was written yet. The trainer itself turns it into a checkpoint and exit 130.
        print("error: interrupted (SIGINT) before training started", file=sys.stderr)
        return EXIT_INTERRUPTED
