"""Every fenced command in README.md and docs/*.md runs as written, or the docs say why not.

Each fenced block is one test (id `FILE:LINE` of its opening fence). Its commands run exactly as
written, in document order (README.md first: docs/deploy.md uses `make run`'s run directory), in one
temporary copy of the repository (tracked files and untracked ones git does not ignore; `.venv` is
a link to this checkout's venv), with the venv's bin first on PATH as after `source
.venv/bin/activate`. Nothing in the checkout is written. A shell block runs in one bash process,
command by command, stopping at the first that fails; a Python block is one `python -c`; a
transcript (`$ command` lines followed by output) is run and its output compared.

What is not run as written is named in exactly one place:

- in the docs, a marker on the line right before the fence:
  `<!-- needs: REASON[, REASON] -->` (REASONS: cluster, docker, gpu, network): the block's
  commands that need one of the listed reasons are not run. Each listed reason must be needed by
  a command of the block (see `needs`), otherwise the marker is wrong and the test fails; the
  block's other commands still run.
  `<!-- synopsis -->`: the block is usage notation (`[OPTIONAL]`, `{a,b}`, `a|b`, `...`, the
  METAVARIABLES below); a line of it without such notation is a command and runs.
- in this file: QUICKSTART_TINY (the one tiny-run substitution), PLACEHOLDERS (what a
  placeholder in a command becomes), PROVIDED_FILES (input files a command expects the reader to
  have) and NOT_RUN (`make test`, this suite, checked with `make -n` instead). A table entry
  the docs no longer use fails `test_the_tables_name_only_what_the_docs_use`.

A new unmarked command that fails makes its block's test fail; so does a marker whose reason no
command of its block has (`test_a_marker_without_a_valid_reason_fails` and its neighbours check
this file's own checks). Inline `code` in prose is not collected: only fenced blocks.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# ---------------------------------------------------------------------------- the explicit tables

# The one tiny-run substitution: in the temporary copy, config/quickstart.yaml trains on tiny
# synthetic data for one epoch. Why: as written it trains 500 + 150 steps (`make run` took 2.5
# minutes on 2 busy cores), and `make run`, `torchx run` (.torchxconfig's default config), the
# README's `-j 1x2` job, docs/deploy.md's pass-through example and the README's
# `recjobs train ... --config config/quickstart.yaml` all train on this file. Commands that set
# max_epochs themselves (`--set=training.max_epochs=2`) keep it.
QUICKSTART_TINY: dict[str, object] = {
    "dataset.synth.users": 300,
    "dataset.synth.items": 80,
    "dataset.synth.interactions": 6000,
    "retrieval.training.max_epochs": 1,
    "ranking.training.max_epochs": 1,
}


@dataclass
class Workspace:
    """The temporary copy the docs' commands run in, and what earlier commands left there."""

    root: Path
    env: dict[str, str]
    done: dict[str, list[CommandResult]] = field(default_factory=dict)
    make_run_dir: str | None = None  # runs/<app id> of `make run`, once it ran


def make_run_dir(ws: Workspace) -> str:
    assert ws.make_run_dir, "`make run` (README.md's first block) wrote no run directory"
    return ws.make_run_dir


# Placeholders in commands -> what the test puts there (from the workspace), and why.
PLACEHOLDERS: dict[str, tuple[Callable[[Workspace], str], str]] = {
    "runs/recjobs-retrieval-abc123": (
        make_run_dir,
        "docs/deploy.md's example app id; `make run`'s run directory is runs/<its random app id>",
    ),
}

# Files a command expects the reader to bring (the command's comment says what they hold). The
# ids are the quickstart data's: users from 10000, items from 50000.
PROVIDED_FILES: dict[str, str] = {
    "users.csv": "user_id\n10000\n10001\n10002\n",  # `--users users.csv   # a user_id column`
    "pairs.csv": "user_id,item_id\n10000,50009\n10001,50004\n",  # `--pairs pairs.csv`
}

# Commands not run here, each with why and what is checked instead (`check_not_run`).
NOT_RUN: dict[str, str] = {
    "make test": "the suite this test is part of (it would run itself): `make -n test` is checked "
    "to be pytest in the venv",
    "torchx run": "the README's `torchx run   # = make run`: `make -n run` is checked to be exactly "
    "this command with the venv's bin on PATH, and `make run` runs (20 s less of the test)",
}

