"""Model quality on MovieLens against simple baselines: most popular, ItemKNN, EASE and BPR-MF.

    .venv/bin/python benchmarks/quality.py --src DIR [--protocol user-time|random] [--set K=V]...

DIR is an unpacked ml-100k (or ml-1m) archive; nothing is downloaded. The models are trained with
the config `recjobs data movielens` writes (plus any --set), exactly as a user would, by the
`recjobs train` command; the baselines are a few lines of numpy/torch each and are scored by the
same metric code on the same users, items and masks. It is a benchmark: it prints a table and
writes the figures to --out, it asserts nothing.

Protocols (docs/performance.md, "Model quality"):
- user-time: `recjobs data movielens` (each user's last 20% of ratings by time are validation).
  Retrieval: recall@10 / NDCG@10 over the full catalogue, the user's training items masked,
  every validation user; the epoch with the best val/recall@10 is the model's figure. Ranking:
  val/auc on each validation positive with 4 uniform items the user has neither in training nor
  in validation.
- random: each user's ratings split 8:1:1 at random (seeded): train, valid (picks the epoch and
  the baselines' hyperparameters), test (the figure); test items ranked over the full catalogue
  with train and valid items masked.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recjobs.config.resolver import Overrides, resolve
from recjobs.data import load_task_data, movielens
from recjobs.data.movielens import convert_movielens
from recjobs.data.tables import write_dataset_dir
from recjobs.training import metrics
from recjobs.training.export import load_model
from recjobs.training.tasks import make_task

KS = (10,)
EASE_LAMBDAS = (50.0, 100.0, 200.0, 500.0, 1000.0)
KNN_NEIGHBOURS = (20, 50, 100, 200)
BPR_EPOCHS = (10, 25, 50, 100)


def train_run(task: str, config: Path, run_dir: Path, sets: list[str]) -> dict:
    """`recjobs train` as a user runs it; its summary.json."""
    cmd = [sys.executable, "-m", "recjobs", "train", task, "--config", str(config)]
    cmd += ["--run-dir", str(run_dir), *(a for s in sets for a in ("--set", s))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"quality: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def interaction_matrix(users: torch.Tensor, items: torch.Tensor, shape: tuple[int, int]):
    x = torch.zeros(shape, dtype=torch.float64)
    x[users, items] = 1.0
    return x


def ease(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Steck 2019: B = I - P diagMat(1 / diag(P)), P = (X'X + lam I)^-1, diag(B) = 0."""
    g = x.T @ x + lam * torch.eye(x.shape[1], dtype=x.dtype)
    p = torch.linalg.inv(g)
    b = -p / torch.diag(p)
    b.fill_diagonal_(0.0)
    return x @ b


def item_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """Cosine item-item similarity, each item's k nearest neighbours kept."""
    norm = x.norm(dim=0).clamp_min(1e-12)
    sim = (x.T @ x) / norm[:, None] / norm[None, :]
    sim.fill_diagonal_(0.0)
    top = torch.topk(sim, min(k, sim.shape[1] - 1), dim=1)
    kept = torch.zeros_like(sim).scatter_(1, top.indices, top.values)
    return x @ kept.T


def bpr_mf(x: torch.Tensor, epochs: int, dim: int = 64, seed: int = 0) -> torch.Tensor:
    """Rendle et al. 2009: matrix factorisation trained with the BPR loss, one uniformly drawn
    negative per positive (index 0, the OOV row and column, never drawn), Adam, L2 on the
    factors of each step's rows."""
    g = torch.Generator().manual_seed(seed)
    users, items = x.nonzero(as_tuple=True)
    p = torch.nn.Parameter(0.1 * torch.randn(x.shape[0], dim, generator=g))
    q = torch.nn.Parameter(0.1 * torch.randn(x.shape[1], dim, generator=g))
    opt = torch.optim.Adam([p, q], lr=0.01)
    for _ in range(epochs):
        order = torch.randperm(len(users), generator=g)
        for s in range(0, len(order), 4096):
            b = order[s : s + 4096]
            pu, qi = p[users[b]], q[items[b]]
            qj = q[torch.randint(1, x.shape[1], (len(b),), generator=g)]
            reg = (pu.square().sum() + qi.square().sum() + qj.square().sum()) / len(b)
            loss = -torch.nn.functional.logsigmoid((pu * (qi - qj)).sum(1)).mean() + 1e-4 * reg
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (p @ q.T).detach().double()


def retrieval_figures(scores: torch.Tensor, task) -> dict[str, float]:
    """recall@10/ndcg@10 of full score rows [eval users, items] under the task's masks."""
    eye = torch.eye(scores.shape[1], dtype=torch.float32)
    found = metrics.retrieval_metrics(scores.float(), eye, *task.val_csr, *task.train_csr, KS)
    return {k: v for k, v in found.items() if k.startswith(("recall", "ndcg"))}


def best_baselines(x_all: torch.Tensor, pick_task, report_task) -> dict[str, dict]:
    """ItemKNN, EASE and BPR-MF with the hyperparameter (BPR: its epochs) that is best on
    `pick_task`'s users, scored on `report_task`'s (the same task for user-time)."""
    out = {}
    for name, fit, grid in (
        ("ItemKNN", item_knn, KNN_NEIGHBOURS),
        ("EASE", ease, EASE_LAMBDAS),
        ("BPR-MF", bpr_mf, BPR_EPOCHS),
    ):
        best = max(
            grid,
            key=lambda h: retrieval_figures(fit(x_all, h)[pick_task.eval_users], pick_task)[
                "recall@10"
            ],
        )
        scores = fit(x_all, best)[report_task.eval_users]
        out[name] = {**retrieval_figures(scores, report_task), "hyperparameter": best}
    return out


