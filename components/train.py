# TorchX reads this signature twice: its linter parses the source and only accepts the
# spellings Optional[...], Dict[...] and List[...], and its argument parser reads the real
# annotations at run time (so no `from __future__ import annotations` either).
# ruff: noqa: UP006, UP007, UP035, UP045, N803
"""TorchX components for recjobs: training and batch inference, the same jobs on local_cwd,
local_docker and Kubernetes.

    torchx run components/train.py:train --task retrieval --config config/quickstart.yaml \\
        -j 1x2 -- --optimizer SGD --set=training.max_epochs=1
    torchx run components/train.py:recommend --model_dir runs/APP_ID --k 100 -j 1x2

The config is resolved here, at submit time; see `recjobs.submit.launch` for what the jobs run.
"""

import sys
from typing import List, Optional

from torchx import specs

from recjobs.errors import UserError
from recjobs.streams import guard_torchx_stdout, say
from recjobs.submit import component_help, launch

component_help.install()
guard_torchx_stdout()  # a stdout torchx cannot write is one line, not a traceback


def train(
    *overrides: str,
    task: str,
    config: Optional[str] = None,
    j: str = "1x1",
    gpu: int = 0,
    cpu: int = launch.DEFAULT_CPU,
    memMB: int = launch.DEFAULT_MEM_MB,
    h: Optional[str] = None,
    image: str = launch.DEFAULT_IMAGE,
    env: Optional[str] = None,
    mounts: Optional[List[str]] = None,
    max_retries: int = 0,
    run_dir: str = launch.DEFAULT_RUN_DIR,
    wandb_project: Optional[str] = None,
    wandb_mode: Optional[str] = None,
) -> specs.AppDef:
    """Train a recjobs model (two-tower retrieval or DLRM/DCN ranking) as one DDP job.

    The config is resolved on the submitting machine exactly like `recjobs resolve` does, and
    an invalid one stops the submission with that command's one-line error (exit code 2).
    The resolved config travels with the job, which runs torchrun (c10d rendezvous) with
    `python -m recjobs train TASK --config-json ... --run-dir RUN_DIR --resume-or-start`: the
    first attempt starts the run and a retried job continues from RUN_DIR/checkpoints/last.pt.

    Config overrides go after `--`, with the flags of `recjobs resolve`; TorchX rejects a
    repeated flag, so write repeated ones as `--set=KEY=VALUE`:
    `-- --optimizer AdamW --set=training.batch_size=2048 --set=shared.seed=7`.

    Args:
        overrides: optional config overrides after `--`: --optimizer, --optimizer-args,
            --scheduler, --scheduler-args, --scheduler-interval,
            --mixed-precision/--no-mixed-precision, --set (write each as --set=KEY=VALUE)
        task: which model to train: retrieval or ranking
        config: YAML config file on the submitting machine; None trains the built-in defaults
        j: [MIN:]NODESxPROCS, e.g. 1x2 (one node, 2 processes), 2x8, or elastic 1:4x8
        gpu: GPUs per node (nvidia.com/gpu on Kubernetes, a device request on local_docker)
        cpu: CPUs per node
        memMB: memory per node in MB
        h: a registered named resource (e.g. gpu.small); takes precedence over cpu, gpu, memMB;
            None uses cpu, gpu and memMB
        image: container image with recjobs installed (ignored by local_cwd)
        env: extra environment variables, e.g. FOO=1,BAR=2, each once (never secrets:
            WANDB_API_KEY comes from your environment or a Kubernetes Secret; never what
            torchrun sets for each process: RANK, WORLD_SIZE, MASTER_ADDR, ...)
        mounts: volumes, e.g. type=volume,src=recjobs-runs,dst=/runs (a PVC on Kubernetes)
            or type=bind,src=/host/runs,dst=/runs (local_docker)
        max_retries: scheduler retries; a retry resumes from the run dir's last checkpoint
        run_dir: where config, metrics, train.log, checkpoints and model go; put it on a
            mount for containers; ${app_id} makes one directory per job (local_cwd prints it
            when the job starts); recjobs status RUN_DIR and recjobs log RUN_DIR -f watch it
        wandb_project: turn W&B on and log to this project (same as
            --set training.use_wandb=true --set training.wandb_project=P)
        wandb_mode: WANDB_MODE for the job: online, offline or disabled; None leaves W&B's
            own default
    """
    try:
        return launch.train_app(
            overrides,
            task=task,
            config=config,
            j=j,
            gpu=gpu,
            cpu=cpu,
            memMB=memMB,
            h=h,
            image=image,
            env=env,
            mounts=mounts,
            max_retries=max_retries,
            run_dir=run_dir,
            wandb_project=wandb_project,
            wandb_mode=wandb_mode,
            command_line=sys.argv,
        )
    except UserError as exc:
        # torchx prints a traceback for any other exception; SystemExit passes through
        # `torchx run` untouched, so the user sees the same line and exit code as from
        # `recjobs resolve`, and nothing is submitted.
        say(exc.line())
        raise SystemExit(exc.exit_code) from None


