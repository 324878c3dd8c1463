"""Run under torchrun by tests/test_distributed.py: one collective piece of a task, dumped.

Usage: torchrun --nproc_per_node N tests/distributed_worker.py MODE CONFIG_JSON WEIGHTS OUT_DIR

MODE evaluate: the task's sharded `evaluate` and `baseline` of the model in WEIGHTS, and how many
users (retrieval) or rows (ranking) this rank scored.
MODE step: one global-negatives training step under DDP; rank r's batch is the first B rows of
its own training shard (B = batch_size). Dumps the loss, the gradient of every parameter, the
batch's (user, item) rows and the mixed negatives this rank drew.
MODE load: this rank's data (`load_task_data` with its Ranks), dumped as tensors.
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
from recjobs.distributed import Ranks
from recjobs.models import build_model
from recjobs.training import metrics, tasks


def main() -> None:
    mode, config_json, weights, out = sys.argv[1:5]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    raw = json.loads(config_json)
    cfg = resolve_dict(raw, "retrieval" if "retrieval" in raw else "ranking")
    data = load_task_data(cfg, ranks=Ranks(rank, world))
    if mode == "load":
        dump = {k: getattr(data, k) for k in ("train_users", "train_items", "val_users")}
        dump.update(
            val_items=data.val_items,
            val_positions=data.val_positions,
            eval_users=data.eval_users,
            item_counts=data.item_counts,
            train_per_rank=torch.tensor(data.train_per_rank),
            train_total=torch.tensor(data.train_total),
        )
        torch.save(dump, Path(out) / f"data{rank}.pt")
        (Path(out) / f"rank{rank}.json").write_text("{}")
        dist.destroy_process_group()
        return
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
        if cfg.task == "retrieval":  # the pairs of this rank's val/loss batches
            result["val_pairs"] = [task.val_users.tolist(), task.val_items.tolist()]
    else:
        result = _global_step(task, model, cfg.training.batch_size, rank, Path(out))
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _global_step(task, model, batch_size: int, rank: int, out: Path) -> dict:
    """In a function of its own so that the DDP model is freed when it returns: a DDP Reducer
    freed after destroy_process_group deadlocks with gloo's threads at exit (see trainer.train)."""
    idx = torch.arange(batch_size)
    drawn: list[torch.Tensor] = []
    real_randint = torch.randint

    def spy_randint(*args, **kwargs):
        drawn.append(real_randint(*args, **kwargs))
        return drawn[-1]

    torch.randint = spy_randint
    trained = DistributedDataParallel(model)
    batch = task.batch(idx)
    loss = task.loss(trained, batch)
    loss.backward()
    torch.randint = real_randint
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    torch.save(grads, out / f"grads{rank}.pt")
    return {
        "loss": loss.item(),
        "mixed": [d.tolist() for d in drawn],
        "users": batch["users"].tolist(),
        "items": batch["items"].tolist(),
    }


if __name__ == "__main__":
    main()
