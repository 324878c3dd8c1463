"""Run under torchrun by tests/test_resume_world.py: trains (or resumes) one run and writes the
examples each rank trained in each epoch.

Usage: torchrun --nproc_per_node N tests/resume_world_worker.py TASK CONFIG_JSON RUN_DIR OUT_DIR
    [--resume]
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
    resume = "--resume" in sys.argv[5:]
    rank = int(os.environ.get("RANK", "0"))
    trained: dict[int, list[int]] = {}
    real_step = trainer.TrainingRun.train_step

    def spy_step(self, idx, batches_in_epoch):
        # (user, item) rows: the indices are into this rank's own shard.
        users, items = self.data.train_users[idx.cpu()], self.data.train_items[idx.cpu()]
        pairs = torch.stack([users.long(), items.long()], dim=1).tolist()
        trained.setdefault(self.progress.epoch, []).extend(map(tuple, pairs))
        return real_step(self, idx, batches_in_epoch)

    trainer.TrainingRun.train_step = spy_step
    trainer.train(resolve_dict(json.loads(config_json), task), run_dir, resume=resume)
    (out / f"rank{rank}.json").write_text(json.dumps({"trained": trained}))


if __name__ == "__main__":
    main()
