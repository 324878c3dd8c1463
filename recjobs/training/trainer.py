"""The training loop shared by retrieval and ranking.

Read it top to bottom: set up (process group, device, data, model, optimizer, scheduler,
precision), maybe resume, then epochs of steps with logging, validation, checkpoints and early
stopping, then export. Everything configurable comes from the builders in `recjobs.config.optim`,
`recjobs.training.precision`, `recjobs.models` and `recjobs.training.tasks`; the loop does not know
which optimizer, scheduler or model it runs.

Under torchrun (WORLD_SIZE > 1) it is one DDP job: gloo on CPU, NCCL on CUDA. Every rank
trains on its own disjoint shard of each epoch and validates its own share of the validation
set; the task joins the shares, so every rank holds the metrics of the whole set (and early
stopping and ReduceLROnPlateau agree on every rank whatever the world size); rank 0 alone
writes files.
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
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recjobs.config.optim import (
    Optimizers,
    build_optimizers,
    build_scheduler,
    check_device,
    clip_grad_norm,
    sparse_decision,
)
from recjobs.config.resolver import with_absolute_paths
from recjobs.config.schema import ResolvedConfig
from recjobs.data import Encoders, epoch_batches, load_task_data, steps_per_epoch
from recjobs.data.synth import GenerationStopped
from recjobs.distributed import Ranks, gather_rows_to_main
from recjobs.errors import (
    CheckpointError,
    ConfigError,
    RunDirError,
    TrainingDiverged,
    UserError,
)
from recjobs.models import build_model
from recjobs.training import run_status
from recjobs.training.checkpoint import (
    load_checkpoint,
    load_latest_good,
    previous,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from recjobs.training.export import export_model
from recjobs.training.precision import precision_policy
from recjobs.training.rundir import Rollback, RunDir
from recjobs.training.summary import RunEnd, summarise, summary_lines, write_summary
from recjobs.training.tasks import make_task
from recjobs.training.torchrun_env import require_rendezvous, torchrun_place
from recjobs.training.tracking import RunLog, Tracker, read_records, run_log, wandb_wanted

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

    def __init__(self, message: str, exit_code: int = EXIT_PREEMPTED, finished: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.finished = finished  # it came after the export: the run is complete


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
    place = torchrun_place()
    world_size, local_rank = place.world_size, place.local_rank
    if world_size <= 1:
        return Distributed()
    require_rendezvous()
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    stop_group = dist.new_group(backend="gloo") if use_cuda else None
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, stop_group)


def _ranks(ddp: Distributed) -> Ranks:
    return Ranks(ddp.rank, ddp.world_size, ddp.stop_group)


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
    """Tracks the best epoch-end validation (always: it picks the exported weights) and, when
    enabled, stops after `patience` validations without improvement."""

    def __init__(self, enabled: bool, metric: str, mode: str, patience: int, min_delta: float):
        self.enabled, self.key, self.mode = enabled, f"val/{metric}", mode
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.bad = 0
        self.best_step: int | None = None
        self.best_metrics: dict[str, float] | None = None

    def update(self, metrics: dict[str, float], step: int) -> bool:
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
            self.best_step, self.best_metrics = step, dict(metrics)
        else:
            self.bad += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "bad": self.bad,
            "best_step": self.best_step,
            "best_metrics": self.best_metrics,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = state["best"], state["bad"]
        # Checkpoints written before these were tracked lack them.
        self.best_step, self.best_metrics = state.get("best_step"), state.get("best_metrics")


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    cfg: ResolvedConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    resume_or_start: bool = False,
) -> dict[str, float]:
    """Train one task as configured; returns the validation metrics of the exported weights.

    `resume` continues the run in the run dir and requires its checkpoint; `resume_or_start`
    continues it when there is a checkpoint and starts a new run (with a warning) when there
    is none, as a job's first attempt and its retries all do.

    The export (RUN_DIR/model) holds the weights of the best epoch-end validation by
    `training.early_stopping.metric` (the last weights when no validation was finite). Rank 0
    copies its log lines to RUN_DIR/train.log.

    Raises:
        Preempted: SIGTERM or SIGINT arrived; a checkpoint was written.
        UserError: bad data, checkpoint or run dir (RunDirError also for a full disk;
            CheckpointError for `resume` without a checkpoint);
            TrainingDiverged for a non-finite loss or validation metric.
    """
    tr = cfg.training
    rundir = RunDir(Path(run_dir or tr.artifact_dir))
    stop = StopSignal()
    ddp = init_distributed(tr.device)
    rollback = Rollback(rundir)
    try:
        if resume and not resume_or_start:
            rundir.require_checkpoint()  # before the lock creates the directory
        resume = resume or resume_or_start
        # Read-only, on every rank, before anything is written (not even the lock file): a run
        # dir that holds something this run would replace is refused untouched, and all ranks
        # fail alike. The barrier keeps every rank's look before rank 0's first write.
        _check_not_in_use(rundir)  # a run in progress there: say that, not what it holds
        resuming = rundir.check_start(resume)
        if ddp.world_size > 1:
            dist.barrier(group=ddp.stop_group)
        if not ddp.is_main:
            return TrainingRun(cfg, rundir, resume, ddp, stop, resuming=resuming).run()
        had_log = rundir.log.exists()
        try:
            with rundir.lock(), run_log(rundir.log) as written:
                try:
                    run = TrainingRun(cfg, rundir, resume, ddp, stop, written, resuming, rollback)
                    return run.run()
                except BaseException as exc:
                    if not isinstance(exc, Preempted):
                        _undo(rollback)
                    # The run's last line in train.log says how it ended (`recjobs status`
                    # reads it); stderr gets the same from the command line, so the file only.
                    # An attempt on an existing run that stopped before it wrote anything (a
                    # refused --resume) did not end that run: its line says so, and status
                    # still reports the run as it was.
                    level, state, code, why = _ending(exc, rundir)
                    if had_log and not rollback.started:
                        line = run_status.attempt_word(code, why)
                    else:
                        line = run_status.last_word(state, code, why)
                    written.to_file(log, level, line)
                    raise
        except BaseException:
            if (
                not had_log
                and not resume_or_start
                and not rollback.started
                and rundir.log.is_file()
            ):
                # A new run that failed before it wrote anything (a data error, a setting
                # found late): its train.log alone would make the directory look like a run
                # and refuse the corrected command. A job (--resume-or-start) keeps it for
                # `recjobs status`.
                rundir.log.unlink(missing_ok=True)
            raise
    except OSError as exc:
        if not _is_file_error(exc):  # e.g. a DDP peer's connection: not the user's doing
            traceback.clear_frames(exc.__traceback__)
            raise
        traceback.clear_frames(exc.__traceback__)
        raise _file_error(exc, rundir) from None
    except BaseException as exc:
        # The traceback holds the run's frames and so the DDP model. Freed only after
        # destroy_process_group, its Reducer would free the gloo group with the GIL held while a
        # gloo thread waits for the GIL: a deadlock at exit after SIGTERM. Free the model first,
        # as a return does.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        stop.restore()
        if ddp.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _check_not_in_use(rundir: RunDir) -> None:
    """Another trainer holds the run dir's lock (read from the kernel, never taken here)."""
    holder = run_status.lock_holder(rundir)
    if holder is not None:
        raise CheckpointError(
            str(rundir.path),
            f"another trainer is using this run dir (pid {holder if holder > 0 else 'unknown'})",
            "wait for it or use another --run-dir",
        )


