"""The training loop shared by retrieval and ranking.

Read it top to bottom: set up (process group, device, data, model, optimizer, scheduler,
precision), maybe resume, then epochs of steps with logging, validation, checkpoints and early
stopping, then export. Everything configurable comes from the builders in `recjobs.optim`,
`recjobs.precision`, `recjobs.models` and `recjobs.tasks`; the loop does not know which
optimizer, scheduler or model it runs.

Under torchrun (WORLD_SIZE > 1) it is one DDP job: gloo on CPU, NCCL on CUDA. Every rank
trains on its own disjoint shard of each epoch and evaluates the full validation set (so the
metrics, early stopping and ReduceLROnPlateau agree on every rank whatever the world size);
rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recjobs.checkpoint import (
    load_checkpoint,
    load_latest_good,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from recjobs.data import Encoders, epoch_batches, load_task_data, steps_per_epoch
from recjobs.errors import CheckpointError, ConfigError, DataError, RunDirError, TrainingDiverged
from recjobs.export import export_model
from recjobs.models import build_model
from recjobs.optim import (
    Optimizers,
    build_optimizers,
    build_scheduler,
    check_device,
    clip_grad_norm,
    sparse_decision,
)
from recjobs.precision import precision_policy
from recjobs.rundir import RunDir
from recjobs.schema import ResolvedConfig
from recjobs.tasks import make_task
from recjobs.tracking import Tracker, wandb_wanted

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 143  # 128 + SIGTERM: what schedulers and torchrun read as "terminated"
# Under DDP the ranks agree on stopping every this many steps: a cheap CPU all-reduce, no GPU sync.
STOP_CHECK_STEPS = 10
# Keys that may change between a checkpoint and its resume; anything else changes the run.
RESUMABLE_CHANGES = {
    "max_epochs",
    "max_steps",
    "eval_steps",
    "log_steps",
    "checkpoint_steps",
    "num_workers",
    "device",
    "artifact_dir",
    "use_wandb",
    "wandb_project",
    "wandb_entity",
    "wandb_run_name",
}


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint was written (or the run had already ended).

    The process exits with `exit_code`, 128 + the signal's number: 143 for SIGTERM, 130 for
    SIGINT (Ctrl-C), as a shell reports a process the signal ended.
    """

    def __init__(self, message: str, exit_code: int = EXIT_PREEMPTED):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    stop_group: Any = None  # a gloo group: agreeing on SIGTERM never touches the GPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_setting: str) -> Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    stop_group = dist.new_group(backend="gloo") if use_cuda else None
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, stop_group)


def pick_device(setting: str, ddp: Distributed) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "training.device",
            "cuda was requested but no CUDA device is available",
            "use device: auto",
        )
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", ddp.local_rank)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks between steps.

    The step in flight finishes, a checkpoint is written, the process exits with 128 + the
    signal's number. Installed when `train` starts, so a signal while data loads, during
    validation, a checkpoint write or the export is handled the same way: never a
    KeyboardInterrupt traceback, never a half-done write.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the first stop signal that arrived, if any
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        self.requested = True

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class EarlyStopping:
    def __init__(self, enabled: bool, metric: str, mode: str, patience: int, min_delta: float):
        self.enabled, self.key, self.mode = enabled, f"val/{metric}", mode
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.bad = 0

    def update(self, metrics: dict[str, float]) -> bool:
        """Record an epoch-end validation; True when it is the best so far."""
        value = metrics[self.key]
        if math.isnan(value):
            self.bad += 1
            return False
        better = self.best is None or (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if better:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = state["best"], state["bad"]


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    cfg: ResolvedConfig, run_dir: str | Path | None = None, resume: bool = False
) -> dict[str, float]:
    """Train one task as configured; returns the last validation metrics.

    Raises:
        Preempted: SIGTERM or SIGINT arrived; a checkpoint was written.
        UserError: bad data, checkpoint or run dir (RunDirError also for a full disk);
            TrainingDiverged for a non-finite loss or validation metric.
    """
    tr = cfg.training
    rundir = RunDir(Path(run_dir or tr.artifact_dir))
    stop = StopSignal()
    ddp = init_distributed(tr.device)
    try:
        if not ddp.is_main:
            return _train(cfg, rundir, resume, ddp, stop)
        with rundir.lock():
            return _train(cfg, rundir, resume, ddp, stop)
    except OSError as exc:
        if not _is_file_error(exc):  # e.g. a DDP peer's connection: not the user's doing
            traceback.clear_frames(exc.__traceback__)
            raise
        # What the writers do not name themselves (a directory in the way of model/).
        traceback.clear_frames(exc.__traceback__)
        raise RunDirError(
            str(exc.filename or rundir.path),
            f"I/O error: {exc.strerror or exc}",
            "files written before it are whole; fix the cause and resume with --resume",
        ) from None
    except BaseException as exc:
        # The traceback holds _train's frames and so the DDP model. Freed only after
        # destroy_process_group, its Reducer would free the gloo group with the GIL held while a
        # gloo thread waits for the GIL: a deadlock at exit after SIGTERM. Free the model first,
        # as a return does.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        stop.restore()
        if ddp.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _is_file_error(exc: OSError) -> bool:
    full = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
    return not isinstance(exc, ConnectionError) and (exc.filename is not None or exc.errno in full)


