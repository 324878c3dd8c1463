"""Bounds and argument forms of the TorchX components and the CLI (docs/reliability.md, "Bounds
and blocking paths"): sizes past their documented limit, yes/no spellings TorchX would read as
no, `--env` words without `=`, empty items, names given twice or set by torchrun, image names with spaces, a ranking model without candidates.
Each is one `error:` line and exit 2 at submit (dry runs too), before any job exists.

Arguments go through TorchX's own parser (`materialize_appdef`), as `torchx run` passes them;
one case runs the real `torchx run --dryrun -s kubernetes` as a subprocess.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from torchx.specs.builders import materialize_appdef
from torchx.specs.finder import get_component

from recjobs import cli
from recjobs.cli import main
from recjobs.errors import UserError
from recjobs.submit import container_paths, launch
from recjobs.training import torchrun_env

ROOT = Path(__file__).resolve().parents[1]
COMPONENT = ROOT / "components" / "train.py"
QUICKSTART = str(ROOT / "config" / "quickstart.yaml")


def _refusal(component: str, args: list[str], capsys) -> str:
    fn = get_component(f"{COMPONENT}:{component}").fn
    with pytest.raises(SystemExit) as exc:
        materialize_appdef(fn, args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


TRAIN = ["--task", "retrieval", "--config", QUICKSTART]
REC = ["--model_dir", "/runs/r"]

REFUSED = [
    ("train", [*TRAIN, "-j", "100000x100000"], "error: -j: at most 1024 nodes of at most 256 processes, got '100000x100000' (see docs/reliability.md for the bounds)"),
    ("train", [*TRAIN, "-j", "2:1025x1"], "error: -j: at most 1024 nodes"),
    ("train", [*TRAIN, "-j", "1x257"], "error: -j: at most 1024 nodes of at most 256 processes, got '1x257'"),
    ("train", [*TRAIN, "-j", "64x128"], "error: -j: 64 x 128 = 8192 processes, more than the 4096 a job may have"),
    ("train", [*TRAIN, "-j", "1x" + "9" * 5000], "error: -j: expected [MIN:]NODESxPROCS"),
    ("train", [*TRAIN, "--max_retries", "1000000"], "error: --max_retries: must be between 0 and 100, got 1000000"),
    ("train", [*TRAIN, "--max_retries", "-1"], "error: --max_retries: must be between 0 and 100, got -1"),
    ("train", [*TRAIN, "--cpu", "100000"], "error: --cpu: must be between 1 and 1024, got 100000"),
    ("train", [*TRAIN, "--gpu", "1000"], "error: --gpu: must be between 0 and 64, got 1000"),
    ("train", [*TRAIN, "--memMB", str(2**40)], "error: --memMB: must be between 1 and 16777216"),
    ("train", [*TRAIN, "--env", "FOO"], "error: --env: expected NAME=VALUE[,NAME=VALUE...], got 'FOO' (e.g. FOO=1,BAR=2)"),
    ("train", [*TRAIN, "--env", "A B=1"], "error: --env: 'A B' is not an environment variable name"),
    ("recommend", [*REC, "--env", "FOO"], "error: --env: expected NAME=VALUE"),
    # what TorchX's own reading of --env gets silently wrong: the last of two, an empty item
    # (A becomes '1,'), an item without a value (A becomes '1,B')
    ("train", [*TRAIN, "--env", "FOO=1,FOO=2"], "error: --env FOO: given twice ('1' and '2') (give each variable once)"),
    ("train", [*TRAIN, "--env", "A=1,,B=2"], "error: --env: an empty item in 'A=1,,B=2' (after A=) (separate items with one comma: e.g. FOO=1,BAR=2)"),
    ("train", [*TRAIN, "--env", "A=1,B="], "error: --env B: has no value (write B='' for an empty value)"),
    ("recommend", [*REC, "--env", "A=1;A=1"], "error: --env A: given twice ('1' and '1') (give each variable once)"),
    ("train", [*TRAIN, "--env", "A=1,"], "error: --env: an empty item in 'A=1,' (after A=)"),
    # --mounts: TorchX keeps the last of a key given twice in one mount
    ("train", [*TRAIN, "--mounts", "type=bind,src=/a,src=/b,dst=/runs"], "error: --mounts src: given twice in one mount ('/a' and '/b') (give each key once; start another mount with type=)"),
    ("recommend", [*REC, "--mounts", "type=volume,src=v,dst=/runs,target=/x"], "error: --mounts dst: given twice in one mount ('/runs' and '/x')"),
    ("train", [*TRAIN, "--mounts", "type=bind,,src=/a,dst=/runs"], "error: --mounts: an empty item in 'type=bind,,src=/a,dst=/runs' (separate items with one comma"),
    # a blank path is no "none given"
    ("recommend", [*REC, "--users", " "], "error: --users: an empty path (name a file, or leave --users out)"),
    ("recommend", [*REC, "--candidates", ""], "error: --candidates: an empty path (name a file, or leave --candidates out)"),
    ("train", ["--task", "retrieval", "--config", " "], "error: --config: an empty path (name a YAML file, or leave --config out)"),
    # what torchrun sets for each process
    *[
        (component, [*args, "--env", f"FOO=1,{name}=3"], f"error: --env {name}: set by torchrun for each process; a value here would give every process the same one (leave it out: -j [MIN:]NODESxPROCS sets the job's processes)")
        for component, args in (("train", TRAIN), ("recommend", REC))
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK", "TORCHELASTIC_RUN_ID")
    ],
    ("recommend", [*REC, "--k", "1000000"], "error: --k: must be between 1 and 100000, got 1000000"),
    ("recommend", [*REC, "-j", "100000x100000"], "error: -j: at most 1024 nodes"),
    ("recommend", [*REC, "--max_retries", "101"], "error: --max_retries: must be between 0 and 100"),
    # `--run_dir=~/x`: no shell expanded the ~, and the job would not either
    ("train", [*TRAIN, "--run_dir", "~/r"], "error: --run_dir: '~/r' starts with ~, which the shell did not expand and the job does not (it would name a folder called ~...) (write the whole path)"),
    ("recommend", ["--model_dir", "~/r"], "error: --model_dir: '~/r' starts with ~"),
    # TorchX's own parser: one line, not the component's whole usage before argparse's line
    ("train", [*TRAIN, "--cpu", "1.5"], "error: --cpu: invalid int value: '1.5' (see torchx run ... train --help)"),
    ("train", [*TRAIN, "--max_retries", "abc"], "error: --max_retries: invalid int value: 'abc' (see torchx run ... train --help)"),
    ("train", [*TRAIN, "-j"], "error: -j: expected one argument (see torchx run ... train --help)"),
    ("train", [*TRAIN, "--bogus"], "error: train component: unrecognized arguments: --bogus (see torchx run ... train --help)"),
    ("recommend", [], "error: recommend component: the following arguments are required: --model_dir (see torchx run ... recommend --help)"),
    ("recommend", [*REC, "--include_seen"], "error: --include_seen: expected one argument (see torchx run ... recommend --help)"),
    ("recommend", [*REC, "--include_seen", "maybe"], "error: --include_seen: expected true or false, got 'maybe' (also accepted: yes, 1, on / no, 0, off)"),
]  # fmt: skip


@pytest.mark.parametrize(("component", "args", "line"), REFUSED, ids=lambda v: str(v)[-30:])
def test_sizes_past_their_bound_and_malformed_arguments_are_one_line(capsys, component, args, line):
    assert _refusal(component, args, capsys).startswith(line)


@pytest.mark.parametrize(
    ("spelling", "included"),
    [("true", True), ("True", True), ("yes", True), ("1", True), ("ON", True),
     ("false", False), ("no", False), ("0", False), ("off", False)],
)  # fmt: skip
def test_include_seen_takes_the_usual_spellings(spelling, included):
    fn = get_component(f"{COMPONENT}:recommend").fn
    app = materialize_appdef(fn, [*REC, "--include_seen", spelling])
    words = shlex.split(app.roles[0].args[1])
    assert ("--include-seen" in words) is included


def test_env_with_values_still_reaches_the_job():
    fn = get_component(f"{COMPONENT}:train").fn
    app = materialize_appdef(fn, [*TRAIN, "--env", "FOO=1,BAR=x y"])
    assert {k: app.roles[0].env[k] for k in ("FOO", "BAR")} == {"FOO": "1", "BAR": "x y"}


@pytest.mark.parametrize(
    "text",
    ["FOO=1,BAR=x y", "A=1,2,B=3", "A=1;B=2", "A=1 , B = 2", "A='',B=2", 'A="",B=x', "NCCL_DEBUG=INFO"],
)  # fmt: skip
def test_env_reads_what_it_accepts_as_torchx_does(text):
    # The forms recjobs still takes mean what TorchX's own reading made of them before.
    from torchx.util.types import to_dict

    assert launch.parse_env(text) == to_dict(text)


def test_wandb_project_and_a_set_of_the_same_key_are_refused(capsys):
    line = _refusal(
        "train", [*TRAIN, "--wandb_project", "p", "--", "--set=training.wandb_project=q"], capsys
    )
    assert line == (
        "error: --wandb_project: sets training.wandb_project, which the overrides set too "
        "(--set training.wandb_project) (use one of them)"
    )


def test_an_image_name_with_a_space_is_refused_for_container_schedulers():
    fn = get_component(f"{COMPONENT}:train").fn
    app = materialize_appdef(fn, [*TRAIN, "--image", "recjobs latest"])
    with pytest.raises(UserError) as caught:
        container_paths.check(app, "kubernetes", ephemeral_outputs=False)
    assert caught.value.line().startswith(
        "error: --image: 'recjobs latest' is not an image name (it holds a space"
    )


def test_a_ranking_model_without_candidates_is_refused_at_submit(tmp_path, capsys):
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / "config.yaml").write_text("ranking:\n  training: {}\n")
    line = _refusal("recommend", ["--model_dir", str(tmp_path / "run")], capsys)
    assert line.startswith(
        f"error: --candidates: {tmp_path / 'run'} holds a ranking model, which scores given "
        "candidates"
    )
    fn = get_component(f"{COMPONENT}:recommend").fn
    given = [str(tmp_path / "run"), "--candidates", "/runs/pairs.parquet"]
    assert materialize_appdef(fn, ["--model_dir", *given])  # with candidates it is a job
    (model / "config.yaml").write_text("retrieval:\n  training: {}\n")
    assert materialize_appdef(fn, ["--model_dir", str(tmp_path / "run")])
    # Unreadable here (a path inside the container): the job checks, submit does not guess.
    assert launch.model_task("/runs/nowhere") is None


def test_a_huge_j_on_kubernetes_is_answered_at_once():
    torchx = Path(sys.executable).parent / "torchx"
    done = subprocess.run(
        [str(torchx), "run", "--dryrun", "-s", "kubernetes", "components/train.py:train",
         "--task", "retrieval", "-j", "100000x100000"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "error: -j: at most 1024 nodes" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_cli_and_the_components_share_their_bounds(capsys):
    assert cli.MAX_K == launch.MAX_K
    assert torchrun_env.MAX_WORLD_SIZE == launch.MAX_PROCESSES
    assert main(["recommend", "nowhere", "--out", "x.csv", "--k", "100001"]) == 2
    assert capsys.readouterr().err == "error: --k: must be between 1 and 100000, got 100001\n"


MINIMUM = (
    "(a data set that trains has at least 2 users, 2 items and 10 interactions (both splits "
    "non-empty, batches of 2 or more), taking at most half of the user-item pairs)"
)


@pytest.mark.parametrize(
    ("flag", "value", "line"),
    [
        ("--interactions", "1", f"error: --interactions: must be in [10, 1000000000], got 1 {MINIMUM}"),
        ("--interactions", "9", f"error: --interactions: must be in [10, 1000000000], got 9 {MINIMUM}"),
        ("--users", "1", f"error: --users: must be in [2, 100000000], got 1 {MINIMUM}"),
        ("--items", "1", f"error: --items: must be in [2, 100000000], got 1 {MINIMUM}"),
        ("--items", "0", f"error: --items: must be in [2, 100000000], got 0 {MINIMUM}"),
        ("--users", "100000001", "error: --users: must be in [2, 100000000], got 100000001"),
    ],
)  # fmt: skip
def test_data_synth_refuses_a_data_set_too_small_to_train(tmp_path, capsys, flag, value, line):
    assert main(["data", "synth", "--out", str(tmp_path / "d"), flag, value]) == 2
    assert capsys.readouterr().err == line + "\n"
    assert not (tmp_path / "d").exists()
    # the config's dataset.synth.* has the same bound
    key = f"dataset.synth.{flag[2:]}"
    assert main(["resolve", "retrieval", "--set", f"{key}={value}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {key}: must be in [")


@pytest.mark.parametrize(
    ("sizes", "line"),
    [
        (["--users", "50", "--items", "20"], "error: --interactions: 60000 interactions among 50 users x 20 items are more than half of their 1000 user-item pairs (at most 500): a pair occurs once, and ranking's validation needs items a user does not have (fewer --interactions, or more --users or --items)"),
        (["--users", "2", "--items", "9", "--interactions", "10"], "error: --interactions: 10 interactions among 2 users x 9 items are more than half of their 18 user-item pairs (at most 9)"),
    ],
)  # fmt: skip
def test_data_synth_refuses_a_data_set_too_dense_to_validate(tmp_path, capsys, sizes, line):
    # Every pair taken, ranking's validation has no negatives: its AUC used to be NaN (exit 3).
    assert main(["data", "synth", "--out", str(tmp_path / "d"), *sizes]) == 2
    assert capsys.readouterr().err.startswith(line)
    assert not (tmp_path / "d").exists()
    sets = [f"dataset.synth.{flag[2:]}={value}" for flag, value in zip(sizes[::2], sizes[1::2])]
    assert main(["resolve", "ranking", *[a for s in sets for a in ("--set", s)]]) == 2
    assert capsys.readouterr().err.startswith("error: dataset.synth.interactions: ")


@pytest.mark.parametrize("task", ["retrieval", "ranking"])
def test_the_smallest_synthetic_data_set_trains(tmp_path, capsys, task):
    import pyarrow.parquet as pq

    data = tmp_path / "d"
    sizes = ["--users", "2", "--items", "10", "--interactions", "10"]
    assert main(["data", "synth", "--out", str(data), *sizes]) == 0
    rows = {s: pq.read_table(data / f"interactions_{s}.parquet").num_rows for s in ("train", "val")}
    assert rows == {"train": 8, "val": 2}  # both splits, and a batch of 2 or more
    run = tmp_path / "run"
    config = ["--config", str(data / "config.yaml"), "--run-dir", str(run)]
    small = ["--set", "training.max_epochs=1", "--set", "model.embedding_dim=4"]
    assert main(["train", task, *config, *small]) == 0, capsys.readouterr().err
    assert (run / "model" / "model.pt").is_file()