def _undo(rollback: Rollback) -> None:
    """Put back what a failed attempt replaced; a failure to do so is said, never hides why
    the attempt failed."""
    try:
        rollback.undo()
    except (OSError, UserError) as exc:
        line = exc.line() if isinstance(exc, UserError) else str(exc)
        log.warning("could not put back config.yaml/metrics.jsonl as they were: %s", line)


def _file_error(exc: OSError, rundir: RunDir) -> RunDirError:
    """What the writers do not name themselves (a directory in the way of model/)."""
    return RunDirError(
        str(exc.filename or rundir.path),
        f"I/O error: {exc.strerror or exc}",
        "files written before it are whole; fix the cause and resume with --resume",
    )


def _ending(exc: BaseException, rundir: RunDir) -> tuple[int, str, int, str]:
    """(log level, state, exit code, why) of a run, or an attempt, that ends by `exc`."""
    if isinstance(exc, Preempted):
        if exc.finished:
            state = run_status.FINISHED
        elif exc.exit_code == 128 + signal.SIGINT:
            state = run_status.INTERRUPTED
        else:
            state = run_status.PREEMPTED
        return logging.WARNING, state, exc.exit_code, str(exc)
    if isinstance(exc, OSError) and _is_file_error(exc):
        exc = _file_error(exc, rundir)
    if isinstance(exc, UserError):
        return logging.ERROR, run_status.FAILED, exc.exit_code, exc.line()
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    why = f"crashed: {type(exc).__name__}" + (f": {first}" if first else "")
    return logging.ERROR, run_status.FAILED, 1, f"{why} (the traceback is on the process's stderr)"


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


