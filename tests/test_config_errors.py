"""Bad config files and bad overrides: exit code 2 and one exact line on stderr, nothing on stdout."""

from __future__ import annotations

import typing

import pytest

from recjobs.cli import main

FILES = {
    "empty.yaml": "",
    "syntax.yaml": "retrieval: [1, 2\n",
    "list.yaml": "- a\n- b\n",
    "onlyrank.yaml": "ranking:\n  training: {}\n",
    "dup.yaml": "retrieval:\n  training:\n    lr: 0.1\n    lr: 0.2\n",
    "toptypo.yaml": "retreival:\n  training: {}\n",
    "sectypo.yaml": "retrieval:\n  trainig: {}\n",
    "keytypo.yaml": "retrieval:\n  training:\n    max_epoch: 3\n",
    "strbatch.yaml": 'retrieval:\n  training:\n    batch_size: "1024"\n',
    "strlr.yaml": 'retrieval:\n  training:\n    lr: "1e-3"\n',
    "notmap.yaml": "retrieval:\n  training: 5\n",
    "paths.yaml": "dataset:\n  paths: {users: u.parquet}\nretrieval: {}\n",
}

CASES = [
    # config files
    ("retrieval --config {dir}/nope.yaml", "error: {dir}/nope.yaml: file not found"),
    (
        "retrieval --config {dir}/empty.yaml",
        "error: {dir}/empty.yaml: config file is empty (expected a mapping with a retrieval: or ranking: section)",
    ),
    (
        "retrieval --config {dir}/syntax.yaml",
        "error: {dir}/syntax.yaml: invalid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>'",
    ),
    (
        "retrieval --config {dir}/list.yaml",
        "error: {dir}/list.yaml: expected a mapping at the top level, got list ['a', 'b']",
    ),
    (
        "retrieval --config {dir}/onlyrank.yaml",
        "error: {dir}/onlyrank.yaml: no retrieval: section (found ranking) (add a top-level retrieval: mapping)",
    ),
    (
        "retrieval --config {dir}/dup.yaml",
        "error: {dir}/dup.yaml: invalid YAML: line 4, column 5: duplicate key 'lr' (also on line 3)",
    ),
    (
        "retrieval --config {dir}/toptypo.yaml",
        "error: retreival: unknown top-level key (did you mean retrieval?)",
    ),
    (
        "retrieval --config {dir}/sectypo.yaml",
        "error: retrieval.trainig: unknown key (did you mean training?)",
    ),
    (
        "retrieval --config {dir}/keytypo.yaml",
        "error: retrieval.training.max_epoch: unknown key (did you mean max_epochs?)",
    ),
    (
        "retrieval --config {dir}/strbatch.yaml",
        "error: retrieval.training.batch_size: expected an integer, got string '1024'",
    ),
    (
        "retrieval --config {dir}/strlr.yaml",
        "error: retrieval.training.lr: expected a number, got string '1e-3'",
    ),
    (
        "retrieval --config {dir}/notmap.yaml",
        "error: retrieval.training: expected a mapping, got 5",
    ),
    (
        "retrieval --config {dir}/paths.yaml",
        "error: dataset.paths.items: missing key (required: items, interactions_train, interactions_val)",
    ),
    ("retrieval --config {dir}", "error: {dir}: cannot read config file: IsADirectoryError"),
    # sizes and values
    (
        "retrieval --set training.batch_size=0",
        "error: retrieval.training.batch_size: must be greater than 0, got 0",
    ),
    (
        "retrieval --set training.batch_size=-5",
        "error: retrieval.training.batch_size: must be greater than 0, got -5",
    ),
    (
        "retrieval --set training.max_epochs=1.5",
        "error: retrieval.training.max_epochs: expected an integer, got 1.5",
    ),
    (
        "retrieval --set model.dropout=1.5",
        "error: retrieval.model.dropout: must be in [0, 1), got 1.5",
    ),
    (
        "retrieval --set dataset.synth.users=0",
        "error: dataset.synth.users: must be in [2, 100000000], got 0",
    ),
    (
        "retrieval --set training.eval_k=[]",
        "error: retrieval.training.eval_k: expected a non-empty list of at most 10 positive integers, got []",
    ),
    (
        "retrieval --set shared.seed=abc",
        "error: shared.seed: expected an integer, got string 'abc'",
    ),
    # impossible combinations
    (
        "retrieval --set model.model_arch=dlrm",
        "error: retrieval.model.model_arch: 'dlrm' is not a retrieval model (one of two_tower)",
    ),
    (
        "ranking --set model.model_arch=two_tower",
        "error: ranking.model.model_arch: 'two_tower' is not a ranking model (one of dlrm, dcn)",
    ),
    (
        "ranking --set training.loss_func=cross_entropy",
        "error: ranking.training.loss_func: 'cross_entropy' is not a ranking loss (one of bce, mse)",
    ),
    (
        "ranking --set training.loss_func=mse --set columns.label_col=null",
        "error: ranking.columns.label_col: loss_func mse needs a label column (e.g. label_col: rating)",
    ),
    (
        "retrieval --set training.negatives_per_pos=3",
        "error: retrieval.training.negatives_per_pos: only applies to ranking, not retrieval",
    ),
    (
        "ranking --set training.temperature=0.1",
        "error: ranking.training.temperature: only applies to retrieval, not ranking",
    ),
    (
        "retrieval --set training.early_stopping.metric=recall@20",
        "error: retrieval.training.early_stopping.metric: unknown validation metric 'recall@20' (did you mean recall@50?)",
    ),
    (
        "retrieval --set training.early_stopping=maybe",
        "error: retrieval.training.early_stopping: expected a mapping, got string 'maybe'",
    ),
    (
        "retrieval --set ranking.training.lr=0.1",
        "error: --set ranking.training.lr: sets the ranking section but this is a retrieval run",
    ),
    (
        "retrieval --scheduler OneCycleLR --scheduler-args max_lr=0.1 --scheduler-interval epoch",
        "error: retrieval.training.scheduler.interval: OneCycleLR must be stepped per iteration (use interval: step)",
    ),
    # mixed precision
    (
        "retrieval --set training.mixed_precision=fp32",
        "error: retrieval.training.mixed_precision: expected true, false, fp16, bf16 or off, got string 'fp32' (true means fp16)",
    ),
    (
        "retrieval --mixed-precision fp8",
        "error: retrieval.training.mixed_precision: expected true, false, fp16, bf16 or off, got string 'fp8' (true means fp16)",
    ),
    # k=v syntax
    (
        "retrieval --set training.batch_size",
        "error: --set: expected KEY=VALUE, got 'training.batch_size' (e.g. training.batch_size=2048)",
    ),
    (
        "retrieval --set =3",
        "error: --set: expected KEY=VALUE, got '=3' (e.g. training.batch_size=2048)",
    ),
    (
        "retrieval --optimizer-args momentum",
        "error: --optimizer-args: expected KEY=VALUE, got 'momentum' (e.g. momentum=0.9)",
    ),
    # optimizers
    (
        "retrieval --optimizer Adamm",
        "error: retrieval.training.optimizer.name: unknown optimizer 'Adamm' (did you mean Adam, RAdam, NAdam?)",
    ),
    (
        "retrieval --optimizer adamw",
        "error: retrieval.training.optimizer.name: unknown optimizer 'adamw' (did you mean AdamW?)",
    ),
    (
        "retrieval --optimizer Adam --optimizer-args momentum=0.9",
        "error: retrieval.training.optimizer.momentum: unknown argument for Adam (Adam accepts: amsgrad, betas, capturable, decoupled_weight_decay, differentiable, eps, foreach, fused, lr, maximize, weight_decay)",
    ),
    (
        "retrieval --optimizer SGD --optimizer-args momentum=-1",
        "error: retrieval.training.optimizer.momentum: must be in [0, 1), got -1.0",
    ),
    # Settings that pass torch's own checks but would not train (gradient ascent, no step, a
    # sub-schedule that never runs, a schedule stepped past its end).
    (
        "retrieval --optimizer SGD --optimizer-args momentum=1.5",
        "error: retrieval.training.optimizer.momentum: must be in [0, 1), got 1.5",
    ),
    (
        "retrieval --optimizer SGD --optimizer-args momentum=0.9 dampening=2",
        "error: retrieval.training.optimizer.dampening: must be in [0, 1), got 2.0",
    ),
    (
        "retrieval --scheduler ConstantLR --scheduler-args factor=0 total_iters=100",
        "error: retrieval.training.scheduler.factor: must be in (0, 1], got 0.0",
    ),
    (
        "retrieval --set training.max_epochs=4 --set 'training.scheduler={name: SequentialLR, milestones: [3, 2], schedulers: [{name: ConstantLR, total_iters: 1}, {name: StepLR, step_size: 1}, {name: ExponentialLR, gamma: 0.9}]}'",
        "error: retrieval.training.scheduler.milestones: must increase strictly, got [3, 2]: the scheduler between 3 and 2 would never run",
    ),
    (
        "retrieval --set 'training.scheduler={name: SequentialLR, milestones: [2, 5], schedulers: [{name: ConstantLR, total_iters: 1}, {name: StepLR, step_size: 1}]}'",
        "error: retrieval.training.scheduler.milestones: expected a list of 1 step or epoch numbers (one per hand-over between the 2 schedulers), got [2, 5]",
    ),
    (
        "retrieval --set training.max_epochs=6 --set 'training.scheduler={name: SequentialLR, milestones: [2], schedulers: [{name: ConstantLR, factor: 0.5, total_iters: 1}, {name: OneCycleLR, max_lr: 0.1, total_steps: 3}]}'",
        "error: retrieval.training.scheduler: SequentialLR fails at scheduler step 6 of this run's 6: Tried to step 4 times. The specified number of total steps is 3 (give each OneCycleLR a total_steps of at least the steps it runs (or omit it at the top level))",
    ),
    (
        "retrieval --optimizer Adam --optimizer-args lr=-1",
        "error: retrieval.training.optimizer.lr: must be greater than 0, got -1.0",
    ),
    (
        "retrieval --optimizer Adam --optimizer-args betas=[0.9]",
        "error: retrieval.training.optimizer.betas: expected a list of 2 values (a number, a number), got list [0.9]",
    ),
    (
        "retrieval --optimizer Adam --optimizer-args amsgrad=yes_please",
        "error: retrieval.training.optimizer.amsgrad: expected true or false, got string 'yes_please'",
    ),
    (
        "retrieval --set training.optimizer=42",
        "error: retrieval.training.optimizer: expected an optimizer name or a mapping with 'name', got 42 (e.g. optimizer: AdamW)",
    ),
    # schedulers
    (
        "retrieval --scheduler Cosine",
        "error: retrieval.training.scheduler.name: unknown scheduler 'Cosine' (did you mean CosineAnnealingLR?)",
    ),
    (
        "retrieval --scheduler StepLR",
        "error: retrieval.training.scheduler: StepLR needs step_size (e.g. step_size: <an integer>)",
    ),
    (
        "retrieval --scheduler StepLR --scheduler-args step_size=ten",
        "error: retrieval.training.scheduler.step_size: expected an integer, got string 'ten'",
    ),
    (
        "retrieval --scheduler StepLR --scheduler-args step_size=2 last_epoch=4",
        "error: retrieval.training.scheduler.last_epoch: is set by recjobs and cannot be configured",
    ),
    (
        "retrieval --scheduler LambdaLR",
        "error: retrieval.training.scheduler: LambdaLR needs a Python callable (lr_lambda), which a config cannot express (use LinearLR, ConstantLR, PolynomialLR or SequentialLR instead)",
    ),
    (
        "retrieval --scheduler ReduceLROnPlateau --scheduler-args monitor=recal@10",
        "error: retrieval.training.scheduler.monitor: unknown validation metric 'recal@10' (did you mean recall@10?)",
    ),
    (
        "retrieval --scheduler StepLR --scheduler-args step_size=2 monitor=loss",
        "error: retrieval.training.scheduler.monitor: only ReduceLROnPlateau takes a monitor, not StepLR",
    ),
    (
        "retrieval --scheduler SequentialLR --scheduler-args milestones=[2]",
        "error: retrieval.training.scheduler.schedulers: SequentialLR needs a non-empty list of scheduler mappings",
    ),
    (
        "retrieval --scheduler-args step_size=1",
        "error: --scheduler-args: there is no scheduler to apply it to (add --scheduler NAME)",
    ),
    (
        "retrieval --scheduler-interval step",
        "error: --scheduler-interval: there is no scheduler to apply it to (add --scheduler NAME)",
    ),
    (
        "retrieval --scheduler-interval weekly",
        "error: recjobs resolve: argument --scheduler-interval: invalid choice: 'weekly' (choose from 'epoch', 'step') (see --help)",
    ),
    # a key given twice: the last used to win without a word
    (
        "retrieval --optimizer-args lr=1 lr=2",
        "error: --optimizer-args lr: given twice ('lr=1' and 'lr=2') (give each key once)",
    ),
    (
        "retrieval --scheduler StepLR --scheduler-args step_size=1 gamma=0.5 step_size=2",
        "error: --scheduler-args step_size: given twice ('step_size=1' and 'step_size=2') (give each key once)",
    ),
    (
        # given again, --optimizer-args adds to the first list (argparse used to drop it)
        "retrieval --optimizer SGD --optimizer-args momentum=0.9 lr=0.1 --optimizer-args lr=0.2",
        "error: --optimizer-args lr: given twice ('lr=0.1' and 'lr=0.2') (give each key once)",
    ),
    # command line
    (
        "rank",
        "error: recjobs resolve: argument task: invalid choice: 'rank' (choose from 'retrieval', 'ranking') (see --help)",
    ),
    ("retrieval --bogus", "error: recjobs: unrecognized arguments: --bogus (see --help)"),
]


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    for name, text in FILES.items():
        (d / name).write_text(text)
    return d


