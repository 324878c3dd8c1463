"""`recjobs` command line: resolve | train | status | log | recommend | score | plot | data |
config-reference.

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
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recjobs.atomic import remove_leftovers
from recjobs.config.resolver import (
    Overrides,
    add_override_arguments,
    drop_ignored_keys,
    load_file,
    load_yaml,
    resolve,
    resolve_dict,
)
from recjobs.config.schema import (
    TASKS,
    ResolvedConfig,
    SharedConfig,
    SynthSize,
    synth_density_problem,
)
from recjobs.errors import ConfigError, UserError, cannot_write
from recjobs.file_kind import require_regular
from recjobs.holdings import check_output
from recjobs.streams import StreamFailed, WatchedStdout, quiet, say, stdout_failed

if TYPE_CHECKING:
    import pyarrow as pa

    from recjobs.inference.recommend import Recommender

log = logging.getLogger("recjobs.cli")

EXIT_INTERRUPTED = 130  # 128 + SIGINT
# recommend --k: as the TorchX component's (recjobs.submit.launch.MAX_K); docs/reliability.md
MAX_K = 100_000


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line in our error format (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(self.prog, message, "see --help")


def _path(text: str) -> str:
    """A path argument: '' would mean the working directory (or a default) without saying so."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a file or directory")
    if text.startswith("~"):  # `--out=~/x` or a quoted '~/x': the shell left it as it was
        raise argparse.ArgumentTypeError(
            f"{text[:60]!r} starts with ~, which the shell did not expand and recjobs does not "
            "(it would name a folder called ~...); write the whole path, or give the flag and "
            "the path as two words, which the shell expands"
        )
    return text