def model_scores(run_dir: Path, data, task) -> torch.Tensor:
    model, _, _ = load_model(run_dir / "model")
    with torch.no_grad():
        users = model.user_embeddings(data.user_features[task.eval_users]).float()
        items = model.item_embeddings(data.item_features).float()
    return users @ items.T


def protocol_user_time(src: Path, work: Path, sets: list[str]) -> dict:
    config = Path(convert_movielens(str(src), str(work / "data")))
    out = {}
    summary = train_run("retrieval", config, work / "retrieval", sets)
    cfg = resolve("retrieval", str(config), Overrides(sets=[]))
    data = load_task_data(cfg)
    task = make_task(cfg, data, torch.device("cpu"))
    x = interaction_matrix(data.train_users, data.train_items, (data.n_users + 1, data.n_items + 1))
    out["retrieval"] = {
        "most popular": {
            k.removeprefix("val/baseline/"): v
            for k, v in task.baseline().items()
            if k.removeprefix("val/baseline/").startswith(("recall@10", "ndcg@10"))
        },
        **best_baselines(x, task, task),
        "two-tower (recjobs)": retrieval_figures(
            model_scores(work / "retrieval", data, task), task
        ),
        "epochs, seconds": (summary["epochs"], round(summary["wall_time_s"])),
    }
    summary = train_run("ranking", config, work / "ranking", sets)
    cfg = resolve("ranking", str(config), Overrides(sets=[]))
    ranking = make_task(cfg, data, torch.device("cpu"))
    users, items, labels = ranking.val
    ease_scores = ease(x, out["retrieval"]["EASE"]["hyperparameter"])
    out["ranking"] = {
        "most popular": {"auc": ranking.baseline()["val/baseline/auc"]},
        "EASE": {"auc": metrics.auc(ease_scores[users, items], labels)},
        "DLRM (recjobs)": {"auc": summary["best"]["value"]},
        "epochs, seconds": (summary["epochs"], round(summary["wall_time_s"])),
    }
    return out


def protocol_random(src: Path, work: Path, sets: list[str], seed: int = 0) -> dict:
    base = Path(convert_movielens(str(src), str(work / "all")))
    tables = {r: pq.read_table(base.parent / f"{r}.parquet") for r in ("users", "items")}
    ratings = pa.concat_tables(
        [pq.read_table(base.parent / f"interactions_{s}.parquet") for s in ("train", "val")]
    )
    users = ratings.column("user_id").to_numpy()
    rng = np.random.default_rng(seed)
    part = np.empty(len(users), dtype=np.int8)  # 0 train, 1 valid, 2 test, 8:1:1 per user
    for u in np.unique(users):
        rows = np.flatnonzero(users == u)
        rng.shuffle(rows)
        n_test = n_valid = int(round(0.1 * len(rows)))
        part[rows[:n_test]], part[rows[n_test : n_test + n_valid]] = 2, 1
        part[rows[n_test + n_valid :]] = 0
    split = {p: ratings.filter(pa.array(part == p)) for p in (0, 1, 2)}
    # valid as the trainer's validation (picks the epoch); test as validation of a second data
    # set whose training table is train + valid (so both are masked), same users and items.
    pick = Path(
        write_dataset_dir(
            str(work / "pick"),
            {**tables, "interactions_train": split[0], "interactions_val": split[1]},
            name="ml-random",
            seed=42,
            **movielens.FEATURE_COLUMNS,
        )
    )
    final = Path(
        write_dataset_dir(
            str(work / "final"),
            {
                **tables,
                "interactions_train": pa.concat_tables([split[0], split[1]]),
                "interactions_val": split[2],
            },
            name="ml-random",
            seed=42,
            **movielens.FEATURE_COLUMNS,
        )
    )
    summary = train_run("retrieval", pick, work / "retrieval", sets)
    pick_cfg = resolve("retrieval", str(pick), Overrides(sets=[]))
    pick_data = load_task_data(pick_cfg)
    pick_task = make_task(pick_cfg, pick_data, torch.device("cpu"))
    test_cfg = resolve("retrieval", str(final), Overrides(sets=[]))
    test_data = load_task_data(test_cfg, pick_data.encoders)
    test_task = make_task(test_cfg, test_data, torch.device("cpu"))
    shape = (pick_data.n_users + 1, pick_data.n_items + 1)
    x = interaction_matrix(pick_data.train_users, pick_data.train_items, shape)
    popular = torch.zeros(shape[1], dtype=torch.float64)
    popular[1:] = torch.argsort(torch.argsort(pick_data.item_counts[1:], stable=True)).double()
    return {
        "retrieval": {
            "most popular": retrieval_figures(
                popular.expand(len(test_task.eval_users), -1), test_task
            ),
            **best_baselines(x, pick_task, test_task),
            "two-tower (recjobs)": retrieval_figures(
                model_scores(work / "retrieval", test_data, test_task), test_task
            ),
            "epochs, seconds": (summary["epochs"], round(summary["wall_time_s"])),
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, type=Path, help="unpacked ml-100k or ml-1m")
    parser.add_argument("--protocol", choices=("user-time", "random", "all"), default="all")
    parser.add_argument("--set", action="append", default=[], help="override for both models")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/quality.json"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="recjobs-quality-") as tmp:
        for name, run in (("user-time", protocol_user_time), ("random", protocol_random)):
            if args.protocol in (name, "all"):
                results[name] = run(args.src, Path(tmp) / name, args.set)
    for protocol, tasks in results.items():
        for task, rows in tasks.items():
            print(f"\n{protocol} / {task}")
            for model, figures in rows.items():
                shown = (
                    ", ".join(
                        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in figures.items()
                    )
                    if isinstance(figures, dict)
                    else str(figures)
                )
                print(f"  {model:22s} {shown}")
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