# What a checkpoint must hold for a resume (loss_window and wandb_id are newer and optional).
CHECKPOINT_FIELDS = (
    "config",
    "model",
    "optimizers",
    "scheduler",
    "scaler",
    "early_stopping",
    "ranks",
    "epoch",
    "batch_in_epoch",
    "step",
    "metrics_lines",
    "encoders",
)


def _train(
    cfg: ResolvedConfig, rundir: RunDir, resume: bool, ddp: Distributed, stop: StopSignal
) -> dict[str, float]:
    tr = cfg.training
    resuming = rundir.check_start(resume)  # read-only, on every rank: all ranks fail alike
    checkpoint = load_latest_good(rundir.last, CHECKPOINT_FIELDS) if resuming else None
    if checkpoint is not None:
        with _unusable_checkpoint(rundir):
            _check_same_run(checkpoint["config"], cfg)

    seed_everything(cfg.shared.seed)  # same seed on every rank: identical initial weights
    device = pick_device(tr.device, ddp)
    _check_optimizer_device(cfg, device)
    if ddp.is_main and tr.device == "auto" and device.type == "cpu":
        # On a GPU node this means the container sees no GPU (no NVIDIA runtime, no device
        # granted): say so before hours of CPU training.
        log.info("training.device auto: no CUDA device visible, training on the CPU")
    with _unusable_checkpoint(rundir):
        encoders = Encoders.from_json(checkpoint["encoders"]) if checkpoint else None
    data = load_task_data(cfg, encoders)
    task = make_task(cfg, data, device, rank=ddp.rank)
    cards = data.user_cardinalities + data.item_cardinalities
    nccl = ddp.world_size > 1 and device.type == "cuda"
    sparse, why = sparse_decision(tr.sparse_embeddings, cards, nccl)
    model = build_model(
        cfg.task, cfg.model, data.user_cardinalities, data.item_cardinalities, sparse=sparse
    ).to(device)
    trained = DistributedDataParallel(model) if ddp.world_size > 1 else model
    optimizers = _build_optimizers(model, tr.optimizer, tr.embedding_optimizer if sparse else None)
    per_epoch = _steps_per_epoch(task.num_examples, tr.batch_size, ddp.world_size)
    schedule = build_scheduler(optimizers.all, tr.scheduler, per_epoch, tr.max_epochs, tr.max_steps)
    precision = precision_policy(tr.mixed_precision, device)
    scaler = precision.grad_scaler()
    es = tr.early_stopping
    early = EarlyStopping(es.enabled, es.metric, es.mode, es.patience, es.min_delta)

    if ddp.is_main:
        rundir.path.mkdir(parents=True, exist_ok=True)
        rundir.write_config(cfg.to_dict())
    use_wandb, why_not = wandb_wanted(tr.use_wandb)
    if ddp.is_main and why_not:
        log.info("%s", why_not)
    wandb_args = {"project": tr.wandb_project, "entity": tr.wandb_entity, "name": tr.wandb_run_name}
    if checkpoint is not None:
        wandb_args["id"] = checkpoint.get("wandb_id")
    tracker = Tracker(
        rundir.path, cfg.to_dict(), enabled=ddp.is_main, use_wandb=use_wandb, wandb_args=wandb_args
    )

    epoch, batch_in_epoch, step = 0, 0, 0
    best_state = None
    if checkpoint is not None:
        epoch, batch_in_epoch, step, metrics_lines = _restore_states(
            checkpoint, rundir, ddp, task, model, optimizers, schedule, scaler, early
        )
        tracker.truncate(metrics_lines)
        if rundir.best.exists():
            best_state = load_checkpoint(rundir.best)["model"]
        log.info("resumed from %s at epoch %d, step %d", rundir.last, epoch, step)
    else:
        tracker.truncate(0)  # --resume before any checkpoint existed: start the record afresh

    def write_checkpoint(path: Path) -> None:
        check_finite()  # a diverged state never replaces a good checkpoint
        ranks = _gather_rank_states(ddp, task)
        if not ddp.is_main:
            return
        save_checkpoint(
            path,
            {
                "config": cfg.to_dict(),
                "model": model.state_dict(),
                "optimizers": optimizers.state_dict(),
                "scheduler": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "early_stopping": early.state_dict(),
                "ranks": ranks,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "step": step,
                "metrics_lines": tracker.lines,
                "encoders": data.encoders.to_json(),
                "wandb_id": getattr(tracker.wandb, "id", None),
                # The running mean of train/loss since the last log step: without it, the
                # first train/loss after a resume would average fewer steps.
                "loss_window": {"sum": loss_sum.detach().cpu(), "count": loss_count},
            },
            keep_previous=path == rundir.last,  # a damaged last.pt falls back to last.prev.pt
        )

    def validate(end_of_epoch: bool) -> dict[str, float]:
        model.eval()
        metrics = task.evaluate(model)
        model.train()
        check_finite()  # a diverged loss is named as such, before its consequences
        _check_finite_metrics(metrics, step, rundir)
        tracker.log({"step": step, "epoch": epoch, **metrics})
        schedule.after_validation(metrics, end_of_epoch)
        return metrics

    total_steps = min(per_epoch * tr.max_epochs, tr.max_steps or sys.maxsize)
    if ddp.is_main:
        log.info(
            "training %s (%s) on %s x%d: %d examples, %d steps/epoch, %d steps",
            cfg.task,
            cfg.model.model_arch,
            device,
            ddp.world_size,
            task.num_examples,
            per_epoch,
            total_steps,
        )
        log.info("sparse embedding updates: %s (%s)", "on" if sparse else "off", why)
    progress = _progress(total_steps, step, ddp.is_main)
    loss_sum = torch.zeros((), device=device)
    # Divergence is tracked on the device (the first step whose loss was not finite) and read
    # only where the loop syncs anyway: at log steps and before checkpoints.
    step_counter = torch.full((), step, dtype=torch.long, device=device)
    first_bad_step = torch.zeros((), dtype=torch.long, device=device)

    def check_finite() -> None:
        bad = _max_over_ranks(first_bad_step, ddp)
        if bad:
            raise TrainingDiverged(
                "training",
                f"loss is not finite at step {bad}",
                f"no checkpoint was written after it; {rundir.last} holds the last good state. "
                "Lower the learning rate or set grad_clip_norm",
            )

    loss_count, examples, tick = 0, 0, time.perf_counter()
    if checkpoint is not None and "loss_window" in checkpoint:
        with _unusable_checkpoint(rundir):
            loss_sum.copy_(checkpoint["loss_window"]["sum"])
            loss_count = int(checkpoint["loss_window"]["count"])
    last_scale = scaler.get_scale() if scaler.is_enabled() else 0.0
    metrics: dict[str, float] = {}
    model.train()
    if _signalled_before_start(stop, ddp):  # e.g. Ctrl-C while the data loaded
        write_checkpoint(rundir.last)
        raise Preempted(
            f"{stop.name} at step {step}, before training started: checkpoint written to "
            f"{rundir.last}",
            stop.exit_code,
        )
    try:
        while epoch < tr.max_epochs and step < total_steps and not early.should_stop:
            batches = epoch_batches(
                task.num_examples,
                tr.batch_size,
                epoch=epoch,
                seed=cfg.shared.seed,
                rank=ddp.rank,
                world_size=ddp.world_size,
            )
            # One host-to-device copy per epoch; each step's batch is then a slice on the device.
            batches = torch.cat(batches).to(device).split([len(b) for b in batches])
            for idx in batches[batch_in_epoch:]:
                batch = task.batch(idx)
                with precision.autocast():
                    loss = task.loss(trained, batch)
                optimizers.zero_grad()
                scaler.scale(loss).backward()
                if tr.grad_clip_norm:
                    for opt in optimizers.all:
                        scaler.unscale_(opt)
                    clip_grad_norm(list(model.parameters()), tr.grad_clip_norm)
                logging_now = (step + 1) % tr.log_steps == 0
                if (
                    logging_now
                ):  # train/lr is the LR this step used, read before the scheduler moves it
                    lr_record = optimizers.lr_record()
                for opt in optimizers.all:
                    scaler.step(opt)
                scaler.update()
                schedule.after_step()
                step += 1
                batch_in_epoch += 1
                loss_sum += loss.detach().float()
                step_counter += 1
                first_bad_step = torch.where(
                    (first_bad_step == 0) & ~torch.isfinite(loss.detach()),
                    step_counter,
                    first_bad_step,
                )
                loss_count += 1
                examples += len(idx)
                progress.update(1)

                if logging_now:  # the loop's only host sync: at log steps
                    check_finite()
                    mean_loss = _mean_over_ranks(loss_sum / loss_count, ddp)
                    elapsed = time.perf_counter() - tick
                    record = {"step": step, "epoch": epoch, "train/loss": mean_loss}
                    record.update(lr_record)
                    record["train/examples_per_s"] = examples * ddp.world_size / max(elapsed, 1e-9)
                    if scaler.is_enabled():  # fp16: overflowing steps are skipped, not fatal
                        scale = scaler.get_scale()
                        record["train/grad_scale"] = scale
                        if scale < last_scale:
                            log.warning(
                                "fp16: GradScaler skipped overflowing steps before step %d "
                                "(scale %g -> %g; each skip halves it)",
                                step,
                                last_scale,
                                scale,
                            )
                        last_scale = scale
                    tracker.log(record)
                    loss_sum.zero_()
                    loss_count, examples, tick = 0, 0, time.perf_counter()
                if tr.eval_steps and step % tr.eval_steps == 0:
                    metrics = validate(end_of_epoch=False)
                    tick = time.perf_counter()  # examples/s measures training, not validation
                if tr.checkpoint_steps and step % tr.checkpoint_steps == 0:
                    write_checkpoint(rundir.last)
                    tick = time.perf_counter()
                if _stop_requested(stop, step, ddp):
                    write_checkpoint(rundir.last)
                    raise Preempted(
                        f"{stop.name} at step {step}: checkpoint written to {rundir.last}",
                        stop.exit_code,
                    )
                if step >= total_steps and batch_in_epoch < len(batches):
                    break  # max_steps ends the run mid-epoch
            else:  # the epoch ran to its end
                metrics = validate(end_of_epoch=True)
                schedule.after_epoch()
                epoch, batch_in_epoch = epoch + 1, 0
                if early.update(metrics):
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    write_checkpoint(rundir.best)
                write_checkpoint(rundir.last)
                if _stop_requested(stop, 0, ddp):
                    raise Preempted(
                        f"{stop.name} after epoch {epoch}: checkpoint written to {rundir.last}",
                        stop.exit_code,
                    )
                tick = time.perf_counter()
                continue
            break  # max_steps reached inside the epoch
        if (
            step >= total_steps and batch_in_epoch
        ):  # stopped mid-epoch by max_steps: validate once more
            metrics = validate(end_of_epoch=True)
            if early.update(metrics):
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                write_checkpoint(rundir.best)
            write_checkpoint(rundir.last)
    finally:
        progress.close()

    if early.enabled and best_state is not None:
        model.load_state_dict(best_state)
        log.info("restored the best weights (%s = %s)", early.key, early.best)
    if ddp.is_main:
        export_model(rundir.model, model, cfg, data)
    tracker.finish()
    if stop.signum is not None:
        # It arrived after the last checkpoint; the handler let the export finish first.
        raise Preempted(
            f"{stop.name} after the last step: training and the export finished, the model is "
            f"complete in {rundir.model}",
            stop.exit_code,
        )
    return metrics