def _task_args(parser: argparse.ArgumentParser) -> None:
    # Optional for argparse only: `resolve --mixed-precision retrieval` would hand the task to
    # the option before it (nargs ? or +); `_place_task` takes it back, or reports it missing.
    parser.add_argument("task", nargs="?", choices=TASKS, help="which model to train")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--config", type=_path, metavar="FILE", help="YAML config; default: built-in defaults"
    )
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
    _task_required_in_usage(p)
    p.set_defaults(run=_resolve)

    p = sub.add_parser("train", help="train a model (under torchrun: one DDP job)")
    _task_args(p)
    p.add_argument(
        "--run-dir",
        type=_path,
        metavar="DIR",
        help="where config, metrics, checkpoints and model go (default: training.artifact_dir)",
    )
    resume = p.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR from DIR/checkpoints/last.pt (an error when there is "
        "none); without --config, with DIR/config.yaml (overrides still apply)",
    )
    resume.add_argument(
        "--resume-or-start",
        action="store_true",
        help="like --resume when DIR has a checkpoint, else start a new run there (what a "
        "TorchX job does, so that a retry resumes)",
    )
    _task_required_in_usage(p)
    p.set_defaults(run=_train)

    p = sub.add_parser(
        "status",
        help="where a run stands, from its run directory: running, finished, preempted, "
        "failed, stopped or not started; progress, best validation, model",
    )
    p.add_argument(
        "run_dir",
        type=_path,
        metavar="RUN_DIR",
        help="the run directory (--run-dir, runs/<app id>)",
    )
    p.set_defaults(run=_status)

    p = sub.add_parser("log", help="print a run's train.log; -f follows it until the run ends")
    p.add_argument(
        "run_dir",
        type=_path,
        metavar="RUN_DIR",
        help="the run directory (--run-dir, runs/<app id>)",
    )
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing what the trainer writes (waiting for a run that has not started) "
        "and exit when the run ends: 0 when it finished, else its exit code",
    )
    p.set_defaults(run=_log)

    p = sub.add_parser(
        "recommend",
        help="top-K items per user from a trained model (CSV or Parquet by --out's extension)",
    )
    _model_dir_arg(p)
    p.add_argument("--k", type=int, default=10, help="items per user (default: %(default)s)")
    p.add_argument(
        "--out",
        required=True,
        type=_path,
        metavar="FILE",
        help="output file, .parquet or .csv: user_id, item_id, score, rank; with --parts a "
        "directory",
    )
    p.add_argument(
        "--users",
        type=_path,
        metavar="FILE",
        help="Parquet/CSV with a user_id column; default: every user of the model's users table",
    )
    p.add_argument(
        "--candidates",
        type=_path,
        metavar="FILE",
        help="Parquet/CSV of user_id,item_id pairs to rank (needed by ranking models), e.g. "
        "a retrieval model's recommend output",
    )
    p.add_argument(
        "--include-seen",
        action="store_true",
        help="also recommend the users' training items (left out by default)",
    )
    p.add_argument(
        "--parts",
        choices=("parquet", "csv"),
        help="batch job: --out is a directory and this process writes its share of the users "
        "to part-RANK-of-WORLD_SIZE.{parquet,csv} (RANK, WORLD_SIZE from torchrun)",
    )
    p.set_defaults(run=_recommend)

    p = sub.add_parser("score", help="scores of given user,item pairs")
    _model_dir_arg(p)
    p.add_argument(
        "--pairs",
        required=True,
        type=_path,
        metavar="FILE",
        help="Parquet/CSV with user_id, item_id",
    )
    p.add_argument(
        "--out",
        required=True,
        type=_path,
        metavar="FILE",
        help="output file: user_id, item_id, score",
    )
    p.set_defaults(run=_score)

    p = sub.add_parser(
        "plot", help="loss, learning rates and validation metrics by step of one or more runs"
    )
    p.add_argument(
        "run_dirs",
        nargs="+",
        type=_path,
        metavar="RUN_DIR",
        help="run directories (their metrics.jsonl), drawn over each other under their names",
    )
    p.add_argument(
        "-o",
        "--out",
        type=_path,
        metavar="FILE",
        help="the image; its extension picks the format: .png, .svg or .pdf (default: "
        "curves.png in the first RUN_DIR, replaced by a new plot; never a file of the working "
        "directory)",
    )
    p.set_defaults(run=_plot)

    p = sub.add_parser(
        "config-reference",
        help="print docs/config.md: every config key, its type, default, range and meaning",
    )
    p.set_defaults(run=_config_reference)

    data = sub.add_parser("data", help="make training data").add_subparsers(
        dest="data_command", required=True, parser_class=_Parser
    )
    p = data.add_parser("synth", help="write the synthetic data set and a matching config")
    p.add_argument(
        "--out",
        required=True,
        type=_path,
        metavar="DIR",
        help="folder for the four Parquet tables and config.yaml (created if missing)",
    )
    # The same defaults and meanings as dataset.synth.* and shared.seed in a config.
    for name, field in _synth_fields().items():
        meaning = field.metadata["doc"]
        if name == "seed":
            meaning = "seed of the generated data; the written config.yaml gets it as shared.seed"
        p.add_argument(
            f"--{name}",
            type=int,
            default=field.default,
            metavar="N",
            help=f"{meaning} (default: %(default)s)",
        )
    _force_arg(p)
    p.set_defaults(run=_synth)
    p = data.add_parser(
        "movielens", help="convert MovieLens ml-100k / ml-1m files you have into the layout"
    )
    p.add_argument(
        "--src",
        required=True,
        type=_path,
        metavar="DIR",
        help="folder holding u.data/u.user/u.item or ratings.dat/users.dat/movies.dat",
    )
    p.add_argument(
        "--out",
        required=True,
        type=_path,
        metavar="DIR",
        help="folder for the four Parquet tables and config.yaml (created if missing)",
    )
    p.add_argument(
        "--split",
        choices=("user-time", "global-time"),
        default="user-time",
        help="user-time: each user's latest ratings are validation; global-time: the latest "
        "ratings overall (leaves many validation users without training ratings) (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        help="share of the ratings for validation (default 0.2 for user-time, 0.1 for global-time)",
    )
    _force_arg(p)
    p.set_defaults(run=_movielens)
    return parser


def _force_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the data set (or config.yaml) already in --out; a run or a model there "
        "is never replaced",
    )