@pytest.mark.parametrize("argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(argv, expected, bad_dir, capsys):
    import shlex

    args = [a.replace("{dir}", str(bad_dir)) for a in shlex.split(argv)]
    assert main(["resolve", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == expected.replace("{dir}", str(bad_dir)) + "\n"


def test_there_are_enough_cases():
    assert len(CASES) >= 40


# --------------------------------------------------------------------------- YAML 1.1 and 1.2

# Plain scalars read as YAML 1.2 in files and in --set alike. Where YAML 1.1 (PyYAML, and
# recjobs before) read a number or a boolean, 1.2 reads text, and a number or boolean key
# says what to write; where both read the same number (0x10), it is that number.
YAML_FORMS = [
    ("training.max_epochs", "0x10", 16),
    ("training.max_epochs", "0o10", 8),
    ("training.max_epochs", "010", 10),
    ("training.max_epochs", "1_0", "expected an integer, got string '1_0' (YAML 1.1 read 1_0 as 10, YAML 1.2 (what recjobs reads) as text: write 10)"),
    ("training.lr", "1_0.5", "expected a number, got string '1_0.5' (YAML 1.1 read 1_0.5 as 10.5, YAML 1.2 (what recjobs reads) as text: write 10.5)"),
    ("training.mixed_precision", "yes", "expected true, false, fp16, bf16 or off, got string 'yes' (YAML 1.1 read yes as true, YAML 1.2 (what recjobs reads) as text: write true)"),
    ("training.mixed_precision", "On", "expected true, false, fp16, bf16 or off, got string 'On' (YAML 1.1 read On as true, YAML 1.2 (what recjobs reads) as text: write true)"),
    ("training.mixed_precision", "off", "off"),  # the same as before: YAML 1.1's false was off too
    ("training.mixed_precision", "true", "fp16"),
    ("training.use_wandb", "no", "expected true or false, got string 'no' (YAML 1.1 read no as false, YAML 1.2 (what recjobs reads) as text: write false)"),
    ("training.logq_correction", "NO", "expected true or false, got string 'NO' (YAML 1.1 read NO as false, YAML 1.2 (what recjobs reads) as text: write false)"),
    ("training.early_stopping", "yes", "expected true, false or a mapping, got string 'yes' (YAML 1.1 read yes as true, YAML 1.2 (what recjobs reads) as text: write true)"),
    ("training.wandb_run_name", "yes", "yes"),  # a name: the text, which YAML 1.1 refused
    ("training.wandb_run_name", "1_000", "1_000"),
    # YAML 1.1's dates and its `=` value key are text in YAML 1.2 too
    ("training.wandb_run_name", "2024-01-01", "2024-01-01"),
    ("training.wandb_run_name", "2024-01-01 10:00:00", "2024-01-01 10:00:00"),
    ("training.wandb_run_name", "=", "="),
    ("training.max_epochs", "2024-01-01", "expected an integer, got string '2024-01-01'"),
]  # fmt: skip


def _section(out: str) -> dict:
    import json

    return json.loads(out)["retrieval"]


@pytest.mark.parametrize(("key", "text", "expected"), YAML_FORMS, ids=lambda v: str(v)[:20])
def test_a_file_and_set_read_a_value_the_same_way(tmp_path, capsys, key, text, expected):
    section, name = key.split(".")
    config = tmp_path / "c.yaml"
    config.write_text(f"retrieval:\n  {section}:\n    {name}: {text}\n")
    answers = []
    for argv in (["--config", str(config)], ["--set", f"{key}={text}"]):
        code = main(["resolve", "retrieval", *argv])
        out, err = capsys.readouterr()
        answers.append((code, _section(out)[section][name] if code == 0 else err))
    assert answers[0] == answers[1]
    if isinstance(expected, str) and expected.startswith("expected"):
        assert answers[0] == (2, f"error: retrieval.{key}: {expected}\n")
    else:
        assert answers[0] == (0, expected)


def test_an_untyped_optimizer_argument_refuses_a_yaml_1_1_boolean(capsys):
    # An argument torch does not annotate would receive the text 'no', which Python reads as
    # true: the opposite of what YAML 1.1 meant.
    from recjobs.config.coerce import coerce

    with pytest.raises(Exception) as caught:
        coerce("no", typing.Any, "retrieval.training.optimizer.flag")
    assert str(caught.value) == (
        "error: retrieval.training.optimizer.flag: string 'no' is ambiguous (YAML 1.1 read no as "
        "false, YAML 1.2 (what recjobs reads) as text: write false)"
    )


@pytest.mark.parametrize(
    ("item", "shown"),
    [
        ("training.wandb_run_name=run #3", "'run #3' ends in a YAML comment (a # at the start or after a space), so it would read as string 'run'"),
        ("training.wandb_run_name=#3", "'#3' ends in a YAML comment (a # at the start or after a space), so it would read as null"),
        ("training.max_epochs=3 # three", "'3 # three' ends in a YAML comment (a # at the start or after a space), so it would read as 3"),
    ],
)  # fmt: skip
def test_a_set_value_that_yaml_would_cut_at_a_comment_is_refused(capsys, item, shown):
    key = item.partition("=")[0]
    assert main(["resolve", "retrieval", "--set", item]) == 2
    assert capsys.readouterr().err == (
        f"error: --set {key}: {shown} (quote the value to keep the #, e.g. --set "
        "\"training.wandb_run_name='run #3'\")\n"
    )
    # quoted, or without a space before it, the # is part of the text
    for kept in ("training.wandb_run_name='run #3'", "training.wandb_run_name=run#3"):
        assert main(["resolve", "retrieval", "--set", kept]) == 0
        assert _section(capsys.readouterr().out)["training"]["wandb_run_name"] in (
            "run #3",
            "run#3",
        )


def test_repeated_args_flags_add_up_and_a_later_set_wins(capsys):
    import json

    argv = ["resolve", "retrieval", "--optimizer", "SGD", "--optimizer-args", "momentum=0.9"]
    argv += ["--optimizer-args", "lr=0.1", "--set", "training.max_epochs=2"]
    # A later --set of a key replaces an earlier one (a script adds to a base list).
    argv += ["--set", "retrieval.training.max_epochs=4"]
    assert main(argv) == 0
    training = json.loads(capsys.readouterr().out)["retrieval"]["training"]
    assert training["optimizer"] == {"name": "SGD", "lr": 0.1, "momentum": 0.9}
    assert training["max_epochs"] == 4