# Usage notation's metavariables (a `<!-- synopsis -->` line with one of them is usage, not a
# command).
METAVARIABLES = {
    "DIR", "FILE", "K", "N", "M", "S", "RUN_DIR", "SCHEDULER", "OPTS", "MB", "IMAGE", "NAMED",
    "NAMED_RESOURCE", "P", "KEY", "VALUE", "TASK",
}  # fmt: skip

REASONS = ("cluster", "docker", "gpu", "network")

# ---------------------------------------------------------------------------- reading the docs

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
COMMENT = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")
TRANSCRIPT = "$ "
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
PYTHON_LANGUAGES = {"python", "py", "pycon"}
DATA_LANGUAGES = {"yaml", "yml", "json", "toml", "text"}  # configs and outputs shown, not commands


@dataclass(frozen=True)
class Command:
    text: str  # as written (continuation lines included)
    line: int  # its first line in the doc
    output: str | None = None  # a transcript's expected output

    @property
    def words(self) -> list[str]:
        """The command's words without its comment (for classification only, never to run)."""
        try:
            return shlex.split(self.text.replace("\\\n", " "), comments=True)
        except ValueError:
            return self.text.split("#", 1)[0].split()

    @property
    def key(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository
    line: int  # the opening fence's line
    language: str
    body: str
    markers: tuple[str, ...]  # the HTML comments on the lines right before the fence

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def kind(self) -> str:
        if self.language in PYTHON_LANGUAGES:
            return "python"
        if self.language in DATA_LANGUAGES:
            return "data"
        if self.language not in SHELL_LANGUAGES:
            return f"unknown language {self.language!r}"
        if any(line.startswith(TRANSCRIPT) for line in self.body.splitlines()):
            return "transcript"
        return "shell"

    def commands(self) -> list[Command]:
        first = self.line + 1
        if self.kind == "python":
            return [Command(self.body, first)]
        if self.kind == "transcript":
            commands: list[Command] = []
            for offset, line in enumerate(self.body.splitlines()):
                if line.startswith(TRANSCRIPT):
                    commands.append(Command(line[len(TRANSCRIPT) :], first + offset, ""))
                elif commands:
                    last = commands[-1]
                    output = f"{last.output}\n{line}" if last.output else line
                    commands[-1] = Command(last.text, last.line, output)
            return commands
        if self.kind != "shell":
            return []
        commands, pending, start = [], [], first
        for offset, line in enumerate(self.body.splitlines()):
            if not pending:
                start = first + offset
            pending.append(line)
            if line.endswith("\\"):
                continue
            text = "\n".join(pending)
            pending = []
            if text.strip() and not text.lstrip().startswith("#"):
                commands.append(Command(text, start))
        return commands


def parse(doc: Path) -> list[Block]:
    lines = doc.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.groups()
        end = next(j for j in range(i + 1, len(lines)) if FENCE.match(lines[j]))
        markers, k = [], i - 1
        while k >= 0 and COMMENT.match(lines[k]):
            markers.insert(0, COMMENT.match(lines[k]).group(1))
            k -= 1
        body = "\n".join(line[len(indent) :] for line in lines[i + 1 : end])
        name = str(doc.relative_to(ROOT)) if doc.is_relative_to(ROOT) else doc.name
        blocks.append(Block(name, i + 1, language.lower(), body, tuple(markers)))
        i = end + 1
    return blocks


# ---------------------------------------------------------------------------- what needs what


def scheduler(words: list[str]) -> str | None:
    return words[words.index("-s") + 1] if "-s" in words[:-1] else None


def make_recipe(words: list[str], cwd: Path) -> str:
    """What `make TARGET` would run (`make -n`), to judge it by its commands."""
    # Without the make that may be running this suite (`make test`): a nested make prints
    # "Entering directory" lines and inherits its flags.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(
        ["make", "-n", *words[1:]], cwd=cwd, capture_output=True, text=True, env=env
    )
    return done.stdout + done.stderr


