"""What an N-rank job gains: sharded validation, and what global negatives cost.

    .venv/bin/python benchmarks/distributed.py               # both, world 1 and 2, medians of 3
    .venv/bin/python benchmarks/distributed.py --only validation --users 10000 --items 20000

Every measurement is a real torchrun job (gloo, CPU, each rank one thread: OMP_NUM_THREADS=1 and
torch.set_num_threads(1)) that prints one JSON line per rank; the parent prints a table and
writes JSON (`--out`, default benchmarks/distributed.json). A benchmark, not a test: it asserts
nothing, it reports.

Measurements
- validation:  `task.evaluate` + `task.baseline` (what the trainer runs at each validation) of
               retrieval at --users x --items, world 1 and 2: users scored per rank, wall time
               (slowest rank, between barriers) and each rank's CPU seconds (its own work,
               which a busy machine does not inflate as much), median of --repeats validations.
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


def _worker_main() -> None:
    import torch
    import torch.distributed as dist

    a = json.loads(sys.argv[2], object_hook=lambda d: argparse.Namespace(**d))
    torch.set_num_threads(1)
    if a.kind == "validation":
        dist.init_process_group("gloo")
        result = worker_validation(a)
        dist.destroy_process_group()
    else:
        result = worker_negatives(a)
    print(json.dumps({"rank": int(os.environ["RANK"]), **result}), flush=True)


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
    p.add_argument("--only", choices=["validation", "negatives"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--interactions", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=150)
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
