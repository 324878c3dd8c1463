"""TorchX's local_cwd scheduler, saying at submit where the run directory and its log are.

TorchX 0.7.0 keeps a local_cwd job's state inside the `torchx run` process: from another
terminal `torchx log local_cwd://...` waits forever, `torchx status` says the app does not
exist while it runs and `torchx list -s local_cwd` ends in a traceback. The run directory has
what they would show (`recjobs status RUN_DIR`, `recjobs log RUN_DIR -f`), so this scheduler,
registered under the same name `local_cwd` (see pyproject.toml), prints its path once the job
has started, with `${app_id}` filled in. Everything else is TorchX's own.
"""

from __future__ import annotations

import os
import shlex
import shutil
import string
from typing import Any

from torchx.schedulers.api import AppDryRunInfo
from torchx.schedulers.local_scheduler import (
    CWDImageProvider,
    LocalScheduler,
    PopenRequest,
)
from torchx.specs import AppDef

from recjobs.streams import guard_torchx_stdout, say
from recjobs.submit import container_paths


def where_lines(app: AppDef, app_id: str) -> list[str]:
    """Where a started job's run directory (or recommend output) is, and how to watch it."""
    lines = []
    for role in app.roles:
        writes = role.metadata.get(container_paths.METADATA_KEY, {}).get("writes", {})
        run_dir = writes.get("--run_dir")
        if run_dir:
            where = string.Template(run_dir).safe_substitute(app_id=app_id)
            lines.append(f"recjobs: run directory {where}, its log {where}/train.log")
            lines.append(
                f"recjobs: from another terminal: recjobs status {where}; recjobs log {where} "
                "-f (torchx status and log do not see local_cwd jobs)"
            )
        out = writes.get("--out")
        if out:
            where = string.Template(out).safe_substitute(app_id=app_id)
            lines.append(f"recjobs: the recommendations go to {where}")
    return lines


def check_entrypoints(app: AppDef) -> None:
    """Exit 2 with one line when a role's program is not on the PATH its processes get.

    TorchX would start the job anyway and report `FAILED` with no reason (the Popen error goes
    to a log directory it deletes): what a `torchx` run from outside the venv used to see.
    """
    for role in app.roles:
        path = os.pathsep.join(p for p in (role.env.get("PATH"), os.environ.get("PATH")) if p)
        program = role.entrypoint
        if program in ("bash", "sh") and role.args[:1] == ["-c"] and len(role.args) > 1:
            words = shlex.split(role.args[1])[:2]  # the dist components' `exec torchrun ...`
            program = words[1] if words[:1] == ["exec"] and len(words) > 1 else words[0]
        if shutil.which(program, path=path) is None:
            say(
                f"error: local_cwd: {program} is not on PATH, so the job's processes "
                "could not start (run torchx from the project's venv: . .venv/bin/activate, "
                "or put .venv/bin on PATH)"
            )
            raise SystemExit(2)


class RecjobsLocalCwdScheduler(LocalScheduler):
    """LocalScheduler (current working directory as the image) that names the run directory."""

    def schedule(self, dryrun_info: AppDryRunInfo[PopenRequest]) -> str:
        if dryrun_info._app is not None:
            check_entrypoints(dryrun_info._app)
        app_id = super().schedule(dryrun_info)
        if dryrun_info._app is not None:  # built by submit_dryrun, as `torchx run` does
            for line in where_lines(dryrun_info._app, app_id):
                say(line)
        return app_id


def create_scheduler(session_name: str, **kwargs: Any) -> RecjobsLocalCwdScheduler:
    """The `torchx.schedulers` entry point: TorchX's local_cwd factory, this class."""
    guard_torchx_stdout()  # a stdout torchx cannot write is one line, not a traceback
    return RecjobsLocalCwdScheduler(
        session_name=session_name,
        image_provider_class=CWDImageProvider,
        cache_size=kwargs.get("cache_size", 100),
        extra_paths=kwargs.get("extra_paths"),
    )