def _restore_states(
    checkpoint: dict[str, Any],
    rundir: RunDir,
    ddp: Distributed,
    task: Any,
    model: torch.nn.Module,
    optimizers: Optimizers,
    schedule: Any,
    scaler: torch.amp.GradScaler,
    early: EarlyStopping,
) -> tuple[int, int, int, int]:
    """Load a checkpoint's states; (epoch, batch in epoch, step, metrics lines) it stopped at."""
    with _unusable_checkpoint(rundir):
        model.load_state_dict(checkpoint["model"])
        optimizers.load_state_dict(checkpoint["optimizers"])
        schedule.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        early.load_state_dict(checkpoint["early_stopping"])
        if ddp.world_size != len(checkpoint["ranks"]):
            raise CheckpointError(
                str(rundir.last),
                f"was written by {len(checkpoint['ranks'])} processes, not {ddp.world_size}",
                "resume with the same -j/--nproc_per_node",
            )
        own = checkpoint["ranks"][ddp.rank]
        set_rng_state(own["rng"])
        task.load_state_dict(own["task"])
        fields = ("epoch", "batch_in_epoch", "step", "metrics_lines")
        epoch, batch_in_epoch, step, lines = (int(checkpoint[f]) for f in fields)
    return epoch, batch_in_epoch, step, lines


