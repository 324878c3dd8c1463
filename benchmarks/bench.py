"""recjobs benchmark: the real training loop against its ceiling, catalogue scaling, evaluation.

    .venv/bin/python benchmarks/bench.py                 # everything, medians of 3 runs
    .venv/bin/python benchmarks/bench.py --only scale --users 1000000 --items 100000

Each measurement runs in its own process (clean peak RSS, no warm caches shared between
measurements) and prints one JSON line; the parent takes medians, prints a table and writes
JSON (`--out`, default benchmarks/results.json). This is a benchmark, not a test: it asserts
nothing, it reports.

Measurements
- throughput:  examples/s of `recjobs.training.trainer.train` (the real loop: batching, logging, the
  lot)
               and of a bare loop over the same model and optimizer on batches prepared in
               advance (forward, backward, optimizer step, nothing else); their ratio.
- parity:      the seed-shaped config (the retrieval defaults: 3 categorical columns per tower,
               embedding 64, MLP [128, 64], batch 1024, Adam, temperature 0.05; log_steps 10,
               no eval steps): the trainer and a bare loop alternating every 2 steps in one
               process, one thread; the ratio, and the share of the trainer's loop time spent in
               the model's forward/backward/step (load-independent).
- scale:       trainer examples/s at a small and a large catalogue, same model otherwise.
- eval:        retrieval and ranking validation time and peak RSS at --eval-users x --eval-items.
- first_step:  seconds from `torchx run -s local_cwd` to the first logged training step.
- distributed: benchmarks/distributed.py (world 1 against 2: per-rank data, sharded validation,
               quality and cost of global negatives), its own table and JSON.
- recommend:   `Recommender.topk` (what `recjobs recommend` runs): top-K for every user of a
               --rec-users x --rec-items catalogue, seconds and peak RSS, and the ceiling: this
               machine's matmul FLOP/s at the scoring's shapes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config(
    task: str, users: int, items: int, interactions: int, batch: int, steps: int, extra: list[str]
):
    from recjobs.config.resolver import Overrides, resolve

    sets = [
        f"dataset.synth.users={users}",
        f"dataset.synth.items={items}",
        f"dataset.synth.interactions={interactions}",
        f"training.batch_size={batch}",
        f"training.max_steps={steps}",
        "training.max_epochs=1000",
        "training.log_steps=25",
        "training.early_stopping=false",
        "model.embedding_dim=64",
        "model.hidden_dims=[128, 64]",
        *extra,
    ]
    return resolve(task, None, Overrides(sets=sets))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------- measurements (child side)


def measure_trainer(a: argparse.Namespace) -> dict:
    """Examples/s of the real loop: median over its log windows, the first (warm-up) dropped."""
    from recjobs.training import tasks, trainer

    cfg = _config(a.task, a.users, a.items, a.interactions, a.batch, a.steps, a.set)
    # Validation is measured on its own ("eval"); here it would only add the end-of-run
    # full-catalogue scoring (1M users x 100k items is hours of CPU) to the wall time.
    for cls in (tasks.RetrievalTask, tasks.RankingTask):
        cls.evaluate = lambda self, model: collections.defaultdict(lambda: float("nan"))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer.train(cfg, run_dir)
        records = [
            json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()
        ]
    rates = [r["train/examples_per_s"] for r in records if "train/examples_per_s" in r][1:]
    return {"examples_per_s": statistics.median(rates), "peak_rss_mb": _peak_rss_mb()}


def measure_bare(a: argparse.Namespace) -> dict:
    """The ceiling: the same model, optimizers and loss on batches gathered before timing."""
    import torch

    from recjobs.config.optim import build_optimizers, sparse_decision
    from recjobs.data import epoch_batches, load_task_data
    from recjobs.models import build_model
    from recjobs.training.tasks import make_task
    from recjobs.training.trainer import seed_everything

    cfg = _config(a.task, a.users, a.items, a.interactions, a.batch, a.steps, a.set)
    tr = cfg.training
    seed_everything(cfg.shared.seed)
    data = load_task_data(cfg)
    device = torch.device(a.device)
    task = make_task(cfg, data, device)
    sparse, _ = sparse_decision(
        tr.sparse_embeddings, data.user_cardinalities + data.item_cardinalities, False
    )
    model = build_model(
        cfg.task,
        cfg.model,
        data.user_cardinalities,
        data.item_cardinalities,
        sparse=sparse,
        **data.encoders.feature_widths(),
    ).to(device)
    opts = build_optimizers(model, tr.optimizer, tr.embedding_optimizer if sparse else None)
    batches = []
    epoch = 0
    while len(batches) < a.steps:
        for idx in epoch_batches(task.num_examples, tr.batch_size, epoch=epoch, seed=0):
            batches.append(task.batch(idx.to(device)))  # prepared in advance, outside the timing
        epoch += 1
    batches = batches[: a.steps]
    warmup = 10

    def run(batch):
        loss = task.loss(model, batch)
        opts.zero_grad()
        loss.backward()
        for opt in opts.all:
            opt.step()

    for batch in batches[:warmup]:
        run(batch)
    start = time.perf_counter()
    examples = 0
    for batch in batches[warmup:]:
        run(batch)
        examples += len(batch["users"]) // (
            1 + (tr.negatives_per_pos if cfg.task == "ranking" else 0)
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "examples_per_s": examples / (time.perf_counter() - start),
        "peak_rss_mb": _peak_rss_mb(),
    }


# The seed-shaped config of the single-rank parity check: the built-in retrieval defaults (3
# categorical columns per tower, embedding 64, MLP [128, 64], batch 1024, Adam, temperature 0.05)
# on the default synthetic data, logging every 10 steps, no eval steps.
PARITY_SETS = ["training.log_steps=10", "training.eval_steps=0"]
# Steps per alternating block: short (a tenth of a second here), so that both sides of a pair see
# the same load; blocks of 20 steps (a second) gave ratios from 0.86 to 0.97 on this shared
# machine while the trainer's own overhead stayed at 2%.
PARITY_BLOCK = 2


def measure_parity(a: argparse.Namespace) -> dict:
    """The trainer against a bare loop in the same process, alternating blocks of steps.

    The real `trainer.train` runs; every PARITY_BLOCK of its steps, a bare forward/backward/step
    loop over its own copy of the model and optimizers runs as many steps on batches prepared in
    advance. The trainer's block is timed from its first step to the next block's first step, so
    everything the loop does in between (logging, the per-epoch checkpoint, the next epoch's
    batches) counts; validation is replaced by a no-op here (measured by "eval"). Alternating
    blocks cancel the drift of a machine shared with other work, which separate processes do
    not (back-to-back processes on this machine differed by 2x).
    """
    import torch

    from recjobs.config.optim import build_optimizers, sparse_decision
    from recjobs.models import build_model
    from recjobs.training import tasks, trainer

    # One thread, as each rank of a 2-rank job on 2 cores has; two threads on a shared machine
    # fight the other work and measure it.
    torch.set_num_threads(1)
    cfg = _config(a.task, a.users, a.items, a.interactions, a.batch, a.steps, a.set)
    for cls in (tasks.RetrievalTask, tasks.RankingTask):
        cls.evaluate = lambda self, model: collections.defaultdict(lambda: float("nan"))
    tr = cfg.training
    state = {"count": 0, "start": None, "examples": 0, "inside": False, "model_s": 0.0}
    blocks_model: list[float] = []  # per block: the share of its time in the model's own work
    blocks: list[tuple[float, float]] = []  # (trainer examples/s, bare examples/s) per block
    bare: dict = {}
    real_step = trainer.TrainingRun.train_step

    def bare_block(run: trainer.TrainingRun) -> float:
        if not bare:  # built once, like the trainer's: same seed, same data, same shapes
            sparse, _ = sparse_decision(
                tr.sparse_embeddings,
                run.data.user_cardinalities + run.data.item_cardinalities,
                False,
            )
            model = build_model(
                cfg.task,
                cfg.model,
                run.data.user_cardinalities,
                run.data.item_cardinalities,
                sparse=sparse,
            ).to(run.device)
            emb = tr.embedding_optimizer if sparse else None
            bare.update(model=model, opts=build_optimizers(model, tr.optimizer, emb))
            # A whole epoch's full batches, taken in turn: reusing a few would keep their
            # embedding rows in the cache, a speed the trainer's epochs do not get.
            order = torch.randperm(
                run.task.num_examples, generator=torch.Generator().manual_seed(0)
            )
            full = order[: len(order) // tr.batch_size * tr.batch_size].split(tr.batch_size)
            bare["batches"] = [run.task.batch(idx.to(run.device)) for idx in full]
            bare["next"] = 0
        model, opts, batches = bare["model"], bare["opts"], bare["batches"]
        chosen = [batches[(bare["next"] + i) % len(batches)] for i in range(PARITY_BLOCK)]
        bare["next"] += PARITY_BLOCK
        start = time.perf_counter()
        for batch in chosen:
            loss = run.task.loss(model, batch)
            opts.zero_grad()
            loss.backward()
            for opt in opts.all:
                opt.step()
        float(loss.detach())  # the device's queue drained (a no-op on the CPU)
        return PARITY_BLOCK * tr.batch_size / (time.perf_counter() - start)

    def model_work(fn):
        """`fn` timed into model_s when the trainer calls it: what a bare loop does too."""

        def timed(*args, **kwargs):
            if not state["inside"]:
                return fn(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                state["model_s"] += time.perf_counter() - start

        return timed

    real_loss, real_backward = type(None), torch.Tensor.backward
    torch.Tensor.backward = model_work(real_backward)

    def timed_step(run: trainer.TrainingRun, idx, batches_in_epoch: int) -> None:
        nonlocal real_loss
        if real_loss is type(None):  # the task and optimizers exist now
            real_loss = run.task.loss
            run.task.loss = model_work(real_loss)
            for opt in run.optimizers.all:
                opt.step = model_work(opt.step)
        if state["count"] and state["count"] % PARITY_BLOCK == 0:
            float(run.loss_sum)  # the trainer's steps finished (GPU)
            seconds = time.perf_counter() - state["start"]
            blocks_model.append(state["model_s"] / seconds)
            with run.clock_stopped():  # not the trainer's training time (its own records)
                blocks.append((state["examples"] / seconds, bare_block(run)))
            state["start"] = None
        if state["start"] is None:
            state["start"], state["examples"], state["model_s"] = time.perf_counter(), 0, 0.0
        state["count"] += 1
        state["examples"] += len(idx)
        state["inside"] = True
        try:
            real_step(run, idx, batches_in_epoch)
        finally:
            state["inside"] = False

    trainer.TrainingRun.train_step = timed_step
    with tempfile.TemporaryDirectory() as run_dir:
        trainer.train(cfg, run_dir)
        records = [
            json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()
        ]
    blocks, blocks_model = blocks[1:], blocks_model[1:]  # the first: warm-up of both
    validated = {r["step"] for r in records if "train/lr" not in r}
    epoch_rates = [
        r["train/examples_per_s"] for r in records if "train/lr" in r and r["step"] in validated
    ][1:]
    # Whole-run rates from the blocks' sums (every block holds the same number of examples on
    # both sides, so the harmonic mean of rates is examples over total seconds).
    trainer_rate = statistics.harmonic_mean([t for t, _ in blocks])
    bare_rate = statistics.harmonic_mean([b for _, b in blocks])
    return {
        "ratio": trainer_rate / bare_rate,
        "median_block_ratio": statistics.median(t / b for t, b in blocks),
        "trainer_examples_per_s": trainer_rate,
        "bare_examples_per_s": bare_rate,
        "reported_ratio": statistics.median(epoch_rates) / bare_rate,
        # Load-independent: of the trainer's own loop time, the share in the model's forward,
        # backward and optimizer step (a bare loop's ceiling is 1).
        "model_share": statistics.median(blocks_model),
        # The trainer's forward/backward/step against the bare loop's, per example: 1 when the
        # same calls run at the same speed in both.
        "model_speed_ratio": statistics.median(
            t / share / b for (t, b), share in zip(blocks, blocks_model, strict=True)
        ),
        "blocks": len(blocks),
        "threads": torch.get_num_threads(),
    }


def measure_eval(a: argparse.Namespace) -> dict:
    """One full validation (the trainer's `task.evaluate`) on a trained-from-scratch model."""
    import torch

    from recjobs.data import load_task_data
    from recjobs.models import build_model
    from recjobs.training.tasks import make_task

    cfg = _config(a.task, a.users, a.items, a.interactions, a.batch, 1, a.set)
    data = load_task_data(cfg)
    task = make_task(cfg, data, torch.device(a.device))
    model = (
        build_model(
            cfg.task,
            cfg.model,
            data.user_cardinalities,
            data.item_cardinalities,
            **data.encoders.feature_widths(),
        )
        .to(a.device)
        .eval()
    )
    task.evaluate(model)  # warm-up (allocator, kernels)
    before = _peak_rss_mb()
    start = time.perf_counter()
    metrics = task.evaluate(model)
    seconds = time.perf_counter() - start
    users = int(torch.unique(data.val_users).numel())
    return {
        "seconds": seconds,
        "val_users": users,
        "seconds_per_1000_users": seconds / users * 1000,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_eval_mb": before,
        "metric_keys": sorted(metrics),
    }


def measure_first_step(a: argparse.Namespace) -> dict:
    """Wall time from launching `torchx run -s local_cwd` to the first training log record."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            str(Path(sys.executable).parent / "torchx"),
            "run",
            "-s",
            "local_cwd",
            "--workspace",
            "",
        ]
        cmd += [
            "components/train.py:train",
            "--task",
            "ranking",
            "--config",
            "config/quickstart.yaml",
        ]
        cmd += [
            "--run_dir",
            str(run_dir),
            "--",
            "--set=training.log_steps=1",
            "--set=training.max_steps=20",
        ]
        start = time.perf_counter()
        # The job's torchrun must be this environment's, as `make run` arranges.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, "PATH": path},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        metrics = run_dir / "metrics.jsonl"
        first = None
        while proc.poll() is None and first is None:
            if metrics.exists() and metrics.read_text():
                first = time.perf_counter() - start
            time.sleep(0.01)
        _, err = proc.communicate(timeout=300)
        if first is None:
            if proc.returncode:
                raise RuntimeError(f"torchx run failed: {err[-2000:]}")
            first = float("nan")
    return {"seconds": first}


def prepare_recommend(a: argparse.Namespace) -> dict:
    """A two-tower model with random weights exported for --users x --items (not timed)."""
    import torch

    from recjobs.data import load_task_data
    from recjobs.models import build_model
    from recjobs.training.export import export_model

    cfg = _config("retrieval", a.users, a.items, a.interactions, a.batch, 1, a.set)
    data = load_task_data(cfg)
    torch.manual_seed(0)
    model = build_model(
        "retrieval",
        cfg.model,
        data.user_cardinalities,
        data.item_cardinalities,
        **data.encoders.feature_widths(),
    )
    export_model(Path(a.model_dir), model.eval(), cfg, data)
    return {"users": data.n_users, "items": data.n_items}


def measure_recommend(a: argparse.Namespace) -> dict:
    """Load the exported model, then top-K of every user (timed), then the Parquet file."""
    import torch

    from recjobs.inference.recommend import Recommender, write_output

    start = time.perf_counter()
    rec = Recommender.load(a.model_dir)
    loaded = time.perf_counter()
    table = rec.topk(None, k=a.k)
    scored = time.perf_counter()
    write_output(table, str(Path(a.model_dir).parent / "recommendations.parquet"))
    written = time.perf_counter()
    return {
        "load_s": loaded - start,
        "topk_s": scored - loaded,
        "write_s": written - scored,
        "rows": table.num_rows,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": _peak_rss_mb(),
    }


def measure_matmul(a: argparse.Namespace) -> dict:
    """The ceiling: float32 matmul FLOP/s at the scoring's shape ([1024, D] x [D, items]), and
    of a large square one (what the BLAS can do at best)."""
    import torch

    from recjobs.inference.recommend import CHUNK_USERS

    dim = 64
    shapes = {"scoring": (CHUNK_USERS, dim, a.items), "square": (2048, 2048, 2048)}
    out = {}
    for name, (m, k, n) in shapes.items():
        left, right = torch.randn(m, k), torch.randn(k, n)
        result = torch.empty(m, n)
        torch.matmul(left, right, out=result)  # warm-up
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            torch.matmul(left, right, out=result)
            runs.append(time.perf_counter() - start)
        out[f"{name}_gflops"] = 2 * m * k * n / statistics.median(runs) / 1e9
    return out


MEASURES = {
    "trainer": measure_trainer,
    "bare": measure_bare,
    "parity": measure_parity,
    "eval": measure_eval,
    "first_step": measure_first_step,
    "prepare_recommend": prepare_recommend,
    "recommend": measure_recommend,
    "matmul": measure_matmul,
}


# ----------------------------------------------------------------- orchestration (parent side)


def child(kind: str, **kw) -> dict:
    argv = [sys.executable, __file__, "_measure", kind]
    for key, value in kw.items():
        if isinstance(value, list):
            for v in value:
                argv += [f"--{key}", str(v)]
        else:
            argv += [f"--{key}", str(value)]
    env = {**os.environ, "RECJOBS_LOG_LEVEL": "WARNING"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{kind} {kw} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(repeats: int, kind: str, key: str, **kw) -> tuple[float, list[dict]]:
    runs = [child(kind, **kw) for _ in range(repeats)]
    return statistics.median(r[key] for r in runs), runs


SECTIONS = ("throughput", "parity", "scale", "eval", "first_step", "recommend", "distributed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only",
        choices=[*SECTIONS],
        action="append",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument(
        "--users", type=int, default=1_000_000, help="large catalogue for the scale test"
    )
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--eval-users", type=int, default=10_000)
    p.add_argument("--eval-items", type=int, default=2_000)
    p.add_argument("--rec-users", type=int, default=100_000)
    p.add_argument("--rec-items", type=int, default=100_000)
    p.add_argument("--rec-k", type=int, default=100)
    p.add_argument(
        "--set", action="append", default=[], help="extra config overrides for every run"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    a = p.parse_args()
    todo = a.only or list(SECTIONS)
    common = {
        "device": a.device,
        "batch": a.batch,
        "steps": a.steps,
        "set": a.set + [f"training.device={a.device}"],
    }
    results: dict = {"machine": {"cpus": os.cpu_count(), "device": a.device}, "repeats": a.repeats}
    rows = []

    if "throughput" in todo:
        for task in ("retrieval", "ranking"):
            size = {"users": 2000, "items": 500, "interactions": 60000}  # the synth default
            # Alternate trainer and bare runs and take the median of the pairs' ratios: this
            # machine drifts by several percent over minutes, pairs cancel most of it.
            pairs = [
                (
                    child("trainer", task=task, **size, **common)["examples_per_s"],
                    child("bare", task=task, **size, **common)["examples_per_s"],
                )
                for _ in range(a.repeats)
            ]
            trainer_rate = statistics.median(t for t, _ in pairs)
            bare_rate = statistics.median(b for _, b in pairs)
            ratio = statistics.median(t / b for t, b in pairs)
            results[f"throughput_{task}"] = {
                "trainer": trainer_rate,
                "bare": bare_rate,
                "ratio": ratio,
                "pairs": pairs,
            }
            rows.append(
                (
                    f"{task}: trainer / bare loop (examples/s)",
                    f"{trainer_rate:,.0f} / {bare_rate:,.0f}",
                    f"{ratio:.3f}",
                )
            )

    if "parity" in todo:
        size = {"users": 2000, "items": 500, "interactions": 60000}  # the synth default
        runs = [
            child(
                "parity",
                task="retrieval",
                **size,
                **{**common, "steps": 400, "set": common["set"] + PARITY_SETS},
            )
            for _ in range(a.repeats)
        ]
        keys = ("ratio", "model_share", "model_speed_ratio", "reported_ratio")
        results["parity"] = {
            **{key: statistics.median(r[key] for r in runs) for key in keys},
            "runs": runs,
        }
        rows.append(
            (
                "seed-shaped retrieval: trainer / bare loop, alternating (examples/s)",
                f"{statistics.median(r['trainer_examples_per_s'] for r in runs):,.0f} / "
                f"{statistics.median(r['bare_examples_per_s'] for r in runs):,.0f}",
                f"{results['parity']['ratio']:.3f} (model share "
                f"{results['parity']['model_share']:.3f})",
            )
        )

    if "scale" in todo:
        small = {"users": 10_000, "items": 2_000, "interactions": 400_000}
        large = {"users": a.users, "items": a.items, "interactions": max(400_000, 3 * a.users)}
        out = {}
        for name, size in (("small", small), ("large", large)):
            rate, runs = median_of(
                a.repeats, "trainer", "examples_per_s", task="retrieval", **size, **common
            )
            out[name] = {
                **size,
                "examples_per_s": rate,
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            }
        out["ratio"] = out["large"]["examples_per_s"] / out["small"]["examples_per_s"]
        dense = dict(common, set=common["set"] + ["training.sparse_embeddings=false"])
        rate, _ = median_of(
            1, "trainer", "examples_per_s", task="retrieval", **large, **{**dense, "steps": 60}
        )
        out["large_dense_examples_per_s"] = rate
        results["scale"] = out
        rows.append(
            (
                f"retrieval {small['users']:,}x{small['items']:,} vs "
                f"{a.users:,}x{a.items:,} (examples/s)",
                f"{out['small']['examples_per_s']:,.0f} vs {out['large']['examples_per_s']:,.0f}",
                f"{out['ratio']:.3f}",
            )
        )
        rows.append(
            (
                "  same large catalogue, sparse_embeddings=false (1 run)",
                f"{rate:,.0f}",
                f"{rate / out['small']['examples_per_s']:.3f}",
            )
        )

    if "eval" in todo:
        size = {"users": a.eval_users, "items": a.eval_items, "interactions": 40 * a.eval_users}
        for task in ("retrieval", "ranking"):
            seconds, runs = median_of(a.repeats, "eval", "seconds", task=task, **size, **common)
            peak = max(r["peak_rss_mb"] for r in runs)
            per_k = statistics.median(r["seconds_per_1000_users"] for r in runs)
            results[f"eval_{task}"] = {
                "seconds": seconds,
                "seconds_per_1000_users": per_k,
                "peak_rss_mb": peak,
                "val_users": runs[0]["val_users"],
            }
            rows.append(
                (
                    f"{task} eval {runs[0]['val_users']:,} val users x {a.eval_items:,} items",
                    f"{seconds:.3f} s ({per_k:.4f} s/1k users)",
                    f"peak RSS {peak:,.0f} MB",
                )
            )

    if "first_step" in todo:
        seconds, _ = median_of(a.repeats, "first_step", "seconds")
        results["first_step_seconds"] = seconds
        rows.append(("torchx run -s local_cwd -> first training step", f"{seconds:.2f} s", ""))

    if "recommend" in todo:
        results["recommend"] = bench_recommend(a, common, rows)

    if "distributed" in todo:
        # World 1 against 2 (per-rank data, sharded validation, quality and cost of global
        # negatives): torchrun jobs of its own script, which prints its table and writes
        # benchmarks/distributed.json.
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "distributed.py"),
                "--repeats",
                str(a.repeats),
            ]
        )
        rows.append(("distributed (world 1 vs 2)", "see benchmarks/distributed.json", ""))
        if done.returncode != 0:
            sys.exit(f"bench: benchmarks/distributed.py exited {done.returncode}")

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'value':>32}  ratio/extra")
    for name, value, extra in rows:
        print(f"{name:<{width}}  {value:>32}  {extra}")
    out = Path(a.out)
    if a.only and out.is_file():
        # --only measures some sections: the others keep their last figures.
        results = {**json.loads(out.read_text()), **results}
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {a.out}")


def bench_recommend(a: argparse.Namespace, common: dict, rows: list) -> dict:
    """top-K for every user: median of the repeats, against the matmul ceiling."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "model")
        size = {"users": a.rec_users, "items": a.rec_items, "interactions": 10 * a.rec_users}
        child("prepare_recommend", model_dir=model_dir, **size, **common)
        topk_s, runs = median_of(a.repeats, "recommend", "topk_s", model_dir=model_dir, k=a.rec_k)
    ceiling = child("matmul", items=a.rec_items)
    flop = 2 * a.rec_users * a.rec_items * 64
    out = {
        **size,
        "k": a.rec_k,
        "topk_s": topk_s,
        "load_s": statistics.median(r["load_s"] for r in runs),
        "write_s": statistics.median(r["write_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "threads": runs[0]["threads"],
        "runs": runs,
        **ceiling,
        "matmul_only_s": flop / (ceiling["scoring_gflops"] * 1e9),
    }
    rows.append(
        (
            f"recommend top-{a.rec_k}, {a.rec_users:,} users x {a.rec_items:,} items",
            f"{topk_s:.1f} s (+{out['write_s']:.1f} s Parquet)",
            f"peak RSS {out['peak_rss_mb']:,.0f} MB",
        )
    )
    rows.append(
        (
            "  ceiling: matmul at the scoring shape / square",
            f"{ceiling['scoring_gflops']:.0f} / {ceiling['square_gflops']:.0f} GFLOP/s",
            f"matmul alone {out['matmul_only_s']:.1f} s",
        )
    )
    return out


def _measure_main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=MEASURES)
    p.add_argument("--task", default="retrieval")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--interactions", type=int, default=60000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--model-dir", "--model_dir", dest="model_dir")
    p.add_argument("--k", type=int, default=100)
    a = p.parse_args(sys.argv[2:])
    print(json.dumps(MEASURES[a.kind](a)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        _measure_main()
    else:
        main()
