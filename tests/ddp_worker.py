"""Run under torchrun by tests/test_train_ddp.py: trains, then dumps what each rank saw and holds.

Usage: torchrun --nproc_per_node 2 tests/ddp_worker.py TASK CONFIG_JSON RUN_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from recjobs.config.resolver import resolve_dict
from recjobs.training import trainer


def main() -> None:
    task, config_json, run_dir, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    rank = int(os.environ["RANK"])
    seen: dict[int, list[list[int]]] = {}
    models: list[torch.nn.Module] = []
    real_step, real_build = trainer.TrainingRun.train_step, trainer.build_model

    def spy_step(self, idx, batches_in_epoch):
        # The (user, item) rows: the indices are into this rank's own shard.
        users, items = self.data.train_users[idx.cpu()], self.data.train_items[idx.cpu()]
        pairs = torch.stack([users.long(), items.long()], dim=1).tolist()
        seen.setdefault(self.progress.epoch, []).extend(pairs)
        return real_step(self, idx, batches_in_epoch)

    def spy_build(*args, **kwargs):
        models.append(real_build(*args, **kwargs))
        return models[-1]

    trainer.TrainingRun.train_step, trainer.build_model = spy_step, spy_build
    metrics = trainer.train(resolve_dict(json.loads(config_json), task), run_dir)
    torch.save(models[0].state_dict(), out / f"weights{rank}.pt")
    (out / f"rank{rank}.json").write_text(
        json.dumps({"seen": [seen[e] for e in sorted(seen)], "metrics": metrics})
    )


if __name__ == "__main__":
    main()