def _check_dataset_out(out: str, force: bool) -> None:
    """A data set is written only where it replaces no run or model, and replaces another data
    set (or a config.yaml) only when asked to with --force."""
    from recjobs.holdings import DATASET_FILES, found, other_kind

    other = other_kind(Path(out), "data set")
    if other:
        raise UserError(out, f"holds {other}, not a data set", "use another --out")
    held = found(Path(out), ("config.yaml", *DATASET_FILES))
    if held and not force:
        raise UserError(
            out,
            f"already holds a data set ({', '.join(held)})",
            "pass --force to replace it, or use another --out",
        )


def _task_required_in_usage(parser: argparse.ArgumentParser) -> None:
    choices = "{" + ",".join(TASKS) + "}"
    usage = parser.format_usage().removeprefix("usage: ").strip()
    parser.usage = usage.replace(f"[{choices}]", choices).replace(parser.prog, "%(prog)s", 1)


def _place_task(args: argparse.Namespace) -> None:
    """The task given among the options: a task name that argparse gave to an option taking a
    variable number of values (--optimizer-args/--scheduler-args K=V ..., --mixed-precision
    [fp16|bf16]) is the task. Values of single-value options (--config FILE) never are."""
    where = f"recjobs {args.command}"
    if args.task is not None:
        return
    if args.mixed_precision in TASKS:
        args.task, args.mixed_precision = args.mixed_precision, True
        return
    for flag in ("--optimizer-args", "--scheduler-args"):
        values = getattr(args, flag[2:].replace("-", "_")) or []
        if any(v in TASKS for v in values):
            args.task = next(v for v in values if v in TASKS)
            values.remove(args.task)
            if not values:
                raise UserError(where, f"argument {flag}: expected at least one argument")
            return
    raise UserError(where, "the following arguments are required: task", "see --help")


def _model_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_dir", type=_path, metavar="DIR", help="a run directory or its model/"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: this process's GPU (LOCAL_RANK) when one is visible, else the CPU "
        "(default: %(default)s)",
    )


def _load_recommender(args: argparse.Namespace) -> Recommender:
    import torch

    from recjobs.inference.recommend import Recommender
    from recjobs.training.torchrun_env import torchrun_place

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise UserError("--device", "cuda was requested but no CUDA device is visible")
    device = f"cuda:{torchrun_place().local_rank}" if args.device != "cpu" and cuda else "cpu"
    return Recommender.load(args.model_dir, device=device)


def _resolve_args(args: argparse.Namespace) -> ResolvedConfig:
    _place_task(args)
    overrides = Overrides.from_args(args)
    if args.config_json is not None:
        return resolve_dict(load_yaml(args.config_json, "--config-json"), args.task, overrides)
    saved = _run_dir_config(args) if args.config is None else None
    if saved is not None:
        return resolve_dict(saved, args.task, overrides)
    return resolve(args.task, args.config, overrides)


def _run_dir_config(args: argparse.Namespace) -> dict | None:
    """`train --resume` (or --resume-or-start) without --config: the run directory's own
    config.yaml, if it has one."""
    if not (getattr(args, "resume", False) or getattr(args, "resume_or_start", False)):
        return None
    run_dir = Path(args.run_dir or resolve(args.task).training.artifact_dir)
    path = run_dir / "config.yaml"
    require_regular(path, ConfigError)  # a FIFO is not "no config.yaml": it would be skipped
    if not path.is_file():
        return None
    raw = load_file(path)
    if args.task not in raw:
        other = next((t for t in TASKS if t in raw), "another")
        raise ConfigError(
            str(path), f"holds a {other} run, not {args.task}", f"use recjobs train {other}"
        )
    log.info("resuming with %s", path)
    return drop_ignored_keys(raw)