def needs(command: Command, cwd: Path) -> set[str]:
    """The reasons (REASONS) a command cannot run on a machine with Python and make only."""
    w, text = command.words, command.key
    submits = "--dryrun" not in w  # a dry run prints the job and needs none of these
    found = set()
    if (
        {"kubectl", "helm"} & set(w)
        or "KUBECONFIG" in text
        or "kubernetes://" in text
        or (submits and scheduler(w) == "kubernetes")
    ):
        found.add("cluster")
    if (
        "docker" in w
        or re.search(r"(with-dockerd|build-image)\.sh\b", text)
        or (submits and scheduler(w) == "local_docker")
        # hands a directory to uid 1000, the image's user, for a bind mount
        or (w[:1] in (["install"], ["chown"]) and re.search(r"\b1000\b", text))
        or (w[:1] == ["make"] and "docker" in make_recipe(w, cwd))
    ):
        found.add("docker")
    gpus = [w[i + 1] for i, word in enumerate(w[:-1]) if word == "--gpu"]
    named = [w[i + 1] for i, word in enumerate(w[:-1]) if word == "-h"]
    if submits and (
        any(g.isdigit() and int(g) > 0 for g in gpus)
        or any(n.startswith("gpu") for n in named)
        or "--device cuda" in text
    ):
        found.add("gpu")
    if (
        re.search(r"\bdocker (build|push|pull)\b", text)  # the Dockerfile installs from PyPI
        or re.search(r"\bhelm repo\b", text)
        or re.search(r"https?://", text)
    ):
        found.add("network")
    return found


def is_usage(command: Command) -> bool:
    text = command.key
    return bool(
        re.search(r"\[[^\]]*\]|\{[^{}]*,[^{}]*\}|\w\|\w|\.\.\.", text)
        or METAVARIABLES & set(re.findall(r"\b[A-Z][A-Z_]*\b", text))
    )


@dataclass(frozen=True)
class Plan:
    run: list[Command]
    skipped: list[tuple[Command, str]]  # (command, why)
    problems: list[str]  # wrong markers


def plan(block: Block, cwd: Path) -> Plan:
    """Which of the block's commands run, which do not and why, and what is wrong with its markers."""
    commands = block.commands()
    run, skipped, problems = [], [], []
    if block.kind.startswith("unknown"):
        problems.append(f"{block.id}: {block.kind}: name it shell, python or data in this test")
    listed: set[str] = set()
    synopsis = False
    for marker in block.markers:
        if marker == "synopsis":
            synopsis = True
        elif marker.startswith("needs:"):
            for reason in (r.strip() for r in marker[len("needs:") :].split(",")):
                if reason not in REASONS:
                    problems.append(
                        f"{block.id}: `needs: {reason}` is no reason; the reasons: {', '.join(REASONS)}"
                    )
                listed.add(reason)
    evidenced: set[str] = set()
    usage = 0
    for command in commands:
        if command.key in NOT_RUN:
            skipped.append((command, f"NOT_RUN: {NOT_RUN[command.key]}"))
            continue
        reasons = needs(command, cwd) if block.kind == "shell" else set()
        evidenced |= reasons & listed
        if reasons & listed:
            skipped.append((command, f"needs {', '.join(sorted(reasons & listed))}"))
        elif synopsis and is_usage(command):
            usage += 1
            skipped.append((command, "usage notation"))
        else:
            run.append(command)
    for reason in sorted(listed - evidenced):
        if reason in REASONS:
            problems.append(
                f"{block.id}: marked `needs: {reason}` but no command in it needs {reason}: "
                "remove the marker (the test then runs the block)"
            )
    if synopsis and not usage:
        problems.append(f"{block.id}: marked `synopsis` but no line of it is usage notation")
    return Plan(run, skipped, problems)


# ---------------------------------------------------------------------------- running them


@dataclass(frozen=True)
class CommandResult:
    command: Command
    returncode: int
    stdout: str
    stderr: str


END = "@@docs-command-end"


def substituted(command: Command, ws: Workspace) -> str:
    text = command.text
    for placeholder, (value, _why) in PLACEHOLDERS.items():
        if placeholder in text:
            text = text.replace(placeholder, value(ws))
    return text


def run_shell(commands: list[str], cwd: Path, env: dict[str, str]) -> list[tuple[int, str, str]]:
    """Run the commands in one bash, in order, stopping at the first that fails: (rc, out, err)."""
    script = []
    for i, text in enumerate(commands):
        mark = f'__rc=$?; printf "\\n{END} {i} %d\\n" "$__rc"'
        script += [text, f'{mark}; {mark} >&2; [ "$__rc" = 0 ] || exit "$__rc"']
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240 * len(commands),
    )
    pattern = re.compile(rf"\n?{END} (\d+) (\d+)\n")
    outs, errs = pattern.split(done.stdout), pattern.split(done.stderr)
    results = []
    for i in range(len(commands)):
        if 3 * i + 2 >= len(outs) or 3 * i + 2 >= len(errs):
            # it never reached its marker: the shell itself ended (a syntax error, `exit`)
            results.append((done.returncode or 1, outs[-1], errs[-1]))
            break
        results.append((int(outs[3 * i + 2]), outs[3 * i], errs[3 * i]))
        if results[-1][0] != 0:
            break
    return results


