"""TorchX's local_docker scheduler, with secret variables taken from the submitting environment.

torchx's own ways to pass environment variables to containers (the AppDef's env, the `env` and
`copy_env` run options) all copy the value into the scheduler request, which
`torchx run --dryrun` prints and `torchx run` logs at debug level. This scheduler, registered
under the same name `local_docker` (see pyproject.toml), leaves the request alone and adds
each secret variable a role asks for (`recjobs.submit.secret_env`) from `os.environ` to a private
copy of the containers' environment just before starting them. (Docker itself still shows a
container's environment to whoever can `docker inspect` it: that is the local machine's owner.)
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from typing import Any

from torchx.schedulers.api import AppDryRunInfo
from torchx.schedulers.docker_scheduler import LABEL_ROLE_NAME, DockerJob, DockerScheduler
from torchx.specs import AppDef, runopts

from recjobs.streams import guard_torchx_stdout
from recjobs.submit import container_paths, secret_env

log = logging.getLogger(__name__)


def with_secrets(request: DockerJob, app: AppDef, environ: dict[str, str]) -> DockerJob:
    """A copy of `request` whose containers also get the secrets their role asked for."""
    wanted = {role.name: secret_env.requested(role.metadata) for role in app.roles}
    if not any(wanted.values()):
        return request
    request = copy.deepcopy(request)
    for container in request.containers:
        for name in wanted.get(str(container.kwargs["labels"][LABEL_ROLE_NAME]), []):
            if name in environ:
                container.kwargs["environment"][name] = environ[name]
            else:
                log.warning("%s is not set in this environment; the job runs without it", name)
    return request


class RecjobsDockerScheduler(DockerScheduler):
    """DockerScheduler that delivers secret variables at container start, never in the spec,
    and refuses jobs whose outputs would vanish with the container
    (recjobs.submit.container_paths)."""

    def _run_opts(self) -> runopts:
        opts = super()._run_opts()
        opts.add(
            container_paths.OPT_IN, type_=bool, default=False, help=container_paths.OPT_IN_HELP
        )
        return opts

    def _submit_dryrun(self, app: AppDef, cfg: Mapping[str, Any]) -> AppDryRunInfo[DockerJob]:
        container_paths.check_at_submit(app, "local_docker", cfg)
        return super()._submit_dryrun(app, cfg)  # type: ignore[arg-type]

    def schedule(self, dryrun_info: AppDryRunInfo[DockerJob]) -> str:
        app = dryrun_info._app
        if app is None:  # not built by submit_dryrun: no roles to ask for secrets
            return super().schedule(dryrun_info)
        request = with_secrets(dryrun_info.request, app, dict(os.environ))
        started = AppDryRunInfo(request, repr)
        started._app, started._cfg, started._scheduler = app, dryrun_info._cfg, self.backend
        return super().schedule(started)


def create_scheduler(session_name: str, **kwargs: Any) -> RecjobsDockerScheduler:
    """The `torchx.schedulers` entry point: same arguments as torchx's local_docker factory."""
    guard_torchx_stdout()  # a stdout torchx cannot write is one line, not a traceback
    return RecjobsDockerScheduler(session_name=session_name)
