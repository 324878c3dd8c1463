"""Run under torchrun by tests/test_distributed.py: one collective piece of a task, dumped.

Usage: torchrun --nproc_per_node N tests/distributed_worker.py MODE CONFIG_JSON WEIGHTS OUT_DIR

MODE evaluate: the task's sharded `evaluate` and `baseline` of the model in WEIGHTS, and how many
users (retrieval) or rows (ranking) this rank scored.
MODE step: one global-negatives training step under DDP; rank r's batch is rows r*B..(r+1)*B-1
of the training set (B = batch_size). Dumps the loss, the gradient of every parameter and the
mixed negatives this rank drew.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recjobs.config.resolver import resolve_dict
from recjobs.data import load_task_data
from recjobs.models import build_model
from recjobs.training import metrics, tasks


def main() -> None:
    mode, config_json, weights, out = sys.argv[1:5]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    raw = json.loads(config_json)
    cfg = resolve_dict(raw, "retrieval" if "retrieval" in raw else "ranking")
    data = load_task_data(cfg)
    model = build_model(cfg.task, cfg.model, data.user_cardinalities, data.item_cardinalities)
    model.load_state_dict(torch.load(weights))
    task = tasks.make_task(cfg, data, torch.device("cpu"), rank, world)
    result: dict = {}
    if mode == "evaluate":
        scored: list[int] = []
        real = metrics.retrieval_metric_sums

        def spy(user_emb, *args, **kwargs):
            scored.append(len(user_emb))
            return real(user_emb, *args, **kwargs)

        metrics.retrieval_metric_sums = spy
        model.eval()
        result = {"metrics": task.evaluate(model), "baseline": task.baseline()}
        result["scored"] = scored if cfg.task == "retrieval" else [len(task.val[0])]
    else:
        result = _global_step(task, model, cfg.training.batch_size, rank, Path(out))
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _global_step(task, model, batch_size: int, rank: int, out: Path) -> dict:
    """In a function of its own so that the DDP model is freed when it returns: a DDP Reducer
    freed after destroy_process_group deadlocks with gloo's threads at exit (see trainer.train)."""
    idx = torch.arange(rank * batch_size, (rank + 1) * batch_size)
    drawn: list[torch.Tensor] = []
    real_randint = torch.randint

    def spy_randint(*args, **kwargs):
        drawn.append(real_randint(*args, **kwargs))
        return drawn[-1]

    torch.randint = spy_randint
    trained = DistributedDataParallel(model)
    loss = task.loss(trained, task.batch(idx))
    loss.backward()
    torch.randint = real_randint
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    torch.save(grads, out / f"grads{rank}.pt")
    return {"loss": loss.item(), "mixed": [d.tolist() for d in drawn]}


if __name__ == "__main__":
    main()
