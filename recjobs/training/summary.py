"""The end of a run, for a person: RUN_DIR/summary.json and the last lines of train.log.

The best validation by the early-stopping metric, the most-popular baseline on the same
validation set and the lift over it, where the run ended, how long it took, how fast it trained
and where the model is. Everything is read from what the run already wrote (metrics.jsonl) or
knows at its end, so a resumed run's summary covers all its attempts.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recjobs.atomic import atomic_file


@dataclass(frozen=True)
class RunEnd:
    """Where and how a run ended, as the trainer knows it."""

    task: str
    step: int
    epoch: int  # epochs started so far, as metrics.jsonl numbers them (0-based)
    batch_in_epoch: int  # 0: the run ended at an epoch's end
    metric: str  # the early-stopping metric, e.g. val/recall@10
    mode: str  # max | min
    best: float | None
    best_step: int | None
    wall_time_s: float
    model: Path


def summarise(end: RunEnd, records: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's content: `records` are the run's metrics.jsonl lines."""
    baseline_key = end.metric.replace("val/", "val/baseline/", 1)
    baselines = [r[baseline_key] for r in records if baseline_key in r]
    rates = [r["train/examples_per_s"] for r in records if "train/examples_per_s" in r]
    best = end.best if end.best is not None and math.isfinite(end.best) else None
    summary: dict[str, Any] = {
        "task": end.task,
        "step": end.step,
        "epochs": end.epoch if end.batch_in_epoch == 0 else end.epoch + 1,
        "ended_mid_epoch": end.batch_in_epoch != 0,
        "best": None
        if best is None
        else {"metric": end.metric, "mode": end.mode, "value": best, "step": end.best_step},
        "baseline": None
        if not baselines
        else {"name": "most popular", "metric": baseline_key, "value": baselines[0]},
        "lift": None,
        "wall_time_s": round(end.wall_time_s, 3),
        # The median of the train/ records: robust to the short windows at epoch ends.
        "examples_per_s": round(statistics.median(rates), 1) if rates else None,
        "model": str(end.model),
    }
    if best is not None and baselines:
        base = baselines[0]
        better = best - base if end.mode == "max" else base - best
        summary["lift"] = {
            "absolute": better,  # > 0: the model beats the baseline
            "relative": better / abs(base) if base else None,
        }
    return summary


def summary_lines(summary: dict[str, Any], summary_path: Path) -> list[str]:
    """The run's last log lines: where it ended, the best validation and its lift, the model."""
    if summary["ended_mid_epoch"]:
        where = f"done at step {summary['step']}, in epoch {summary['epochs'] - 1}"
    else:
        where = f"done at step {summary['step']}, after {summary['epochs']} epochs"
    best = summary["best"]
    if best is None:
        return [
            f"{where}: no finite validation metric to pick a best by; last weights in "
            f"{summary['model']}",
            f"summary: {summary_path}",
        ]
    line = f"{where}: best {best['metric']} {best['value']:.4g} at step {best['step']}"
    if summary["lift"] is not None:
        lift, base = summary["lift"], summary["baseline"]["value"]
        relative = lift["relative"]
        if relative is None:
            shown = f"{lift['absolute']:+.4g}"
        else:  # a small lift keeps its sign and size: "-0.1%", not "-0%"
            digits = 0 if abs(relative) >= 0.1 else 1 if abs(relative) >= 0.001 else 2
            shown = f"{relative:+.{digits}%}"
        line += f" (most-popular baseline {base:.4g}: {shown})"
    rate = summary["examples_per_s"]
    speed = f", {rate:.0f} examples/s" if rate is not None else ""
    return [
        f"{line}; those weights are in {summary['model']}",
        f"summary: {summary_path} ({summary['wall_time_s']:.0f} s{speed})",
    ]


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    with atomic_file(str(path)) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
