"""Hostile input, family by family: configs, flags, values, paths and data files.

Each case is what a hostile (or unlucky) user gives; each must end in exactly one `error:` line
with exit code 2, or in the documented behaviour stated next to it: never a traceback, a hang
or a wrong run that exits 0. docs/reliability.md counts the cases of each family
(`test_reliability_doc_counts_the_cases`); run directories, checkpoints and signals are in
tests/test_fault_matrix.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from recjobs.cli import main
from recjobs.data import load_task_data
from recjobs.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
HUGE = "9" * 5000
BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 10) if prev else ', '.join(['x'] * 10)}]\n"
    for prev, name in zip(["", *"abcdefg"], "abcdefgh")
)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# `resolve retrieval --config FILE` for each file text -> the error line ({f} is the file), or
# a dict of dotted keys and the values the resolved config must hold.
CONFIG_FILES = [
    (
        "retrieval:\n  ? [a, b]\n  : 1\n",
        "error: {f}: invalid YAML: line 2, column 5: a list cannot be a key",
    ),
    (
        "retrieval:\n  ? {a: 1}\n  : 1\n",
        "error: {f}: invalid YAML: line 2, column 5: a mapping cannot be a key",
    ),
    (
        "retrieval: {[1]: 2}\n",
        "error: {f}: invalid YAML: line 1, column 13: a list cannot be a key",
    ),
    (
        f"retrieval: {_nested(400)}\n",
        "error: {f}: beyond the limits of a config: line 1: nested more than 32 levels deep (a recjobs config is a few KB; see docs/reliability.md for the limits)",
    ),
    (
        f"retrieval:\n  training:\n    batch_size: {HUGE}\n",
        "error: {f}: invalid YAML: line 3, column 17: integer of 5000 characters is too long",
    ),
    (
        f"retrieval:\n  training:\n    lr: {HUGE}.5\n",
        "error: {f}: invalid YAML: line 3, column 9: number of 5002 characters is too long",
    ),
    (
        "retrieval:\n  training:\n    batch_size: 1:30\n",
        "error: retrieval.training.batch_size: expected an integer, got string '1:30'",
    ),
    (
        "retrieval:\n  training:\n    lr: 1:30.5\n",
        "error: retrieval.training.lr: expected a number, got string '1:30.5'",
    ),
    ("retrieval:\n  training:\n    batch_size: 010\n", {"retrieval.training.batch_size": 10}),
    ("retrieval:\n  training:\n    batch_size: 0o20\n", {"retrieval.training.batch_size": 16}),
    ("retrieval:\n  training:\n    batch_size: 0x20\n", {"retrieval.training.batch_size": 32}),
    (
        "retrieval:\n  training:\n    batch_size: 1_024\n",
        "error: retrieval.training.batch_size: expected an integer, got string '1_024' (YAML 1.1 read 1_024 as 1024, YAML 1.2 (what recjobs reads) as text: write 1024)",
    ),
    (
        "retrieval:\n  training:\n    batch_size: 0b101\n",
        "error: retrieval.training.batch_size: expected an integer, got string '0b101'",
    ),
    (
        "retrieval:\n  training:\n    batch_size: !!int abc\n",
        "error: {f}: invalid YAML: line 3, column 17: 'abc' is not an integer",
    ),
    (
        "retrieval:\n  training:\n    lr: !!float abc\n",
        "error: {f}: invalid YAML: line 3, column 9: 'abc' is not a number",
    ),
    (
        "retrieval:\n  training:\n    use_wandb: !!bool maybe\n",
        "error: {f}: invalid YAML: a value its tag does not allow ('maybe')",
    ),
    (
        "retrieval:\n  training:\n    lr: !!python/object:os.system x\n",
        "error: {f}: invalid YAML: line 3, column 9: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'",
    ),
    (
        "retrieval:\n  training:\n    lr: !!binary aGVsbG8=\n",
        "error: retrieval.training.lr: expected a number, got b'hello'",
    ),
    (
        "retrieval:\n  training:\n    lr: 1e400\n",
        "error: retrieval.training.lr: must be a finite number, got inf",
    ),
    (
        "retrieval:\n  training:\n    lr: .nan\n",
        "error: retrieval.training.lr: must be a finite number, got nan",
    ),
    (
        BOMB + "retrieval:\n  training:\n    eval_k: *h\n",
        "error: {f}: beyond the limits of a config: line 4: more than 10000 values once aliases are expanded (a recjobs config is a few KB; see docs/reliability.md for the limits)",
    ),
    (
        "retrieval:\n  training:\n    eval_k: [" + ",".join(["1"] * 300_000) + "]\n",
        "error: {f}: beyond the limits of a config: line 3: more than 10000 values (a recjobs config is a few KB; see docs/reliability.md for the limits)",
    ),
    (
        "retrieval:\n  training:\n    eval_k: [" + ",".join(["1"] * 20) + "]\n",
        "error: retrieval.training.eval_k: expected a non-empty list of at most 10 positive integers, got [1, 1, 1, 1, 1, ... (20 items)]",
    ),
    (
        "retrieval:\n  training:\n    optimizer: " + "x" * 100_000 + "\n",
        "error: retrieval.training.optimizer.name: unknown optimizer 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (100000 characters) (one of ASGD, Adadelta, Adafactor, Adagrad, Adam, AdamW, Adamax, LBFGS, Muon, NAdam, RAdam, RMSprop, Rprop, SGD, SparseAdam)",
    ),
    (
        "retrieval:\n  " + "k" * 100_000 + ": 1\n",
        "error: {f}: invalid YAML: line 2, column 100003: mapping values are not allowed here",
    ),
    (
        'retrieval:\n  "tr\\naining": {}\n',
        "error: retrieval.'tr\\naining': unknown key (did you mean training?)",
    ),
    (
        "1: x\nretrieval: {}\n",
        "error: 1: unknown top-level key (valid keys: dataset, shared, retrieval, ranking)",
    ),
    (
        "null: x\nretrieval: {}\n",
        "error: None: unknown top-level key (valid keys: dataset, shared, retrieval, ranking)",
    ),
    (
        "retrieval: {}\n---\nranking: {}\n",
        "error: {f}: invalid YAML: line 2, column 1: but found another document",
    ),
    (
        "retrieval:\n  training:\n    lr: \x00\n",
        "error: {f}: invalid YAML: unacceptable character #x0000: special characters are not allowed",
    ),
    (
        "base: &b {lr: 0.5}\nretrieval:\n  training:\n    <<: *b\n",
        "error: base: unknown top-level key (valid keys: dataset, shared, retrieval, ranking)",
    ),
    (
        "retrieval:\n  training:\n    optimizer: {<<: {name: SGD}, momentum: 0.9}\n",
        {"retrieval.training.optimizer.name": "SGD", "retrieval.training.optimizer.momentum": 0.9},
    ),
    (
        "retrieval:\n  training:\n    eval_k: &k [1, *k]\n",
        "error: {f}: beyond the limits of a config: line 3: *k is inside &k (a recjobs config is a few KB; see docs/reliability.md for the limits)",
    ),
    (
        "retrieval:\n  training:\n    batch_size: 2\n    batch_size: 3\n",
        "error: {f}: invalid YAML: line 4, column 5: duplicate key 'batch_size' (also on line 3)",
    ),
    (
        "retrieval:\n  training:\n    max_steps: 9223372036854775808\n",
        "error: retrieval.training.max_steps: must fit in a 64-bit integer, got 9223372036854775808",
    ),
]

# Command-line forms: `resolve ARGV` -> the error line.
FLAGS = [
    (
        "retrieval --set retrieval=5",
        "error: --set retrieval: names the whole retrieval section; set its keys one by one (e.g. training.batch_size=2048 or shared.seed=7)",
    ),
    (
        "retrieval --set 'retrieval={training: {}}'",
        "error: --set retrieval: names the whole retrieval section; set its keys one by one (e.g. training.batch_size=2048 or shared.seed=7)",
    ),
    (
        "retrieval --set 'training={batch_size: 8}'",
        "error: --set training: names the whole retrieval.training section; set its keys one by one (e.g. training.batch_size=2048 or shared.seed=7)",
    ),
    (
        "retrieval --set shared=5",
        "error: --set shared: names the whole shared section; set its keys one by one (e.g. training.batch_size=2048 or shared.seed=7)",
    ),
    (
        "retrieval --set 'dataset.synth={users: 5}'",
        "error: --set dataset.synth: names the whole dataset.synth section; set its keys one by one (e.g. training.batch_size=2048 or shared.seed=7)",
    ),
    (
        "retrieval --set a..b=1",
        "error: --set a..b: expected a dotted key (e.g. training.batch_size=2048 or shared.seed=7)",
    ),
    (
        "retrieval --set 'training.optimizer={name: Adam, [1]: 2}'",
        "error: --set training.optimizer: invalid YAML: line 1, column 14: a list cannot be a key",
    ),
    (
        "retrieval --set 'training.optimizer={name: Adam, {a: 1}: 2}'",
        "error: --set training.optimizer: invalid YAML: line 1, column 14: a mapping cannot be a key",
    ),
    (
        "retrieval --optimizer-args '{a: 1}=2'",
        "error: retrieval.training.optimizer.'{a: 1}': unknown argument for Adam (Adam accepts: amsgrad, betas, capturable, decoupled_weight_decay, differentiable, eps, foreach, fused, lr, maximize, weight_decay)",
    ),
    (
        f"retrieval --set training.eval_k={_nested(500)}",
        "error: --set training.eval_k: beyond the limits of a config: line 1: nested more than 32 levels deep (a recjobs config is a few KB; see docs/reliability.md for the limits)",
    ),
    (
        "retrieval --set training.lr=" + "9" * 400,
        "error: --set training.lr: invalid YAML: line 1, column 1: integer of 400 characters is too long",
    ),
    (
        "retrieval --set 'training.lr={a: 1, a: 2}'",
        "error: --set training.lr: invalid YAML: line 1, column 8: duplicate key 'a' (also on line 1)",
    ),
    (
        "retrieval --set training.batch_size.x=1",
        "error: retrieval.training.batch_size: expected an integer, got a mapping",
    ),
    (
        "retrieval --set " + "x" * 100 + "=1",
        "error: retrieval.'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (100 characters): unknown key (valid keys: columns, model, training)",
    ),
    (
        "retrieval --config-json '"
        + json.dumps({"retrieval": {"training": {"eval_k": [[[[1]]]] * 3000}}})
        + "'",
        "error: --config-json: beyond the limits of a config: line 1: more than 10000 values (a recjobs config is a few KB; see docs/reliability.md for the limits)",
    ),
]

# Values that passed resolve and failed, or trained wrongly, later: `resolve ARGV` -> the line.
VALUES = [
    (
        "retrieval --optimizer LBFGS",
        "error: retrieval.training.optimizer.name: LBFGS needs a closure that re-evaluates the loss at every step, which this training loop does not give (use Adam, AdamW or SGD)",
    ),
    (
        "retrieval --optimizer SparseAdam",
        "error: retrieval.training.optimizer: SparseAdam fails when it steps: SparseAdam does not support dense gradients, please consider Adam instead",
    ),
    (
        "retrieval --set training.embedding_optimizer=Adam",
        "error: retrieval.training.embedding_optimizer.name: Adam does not accept sparse gradients (one of SparseAdam, Adagrad, SGD)",
    ),
    (
        "retrieval --optimizer-args differentiable=true",
        "error: retrieval.training.optimizer.differentiable: differentiable optimizers are for differentiating through the optimizer step, which this training loop never does (torch refuses to step them on weights) (drop it)",
    ),
    (
        "retrieval --optimizer-args capturable=true --set training.device=cpu",
        "error: retrieval.training.optimizer.capturable: capturable needs a CUDA device, but training.device is cpu (drop capturable, or train on a GPU)",
    ),
    (
        "retrieval --scheduler CosineAnnealingLR --scheduler-args T_max=0",
        "error: retrieval.training.scheduler.T_max: must be greater than 0, got 0",
    ),
    (
        "retrieval --scheduler StepLR --scheduler-args step_size=0",
        "error: retrieval.training.scheduler.step_size: must be greater than 0, got 0",
    ),
    (
        "retrieval --scheduler PolynomialLR --scheduler-args total_iters=0",
        "error: retrieval.training.scheduler.total_iters: must be greater than 0, got 0",
    ),
    (
        "retrieval --scheduler ExponentialLR --scheduler-args gamma=-0.5",
        "error: retrieval.training.scheduler.gamma: must be greater than 0, got -0.5",
    ),
    (
        "retrieval --scheduler StepLR --scheduler-args step_size=1 gamma=-0.5",
        "error: retrieval.training.scheduler.gamma: must be greater than 0, got -0.5",
    ),
    (
        "retrieval --scheduler CosineAnnealingLR --scheduler-args T_max=5 eta_min=-1",
        "error: retrieval.training.scheduler.eta_min: must be 0 or more, got -1.0",
    ),
    (
        "retrieval --scheduler ReduceLROnPlateau --scheduler-args factor=-0.5",
        "error: retrieval.training.scheduler.factor: must be in (0, 1), got -0.5",
    ),
    (
        "retrieval --scheduler PolynomialLR --scheduler-args power=-1",
        "error: retrieval.training.scheduler.power: must be 0 or more, got -1.0",
    ),
    (
        "retrieval --scheduler OneCycleLR --scheduler-args max_lr=0.1 div_factor=-25",
        "error: retrieval.training.scheduler.div_factor: must be greater than 0, got -25.0",
    ),
    (
        "retrieval --scheduler 'SequentialLR' --scheduler-args milestones=[2] 'schedulers=[{name: StepLR, step_size: 0}, {name: ConstantLR}]'",
        "error: retrieval.training.scheduler.schedulers[0].step_size: must be greater than 0, got 0",
    ),
    (
        "retrieval --optimizer ASGD --optimizer-args lambd=-1",
        "error: retrieval.training.optimizer.lambd: must be 0 or more, got -1.0",
    ),
    (
        "retrieval --optimizer-args lr=0",
        "error: retrieval.training.optimizer.lr: must be greater than 0, got 0.0",
    ),
    (
        "retrieval --optimizer-args lr=1e308",
        "error: retrieval.training.optimizer: Adam makes a trial weight infinite or NaN within 3 steps (check lr and the other arguments)",
    ),
    ("retrieval --set shared.seed=-1", "error: shared.seed: must be 0 or more, got -1"),
    (
        "retrieval --set shared.seed=4294967296",
        "error: shared.seed: must be at most 4294967295, got 4294967296",
    ),
    (
        "retrieval --set shared.seed=99999999999999999999999",
        "error: shared.seed: must fit in a 64-bit integer, got 99999999999999999999999",
    ),
    (
        "retrieval --set training.batch_size=99999999999999999999999",
        "error: retrieval.training.batch_size: must fit in a 64-bit integer, got 99999999999999999999999",
    ),
    (
        "retrieval --set training.batch_size=2147483648",
        "error: retrieval.training.batch_size: must be at most 2147483647, got 2147483648",
    ),
    (
        "retrieval --set training.max_epochs=2147483648",
        "error: retrieval.training.max_epochs: must be at most 2147483647, got 2147483648",
    ),
    (
        "retrieval --set dataset.synth.users=2147483648",
        "error: dataset.synth.users: must be in [2, 100000000], got 2147483648",
    ),
    (
        "retrieval --set model.embedding_dim=1000000",
        "error: retrieval.model.embedding_dim: must be in [1, 65536], got 1000000",
    ),
    (
        "retrieval --set model.hidden_dims=[128,0]",
        "error: retrieval.model.hidden_dims[1]: must be in [1, 65536], got 0",
    ),
    (
        "ranking --set training.negatives_per_pos=100000",
        "error: ranking.training.negatives_per_pos: must be in [1, 1000], got 100000",
    ),
    (
        "retrieval --set training.lr=.inf",
        "error: retrieval.training.lr: must be a finite number, got inf",
    ),
    (
        "retrieval --set training.lr=-.inf",
        "error: retrieval.training.lr: must be a finite number, got -inf",
    ),
    (
        "retrieval --set training.temperature=.inf",
        "error: retrieval.training.temperature: must be a finite number, got inf",
    ),
    (
        "retrieval --set training.temperature=.nan",
        "error: retrieval.training.temperature: must be a finite number, got nan",
    ),
    (
        "retrieval --set training.grad_clip_norm=.inf",
        "error: retrieval.training.grad_clip_norm: must be a finite number, got inf",
    ),
    (
        "retrieval --set training.early_stopping.min_delta=.nan",
        "error: retrieval.training.early_stopping.min_delta: must be a finite number, got nan",
    ),
    (
        "retrieval --set model.dropout=.nan",
        "error: retrieval.model.dropout: must be a finite number, got nan",
    ),
    (
        "retrieval --set training.max_steps=0",
        "error: retrieval.training.max_steps: must be greater than 0 or null, got 0",
    ),
    (
        "retrieval --optimizer-args 'betas=[0.9, .nan]'",
        "error: retrieval.training.optimizer.betas[1]: must be a finite number, got nan",
    ),
    (
        "retrieval --set training.batch_size=1",
        "error: retrieval.training.batch_size: must be at least 2 for retrieval, got 1 (in-batch softmax uses the other items of a batch as negatives; with one the loss is 0 and nothing is learnt)",
    ),
]

# Artifact names: every file lives inside the run dir.
_TILDE = "starts with ~, the shell's shorthand for a home folder, which recjobs does not expand (it would name a folder called ~...)"
PATHS = [
    # no shell reads a config or the text after `--set key=`: a folder named ~ here
    (
        "retrieval --set training.artifact_dir=~/runs/x",
        f"error: retrieval.training.artifact_dir: string '~/runs/x' {_TILDE} (write the whole path, e.g. {os.path.expanduser('~')}/runs/x)",
    ),
    (
        "retrieval --set training.artifact_dir=~alice/runs",
        f"error: retrieval.training.artifact_dir: string '~alice/runs' {_TILDE} (write the whole path)",
    ),
    (
        "retrieval --config=~/c.yaml",
        "error: recjobs resolve: argument --config: '~/c.yaml' starts with ~, which the shell did not expand and recjobs does not (it would name a folder called ~...); write the whole path, or give the flag and the path as two words, which the shell expands (see --help)",
    ),
    (
        "retrieval --set training.checkpoint=../../x.pt",
        "error: retrieval.training.checkpoint: must be a plain file name inside the run dir's model/, got string '../../x.pt' (no '/', '..' or control characters; e.g. model.pt)",
    ),
    (
        "retrieval --set training.checkpoint=/tmp/x.pt",
        "error: retrieval.training.checkpoint: must be a plain file name inside the run dir's model/, got string '/tmp/x.pt' (no '/', '..' or control characters; e.g. model.pt)",
    ),
    (
        "retrieval --set training.checkpoint=",
        "error: retrieval.training.checkpoint: must not be empty or blank, got string '' (e.g. model.pt)",
    ),
    (
        "retrieval --set training.checkpoint=..",
        "error: retrieval.training.checkpoint: must be a plain file name inside the run dir's model/, got string '..' (no '/', '..' or control characters; e.g. model.pt)",
    ),
    (
        "retrieval --set 'training.checkpoint=\"a\\tb\"'",
        "error: retrieval.training.checkpoint: must be a plain file name inside the run dir's model/, got string 'a\\tb' (no '/', '..' or control characters; e.g. model.pt)",
    ),
    (
        "retrieval --set training.checkpoint=config.yaml",
        "error: retrieval.training.checkpoint: config.yaml is a file the export writes itself (e.g. model.pt)",
    ),
    (
        "retrieval --set shared.encoder_cache=../e.json",
        "error: shared.encoder_cache: must be a plain file name inside the run dir's model/, got string '../e.json' (no '/', '..' or control characters; e.g. encoders.json)",
    ),
    (
        "retrieval --set shared.encoder_cache=item_embeddings.pt",
        "error: shared.encoder_cache: item_embeddings.pt is a file the export writes itself (e.g. encoders.json)",
    ),
    (
        "retrieval --set shared.encoder_cache=model.pt",
        "error: shared.encoder_cache: is the same file as retrieval.training.checkpoint (model.pt) (give the weights and the vocabularies different names)",
    ),
]

FAMILIES = {
    "config files": CONFIG_FILES,
    "command-line flags": FLAGS,
    "values checked at resolve": VALUES,
    "artifact paths": PATHS,
}


def _resolve(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(["resolve", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _dotted(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("text, expected", CONFIG_FILES, ids=range(len(CONFIG_FILES)))
def test_hostile_config_files(tmp_path, capsys, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, out, err = _resolve(["retrieval", "--config", str(path)], capsys)
    if isinstance(expected, dict):
        assert code == 0, err
        resolved = json.loads(out)
        assert {k: _dotted(resolved, k) for k in expected} == expected
    else:
        assert (code, out, err) == (2, "", expected.replace("{f}", str(path)) + "\n")


@pytest.mark.parametrize(
    "argv, expected", FLAGS + VALUES + PATHS, ids=range(len(FLAGS + VALUES + PATHS))
)
def test_hostile_flags_values_and_paths(capsys, argv, expected):
    assert _resolve(shlex.split(argv), capsys) == (2, "", expected + "\n")


def test_a_huge_config_file_is_refused_before_it_is_parsed(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("retrieval: {}\n" + "#" * (2 << 20))
    assert _resolve(["retrieval", "--config", str(path)], capsys) == (
        2,
        "",
        f"error: {path}: config file is larger than 1048576 bytes "
        "(a recjobs config is a few KB; see docs/reliability.md for the limits)\n",
    )
    # A device that never ends is read no further than the limit.
    assert _resolve(["retrieval", "--config", "/dev/zero"], capsys)[0] == 2


def test_a_config_that_is_not_utf8_is_refused(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("retrieval:\n  training:\n    wandb_project: caf\xe9\n".encode("latin-1"))
    assert _resolve(["retrieval", "--config", str(path)], capsys) == (
        2,
        "",
        f"error: {path}: cannot read config file: not UTF-8 text (byte 45) (save it as UTF-8)\n",
    )


def test_every_example_config_is_within_the_limits(capsys):
    for path in sorted((ROOT / "config").glob("*.yaml")):
        for task in ("retrieval", "ranking"):
            if task in yaml.safe_load(path.read_text()):
                code, _, err = _resolve([task, "--config", str(path)], capsys)
                assert code == 0, err


# --------------------------------------------------------------------------- data files


def _tables():
    from test_data import tiny_tables

    return tiny_tables()


def _replace(table: pa.Table, column: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), column, values)


def _data_cases() -> list[tuple[str, str, dict, str]]:
    """(case id, role, columns config, expected problem after `<file>: column '<col>': `)."""
    n = {role: t.num_rows for role, t in _tables().items()}
    inf = float("inf")
    return [
        (
            "category inf",
            "users",
            pa.array([inf] * n["users"]),
            "user_group",
            "3 of 3 values are infinite (ids and categories are integers or strings; leave a category empty (null or NaN) for unknown)",
        ),
        (
            "category list",
            "users",
            pa.array([[1]] * n["users"]),
            "user_group",
            "expected integer or string values, got list<element: int64>",
        ),
        (
            "category struct",
            "items",
            pa.array([{"a": 1}] * n["items"]),
            "category",
            "expected integer or string values, got struct<a: int64>",
        ),
        (
            "category map",
            "items",
            pa.array([[("k", 1)]] * n["items"], pa.map_(pa.string(), pa.int64())),
            "category",
            "expected integer or string values, got map<string, int64 ('category')>",
        ),
        (
            "category bytes",
            "users",
            pa.array([b"\xff"] * n["users"]),
            "user_group",
            "values are bytes that are not UTF-8 text (store text)",
        ),
        (
            "id inf",
            "items",
            pa.array([1.0, inf, 3.0][: n["items"]] + [4.0] * (n["items"] - 3)),
            "item_id",
            f"1 of {n['items']} values are infinite (ids and categories are integers or strings; leave a category empty (null or NaN) for unknown)",
        ),
        (
            "val label inf",
            "interactions_val",
            pa.array([inf] * n["interactions_val"]),
            "rating",
            f"{n['interactions_val']} of {n['interactions_val']} labels are null, NaN or infinite (drop or fill those rows)",
        ),
        (
            "train label -inf",
            "interactions_train",
            pa.array([-inf] * n["interactions_train"]),
            "rating",
            f"{n['interactions_train']} of {n['interactions_train']} labels are null, NaN or infinite (drop or fill those rows)",
        ),
        (
            "label list",
            "interactions_train",
            pa.array([[1.0]] * n["interactions_train"]),
            "rating",
            "expected a numeric column, got list<element: double>",
        ),
    ]


DATA_FILES = _data_cases()


@pytest.mark.parametrize("case", DATA_FILES, ids=[c[0] for c in DATA_FILES])
def test_hostile_data_files(tmp_path, case):
    from test_data import make_cfg, write_tables

    _, role, values, column, problem = case
    tables = _tables()
    tables[role] = _replace(tables[role], column, values)
    paths = write_tables(tables, tmp_path)
    with pytest.raises(DataError) as err:
        load_task_data(make_cfg(paths, task="ranking", label_col="rating"))
    assert err.value.line() == f"error: {paths[role]}: column '{column}': {problem}"


def test_csv_that_is_not_utf8_is_one_line(tmp_path):
    from test_data import make_cfg, write_tables

    paths = write_tables(_tables(), tmp_path, ".csv")
    users = Path(paths["users"])
    users.write_bytes(users.read_text().encode("utf-16"))  # a BOM and NUL bytes everywhere
    with pytest.raises(DataError) as err:
        load_task_data(make_cfg(paths))
    assert err.value.line().startswith(f"error: {users}")
    assert "\n" not in err.value.line()


# --------------------------------------------------------------------------- silent slowness


def test_bf16_on_a_cpu_without_native_bf16_warns_once(monkeypatch, caplog):
    import torch

    from recjobs.training import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        policy = precision.precision_policy("bf16", torch.device("cpu"))
    assert policy.dtype is torch.bfloat16  # as configured, but said
    assert [r.getMessage() for r in caplog.records] == [
        "mixed_precision bf16 on a CPU without native bf16 (no AVX-512 BF16 or AMX): torch "
        "emulates it and training runs several times slower than fp32 here (up to 10x); set "
        "mixed_precision: off for CPU training"
    ]
    caplog.clear()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    precision.precision_policy("bf16", torch.device("cpu"))
    precision.precision_policy("bf16", torch.device("cuda"))
    assert caplog.records == []


@pytest.mark.parametrize(
    "cpuinfo, native",
    [
        ("flags\t\t: fpu sse2 avx avx2 fma\nflags\t\t: fpu sse2 avx avx2 fma\n", False),
        ("flags\t\t: fpu avx2 avx512f avx512_bf16\n", True),
        ("flags\t\t: fpu avx2 amx_bf16 amx_tile\n", True),
        ("Features\t: fp asimd bf16 i8mm\n", True),
        ("Features\t: fp asimd\n", False),
        ("processor\t: 0\n", None),
        (None, None),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, cpuinfo, native):
    from recjobs.training.precision import cpu_has_native_bf16

    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert cpu_has_native_bf16(path) is native


# --------------------------------------------------------------------------- the counts


def test_reliability_doc_counts_the_cases():
    """docs/reliability.md states how many inputs of each family the tests try."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    from test_fault_matrix import RUN_DIR_CASES, SIGNAL_CASES

    counted = {
        **{family: len(cases) for family, cases in FAMILIES.items()},
        "data files": len(DATA_FILES) + 1,
        "run directories and checkpoints": len(RUN_DIR_CASES),
        "signals": len(SIGNAL_CASES),
    }
    for family, count in counted.items():
        row = re.search(rf"^\| {family} \| (\d+) \|", text, flags=re.MULTILINE)
        assert row, f"docs/reliability.md has no row for {family}"
        assert int(row.group(1)) == count, family
