"""`recjobs plot`: the curves of one or more runs, read from their metrics.jsonl.

One panel for the loss (train/loss solid, val/loss dashed), one for the learning rates (one line
style per parameter group: train/lr, train/lr/embeddings, ...), one per validation metric with
the most-popular baseline (val/baseline/...) as a dotted line of the run's colour. Runs are
overlaid, each in its own colour and named by its directory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from recjobs.atomic import atomic_file
from recjobs.errors import UserError, cannot_write
from recjobs.training.tracking import read_records

FORMATS = (".png", ".svg", ".pdf")
LINE_STYLES = ("-", "--", ":", "-.")
COLUMNS = 3


def run_names(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, or its whole path where two runs share a name."""
    names = [Path(os.path.realpath(p)).name or str(p) for p in run_dirs]  # never a loop error
    return [str(p) if names.count(n) > 1 else n for p, n in zip(run_dirs, names)]


def curves(records: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """metric key -> (steps, values), finite numbers only."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key in ("step", "epoch") or not isinstance(value, (int, float)):
                continue
            if isinstance(value, bool) or not math.isfinite(value):
                continue
            steps, values = out.setdefault(key, ([], []))
            steps.append(record["step"])
            values.append(float(value))
    return out


def panels(runs: dict[str, dict[str, tuple[list[int], list[float]]]]) -> dict[str, list[str]]:
    """Panel title -> the metric keys it shows (across all runs), in a stable order."""
    keys = list(dict.fromkeys(k for found in runs.values() for k in found))  # as logged
    metrics = [
        k
        for k in keys
        if k.startswith("val/") and not k.startswith("val/baseline/") and k != "val/loss"
    ]
    out = {
        "loss": [k for k in ("train/loss", "val/loss") if k in keys],
        "learning rate": [k for k in keys if k == "train/lr" or k.startswith("train/lr/")],
    }
    out.update({k.removeprefix("val/"): [k] for k in metrics})
    return {title: shown for title, shown in out.items() if shown}


def _nothing_to_draw(run_dirs: list[str], records: list[list[dict[str, Any]]]) -> UserError:
    """Why no curve can be drawn: no records at all, or records whose numbers are NaN/inf."""
    where = run_dirs[0] if len(run_dirs) == 1 else ", ".join(run_dirs)
    n_records = sum(len(found) for found in records)
    if not n_records:
        return UserError(where, "metrics.jsonl holds no records yet", "plot after a step")
    bad = sorted(
        {
            key
            for found in records
            for record in found
            for key, value in record.items()
            if isinstance(value, float) and not math.isfinite(value)
        }
    )
    what = f"every value of {', '.join(bad)} is NaN or infinite" if bad else "no numbers"
    return UserError(
        where,
        f"metrics.jsonl holds {n_records} records but nothing to draw: {what}",
        "the run diverged; see its train.log" if bad else "plot after a step",
    )


def plot_runs(run_dirs: list[str], out: str) -> dict[str, list[str]]:
    """Draw the runs' curves into `out`; returns panel title -> the labels of its lines.

    Raises:
        UserError: a run directory without metrics.jsonl, an unsupported image format, a
            missing matplotlib, an output that cannot be written.
    """
    if not out.lower().endswith(FORMATS):
        raise UserError(out, "unsupported image format", "use " + ", ".join(FORMATS))
    paths = [Path(d) for d in run_dirs]
    names = run_names(paths)
    records = {name: read_records(path) for name, path in zip(names, paths)}
    runs = {name: curves(found) for name, found in records.items()}
    shown = panels(runs)
    if not shown:
        raise _nothing_to_draw(run_dirs, list(records.values()))
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed, none opened
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("recjobs plot", "needs matplotlib", "pip install matplotlib") from None

    rows = -(-len(shown) // COLUMNS)
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(5 * COLUMNS, 3.6 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels: dict[str, list[str]] = {}
    for axis, (title, keys) in zip(axes.flat, shown.items()):
        labels[title] = []
        for n, (name, found) in enumerate(runs.items()):
            colour = colours[n % len(colours)]
            for style, key in zip(LINE_STYLES, keys):
                if key not in found:
                    continue
                label = f"{name} {key}" if len(keys) > 1 else name
                steps, values = found[key]
                axis.plot(steps, values, style, color=colour, label=label, marker=".")
                labels[title].append(label)
            baseline = found.get(f"val/baseline/{title}")
            if baseline is not None:
                label = f"{name} most popular"
                axis.axhline(baseline[1][0], color=colour, linestyle=":", label=label)
                labels[title].append(label)
        if title == "learning rate" and all(
            v > 0 for found in runs.values() for k in keys for v in found.get(k, ([], []))[1]
        ):
            axis.set_yscale("log")
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(shown) :]:
        axis.set_visible(False)
    figure.tight_layout()
    _save(figure, out)
    plt.close(figure)
    return labels


def _save(figure: Any, out: str) -> None:
    """Write the image atomically: an existing file is replaced whole or not at all."""
    try:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with atomic_file(out, suffix=os.path.splitext(out)[1]) as tmp:
            figure.savefig(tmp, dpi=100)
    except OSError as exc:
        raise UserError(out, cannot_write(exc, out), "check -o") from None