@contextlib.contextmanager
def _unusable_checkpoint(rundir: RunDir) -> Iterator[None]:
    """A checkpoint whose checksum and fields are right but whose content does not fit (another
    model, another version) becomes one CheckpointError instead of a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(
            str(rundir.last),
            f"does not fit this run ({type(exc).__name__}: {first})",
            "it was written for another model or by another version; use another --run-dir",
        ) from None


def _check_optimizer_device(cfg: ResolvedConfig, device: torch.device) -> None:
    """Optimizer flags the device cannot honour, once `device: auto` is a device."""
    why = f"training.device is {cfg.training.device}" + (
        " and no CUDA device is visible" if cfg.training.device == "auto" else ""
    )
    for key in ("optimizer", "embedding_optimizer"):
        spec = getattr(cfg.training, key)
        if spec is not None:
            check_device(spec, device.type, f"{cfg.task}.training.{key}", why)


def _steps_per_epoch(num_examples: int, batch_size: int, world_size: int) -> int:
    try:
        return steps_per_epoch(num_examples, batch_size, world_size)
    except ValueError as exc:  # fewer training examples than processes
        raise DataError(
            "interactions_train", str(exc), "use fewer processes or more training data"
        ) from None


def _check_finite_metrics(metrics: dict[str, float], step: int, rundir: RunDir) -> None:
    """A NaN validation loss or metric means the model's outputs are NaN: stop as diverged."""
    bad = [key for key, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise TrainingDiverged(
            "validation",
            f"{bad[0]} is not finite at step {step} ({metrics[bad[0]]})",
            f"no checkpoint was written from this state; {rundir.last} holds the last good "
            "one. Lower the learning rate or set grad_clip_norm",
        )


def _build_optimizers(
    model: torch.nn.Module, optimizer: dict[str, Any], embedding_optimizer: dict[str, Any] | None
) -> Optimizers:
    try:
        return build_optimizers(model, optimizer, embedding_optimizer)
    except (ValueError, TypeError) as exc:  # e.g. Muon on 1-D parameters
        raise ConfigError(
            "training.optimizer", f"{optimizer['name']} cannot train this model: {exc}"
        ) from None


def _mean_over_ranks(value: torch.Tensor, ddp: Distributed) -> float:
    if ddp.world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= ddp.world_size
    return float(value)


def _max_over_ranks(value: torch.Tensor, ddp: Distributed) -> int:
    if ddp.world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value)


