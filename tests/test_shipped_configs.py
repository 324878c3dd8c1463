"""Every config we ship learns: on its own data, in its own budget (its epochs, batch size, lr
and schedule, untouched), the model beats the most-popular baseline on the same validation set.

A shipped example that trains a model worse than counting is a defect: users copy these files.
The margins asserted here are the ones docs/performance.md states ("Shipped configs").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runs import ROOT

SHIPPED = sorted((ROOT / "config").glob("*.yaml"))
# Smallest lift over the baseline each task must show: relative for recall@10, absolute for AUC.
MIN_LIFT = {"retrieval": 0.10, "ranking": 0.02}


def _tasks(config: Path) -> list[str]:
    sections = yaml.safe_load(config.read_text())
    return [t for t in ("retrieval", "ranking") if t in sections]


def _train(task: str, config: Path, run_dir: Path, *extra: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "recjobs", "train", task, "--config", str(config)]
        + ["--run-dir", str(run_dir), "--set", "training.log_steps=100000", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def _assert_beats_popularity(task: str, summary: dict) -> None:
    best, base = summary["best"]["value"], summary["baseline"]["value"]
    if task == "retrieval":
        assert summary["best"]["metric"] == "val/recall@10"
        assert best >= base * (1 + MIN_LIFT[task]), (best, base)
    else:
        assert summary["best"]["metric"] == "val/auc"
        assert best >= base + MIN_LIFT[task], (best, base)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "task"),
    [(c, t) for c in SHIPPED for t in _tasks(c)],
    ids=lambda v: v.stem if isinstance(v, Path) else v,
)
def test_a_shipped_config_beats_the_most_popular_baseline(config, task, tmp_path):
    _assert_beats_popularity(task, _train(task, config, tmp_path / "run"))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["retrieval", "ranking"])
def test_the_config_data_synth_writes_beats_the_most_popular_baseline(task, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "recjobs", "data", "synth", "--out", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    config = tmp_path / "data" / "config.yaml"
    _assert_beats_popularity(task, _train(task, config, tmp_path / "run"))
