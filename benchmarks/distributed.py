"""What an N-rank job gains: sharded validation, per-rank data, and what global negatives cost.

    .venv/bin/python benchmarks/distributed.py               # all three, world 1 and 2
    .venv/bin/python benchmarks/distributed.py --only validation --users 10000 --items 20000
    .venv/bin/python benchmarks/distributed.py --only data   # 1M users x 100k items x 10M
    .venv/bin/python benchmarks/distributed.py --only quality  # quickstart's synthetic data

Every measurement is a real torchrun job (gloo, CPU, each rank one thread: OMP_NUM_THREADS=1 and
torch.set_num_threads(1)) that prints one JSON line per rank; the parent prints a table and
writes JSON (`--out`, default benchmarks/distributed.json). A benchmark, not a test: it asserts
nothing, it reports.

Measurements
- validation:  `task.evaluate` + `task.baseline` (what the trainer runs at each validation) of
               retrieval at --users x --items, world 1 and 2: users scored per rank, wall time
               (slowest rank, between barriers) and each rank's CPU seconds (its own work,
               which a busy machine does not inflate as much), median of --repeats validations.
- data:        `load_task_data` of a Parquet data set of --data-users x --data-items x
               --data-interactions (written once into --data-dir), world 1 and 2: each rank's
               peak RSS (ru_maxrss), the bytes of the interactions it holds (train and validation
               tensors) and its load time.
- quality:     best val/recall@10 of the README's job (config/quickstart.yaml: synthetic data,
               batch 512 per process) trained by torchrun at world 2 with `negatives: local`
               and `global`, and at world 1 with the same global batch (1,024); --epochs each.
- negatives:   train/examples_per_s of the real trainer (`trainer.train`) at world 2 with
               `training.negatives: local` and `global` (median of the logged windows after the
               first), their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _config(a: argparse.Namespace, extra: list[str]):
    from recjobs.config.resolver import Overrides, resolve

    sets = [
        f"dataset.synth.users={a.users}",
        f"dataset.synth.items={a.items}",
        f"dataset.synth.interactions={a.interactions}",
        f"training.batch_size={a.batch}",
        "training.early_stopping=false",
        "model.embedding_dim=64",
        "model.hidden_dims=[128, 64]",
        *extra,
    ]
    return resolve("retrieval", None, Overrides(sets=sets))


def worker_validation(a: argparse.Namespace) -> dict:
    import torch
    import torch.distributed as dist

    from recjobs.data import load_task_data
    from recjobs.models import build_model
    from recjobs.training.tasks import make_task

    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = _config(a, [])
    data = load_task_data(cfg)
    torch.manual_seed(0)
    model = build_model("retrieval", cfg.model, data.user_cardinalities, data.item_cardinalities)
    model.eval()
    task = make_task(cfg, data, torch.device("cpu"), rank, world)
    task.evaluate(model)  # warm-up (allocator, kernels)
    seconds, cpu = [], []
    for _ in range(a.repeats):
        dist.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        metrics = task.evaluate(model)
        task.baseline()
        cpu.append(time.process_time() - cpu_start)  # this rank's own work, whatever the load
        dist.barrier()
        seconds.append(time.perf_counter() - start)
    return {
        "users_scored": len(task.eval_users),
        "seconds": statistics.median(seconds),
        "cpu_s": statistics.median(cpu),
        "recall@10": metrics["val/recall@10"],
    }


def worker_negatives(a: argparse.Namespace) -> dict:
    from recjobs.training import trainer

    run_dir = Path(a.run_dir)
    extra = [
        f"training.negatives={a.negatives}",
        f"training.max_steps={a.steps}",
        "training.max_epochs=1000",
        "training.log_steps=25",
        "training.eval_max_users=1000",  # the run ends with a validation: keep it short
    ]
    trainer.train(_config(a, extra), run_dir)  # it makes (and ends) the process group
    if os.environ["RANK"] != "0":
        return {}  # rank 0 writes the run's files
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/examples_per_s"] for r in records if "train/examples_per_s" in r]
    return {"examples_per_s": statistics.median(rates[1:] or rates), "windows": len(rates)}


def worker_data(a: argparse.Namespace) -> dict:
    import resource

    import torch.distributed as dist

    from recjobs.config.resolver import Overrides, resolve
    from recjobs.data import load_task_data
    from recjobs.distributed import Ranks

    cfg = resolve("retrieval", a.config, Overrides())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    data = load_task_data(cfg, ranks=Ranks(dist.get_rank(), dist.get_world_size()))
    seconds = time.perf_counter() - start
    held = (data.train_users, data.train_items, data.val_users, data.val_items)
    return {
        "train_rows": len(data.train_users),
        "id_dtype": str(data.train_users.dtype),
        "interaction_mb": sum(t.numel() * t.element_size() for t in held) / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_load_mb": rss_before,
        "load_s": seconds,
    }


def worker_quality(a: argparse.Namespace) -> dict:
    from recjobs.config.resolver import Overrides, resolve
    from recjobs.training import trainer

    sets = [f"training.negatives={a.negatives}", f"training.batch_size={a.batch}"]
    sets += [f"training.max_epochs={a.epochs}", f"training.scheduler.T_max={a.epochs}"]
    sets += a.quality_set
    cfg = resolve("retrieval", ROOT / "config" / "quickstart.yaml", Overrides(sets=sets))
    trainer.train(cfg, Path(a.run_dir))
    if os.environ["RANK"] != "0":
        return {}
    summary = json.loads((Path(a.run_dir) / "summary.json").read_text())
    best = summary["best"]
    return {"best": best["value"], "best_step": best["step"], "epochs": summary["epochs"]}


def _data_set(a: argparse.Namespace) -> str:
    """The benchmark's Parquet data set (its config.yaml), written the first time."""
    from recjobs.data import write_dataset

    folder = Path(a.data_dir) / f"{a.data_users}x{a.data_items}x{a.data_interactions}"
    config = folder / "config.yaml"
    if not config.exists():
        print(f"writing the data set to {folder} (once)", flush=True)
        write_dataset(str(folder), a.data_users, a.data_items, a.data_interactions, seed=0)
    return str(config)