def _signalled_before_start(stop: StopSignal, ddp: Distributed) -> bool:
    """Whether a real stop signal came during set-up; every rank asks, so all agree."""
    arrived = stop.signum is not None
    if ddp.world_size == 1:
        return arrived
    flag = torch.tensor([1 if arrived else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=ddp.stop_group)
    return bool(flag.item())


def _stop_requested(stop: StopSignal, step: int, ddp: Distributed) -> bool:
    if ddp.world_size == 1:
        return stop.requested
    if step % STOP_CHECK_STEPS:
        return False
    flag = torch.tensor([1 if stop.requested else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=ddp.stop_group)
    return bool(flag.item())


def _gather_rank_states(ddp: Distributed, task: Any) -> list[dict[str, Any]]:
    """Each rank's own random state (dropout RNG, negative sampler), for an exact resume."""
    state = {"rng": rng_state(), "task": task.state_dict()}
    if ddp.world_size == 1:
        return [state]
    gathered: list[Any] = [None] * ddp.world_size
    dist.all_gather_object(gathered, state, group=ddp.stop_group)
    return gathered


def _check_same_run(saved: dict[str, Any], cfg: ResolvedConfig) -> None:
    task = cfg.task
    current = cfg.to_dict()
    if task not in saved:
        raise CheckpointError(
            "checkpoints/last.pt", f"was not written by a {task} run", "use another --run-dir"
        )
    diffs = []
    for section in ("dataset", "shared"):
        if saved[section] != current[section]:
            diffs += [
                f"{section}.{k}"
                for k in current[section]
                if saved[section].get(k) != current[section][k]
            ]
    for sub, values in current[task].items():
        for key, value in values.items():
            if saved[task].get(sub, {}).get(key) != value and not (
                sub == "training" and key in RESUMABLE_CHANGES
            ):
                diffs.append(f"{task}.{sub}.{key}")
    if diffs:
        raise CheckpointError(
            "checkpoints/last.pt",
            f"was trained with a different config ({', '.join(diffs)})",
            "resume with the same config, or start a new --run-dir",
        )


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, done: int, is_main: bool) -> Any:
    """A tqdm bar on an interactive terminal; container logs get the periodic log lines only."""
    if not is_main or not (sys.stdout.isatty() and sys.stderr.isatty()):
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)