def run_block(block: Block, run: list[Command], ws: Workspace) -> list[CommandResult]:
    if block.kind == "python":
        (command,) = run
        done = subprocess.run(
            [sys.executable, "-c", substituted(command, ws)],
            cwd=ws.root,
            env=ws.env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        return [CommandResult(command, done.returncode, done.stdout, done.stderr)]
    if block.kind == "transcript":
        results = []
        for command in run:
            done = subprocess.run(
                ["bash", "-c", substituted(command, ws)],
                cwd=ws.root,
                env=ws.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=240,
            )
            results.append(CommandResult(command, done.returncode, done.stdout, done.stderr))
        return results
    texts = [substituted(command, ws) for command in run]
    return [
        CommandResult(command, rc, out, err)
        for command, (rc, out, err) in zip(run, run_shell(texts, ws.root, ws.env))
    ]


# ---------------------------------------------------------------------------- what a run must show


def record_make_run_dir(result: CommandResult, ws: Workspace) -> None:
    """`make run` prints its app handle; its run directory is runs/<app id> (for PLACEHOLDERS)."""
    handle = re.search(r"^local_cwd://torchx/(recjobs-retrieval-\w+)$", result.stdout, re.M)
    if handle and (ws.root / "runs" / handle.group(1) / "model").is_dir():
        ws.make_run_dir = f"runs/{handle.group(1)}"


def after_make_run(result: CommandResult, ws: Workspace) -> None:
    assert ws.make_run_dir, (
        f"`make run` printed no local_cwd://torchx/<app id> whose runs/<app id>/model exists:\n"
        f"{result.stdout[-2000:]}"
    )


def after_recommend_all(result: CommandResult, ws: Workspace) -> None:
    recs = pq.read_table(ws.root / "recs.parquet")
    assert recs.column_names == ["user_id", "item_id", "score", "rank"]
    users = set(recs.column("user_id").to_pylist())
    assert len(users) == QUICKSTART_TINY["dataset.synth.users"]
    assert sorted(set(recs.column("rank").to_pylist())) == list(range(1, 11))
    assert recs.num_rows == 10 * len(users)


def after_python(result: CommandResult, ws: Workspace) -> None:
    # The snippet's ids are the model's: none is left out as unknown.
    assert "does not know" not in result.stderr, result.stderr


def after_error_transcript(result: CommandResult, ws: Workspace) -> None:
    assert result.returncode == 2, "a bad override exits with code 2"


def after_dryrun(result: CommandResult, ws: Workspace) -> None:
    assert "batch.volcano.sh/v1alpha1" in result.stdout, result.stdout[-2000:]


def after_batch_recommend(result: CommandResult, ws: Workspace) -> None:
    out = ws.root / "runs/recs-abc123"
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert parts == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"], parts
    users = [set(pq.read_table(out / part).column("user_id").to_pylist()) for part in parts]
    assert not users[0] & users[1], "a user in both parts"
    assert len(users[0] | users[1]) == QUICKSTART_TINY["dataset.synth.users"]


# What the docs promise a command's run shows, beyond exit code 0 (keys: the command's words).
EXPECT: dict[str, Callable[[CommandResult, Workspace], None]] = {
    "make run": after_make_run,
    "recjobs recommend runs/quickstart --k 10 --out recs.parquet": after_recommend_all,
    "recjobs resolve retrieval --set training.max_epoch=3": after_error_transcript,
    "torchx run -s kubernetes --dryrun components/train.py:train --task ranking -j 2x8 --gpu 8 "
    "--cpu 32 --memMB 200000 --mounts type=volume,src=recjobs-runs,dst=/runs --run_dir "
    "/runs/${app_id}": after_dryrun,
    "torchx run -s local_cwd components/train.py:recommend --model_dir "
    "runs/recjobs-retrieval-abc123 --k 100 -j 1x2 --out runs/recs-abc123": after_batch_recommend,
}


def check_results(block: Block, results: list[CommandResult], ws: Workspace) -> None:
    for result in results:
        command = result.command
        where = f"{block.id} line {command.line}: `{command.key}`"
        if command.output is not None:  # a transcript: the output as shown
            shown = (result.stderr + result.stdout).strip()
            assert shown == command.output.strip(), (
                f"{where} printed\n{shown}\nthe doc shows\n{command.output}"
            )
        elif block.kind == "python":
            assert result.returncode == 0, f"{where} failed:\n{result.stderr[-3000:]}"
            after_python(result, ws)
        else:
            assert result.returncode == 0, (
                f"{where} exited {result.returncode} (fix the doc, or mark the block with the "
                f"reason it cannot run here):\n{result.stderr[-3000:]}"
            )
        if command.key in EXPECT:
            EXPECT[command.key](result, ws)
    planned = len(plan(block, ws.root).run)
    assert len(results) == planned, f"{block.id}: {len(results)} of {planned} commands ran"


# ---------------------------------------------------------------------------- the workspace

BLOCKS = [block for doc in DOCS for block in parse(doc)]


def copy_repository(to: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():  # not a file deleted in the work tree
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)  # mtimes kept: make sees the venv up to date


def shrink_quickstart(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    for dotted, value in QUICKSTART_TINY.items():
        *parents, key = dotted.split(".")
        section = config
        for name in parents:
            section = section[name]
        assert key in section, f"config/quickstart.yaml has no {dotted} to shrink"
        section[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("docs") / "recjobs"
    copy_repository(root)
    venv = ROOT / ".venv"
    assert (venv / "bin" / "recjobs").exists(), "no .venv here: run `make setup` first"
    (root / ".venv").symlink_to(venv)
    up_to_date = subprocess.run(["make", "-q", "setup"], cwd=root, capture_output=True)
    # Otherwise `make run` would reinstall this checkout's venv through the link.
    assert up_to_date.returncode == 0, ".venv is older than pyproject.toml: run `make setup`"
    shrink_quickstart(root / "config" / "quickstart.yaml")
    for name, text in PROVIDED_FILES.items():
        (root / name).write_text(text)
    env = {
        key: value
        for key, value in os.environ.items()
        # this checkout's settings and secrets stay out of the docs' commands
        if key not in {"TORCHXCONFIG", "WANDB_API_KEY", "KUBECONFIG", "DOCKER_HOST", "VIRTUAL_ENV"}
    }
    env["PATH"] = f"{root / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return Workspace(root, env)


def check_not_run(command: Command, ws: Workspace) -> None:
    if command.key == "make test":
        recipe = make_recipe(["make", "test"], ws.root).strip().splitlines()
        assert recipe == [".venv/bin/python -m pytest -q"], recipe
    elif command.key == "torchx run":
        recipe = make_recipe(["make", "run"], ws.root).strip().splitlines()
        assert recipe == [f'PATH="{ws.root}/.venv/bin:$PATH" .venv/bin/torchx run'], recipe
        (make_run,) = [b for b in BLOCKS if "make run" in {c.key for c in b.commands()}]
        run_through(make_run, ws)
        make_run_dir(ws)
    else:
        raise AssertionError(f"NOT_RUN: `{command.key}` has no check here")


def run_through(block: Block, ws: Workspace) -> list[CommandResult]:
    """Run every block up to this one (each once), in document order; this block's results."""
    for earlier in BLOCKS[: BLOCKS.index(block) + 1]:
        if earlier.id in ws.done:
            continue
        steps = plan(earlier, ws.root)
        results = run_block(earlier, steps.run, ws) if steps.run else []
        ws.done[earlier.id] = results
        for result in results:  # what later blocks use (make run's run directory)
            if result.command.key == "make run":
                record_make_run_dir(result, ws)
    return ws.done[block.id]


# ---------------------------------------------------------------------------- the tests


def test_the_docs_have_the_blocks_this_file_expects():
    assert len(DOCS) >= 2 and all(d.exists() for d in DOCS)
    assert len(BLOCKS) >= 15, [b.id for b in BLOCKS]
    assert all(not b.kind.startswith("unknown") for b in BLOCKS), [
        (b.id, b.kind) for b in BLOCKS if b.kind.startswith("unknown")
    ]


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_every_fenced_command_runs_as_written_or_is_marked(block, workspace):
    steps = plan(block, workspace.root)
    assert not steps.problems, "\n".join(steps.problems)
    for command, _why in steps.skipped:
        if command.key in NOT_RUN:
            check_not_run(command, workspace)
    if steps.run:
        check_results(block, run_through(block, workspace), workspace)


def test_the_tables_name_only_what_the_docs_use():
    commands = [c for b in BLOCKS for c in b.commands()]
    texts = "\n".join(c.text for c in commands)
    keys = {c.key for c in commands}
    for placeholder in PLACEHOLDERS:
        assert placeholder in texts, f"PLACEHOLDERS: no command has {placeholder}"
    for name in PROVIDED_FILES:
        assert re.search(rf"\s{re.escape(name)}\b", texts), (
            f"PROVIDED_FILES: no command reads {name}"
        )
    for key in [*NOT_RUN, *EXPECT]:
        assert key in keys, f"no doc command is `{key}`"
    assert "config/quickstart.yaml" in texts


# ------------------------------------------------------------ this file's own checks can fail


def blocks_of(text: str, tmp_path: Path) -> list[Block]:
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    return parse(doc)


def test_a_marker_without_a_valid_reason_fails(tmp_path):
    (block,) = blocks_of("<!-- needs: gpu -->\n```bash\nrecjobs resolve retrieval\n```\n", tmp_path)
    steps = plan(block, tmp_path)
    assert steps.problems == [
        "doc.md:2: marked `needs: gpu` but no command in it needs gpu: remove the marker "
        "(the test then runs the block)"
    ]
    assert [c.key for c in steps.run] == ["recjobs resolve retrieval"]
    (block,) = blocks_of("<!-- needs: patience -->\n```bash\nsleep 1\n```\n", tmp_path)
    assert plan(block, tmp_path).problems[0] == (
        "doc.md:2: `needs: patience` is no reason; the reasons: cluster, docker, gpu, network"
    )


def test_a_marked_block_runs_its_commands_that_need_none_of_its_reasons(tmp_path):
    (block,) = blocks_of(
        "text\n<!-- needs: docker, network -->\n```bash\n"
        "docker build -t registry.example.com/x:1 .   # a registry\n"
        "mkdir -p runs\n"
        "docker/with-dockerd.sh torchx run -s local_docker \\\n    components/train.py:train\n"
        "torchx run -s local_docker --dryrun components/train.py:train\n```\n",
        tmp_path,
    )
    steps = plan(block, tmp_path)
    assert not steps.problems
    assert [c.key for c in steps.run] == [
        "mkdir -p runs",
        "torchx run -s local_docker --dryrun components/train.py:train",
    ]
    assert [(c.line, why) for c, why in steps.skipped] == [
        (4, "needs docker, network"),
        (6, "needs docker"),
    ]


def test_an_unmarked_command_that_fails_fails_its_block(tmp_path):
    (block,) = blocks_of("```sh\ntrue\nrecjobs-no-such-command --k 3\necho never\n```\n", tmp_path)
    steps = plan(block, tmp_path)
    ws = Workspace(tmp_path, {**os.environ})
    results = run_block(block, steps.run, ws)
    assert [(r.command.key, r.returncode) for r in results] == [
        ("true", 0),
        ("recjobs-no-such-command --k 3", 127),
    ]
    with pytest.raises(
        AssertionError, match=r"doc.md:1 line 3: `recjobs-no-such-command --k 3` exited 127"
    ):
        check_results(block, results, ws)


def test_a_transcript_must_print_what_the_doc_shows(tmp_path):
    (block,) = blocks_of("```\n$ echo error: one\nerror: two\n```\n", tmp_path)
    assert block.kind == "transcript"
    ws = Workspace(tmp_path, {**os.environ})
    results = run_block(block, plan(block, tmp_path).run, ws)
    with pytest.raises(
        AssertionError, match=r"printed\n\s*error: one\n\s*the doc shows\n\s*error: two"
    ):
        check_results(block, results, ws)


def test_a_synopsis_line_without_usage_notation_runs(tmp_path):
    (block,) = blocks_of(
        "<!-- synopsis -->\n```bash\nrecjobs score DIR --pairs FILE\n"
        "recjobs resolve {retrieval,ranking} [--config FILE]\nrecjobs config-reference\n```\n",
        tmp_path,
    )
    steps = plan(block, tmp_path)
    assert [c.key for c in steps.run] == ["recjobs config-reference"]
    assert len(steps.skipped) == 2