def _worker_main() -> None:
    import torch
    import torch.distributed as dist

    a = json.loads(sys.argv[2], object_hook=lambda d: argparse.Namespace(**d))
    torch.set_num_threads(1)
    if a.kind in ("validation", "data"):
        dist.init_process_group("gloo")
        result = worker_validation(a) if a.kind == "validation" else worker_data(a)
        dist.destroy_process_group()
    elif a.kind == "quality":
        result = worker_quality(a)
    else:
        result = worker_negatives(a)
    # One write per line: the ranks share the pipe, and print's separate newline could land
    # between another rank's line and its newline.
    sys.stdout.write(json.dumps({"rank": int(os.environ["RANK"]), **result}) + "\n")
    sys.stdout.flush()


def torchrun(world: int, **kw) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(world), __file__, "--worker", json.dumps(kw)]
    env = {**os.environ, **WORKER_ENV}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"error: torchrun {kw['kind']} at world {world} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"rank"')]
    return sorted(rows, key=lambda r: r["rank"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["validation", "data", "quality", "negatives"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--interactions", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--epochs", type=int, default=5, help="quality: epochs per run")
    p.add_argument(
        "--quality-set", action="append", default=[], help="quality: a --set for every run"
    )
    p.add_argument("--data-users", type=int, default=1_000_000)
    p.add_argument("--data-items", type=int, default=100_000)
    p.add_argument("--data-interactions", type=int, default=10_000_000)
    p.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "recjobs-bench-data"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "distributed.json"))
    a = p.parse_args()
    common = {k: getattr(a, k) for k in ("users", "items", "interactions", "batch")}
    out: dict = {"machine": f"{os.cpu_count()} CPUs, each rank 1 thread", **common}

    if a.only in (None, "validation"):
        found = {w: torchrun(w, kind="validation", repeats=a.repeats, **common) for w in (1, 2)}
        one, two = found[1], found[2]
        out["validation"] = {
            f"world{w}": {
                "users_per_rank": [r["users_scored"] for r in rows],
                "s": rows[0]["seconds"],
                "cpu_s_per_rank": [r["cpu_s"] for r in rows],
            }
            for w, rows in found.items()
        }
        out["validation"] |= {
            "ratio": two[0]["seconds"] / one[0]["seconds"],
            "cpu_ratio": max(r["cpu_s"] for r in two) / one[0]["cpu_s"],
            "same_recall@10": one[0]["recall@10"] == two[0]["recall@10"] == two[1]["recall@10"],
        }
        v = out["validation"]
        print(
            f"validation {a.users} users x {a.items} items: world 1 {v['world1']['s']:.2f} s "
            f"({v['world1']['users_per_rank']} users), world 2 {v['world2']['s']:.2f} s "
            f"({v['world2']['users_per_rank']} users per rank): {v['ratio']:.2f}x; CPU seconds "
            f"of the busiest rank {v['cpu_ratio']:.2f}x"
        )
    if a.only in (None, "data"):
        config = _data_set(a)
        found = {w: torchrun(w, kind="data", config=config) for w in (1, 2)}
        keys = ("train_rows", "interaction_mb", "peak_rss_mb", "rss_before_load_mb", "load_s")
        out["data"] = {
            "size": f"{a.data_users} users x {a.data_items} items x {a.data_interactions}",
            "id_dtype": found[1][0]["id_dtype"],
            **{f"world{w}": {k: [r[k] for r in rows] for k in keys} for w, rows in found.items()},
        }
        d = out["data"]
        interaction_ratio = max(d["world2"]["interaction_mb"]) / d["world1"]["interaction_mb"][0]
        rss_ratio = max(d["world2"]["peak_rss_mb"]) / d["world1"]["peak_rss_mb"][0]
        d |= {"interaction_ratio": interaction_ratio, "peak_rss_ratio": rss_ratio}
        print(
            f"data {d['size']} ({d['id_dtype']} ids): interactions per rank world 1 "
            f"{d['world1']['interaction_mb'][0]:.0f} MB, world 2 "
            f"{[round(x) for x in d['world2']['interaction_mb']]} MB ({interaction_ratio:.2f}x); "
            f"peak RSS world 1 {d['world1']['peak_rss_mb'][0]:.0f} MB, world 2 "
            f"{[round(x) for x in d['world2']['peak_rss_mb']]} MB ({rss_ratio:.2f}x)",
            flush=True,
        )
    if a.only in (None, "quality"):
        runs = {}
        for name, world, negatives, batch in (
            ("world2_local", 2, "local", 512),
            ("world2_global", 2, "global", 512),
            ("world1_batch1024", 1, "local", 1024),
        ):
            with tempfile.TemporaryDirectory() as tmp:
                rows = torchrun(
                    world,
                    kind="quality",
                    negatives=negatives,
                    batch=batch,
                    epochs=a.epochs,
                    quality_set=a.quality_set,
                    run_dir=str(Path(tmp) / "run"),
                )
            runs[name] = {k: rows[0][k] for k in ("best", "best_step", "epochs")}
            print(f"  {name}: best val/recall@10 {rows[0]['best']:.4f}", flush=True)
        out["quality_synthetic"] = {
            "epochs": a.epochs,
            "sets": a.quality_set,
            "recall@10": runs,
        }
    if a.only in (None, "negatives"):
        rates = {}
        for negatives in ("local", "global"):
            runs = []
            for _ in range(a.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    rows = torchrun(
                        2,
                        kind="negatives",
                        negatives=negatives,
                        steps=a.steps,
                        run_dir=str(Path(tmp) / "run"),
                        **common,
                    )
                runs.append(rows[0]["examples_per_s"])
            rates[negatives] = {"examples_per_s": statistics.median(runs), "runs": runs}
            print(f"  {negatives}: {runs}", flush=True)
        rates["ratio"] = rates["global"]["examples_per_s"] / rates["local"]["examples_per_s"]
        out["negatives_world2"] = rates
        print(
            f"world 2, batch {a.batch} per rank: local {rates['local']['examples_per_s']:.0f} "
            f"examples/s, global {rates['global']['examples_per_s']:.0f}: {rates['ratio']:.2f}x"
        )
    if a.only is not None and Path(a.out).exists():  # keep the other measurement's figures
        out = json.loads(Path(a.out).read_text()) | out
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        _worker_main()
    else:
        main()