def recommend(
    model_dir: str,
    k: int = 10,
    out: str = launch.DEFAULT_RUN_DIR,
    users: Optional[str] = None,
    candidates: Optional[str] = None,
    include_seen: str = "false",
    output_format: str = "parquet",
    j: str = "1x1",
    gpu: int = 0,
    cpu: int = launch.DEFAULT_CPU,
    memMB: int = launch.DEFAULT_MEM_MB,
    h: Optional[str] = None,
    image: str = launch.DEFAULT_IMAGE,
    env: Optional[str] = None,
    mounts: Optional[List[str]] = None,
    max_retries: int = 0,
) -> specs.AppDef:
    """Batch inference: the top-K items of every user of a trained model, sharded over processes.

    Every process (torchrun, c10d rendezvous, as for training) runs `recjobs recommend
    MODEL_DIR --k K --out OUT --parts FORMAT`; process RANK of WORLD_SIZE writes
    OUT/part-RANK-of-WORLD_SIZE.FORMAT with its contiguous share of the users, so the parts
    together hold every user exactly once (columns user_id, item_id, score, rank). A retry
    writes the same parts again.

    Args:
        model_dir: the training job's run directory (or its model/) as the job sees it, e.g.
            /runs/recjobs-retrieval-abc123 on the runs volume
        k: items per user
        out: directory for the part files; put it on a mount for containers; ${app_id}
            makes one directory per job
        users: Parquet/CSV with a user_id column, as the job sees it; None recommends for
            every user of the model's users table
        candidates: Parquet/CSV of user_id,item_id pairs to rank, as the job sees it (needed
            by ranking models, e.g. a retrieval job's parts)
        include_seen: also recommend the users' training items: true or false (also
            yes/no, 1/0, on/off)
        output_format: parquet or csv
        j: [MIN:]NODESxPROCS, e.g. 1x2 (one node, 2 processes) or 2x8
        gpu: GPUs per node (each process scores on its own GPU when there are some)
        cpu: CPUs per node
        memMB: memory per node in MB
        h: a registered named resource (e.g. gpu.small); takes precedence over cpu, gpu, memMB;
            None uses cpu, gpu and memMB
        image: container image with recjobs installed (ignored by local_cwd)
        env: extra environment variables, e.g. FOO=1,BAR=2, each once (not torchrun's own:
            RANK, WORLD_SIZE, MASTER_ADDR, ...)
        mounts: volumes, e.g. type=volume,src=recjobs-runs,dst=/runs (a PVC on Kubernetes)
            or type=bind,src=/host/runs,dst=/runs (local_docker)
        max_retries: scheduler retries
    """
    try:
        return launch.recommend_app(
            model_dir=model_dir,
            k=k,
            out=out,
            users=users,
            candidates=candidates,
            include_seen=include_seen,
            output_format=output_format,
            j=j,
            gpu=gpu,
            cpu=cpu,
            memMB=memMB,
            h=h,
            image=image,
            env=env,
            mounts=mounts,
            max_retries=max_retries,
            command_line=sys.argv,
        )
    except UserError as exc:
        say(exc.line())  # as in `train`: one line, exit 2, nothing submitted
        raise SystemExit(exc.exit_code) from None
