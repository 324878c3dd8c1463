"""What differs between retrieval and ranking: batches, the loss, and validation.

The training loop talks to a task through six members (`num_examples`, `batch`, `loss`,
`loss_depends_on_batch_size`, `evaluate`, `baseline`) and never learns which model or loss it
runs. All tensors live on the training device from the start, so a batch is a few index
gathers (the ids cast from their small stored type to int64): no per-example Python.

In a job of several processes each rank holds the interactions of its own users
(`recjobs.data.shards`), trains on them and validates them, and the pieces of validation are
joined (`recjobs.distributed`), so `evaluate` and `baseline` are collectives: every rank calls
them, and every rank gets the same numbers, those of one process validating everything.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recjobs.config.schema import ResolvedConfig
from recjobs.data import TaskData
from recjobs.distributed import (
    Ranks,
    all_gather_equal,
    all_gather_rows,
    all_gather_with_grad,
    all_reduce_sum,
)
from recjobs.models import in_batch_softmax_loss
from recjobs.training import metrics
from recjobs.training.negatives import NegativeSampler

# Validation sets are scored in batches of this many rows (bounded memory, any size).
EVAL_BATCH = 65536


class RetrievalTask:
    """Two-tower retrieval: in-batch softmax on (user, item) positives; full-catalogue metrics."""

    # The other positives of a batch are its negatives: a short batch's loss is lower.
    loss_depends_on_batch_size = True

    def __init__(
        self,
        cfg: ResolvedConfig,
        data: TaskData,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ):
        tr = cfg.training
        self.device, self.ranks = device, Ranks(rank, world_size)
        self.temperature, self.ks = tr.temperature, tuple(tr.eval_k)
        # Global negatives: each rank's softmax over the items of every rank's batch.
        self.global_negatives = tr.negatives == "global" and world_size > 1
        # val/loss batches have as many candidates as a training step's softmax, so that val/loss
        # is on the scale of train/loss.
        self.eval_loss_batch = tr.batch_size * (world_size if self.global_negatives else 1)
        self.user_features = data.user_features.to(device)
        self.item_features = data.item_features.to(device)
        # This rank's interactions (`recjobs.data.shards`): the users it owns, all their rows.
        self.train_users = data.train_users.to(device)
        self.train_items = data.train_items.to(device)
        self.val_users = data.val_users.long().to(device)
        self.val_items = data.val_items.long().to(device)
        self.val_total = data.val_total
        self.item_counts = data.item_counts.float()
        counts = data.item_counts.to(device=device, dtype=torch.float32).clamp_min(1.0)
        # log of each item's share of training positives: the in-batch sampling probability.
        self.log_q = (counts / counts.sum()).log() if tr.logq_correction else None
        # Mixed negatives: M uniform catalogue items per step from a checkpointed generator.
        self.mixed, self.n_items = tr.mixed_negatives, data.n_items
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(cfg.shared.seed + 3 + rank)
        # The validation users this rank scores (at most ceil(U / world_size) of them, all its
        # own) and the CSRs of their positives / training items (masked at scoring).
        users = data.eval_users
        n = len(users)
        position = torch.full((data.n_users + 1,), -1, dtype=torch.long)
        position[users] = torch.arange(n)
        val_rows = position[data.val_users.long()]
        train_rows = position[data.train_users.long()]
        self.val_csr = metrics.csr_from_pairs(
            val_rows[val_rows >= 0], data.val_items[val_rows >= 0], n
        )
        keep = train_rows >= 0
        self.train_csr = metrics.csr_from_pairs(train_rows[keep], data.train_items[keep], n)
        self.eval_users = users.to(device)

    @property
    def num_examples(self) -> int:
        return len(self.train_users)

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        return {"users": self.train_users[idx].long(), "items": self.train_items[idx].long()}

    def loss(
        self,
        model: nn.Module,
        batch: dict[str, Tensor],
        mixed: bool = True,
        every_rank: bool = True,
    ) -> Tensor:
        """The in-batch softmax loss of `batch`; with global negatives (and `every_rank`) over
        the candidates of every rank's batch, which must then be as long on every rank (the
        trainer gives every rank as many examples per epoch, so their step-k batches are)."""
        items = batch["items"]
        user_feats = self.user_features[batch["users"]]
        if mixed and self.mixed:
            extra_ids = torch.randint(
                1, self.n_items + 1, (self.mixed,), generator=self.generator, device=items.device
            )
            ids = torch.cat([items, extra_ids])
        else:
            ids = items
        # One forward for the batch's items and the extra ones (DDP sees a single forward).
        user_emb, item_emb = model(user_feats, self.item_features[ids])
        offset = 0
        if every_rank and self.global_negatives:
            # One gather of the embeddings (autograd: the other ranks' losses train ours too)
            # and one of the ids, each [world, B + M, ...]; rank r's positives then sit at
            # columns r*B.. of the batch part. The gradient this gives each rank, averaged by
            # DDP, is that of the mean loss over the whole global batch (docs/performance.md).
            world = self.ranks.world_size
            item_emb = all_gather_with_grad(item_emb, self.ranks).view(world, len(ids), -1)
            ids = all_gather_equal(ids, self.ranks).view(world, len(ids))
            offset = self.ranks.rank * len(items)
        else:
            item_emb, ids = item_emb.unsqueeze(0), ids.unsqueeze(0)
        # Candidates: every rank's batch items in rank order, then every rank's extra items.
        batch_ids, extra_ids = ids[:, : len(items)].flatten(), ids[:, len(items) :].flatten()
        batch_emb = item_emb[:, : len(items)].flatten(0, 1)
        extra_emb = item_emb[:, len(items) :].flatten(0, 1)
        log_q = self.log_q[batch_ids] if self.log_q is not None else None
        if not len(extra_ids):
            return in_batch_softmax_loss(
                user_emb,
                batch_emb,
                self.temperature,
                item_ids=batch_ids,
                log_q=log_q,
                positive_offset=offset,
            )
        # Expected copies of an item among the candidates: B * its share from the batches,
        # M / N from the uniform draws (B and M counted over the ranks whose items are in).
        extra_log_q = None
        if log_q is not None:
            log_q = log_q + math.log(len(batch_ids))
            extra_log_q = math.log(len(extra_ids) / self.n_items)
        return in_batch_softmax_loss(
            user_emb,
            batch_emb,
            self.temperature,
            item_ids=batch_ids,
            log_q=log_q,
            extra_emb=extra_emb,
            extra_ids=extra_ids,
            extra_log_q=extra_log_q,
            positive_offset=offset,
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """val/loss and the full-catalogue metrics of this rank's share, joined over the ranks.

        val/loss: the mean over the validation pairs of the softmax loss of training-size
        batches (so that it is on the scale of train/loss), each rank over batches of its own
        pairs: as train/loss, it depends on which pairs share a batch, so on the world size.
        """
        n_val, step = len(self.val_users), self.eval_loss_batch
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, n_val, step):
            batch = {
                "users": self.val_users[start : start + step],
                "items": self.val_items[start : start + step],
            }
            loss = self.loss(model, batch, mixed=False, every_rank=False)
            loss_sum += loss.double() * len(batch["users"])
        user_emb = model.user_embeddings(self.user_features[self.eval_users]).float().cpu()
        item_emb = model.item_embeddings(self.item_features).float().cpu()
        sums, n_users = metrics.retrieval_metric_sums(
            user_emb, item_emb, *self.val_csr, *self.train_csr, self.ks
        )
        sums, n_users = self._joined({"loss": float(loss_sum), **sums}, n_users)
        out = {"val/loss": sums.pop("loss") / max(self.val_total, 1)}
        out.update({f"val/{k}": v for k, v in metrics.metric_means(sums, n_users).items()})
        return out

    def _joined(self, sums: dict[str, float], n_users: int) -> tuple[dict[str, float], float]:
        """Per-rank sums and user counts → their totals over the ranks (one all-reduce); the
        same floats on every rank, so early stopping and the LR schedule agree everywhere."""
        values = torch.tensor([n_users, *sums.values()], dtype=torch.float64, device=self.device)
        total = all_reduce_sum(values, self.ranks).tolist()
        return dict(zip(sums, total[1:], strict=True)), total[0]

    @torch.no_grad()
    def baseline(self) -> dict[str, float]:
        """The same metrics for recommending the most popular unseen items to everybody.

        Same validation users, same masking (training items, OOV); items ranked by their number
        of training interactions, ties by vocabulary order (so that the list, and the metric,
        do not depend on how torch.topk breaks ties).
        """
        order = torch.argsort(self.item_counts, descending=True, stable=True)
        score = torch.empty(len(order))
        score[order] = torch.arange(len(order), 0, -1, dtype=torch.float32)  # exact in float32
        users = torch.ones(len(self.eval_users), 1)
        sums, n_users = metrics.retrieval_metric_sums(
            users, score[:, None], *self.val_csr, *self.train_csr, self.ks
        )
        found = metrics.metric_means(*self._joined(sums, n_users))
        return {f"val/baseline/{k}": v for k, v in found.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}  # the mixed negatives' draws

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:  # checkpoints from before mixed negatives hold none
            self.generator.set_state(state["generator"])


class RankingTask:
    """DLRM/DCN ranking: BCE with sampled negatives (implicit) or MSE on a label column."""

    loss_depends_on_batch_size = False  # a mean over independent examples

    def __init__(
        self,
        cfg: ResolvedConfig,
        data: TaskData,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ):
        tr = cfg.training
        self.ranks = Ranks(rank, world_size)
        self.loss_func, self.negatives = tr.loss_func, tr.negatives_per_pos
        self.n_items = data.n_items
        self.item_counts = data.item_counts.float()
        self.user_features = data.user_features.to(device)
        self.item_features = data.item_features.to(device)
        # This rank's interactions (`recjobs.data.shards`): the users it owns, all their rows,
        # so the known pairs below are complete for every user this rank draws negatives for.
        self.train_users = data.train_users.to(device)
        self.train_items = data.train_items.to(device)
        self.train_labels = data.train_labels.to(device) if data.train_labels is not None else None
        self.train_total = data.train_total
        # Negatives for training come from a generator whose state is checkpointed (exact resume);
        # validation negatives are drawn once from a fixed seed: val/auc compares across runs.
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(cfg.shared.seed + 1 + rank)  # each rank its own negatives
        seen = (data.train_users, data.train_items) if tr.negatives_exclude_seen else (None, None)
        self.sampler = NegativeSampler(
            data.n_items,
            data.item_counts,
            tr.negatives_distribution,
            tr.negatives_alpha,
            *seen,
            device=device,
        )
        if self.loss_func == "bce":
            val = self._validation_rows(data, device, cfg.shared.seed + 2)
        else:
            if data.val_labels is None or self.train_labels is None:
                raise ValueError("mse needs labels")  # the config validation makes this unreachable
            val = (
                data.val_users.long().to(device),
                data.val_items.long().to(device),
                data.val_labels.to(device),
            )
        self.val = val  # the validation rows of this rank's users

    def _validation_rows(
        self, data: TaskData, device: torch.device, seed: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Each validation positive and `negatives_per_pos` uniform items the user has neither in
        training nor in validation; the same rows in every run with this seed and data, whatever
        the training sampler and the world size (a row's negatives are keyed by its position in
        the validation table). A negative that cannot be found (a user who has nearly every
        item) is left out."""
        val_users, val_items = data.val_users.long(), data.val_items.long()
        known = NegativeSampler(
            data.n_items,
            data.item_counts,
            known_users=torch.cat([data.train_users.long(), val_users]),
            known_items=torch.cat([data.train_items.long(), val_items]),
        )
        negs, still_known = known.sample_keyed(val_users, data.val_positions, self.negatives, seed)
        keep = ~still_known
        users = torch.cat([val_users, val_users.repeat_interleave(self.negatives)[keep]])
        items = torch.cat([val_items, negs[keep]])
        labels = torch.cat([torch.ones(len(val_users)), torch.zeros(int(keep.sum()))])
        return users.to(device), items.to(device), labels.to(device)

    @property
    def num_examples(self) -> int:
        return len(self.train_users)

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        users, items = self.train_users[idx].long(), self.train_items[idx].long()
        if self.loss_func == "bce":
            negs, _ = self.sampler.sample(users, self.negatives, self.generator)
            labels = torch.cat(
                [
                    torch.ones(len(users), device=users.device),
                    torch.zeros(len(negs), device=users.device),
                ]
            )
            users = torch.cat([users, users.repeat_interleave(self.negatives)])
            items = torch.cat([items, negs])
        else:
            labels = self.train_labels[idx]
        return {"users": users, "items": items, "labels": labels}

    def _objective(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = logits.float()
        if self.loss_func == "bce":
            return F.binary_cross_entropy_with_logits(logits, labels)
        return F.mse_loss(logits, labels)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        logits = model(self.user_features[batch["users"]], self.item_features[batch["items"]])
        return self._objective(logits, batch["labels"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        users, items, labels = self.val
        # A rank may have no rows (fewer rows than ranks): its piece is empty, not an error.
        scores = torch.cat(
            [
                torch.zeros(0, device=labels.device),
                *(
                    model(
                        self.user_features[users[s : s + EVAL_BATCH]],
                        self.item_features[items[s : s + EVAL_BATCH]],
                    ).float()
                    for s in range(0, len(users), EVAL_BATCH)
                ),
            ]
        )
        scores, labels = self._gathered(scores, labels)
        out = {"val/loss": float(self._objective(scores, labels))}
        if self.loss_func == "bce":
            out["val/auc"] = metrics.auc(scores, labels)
            out["val/logloss"] = metrics.binary_logloss(scores, labels)
        else:
            out["val/rmse"] = metrics.rmse(scores, labels)
            out["val/mae"] = metrics.mae(scores, labels)
        return out

    @torch.no_grad()
    def baseline(self) -> dict[str, float]:
        """What a model without a model gets on the same validation rows.

        bce: val/baseline/auc of an item's popularity (training interactions) as its score;
        mse: val/baseline/rmse and mae of predicting the training labels' mean.
        """
        _, items, labels = self.val
        if self.loss_func == "bce":
            counts = self.item_counts.to(labels.device)[items]
            return {"val/baseline/auc": metrics.auc(*self._gathered(counts, labels))}
        _, labels = self._gathered(labels, labels)
        # The mean over every rank's training labels: the sum is joined, the count known.
        label_sum = all_reduce_sum(self.train_labels.double().sum(), self.ranks)
        mean = torch.full_like(labels, float(label_sum) / self.train_total)
        return {
            "val/baseline/rmse": metrics.rmse(mean, labels),
            "val/baseline/mae": metrics.mae(mean, labels),
        }

    def _gathered(self, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Every rank's (score, label) rows in the order of the validation set, on the CPU: the
        metrics are then those of one process, exactly (an AUC ranks all rows together)."""
        pairs = torch.stack([scores.float(), labels.float()], dim=1)
        pairs = all_gather_rows(pairs, self.ranks).cpu()
        return pairs[:, 0], pairs[:, 1]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def make_task(
    cfg: ResolvedConfig,
    data: TaskData,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> RetrievalTask | RankingTask:
    task = RetrievalTask if cfg.task == "retrieval" else RankingTask
    return task(cfg, data, device, rank, world_size)