@dataclass
class Progress:
    """Where a run stands; checkpointed, and restored by a resume."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0


class TrainingRun:
    """One run of the loop: everything is set up (and resumed) in `__init__`, then `run()`.

    The loop's state lives on the object, not in closures: `progress` (epoch, batch in epoch,
    step), the running train/loss window, divergence tracked on the device, the best weights.
    """

    def __init__(
        self,
        cfg: ResolvedConfig,
        rundir: RunDir,
        resume: bool,
        ddp: Distributed,
        stop: StopSignal,
        written: RunLog | None = None,  # rank 0's train.log
        resuming: bool = False,  # `check_start`'s answer: there is a checkpoint to resume
        rollback: Rollback | None = None,  # what `train` puts back if this attempt fails
    ) -> None:
        self.cfg, self.rundir, self.ddp, self.stop = cfg, rundir, ddp, stop
        self.written = written
        self.rollback = rollback or Rollback(rundir)
        training = cfg.training
        checkpoint = None
        if resuming:
            with _what_to_do(run_status.instead_of_resume(rundir, cfg.task)):
                checkpoint = load_latest_good(rundir.last, CHECKPOINT_FIELDS)
        if checkpoint is not None:
            with _unusable_checkpoint(rundir):
                _check_same_run(checkpoint["config"], cfg)

        seed_everything(cfg.shared.seed)  # same seed on every rank: identical initial weights
        self.device = pick_device(training.device, ddp)
        _check_optimizer_device(cfg, self.device)
        if ddp.is_main and training.device == "auto" and self.device.type == "cpu":
            # On a GPU node this means the container sees no GPU (no NVIDIA runtime, no device
            # granted): say so before hours of CPU training.
            log.info("training.device auto: no CUDA device visible, training on the CPU")
        with _unusable_checkpoint(rundir):
            encoders = Encoders.from_json(checkpoint["encoders"]) if checkpoint else None
        try:  # a large synthetic data set takes minutes: a stop signal ends it at once
            self.data = load_task_data(cfg, encoders, lambda: stop.signum is not None, _ranks(ddp))
        except GenerationStopped:
            raise Preempted(
                f"{stop.name} while the synthetic data set was generated, before training "
                "started: nothing was trained or written",
                stop.exit_code,
            ) from None
        self.task = make_task(cfg, self.data, self.device, ddp.rank, ddp.world_size)
        self._build_model_and_optimizers()
        # Every rank trains on as many examples per epoch as the smallest rank's shard holds.
        per_rank = self.data.train_per_rank
        self.per_epoch = steps_per_epoch(per_rank, training.batch_size)
        # A batch of this many examples is full; each rank's last batch of an epoch may be
        # shorter. When a rank's shard is smaller than batch_size its one batch is the full one.
        self.full_batch = min(training.batch_size, per_rank)
        self.full_batches_per_epoch = per_rank // self.full_batch
        self.total_steps = min(
            self.per_epoch * training.max_epochs, training.max_steps or sys.maxsize
        )
        self.schedule = self._new_schedule()
        self.precision = precision_policy(training.mixed_precision, self.device)
        self.scaler = self.precision.grad_scaler()
        es = training.early_stopping
        self.early = EarlyStopping(es.enabled, es.metric, es.mode, es.patience, es.min_delta)

        self.progress = Progress()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.metrics: dict[str, float] = {}
        # The most-popular baseline is logged once per run, with its first validation.
        self.baseline_logged = checkpoint is not None and bool(checkpoint.get("baseline_logged"))
        # train/loss is the mean per example since the last log record, summed on the device
        # (see `counts_toward_loss`). Divergence is tracked there too (the first step whose
        # loss was not finite) and read only where the loop syncs anyway: at log steps and
        # before checkpoints.
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_examples = 0
        self.first_bad_step = torch.zeros((), dtype=torch.long, device=self.device)
        if checkpoint is None and resume and ddp.is_main:
            log.warning("no checkpoint in %s: starting a new run", rundir.path)
        self.started = time.perf_counter()
        self.elapsed_before = float(checkpoint.get("elapsed_s", 0.0)) if checkpoint else 0.0
        # A mid-epoch checkpoint of another world size: its epoch ends before training goes on.
        self.cut_epoch = False
        metrics_lines = self._resume(checkpoint) if checkpoint is not None else 0
        # Everything is set up and restored (a failure so far leaves the run directory as it
        # was); only now is it written to.
        if ddp.is_main:
            self.rollback.save()
            rundir.path.mkdir(parents=True, exist_ok=True)
            rundir.write_config(cfg.to_dict())
        self.tracker = self._start_tracker(checkpoint)
        # 0: a new run, or a retry of a job that died before its first checkpoint
        self.tracker.truncate(metrics_lines)
        # train/examples_per_s: examples and full batches since the last record, timed from
        # `tick` (validation and checkpoints excluded); a short window is measured together
        # with the previous record's (`rate_window`); the epoch-end record gives the epoch's
        # rate (`epoch_window`: this epoch's earlier records in this process).
        self.examples, self.full_batches, self.tick = 0, 0, time.perf_counter()
        self.rate_window: tuple[int, float] | None = None
        self.epoch_window: tuple[int, float] = (0, 0.0)
        self.last_scale = self.scaler.get_scale() if self.scaler.is_enabled() else 0.0

    def _build_model_and_optimizers(self) -> None:
        cfg, training = self.cfg, self.cfg.training
        cards = self.data.user_cardinalities + self.data.item_cardinalities
        nccl = self.ddp.world_size > 1 and self.device.type == "cuda"
        self.sparse, self.sparse_why = sparse_decision(training.sparse_embeddings, cards, nccl)
        self.model = build_model(
            cfg.task,
            cfg.model,
            self.data.user_cardinalities,
            self.data.item_cardinalities,
            sparse=self.sparse,
            **self.data.encoders.feature_widths(),
        ).to(self.device)
        self.trained = (
            DistributedDataParallel(self.model) if self.ddp.world_size > 1 else self.model
        )
        embedding_optimizer = training.embedding_optimizer if self.sparse else None
        self.optimizers = _build_optimizers(self.model, training.optimizer, embedding_optimizer)

    def _start_tracker(self, checkpoint: dict[str, Any] | None) -> Tracker:
        training = self.cfg.training
        use_wandb, why_not = wandb_wanted(training.use_wandb)
        if self.ddp.is_main and why_not:
            log.info("%s", why_not)
        wandb_args = {
            "project": training.wandb_project,
            "entity": training.wandb_entity,
            "name": training.wandb_run_name,
        }
        if checkpoint is not None:
            wandb_args["id"] = checkpoint.get("wandb_id")  # the same W&B run continues
        return Tracker(
            self.rundir.path,
            self.cfg.to_dict(),
            enabled=self.ddp.is_main,
            use_wandb=use_wandb,
            wandb_args=wandb_args,
        )

    def _resume(self, checkpoint: dict[str, Any]) -> int:
        """Restore the checkpoint's states (reading only); the metrics lines it covers."""
        epoch, batch_in_epoch, step, metrics_lines, saved_world = _restore_states(
            checkpoint,
            self.rundir,
            self.ddp,
            self.task,
            self.model,
            self.optimizers,
            self.schedule,
            self.scaler,
            self.early,
        )
        self.progress = Progress(epoch, batch_in_epoch, step)
        if os.path.lexists(self.rundir.best):  # a link to nothing is named, not skipped
            with _what_to_do(run_status.damaged_best(self.rundir, self.cfg.task)):
                self.best_state = load_checkpoint(self.rundir.best)["model"]
        if "loss_window" in checkpoint:
            window = checkpoint["loss_window"]
            with _unusable_checkpoint(self.rundir):
                if "examples" in window:
                    self.loss_sum.copy_(window["sum"])
                    self.loss_examples = int(window["examples"])
                else:  # written when steps were averaged unweighted: full batches assumed
                    self.loss_sum.copy_(window["sum"] * self.full_batch)
                    self.loss_examples = int(window["count"]) * self.full_batch
        log.info("resumed from %s at epoch %d, step %d", self.rundir.last, epoch, step)
        if saved_world != self.ddp.world_size:
            self._map_world(saved_world)
        return metrics_lines

    def _map_world(self, saved_world: int) -> None:
        """Continue a checkpoint written by `saved_world` processes at this world size.

        Each rank's shard of the data (which users it owns) and its epoch order depend on the
        world size: a checkpoint taken at an epoch boundary continues exactly (the next epoch
        is drawn from this world's shards); one taken mid-epoch ends that epoch where it was
        taken (`run` validates and checkpoints it first), so none of its examples is trained
        twice and the rest of them wait for the next epochs. The ranks' random streams (dropout,
        negative samplers) of the old world do not map onto the new ranks: each rank is seeded
        from (seed, rank, epoch). batch_size stays per process, so the global batch becomes
        batch_size x world size; the learning rate is the configured one (not rescaled). A
        per-step schedule is laid out again for this world's steps per epoch and moved to the
        epoch boundary the run continues from.
        """
        training, progress, world = self.cfg.training, self.progress, self.ddp.world_size
        self.cut_epoch = progress.batch_in_epoch > 0
        boundary = progress.epoch + self.cut_epoch
        if _per_step(self.schedule) and training.max_steps:
            raise CheckpointError(
                str(self.rundir.last),
                f"was written by {saved_world} processes, not {world}, and its per-step "
                f"scheduler ends at max_steps ({training.max_steps}), a count of steps whose size "
                "changes with the world",
                f"resume with {saved_world} processes, or set training.max_epochs instead of "
                "max_steps",
            )
        if _per_step(self.schedule):
            for opt in self.optimizers.all:  # the schedule is replayed from its start
                for group in opt.param_groups:
                    group["lr"] = group.get("initial_lr", group["lr"])
            self.schedule = self._new_schedule()
            with warnings.catch_warnings():
                # torch warns of a scheduler stepped before its optimizer: here on purpose.
                warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)")
                for _ in range(boundary * self.per_epoch):
                    self.schedule.after_step()
        left = self.per_epoch * max(training.max_epochs - boundary, 0)
        self.total_steps = min(progress.step + left, training.max_steps or sys.maxsize)
        seed, rank = self.cfg.shared.seed, self.ddp.rank
        torch.manual_seed(rank_seed(seed, rank, boundary, 0))  # dropout (and CUDA's generators)
        negatives = getattr(self.task, "generator", None)  # both tasks' negative samplers
        if negatives is not None:
            negatives.manual_seed(rank_seed(seed, rank, boundary, 1))
        batch = training.batch_size
        cut = (
            f"epoch {progress.epoch} ends at the checkpoint (step {progress.step}, "
            f"{progress.batch_in_epoch} steps into it; its other examples are not trained in "
            "it), then "
            if self.cut_epoch
            else ""
        )
        message = (
            f"resumed at world {world} (was {saved_world}): {cut}epoch {boundary} on at "
            f"{self.per_epoch} steps per epoch, global batch {batch * world} "
            f"(was {batch * saved_world}; batch_size {batch} per process), learning rate as "
            "configured"
        )
        if self.ddp.is_main:
            self.say_always(message)

    def _shard_note(self) -> str:
        """How the examples are shared among the ranks, for the first log line."""
        world, per_rank = self.ddp.world_size, self.data.train_per_rank
        if world == 1:
            return ""
        return f" ({per_rank} per rank and epoch: each rank trains on its own users)"

    def _new_schedule(self) -> Any:
        """The configured LR schedule at its start, for this run's steps per epoch."""
        tr = self.cfg.training
        return build_scheduler(
            self.optimizers.all, tr.scheduler, self.per_epoch, tr.max_epochs, tr.max_steps
        )

    def say_always(self, message: str) -> None:
        """An INFO line train.log holds at any log level: how the run started and ended."""
        if self.written is not None:
            self.written.always(log, logging.INFO, message)
        else:
            log.info("%s", message)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        """Train to the end (max_epochs, max_steps or early stopping), then export."""
        training, progress = self.cfg.training, self.progress
        if self.ddp.is_main:
            self.say_always(
                f"training {self.cfg.task} ({self.cfg.model.model_arch}) on {self.device} "
                f"x{self.ddp.world_size}: {self.data.train_total} examples"
                f"{self._shard_note()}, "
                f"{self.per_epoch} steps/epoch, {self.total_steps} steps"
            )
            log.info(
                "sparse embedding updates: %s (%s)", "on" if self.sparse else "off", self.sparse_why
            )
            log.info("mixed precision: %s", self.precision.describe())
        else:
            # One line per other rank, so that a multi-pod log shows every rank joined.
            log.info("rank %d of %d joined on %s", self.ddp.rank, self.ddp.world_size, self.device)
        self.bar = _progress(self.total_steps, progress.step, self.ddp.is_main)
        self.model.train()
        if _signalled_before_start(self.stop, self.ddp):  # e.g. Ctrl-C while the data loaded
            self.preempted(f"at step {progress.step}, before training started")
        # Training time starts now, not when __init__ ended: rank 0 waited above for the other
        # ranks to load their data, which a short first window would count as training.
        self.tick = time.perf_counter()
        try:
            if self.cut_epoch:  # resumed at another world size from mid-epoch (_map_world)
                self.cut_epoch = False
                self.end_epoch()
            while (
                progress.epoch < training.max_epochs
                and progress.step < self.total_steps
                and not self.early.should_stop
            ):
                if not self.train_epoch():
                    break  # max_steps reached inside the epoch
                self.end_epoch()
            if progress.step >= self.total_steps and progress.batch_in_epoch:
                # Stopped mid-epoch by max_steps: validate once more.
                self.keep_if_best(self.validate(end_of_epoch=True))
                self.checkpoint(self.rundir.last)
        finally:
            self.bar.close()
        return self.finish()

    def train_epoch(self) -> bool:
        """The rest of the current epoch; False when max_steps ended it midway."""
        training, progress = self.cfg.training, self.progress
        batches = epoch_batches(
            self.task.num_examples,
            training.batch_size,
            epoch=progress.epoch,
            seed=self.cfg.shared.seed,
            rank=self.ddp.rank,
            world_size=self.ddp.world_size,
            length=self.data.train_per_rank,
        )
        # One host-to-device copy per epoch; each step's batch is then a slice on the device.
        batches = torch.cat(batches).to(self.device).split([len(b) for b in batches])
        for idx in batches[progress.batch_in_epoch :]:
            self.train_step(idx, len(batches))
            if progress.step >= self.total_steps and progress.batch_in_epoch < len(batches):
                return False
        return True

    def train_step(self, idx: torch.Tensor, batches_in_epoch: int) -> None:
        """One optimizer step, then what is due after it: log, validation, checkpoint, stop."""
        training, progress, scaler = self.cfg.training, self.progress, self.scaler
        batch = self.task.batch(idx)
        with self.precision.autocast():
            loss = self.task.loss(self.trained, batch)
        self.optimizers.zero_grad()
        scaler.scale(loss).backward()
        if training.grad_clip_norm:
            for opt in self.optimizers.all:
                scaler.unscale_(opt)
            clip_grad_norm(list(self.model.parameters()), training.grad_clip_norm)
        # A record every log_steps and at the end of each epoch (and of the run), so that every
        # epoch logs its loss, however short the run.
        ends_epoch = (
            progress.batch_in_epoch + 1 == batches_in_epoch or progress.step + 1 >= self.total_steps
        )
        logging_now = (progress.step + 1) % training.log_steps == 0 or ends_epoch
        # train/lr is the LR this step used: read before the scheduler moves it.
        lr_record = self.optimizers.lr_record() if logging_now else {}
        for opt in self.optimizers.all:
            scaler.step(opt)
        scaler.update()
        self.schedule.after_step()
        progress.step += 1
        progress.batch_in_epoch += 1
        full = len(idx) == self.full_batch
        self.track_loss(loss.detach(), len(idx), self.counts_toward_loss(full), progress.step)
        self.examples += len(idx)
        self.full_batches += full
        self.bar.update(1)

        if logging_now:  # the loop's only host sync: at log steps
            self.log_training(lr_record, ends_epoch)
        if training.eval_steps and progress.step % training.eval_steps == 0:
            with self.clock_stopped():  # examples/s measures training, not validation
                self.validate(end_of_epoch=False)
        if training.checkpoint_steps and progress.step % training.checkpoint_steps == 0:
            with self.clock_stopped():
                self.checkpoint(self.rundir.last)
        if _stop_requested(self.stop, progress.step, self.ddp):
            self.preempted(f"at step {progress.step}")

    @contextlib.contextmanager
    def clock_stopped(self) -> Iterator[None]:
        """What runs inside does not count as training time for train/examples_per_s."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.tick += time.perf_counter() - started

    def counts_toward_loss(self, full: bool) -> bool:
        """Whether a step's loss enters the train/loss window.

        A short last batch still trains, but where the loss depends on the batch size
        (retrieval's in-batch softmax: fewer negatives, a lower loss by construction) its loss
        would be a false dip in the curve, so only full batches are averaged.
        """
        return full or not self.task.loss_depends_on_batch_size

    def track_loss(self, loss: torch.Tensor, examples: int, counted: bool, step: int) -> None:
        """Add the step's loss to the window and remember the first step whose loss was not
        finite, on the device (queued, never waited for). Five small ops a step, where this
        took eight: the step is a Python number the kernel takes as an argument, not a tensor
        counted up on the device."""
        if counted:  # weighted by examples: the mean per example over the window
            self.loss_sum.add_(loss.float(), alpha=examples)
            self.loss_examples += examples
        self.first_bad_step = torch.where(
            torch.isfinite(loss) | (self.first_bad_step != 0), self.first_bad_step, step
        )

    def log_training(self, lr_record: dict[str, float], ends_epoch: bool = False) -> None:
        """A train/ record: the mean loss since the last one, the LRs, the throughput.

        train/loss is left out when no step since the last record counts toward it (a
        retrieval window holding only an epoch's short last batch).
        """
        self.check_finite()
        progress = self.progress
        record: dict[str, float] = {"step": progress.step, "epoch": progress.epoch}
        if self.loss_examples:  # the same on every rank: equally many examples per epoch
            loss = self.loss_sum / self.loss_examples
            record["train/loss"] = _mean_over_ranks(loss, self.ddp)
        record.update(lr_record)
        record["train/examples_per_s"] = self.examples_per_s(ends_epoch)
        if self.scaler.is_enabled():  # fp16: overflowing steps are skipped, not fatal
            scale = self.scaler.get_scale()
            record["train/grad_scale"] = scale
            if scale < self.last_scale:
                log.warning(
                    "fp16: GradScaler skipped overflowing steps before step %d "
                    "(scale %g -> %g; each skip halves it)",
                    progress.step,
                    self.last_scale,
                    scale,
                )
            self.last_scale = scale
        self.tracker.log(record)
        self.loss_sum.zero_()
        self.loss_examples, self.examples, self.full_batches = 0, 0, 0
        self.tick = time.perf_counter()

    def examples_per_s(self, ends_epoch: bool = False) -> float:
        """Examples per second of training (all ranks) since the last record, or over the
        epoch at its end (of the run, when it ends mid-epoch).

        A window shorter than log_steps full batches (the first steps of an epoch, or only its
        short last batch) is too short to say much: it is measured together with the previous
        record's window. An epoch-end record is the epoch's rate: all its examples trained by
        this process over their training time (a one-step window at an epoch's end no longer
        stands for the epoch).
        """
        examples, seconds = self.examples, time.perf_counter() - self.tick
        window = (examples, seconds)
        epoch = (self.epoch_window[0] + examples, self.epoch_window[1] + seconds)
        if ends_epoch:
            examples, seconds = epoch
            epoch = (0, 0.0)
        else:
            meaningful = min(self.cfg.training.log_steps, self.full_batches_per_epoch)
            if self.full_batches < meaningful and self.rate_window is not None:
                examples += self.rate_window[0]
                seconds += self.rate_window[1]
        self.rate_window, self.epoch_window = window, epoch
        return examples * self.ddp.world_size / max(seconds, 1e-9)

    def end_epoch(self) -> None:
        """Validate, step the per-epoch schedule, keep the best weights, checkpoint."""
        metrics = self.validate(end_of_epoch=True)
        self.schedule.after_epoch()
        self.progress.epoch += 1
        self.progress.batch_in_epoch = 0
        self.keep_if_best(metrics)
        self.checkpoint(self.rundir.last)
        if _stop_requested(self.stop, 0, self.ddp):
            self.preempted(f"after epoch {self.progress.epoch}")
        self.tick = time.perf_counter()

    def validate(self, end_of_epoch: bool) -> dict[str, float]:
        self.model.eval()
        metrics = self.task.evaluate(self.model)
        self.model.train()
        self.check_finite()  # a diverged loss is named as such, before its consequences
        _check_finite_metrics(metrics, self.progress.step, self.rundir)
        self.tracker.log({"step": self.progress.step, "epoch": self.progress.epoch, **metrics})
        if not self.baseline_logged:
            _log_baseline(
                self.task, self.tracker, self.progress.step, self.progress.epoch, self.ddp
            )
            self.baseline_logged = True
        self.schedule.after_validation(metrics, end_of_epoch)
        self.metrics = metrics
        return metrics

    def keep_if_best(self, metrics: dict[str, float]) -> None:
        if self.early.update(metrics, self.progress.step):
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.checkpoint(self.rundir.best)

    def check_finite(self) -> None:
        bad = _max_over_ranks(self.first_bad_step, self.ddp)
        if bad:
            raise TrainingDiverged(
                "training",
                f"loss is not finite at step {bad}",
                f"{_last_good(self.rundir, 'after it')}. Lower the learning rate or set "
                "grad_clip_norm",
            )

    def checkpoint(self, path: Path) -> None:
        """Everything an exact resume needs, written atomically by rank 0."""
        self.check_finite()  # a diverged state never replaces a good checkpoint
        ranks = _gather_rank_states(self.ddp, self.task)
        if not self.ddp.is_main:
            return
        save_checkpoint(
            path,
            {
                "config": self.cfg.to_dict(),
                "model": self.model.state_dict(),
                "optimizers": self.optimizers.state_dict(),
                "scheduler": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
                "early_stopping": self.early.state_dict(),
                "ranks": ranks,
                "epoch": self.progress.epoch,
                "batch_in_epoch": self.progress.batch_in_epoch,
                "step": self.progress.step,
                "metrics_lines": self.tracker.lines,
                "encoders": self.data.encoders.to_json(),
                "wandb_id": getattr(self.tracker.wandb, "id", None),
                "baseline_logged": self.baseline_logged,
                "elapsed_s": self.elapsed_s(),
                # The running train/loss window since the last log step: without it, the
                # first train/loss after a resume would average fewer steps.
                "loss_window": {
                    "sum": self.loss_sum.detach().cpu(),
                    "examples": self.loss_examples,
                },
            },
            keep_previous=path == self.rundir.last,  # a damaged last.pt falls back to .prev
        )
        self.rollback.settle()  # the run has moved on: its files now describe this checkpoint

    def preempted(self, when: str) -> None:
        """SIGTERM or SIGINT: checkpoint, then leave with its exit code."""
        self.checkpoint(self.rundir.last)
        raise Preempted(
            f"{self.stop.name} {when}: checkpoint written to {self.rundir.last}",
            self.stop.exit_code,
        )

    def finish(self) -> dict[str, float]:
        """Export the best weights (the last when none was tracked); return their metrics."""
        metrics = self.metrics
        if self.best_state is not None:  # tracked whether or not early stopping is on
            self.model.load_state_dict(self.best_state)
            metrics = self.early.best_metrics or metrics
            if self.ddp.is_main:
                log.info("restored the best weights (%s = %.4g)", self.early.key, self.early.best)
        # The export's seen items are every rank's training pairs (a collective).
        seen = None
        if self.ddp.world_size > 1:
            seen = gather_rows_to_main(self._train_pairs(), _ranks(self.ddp))
        if self.ddp.is_main:
            self.rollback.settle()  # the export replaces model/: the run is done
            export_model(self.rundir.model, self.model, self.cfg, self.data, seen)
            self.write_summary()
        self.tracker.finish()
        if self.stop.signum is not None:
            # It arrived after the last checkpoint; the handler let the export finish first.
            raise Preempted(
                f"{self.stop.name} after the last step: training and the export finished, the "
                f"model is complete in {self.rundir.model}",
                self.stop.exit_code,
                finished=True,
            )
        return metrics

    def _train_pairs(self) -> torch.Tensor:
        """This rank's training (user row, item row) pairs, int32 [n, 2]."""
        return torch.stack([self.data.train_users.int(), self.data.train_items.int()], dim=1)

    def write_summary(self) -> None:
        """summary.json, and its gist as train.log's last lines."""
        progress, early = self.progress, self.early
        end = RunEnd(
            task=self.cfg.task,
            step=progress.step,
            epoch=progress.epoch,
            batch_in_epoch=progress.batch_in_epoch,
            metric=early.key,
            mode=early.mode,
            best=early.best if self.best_state is not None else None,
            best_step=early.best_step,
            wall_time_s=self.elapsed_s(),
            model=self.rundir.model,
        )
        try:
            records = read_records(self.rundir.path) if self.tracker.enabled else []
        except UserError as exc:  # the model is exported already: a summary without them
            log.warning("summary.json leaves out the baseline and examples/s: %s", exc.line())
            records = []
        summary = summarise(end, records)
        write_summary(self.rundir.summary, summary)
        for line in summary_lines(summary, self.rundir.summary):
            self.say_always(line)

    def elapsed_s(self) -> float:
        """Wall time of the run so far, earlier attempts (up to their checkpoint) included."""
        return self.elapsed_before + time.perf_counter() - self.started


def _log_baseline(task: Any, tracker: Tracker, step: int, epoch: int, ddp: Distributed) -> None:
    """The most-popular baseline on the same validation set: what the model's lift is over.

    Every rank computes its share (a collective); rank 0 logs it."""
    found = task.baseline()
    if ddp.is_main:
        tracker.log({"step": step, "epoch": epoch, **found})


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
) -> tuple[int, int, int, int, int]:
    """Load a checkpoint's states; (epoch, batch in epoch, step, metrics lines) it stopped at
    and the world size that wrote it. At another world size the ranks' random states (dropout,
    negative samplers) and a per-step schedule are left for `TrainingRun._map_world`."""
    with _unusable_checkpoint(rundir):
        model.load_state_dict(checkpoint["model"])
        optimizers.load_state_dict(checkpoint["optimizers"])
        saved_world = len(checkpoint["ranks"])
        if saved_world < 1:
            raise ValueError("the checkpoint holds no rank states")
        if saved_world == ddp.world_size or not _per_step(schedule):
            schedule.load_state_dict(checkpoint["scheduler"])
        # else: a per-step schedule is laid out again for this world (TrainingRun._map_world)
        scaler.load_state_dict(checkpoint["scaler"])
        early.load_state_dict(checkpoint["early_stopping"])
        if saved_world == ddp.world_size:  # an exact resume: each rank its own random streams
            own = checkpoint["ranks"][ddp.rank]
            set_rng_state(own["rng"])
            task.load_state_dict(own["task"])
        fields = ("epoch", "batch_in_epoch", "step", "metrics_lines")
        epoch, batch_in_epoch, step, lines = (int(checkpoint[f]) for f in fields)
    return epoch, batch_in_epoch, step, lines, saved_world


def _per_step(schedule: Any) -> bool:
    """Whether the schedule steps with every optimizer step (its position depends on the steps
    per epoch, and so on the world size); ReduceLROnPlateau follows validations instead."""
    return bool(schedule.schedulers) and schedule.interval == "step" and schedule.monitor is None


def rank_seed(seed: int, rank: int, epoch: int, stream: int) -> int:
    """A well-mixed 63-bit seed for one rank's random stream from an epoch on: what a resume at
    another world size gives each rank instead of a saved state it does not have."""
    words = [seed % 2**64, rank, epoch, stream]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) & (2**63 - 1)