def _resolve(args: argparse.Namespace) -> int:
    cfg = _resolve_args(args)
    json.dump(cfg.to_dict(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    from recjobs.training.trainer import EXIT_PREEMPTED, Preempted, train

    cfg = _resolve_args(args)
    try:
        train(cfg, args.run_dir, resume=args.resume, resume_or_start=args.resume_or_start)
    except Preempted as exc:
        logging.getLogger("recjobs").warning("%s", exc)
        return exc.exit_code or EXIT_PREEMPTED
    return 0


def _status(args: argparse.Namespace) -> int:
    from recjobs.training import run_status

    sys.stdout.write(run_status.describe(run_status.read_status(args.run_dir)))
    return 0


def _log(args: argparse.Namespace) -> int:
    from recjobs.training import run_status

    try:
        if not args.follow:
            run_status.print_log(args.run_dir, sys.stdout.buffer)
            return 0
        return run_status.follow_log(args.run_dir, sys.stdout.buffer)
    except BrokenPipeError:  # `recjobs log DIR | head`: the reader has what it wanted
        quiet(sys.stdout)
        return 0
    except KeyboardInterrupt:
        say(f"recjobs log: stopped following {args.run_dir} (Ctrl-C); the run itself goes on")
        return EXIT_INTERRUPTED


def _synth_fields() -> dict[str, dataclasses.Field[Any]]:
    """`data synth`'s options: dataset.synth.* and shared.seed of the config schema."""
    fields = {
        f.name: f for f in (*dataclasses.fields(SynthSize), *dataclasses.fields(SharedConfig))
    }
    return {name: fields[name] for name in ("users", "items", "interactions", "seed")}


_SYNTH_MINIMUM = (
    "a data set that trains has at least 2 users, 2 items and 10 interactions (both splits "
    "non-empty, batches of 2 or more), taking at most half of the user-item pairs"
)


def _synth(args: argparse.Namespace) -> int:
    from recjobs.data import write_dataset

    # The same ranges as dataset.synth.* and shared.seed in a config.
    for name, field in _synth_fields().items():
        valid = field.metadata["range"]
        value = getattr(args, name)
        if value not in valid:
            small = name != "seed" and value < valid.low
            raise UserError(f"--{name}", valid.problem(value), _SYNTH_MINIMUM if small else None)
    dense = synth_density_problem(args.users, args.items, args.interactions)
    if dense:
        raise UserError("--interactions", dense, "fewer --interactions, or more --users or --items")
    _check_dataset_out(args.out, args.force)
    with _output_errors(args.out), _stoppable(_data_set_output(args.out)):
        path = write_dataset(
            args.out, args.users, args.items, args.interactions, args.seed, interruptible=True
        )
    print(path)
    return 0


class _Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM during a data command, raised wherever the main thread is."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Interrupted(UserError):
    """A data command stopped by a signal: one line, exit 128 + the signal's number."""

    def __init__(self, signum: int, problem: str):
        super().__init__(f"interrupted ({signal.Signals(signum).name})", problem)
        self.exit_code = 128 + signum


class _Output:
    """What a command stopped by a signal reports about its output: `out`, and `watched`, the
    file replaced last, with its identity when the command started."""

    def __init__(self, out: str, what: str, watched: Path | None = None):
        self.what = what
        self.aim(out, watched)

    def aim(self, out: str, watched: Path | None = None) -> None:
        """The output, once the command knows it better (`recommend --parts`: its part file)."""
        self.out, self.watched = out, Path(out) if watched is None else watched
        self.before = _identity(self.watched)

    def interrupted(self, signum: int) -> _Interrupted:
        if self.before != _identity(self.watched):  # replaced last, once all else is in place
            return _Interrupted(signum, f"{self.out} holds the new {self.what}, whole")
        if self.before is not None:
            return _Interrupted(signum, f"{self.out} is as it was (nothing of it replaced)")
        return _Interrupted(signum, f"nothing was written to {self.out}")


@contextlib.contextmanager
def _stoppable(output: _Output) -> Iterator[_Output]:
    """SIGINT and SIGTERM stop a command that writes `output` at once, wherever it is (loading
    a model, generating data in a worker thread, writing a table in slices): one line naming
    the signal and saying what the output holds, exit 130 or 143. SIGTERM's default would end
    the process silently, mid-write, leaving the writer's temporary file; raised here, the
    exception passes through the writer's clean-up (recjobs.atomic)."""

    def stop(signum: int, frame: Any) -> None:
        raise _Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield output
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, _Stopped) else signal.SIGINT
        remove_leftovers()
        raise output.interrupted(signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _data_set_output(out: str) -> _Output:
    return _Output(out, "data set", Path(out) / "config.yaml")  # config.yaml is replaced last


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


@contextlib.contextmanager
def _output_errors(out: str) -> Iterator[None]:
    """An --out that is a file, not writable or full: one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise UserError(str(exc.filename or out), cannot_write(exc, out), "check --out") from None


def _movielens(args: argparse.Namespace) -> int:
    from recjobs.data import convert_movielens

    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise UserError("--val-fraction", f"must be between 0 and 1, got {args.val_fraction}")
    _check_dataset_out(args.out, args.force)
    with _output_errors(args.out), _stoppable(_data_set_output(args.out)):
        path = convert_movielens(
            args.src, args.out, split=args.split, val_fraction=args.val_fraction
        )
    print(path)
    return 0


def _recommend(args: argparse.Namespace) -> int:
    with _stoppable(_Output(args.out, "recommendations")) as output:
        return _recommend_into(args, output)


def _recommend_into(args: argparse.Namespace, output: _Output) -> int:
    from recjobs.inference import recommend

    if not 1 <= args.k <= MAX_K:  # a k beyond the catalogue gives every item
        raise UserError("--k", f"must be between 1 and {MAX_K}, got {args.k}")
    rank, world_size = _torchrun_rank()
    if args.parts:
        check_output(args.out, directory=True)
        out = recommend.part_path(args.out, rank, world_size, args.parts)
        output.aim(out)
    else:
        recommend.check_output_path(args.out)
        out = args.out
    check_output(out)
    rec = _load_recommender(args)
    encoders, columns = rec.encoders, rec.cfg.columns
    users = candidates = None
    if args.users:
        users = recommend.read_ids(
            args.users, "--users", {"user_id": (columns.user_id, encoders.user_id)}
        )["user_id"]
        if len(users) and not encoders.user_id.encode(users).any():
            raise UserError(
                args.users,
                "none of its users is in the model's users table",
                "ids are matched as they are: 7 and '7' differ",
            )
    if args.candidates:
        candidates = _pairs_file(rec, args.candidates, "--candidates")
    if args.parts:
        users, candidates = _this_process_share(rec, users, candidates, rank, world_size)
    table = rec.topk(users, k=args.k, exclude_seen=not args.include_seen, candidates=candidates)
    recommend.write_output(table, out)
    log.info(
        "%d recommendations for %d users (k=%d, training items %s) in %s",
        table.num_rows,
        len(table.column("user_id").unique()),
        args.k,
        "included" if args.include_seen else "left out",
        out,
    )
    print(out)
    return 0


def _score(args: argparse.Namespace) -> int:
    with _stoppable(_Output(args.out, "scores")):
        return _score_into(args)


def _score_into(args: argparse.Namespace) -> int:
    from recjobs.inference import recommend

    recommend.check_output_path(args.out)
    check_output(args.out)
    rec = _load_recommender(args)
    pairs = _pairs_file(rec, args.pairs, "--pairs")
    table = rec.score(pairs)
    if pairs.num_rows and not table.num_rows:
        # As `recommend --users`: an empty output file would pass for a result.
        raise UserError(
            args.pairs,
            "none of its pairs has a user and an item in the model's tables",
            "ids are matched as they are: 7 and '7' differ",
        )
    recommend.write_output(table, args.out)
    log.info("%d scores in %s", table.num_rows, args.out)
    print(args.out)
    return 0


def _pairs_file(rec: Recommender, path: str, flag: str) -> pa.Table:
    import pyarrow as pa

    from recjobs.inference import recommend

    encoders, columns = rec.encoders, rec.cfg.columns
    found = recommend.read_ids(
        path,
        flag,
        {
            "user_id": (columns.interaction_user_col, encoders.user_id),
            "item_id": (columns.interaction_item_col, encoders.item_id),
        },
    )
    return pa.table(found)


def _torchrun_rank() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun sets them; (0, 1) outside torchrun."""
    from recjobs.training.torchrun_env import torchrun_place

    place = torchrun_place()
    return place.rank, place.world_size


def _this_process_share(
    rec: Recommender, users: Any, candidates: pa.Table | None, rank: int, world_size: int
) -> tuple[Any, pa.Table | None]:
    """This process's contiguous share of the users (of the candidates' users, if given)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from recjobs.inference import recommend

    if candidates is not None:
        ids = pc.unique(candidates.column("user_id"))
        mine = ids[recommend.shard(len(ids), rank, world_size)]
        return users, candidates.filter(pc.is_in(candidates.column("user_id"), mine))
    ids = rec.all_users() if users is None else pc.unique(users)
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    return ids[recommend.shard(len(ids), rank, world_size)], None


def _plot(args: argparse.Namespace) -> int:
    out = args.out or str(Path(args.run_dirs[0]) / "curves.png")
    with _stoppable(_Output(out, "image")):
        from recjobs.training.plot import plot_runs

        check_output(out)
        plot_runs(args.run_dirs, out)
    print(out)
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from recjobs.config.reference import config_reference

    sys.stdout.write(config_reference())
    return 0


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _set_up_logging() -> None:
    """stderr at RECJOBS_LOG_LEVEL (default INFO); lines of a torchrun process name its RANK."""
    level = os.environ.get("RECJOBS_LOG_LEVEL", "").strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        shown = os.environ["RECJOBS_LOG_LEVEL"][:40]
        raise UserError(
            "RECJOBS_LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}, got {shown!r}"
        )
    rank = os.environ.get("RANK", "").strip()
    if rank:  # a number, or the format would be the variable's text ('%' included)
        from recjobs.training.torchrun_env import torchrun_place

        rank = str(torchrun_place().rank)
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"
        if rank
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code. Nothing reaches the caller as a traceback for
    a standard stream that cannot be written: a closed pipe ends quietly with the command's
    code, a stdout that fails otherwise is one `error:` line and EXIT_OUTPUT_LOST, a failing
    stderr is lost without changing the code."""
    stdout = sys.stdout
    sys.stdout = WatchedStdout(stdout)  # type: ignore[assignment]
    try:
        code = _main(argv)
        code = _flush_stdout(code)
    except SystemExit as exc:  # argparse's --help
        raise SystemExit(_flush_stdout(exc.code)) from None
    finally:
        sys.stdout = stdout
        _settle_stderr()
    return code


def _flush_stdout(code: Any) -> Any:
    """Flush stdout now (a full disk shows here, not in Python's flush at exit): `code`, or
    the code of a stdout that could not take the output."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet(sys.stdout)
    except StreamFailed as exc:
        return stdout_failed(exc.error)
    return code


def _settle_stderr() -> None:
    """What logging left in stderr's buffer, flushed now; lost if stderr cannot take it."""
    try:
        sys.stderr.flush()
    except OSError:
        quiet(sys.stderr)


def _main(argv: Sequence[str] | None) -> int:
    try:
        _set_up_logging()
        args = build_parser().parse_args(argv)
        return args.run(args)
    except BrokenPipeError:
        quiet(sys.stdout)
        return 0
    except StreamFailed as exc:
        return stdout_failed(exc.error)
    except UserError as exc:
        # backslashreplace: a message quoting odd input (lone surrogates) must still print.
        say(exc.line().encode("utf-8", "backslashreplace").decode("utf-8"))
        return exc.exit_code
    except KeyboardInterrupt:
        # Ctrl-C before the trainer took over SIGINT (while resolving, or in `data`): nothing
        # of a run was written yet. The trainer itself turns it into a checkpoint and exit 130.
        say("error: interrupted (SIGINT) before training started")
        return EXIT_INTERRUPTED