@contextlib.contextmanager
def _what_to_do(hint: str) -> Iterator[None]:
    """A checkpoint that cannot be read: its error says what to do instead (as `recjobs
    status` does) where it said only what is wrong."""
    try:
        yield
    except CheckpointError as exc:
        if exc.hint and "truncated or corrupted" not in exc.hint:
            raise  # it says what to do already (another version's fields, ...)
        hint = f"{exc.hint}; {hint}" if exc.hint else hint
        raise CheckpointError(exc.where, exc.problem, hint) from None


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


def _check_finite_metrics(metrics: dict[str, float], step: int, rundir: RunDir) -> None:
    """A NaN validation loss or metric means the model's outputs are NaN: stop as diverged."""
    bad = [key for key, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise TrainingDiverged(
            "validation",
            f"{bad[0]} is not finite at step {step} ({metrics[bad[0]]})",
            f"{_last_good(rundir, 'from this state')}. Lower the learning rate or set "
            "grad_clip_norm",
        )


def _last_good(rundir: RunDir, when: str) -> str:
    """Where the last good state is, as far as the files say: never a checkpoint that is not
    there. A resume that fails before its first checkpoint has put its files back."""
    for path in (rundir.last, previous(rundir.last)):
        if path.is_file():
            return f"no checkpoint was written {when}; {path} holds the last good state"
    return (
        f"no checkpoint was written {when}, and none before it: nothing to resume; start again "
        "(--resume-or-start starts over in this --run-dir)"
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
    # A run saved by a version that kept relative dataset paths read them from the working
    # directory; resolved configs now hold them absolute.
    saved = {**saved, "dataset": with_absolute_paths(saved.get("dataset"))}
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
