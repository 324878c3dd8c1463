"""TorchX's kubernetes scheduler plus what GPU clusters need: tolerations, node selectors, secrets.

torchx 0.7.0 builds a Volcano Job from an AppDef but has no run option for tolerations or
node selectors (GPU nodes are usually tainted, e.g. `nvidia.com/gpu:NoSchedule`) and can only
put literal values into a container's env. This scheduler is registered under the same name,
`kubernetes`, through the `torchx.schedulers` entry point (see pyproject.toml), so
`torchx run -s kubernetes`, `torchx status/log/cancel kubernetes://...` and `.torchxconfig`'s
`[kubernetes]` section all use it. It builds the Volcano Job with torchx's own code and then
edits the pod templates:

- `tolerations` run option: `KEY[:VALUE][:EFFECT]` items separated by `;`
  (`nvidia.com/gpu:NoSchedule` tolerates that taint whatever its value);
- `node_selector` run option: `LABEL:VALUE` items separated by `;`;
- `fs_group` run option: the pods' `securityContext.fsGroup`, so the image's non-root user
  (uid/gid 1000) can write the run directory on a PVC;
- every secret variable a role asks for (`recjobs.submit.secret_env`) becomes
  `env.valueFrom.secretKeyRef` into the Secret named by `wandb_secret` (key = variable name),
  so the key is never in the job spec;
- `torchx status` of a PENDING job says why it waits (`describe`): the latest warnings about
  its pod group and pods, e.g. Volcano's "overused nvidia.com/gpu";
- `torchx log HANDLE` (every replica) works for a finished job too (`describe`): torchx reads
  the roles and replicas from the Volcano Job's `status.taskStatusCount`, which Volcano
  (v1.14's job controller, `killPods`) leaves empty once the job has finished and its pods are
  kept, so torchx found no replica to read; the roles then come from the Job's `spec.tasks`.

The colon syntax is forced by torchx's `-cfg` parser, which splits on `=`, `,` and `;`.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from typing import Any, Dict, List  # noqa: UP035 - see the runopts below

from torchx.schedulers.api import AppDryRunInfo, DescribeAppResponse
from torchx.schedulers.kubernetes_scheduler import (
    LABEL_ROLE_INDEX,
    KubernetesJob,
    KubernetesOpts,
    KubernetesScheduler,
)
from torchx.specs import AppDef, AppState, Role, runopts

from recjobs.errors import UserError
from recjobs.streams import guard_torchx_stdout, say
from recjobs.submit import container_paths, secret_env

DEFAULT_WANDB_SECRET = "wandb"
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def parse_toleration(text: str) -> dict[str, str]:
    """`KEY[:VALUE][:EFFECT]` -> a Kubernetes toleration (camelCase keys, as in the API).

    `KEY` alone or `KEY:EFFECT` tolerate the taint whatever its value (operator Exists);
    `KEY:VALUE` and `KEY:VALUE:EFFECT` only that value (operator Equal). No effect: all effects.
    """
    parts = text.strip().split(":")
    if len(parts) == 2 and parts[1] in EFFECTS:
        parts = [parts[0], "", parts[1]]
    if not parts[0] or len(parts) > 3:
        raise UserError(
            "-cfg tolerations",
            f"expected KEY[:VALUE][:EFFECT], got {text!r}",
            "e.g. nvidia.com/gpu:NoSchedule",
        )
    key, value, effect = (parts + ["", ""])[:3]
    if len(parts) == 2 and difflib.get_close_matches(value, EFFECTS, n=1, cutoff=0.8):
        # KEY:VALUE is legal, but a value this close to an effect is a misspelt effect, and
        # tolerating the wrong value would leave the job Pending with no error anywhere.
        effect, value = value, ""
    if effect and effect not in EFFECTS:
        raise UserError(
            "-cfg tolerations",
            f"{text!r}: unknown effect {effect!r}",
            "one of " + ", ".join(EFFECTS),
        )
    toleration = {"key": key, "operator": "Equal" if value else "Exists"}
    if value:
        toleration["value"] = value
    if effect:
        toleration["effect"] = effect
    return toleration


def parse_node_selector(selector: Mapping[str, str]) -> dict[str, str]:
    """Checks the `LABEL:VALUE` pairs torchx parsed; a label without a value is a mistake."""
    cleaned = {k.strip(): v.strip() for k, v in selector.items()}
    for label, value in cleaned.items():
        if not label or not value:
            raise UserError(
                "-cfg node_selector",
                f"expected LABEL:VALUE, got {label!r}:{value!r}",
                "e.g. nvidia.com/gpu.present:true",
            )
    return cleaned


def _user_error(exc: UserError) -> SystemExit:
    # Same contract as the component: one `error:` line, exit code 2, nothing submitted. torchx
    # would print a traceback for any other exception raised here.
    say(exc.line())
    return SystemExit(exc.exit_code)


class RecjobsKubernetesScheduler(KubernetesScheduler):
    """torchx's KubernetesScheduler whose Volcano Jobs get tolerations, node selectors, secrets."""

    def _run_opts(self) -> runopts:
        opts = super()._run_opts()
        opts.add(
            "tolerations",
            # torchx compares option types with typing.List/Dict (list[str] != List[str]).
            type_=List[str],  # noqa: UP006
            default=None,
            help="pod tolerations, KEY[:VALUE][:EFFECT] separated by ';'"
            " (e.g. nvidia.com/gpu:NoSchedule)",
        )
        opts.add(
            "node_selector",
            type_=Dict[str, str],  # noqa: UP006
            default=None,
            help="pod node selector, LABEL:VALUE separated by ';'"
            " (e.g. nvidia.com/gpu.present:true)",
        )
        opts.add(
            "fs_group",
            type_=int,
            default=None,
            help="pod securityContext.fsGroup: volumes (the runs PVC) become writable for this"
            " group; the recjobs image runs as uid/gid 1000",
        )
        opts.add(
            container_paths.OPT_IN, type_=bool, default=False, help=container_paths.OPT_IN_HELP
        )
        opts.add(
            "wandb_secret",
            type_=str,
            default=DEFAULT_WANDB_SECRET,
            help="Kubernetes Secret whose WANDB_API_KEY key the pods get as WANDB_API_KEY"
            " (only jobs with W&B on)",
        )
        return opts

    def _submit_dryrun(self, app: AppDef, cfg: KubernetesOpts) -> AppDryRunInfo[KubernetesJob]:
        options: Mapping[str, Any] = cfg
        try:
            for role in app.roles:
                leaked = secret_env.literal_secrets(role.env)
                if leaked:
                    raise UserError(
                        f"role {role.name} env",
                        f"{leaked[0]} is a literal value; it would be stored in the job spec",
                        f"put it in the Kubernetes Secret {options.get('wandb_secret')!r}",
                    )
            tolerations = [parse_toleration(t) for t in options.get("tolerations") or []]
            node_selector = parse_node_selector(options.get("node_selector") or {})
        except UserError as exc:
            raise _user_error(exc) from None
        container_paths.check_at_submit(app, "kubernetes", options)

        with warnings.catch_warnings():
            # torchx warns "As of 1.4.0 Volcano does NOT support retries correctly" (Volcano
            # issue 1651: the last retry's failed pods were deleted with their logs), fixed in
            # Volcano v1.4.0; what a user needs instead is what --max_retries N means there.
            warnings.filterwarnings("ignore", message=r"(?s).*does NOT support retries")
            info = super()._submit_dryrun(app, cfg)
        for line in retry_notes(app):
            say(line)
        secret = str(options.get("wandb_secret") or DEFAULT_WANDB_SECRET)
        spec = info.request.resource["spec"]  # type: ignore[index]
        spec["minAvailable"] = min_available(app)
        for task in spec["tasks"]:
            pod = task["template"]
            role = app.roles[int(pod.metadata.labels[LABEL_ROLE_INDEX])]
            _edit_pod(pod, tolerations, node_selector, secret_env.requested(role.metadata), secret)
            if options.get("fs_group") is not None:
                _set_fs_group(pod, int(options["fs_group"]))
        return info

    def describe(self, app_id: str) -> DescribeAppResponse | None:
        """torchx's status, plus why a PENDING job waits (`torchx status` prints it as Msg),
        and the roles of a finished job (which `torchx log HANDLE` reads its replicas from)."""
        response = super().describe(app_id)
        if response is None:
            return None
        namespace, name = app_id.split(":")
        if response.state == AppState.PENDING:
            reasons = pending_reasons(self._events(namespace), name)
            if reasons:
                response.msg = "; ".join(reasons)
        if not response.roles and response.state != AppState.UNKNOWN:
            # Only replica *states* come with taskStatusCount; the replicas themselves are the
            # Job's tasks, which never change. roles_statuses stays empty: Volcano no longer
            # says how each pod ended, and guessing would be worse than saying nothing.
            response.roles = roles_of_tasks(self._job_spec(namespace, name))
        return response

    def _job_spec(self, namespace: str, name: str) -> dict[str, Any]:
        from kubernetes.client.rest import ApiException

        try:
            job = self._custom_objects_api().get_namespaced_custom_object(
                group="batch.volcano.sh",
                version="v1alpha1",
                namespace=namespace,
                plural="jobs",
                name=name,
            )
        except ApiException:  # e.g. deleted in between: torchx's answer stands
            return {}
        return job.get("spec") or {}

    def _events(self, namespace: str) -> list[Any]:
        from kubernetes.client import CoreV1Api
        from kubernetes.client.rest import ApiException

        try:
            return CoreV1Api(self._api_client()).list_namespaced_event(namespace).items
        except ApiException:  # the job's status is still worth printing without its reasons
            return []


def min_available(app: AppDef) -> int:
    """The pods the Volcano Job needs to start (and to keep running): `-j MIN:MAXxP`'s MIN.

    TorchX marks the first MIN tasks of an elastic role `minAvailable: 1` and the others 0;
    the Job's own `minAvailable` is what gang scheduling reads. Left out, Volcano's webhook
    derives it from the tasks' marks, a version-dependent default; written here, the dry run
    shows it and `-j 1:2x1` starts, or restarts after losing a pod, with one pod. torchrun in
    those pods gets `--nnodes MIN:MAX` (launch.Nodes), so the rendezvous accepts the same range.
    """
    return sum(
        role.num_replicas if role.min_replicas is None else role.min_replicas for role in app.roles
    )


def retry_notes(app: AppDef) -> list[str]:
    """What `--max_retries N` does on Volcano, one line per role that asks for retries.

    torchx sets the Volcano Job's maxRetry to N (the smallest over the roles) with RestartJob
    on PodFailed and PodEvicted. Volcano's maxRetry counts runs, not restarts: a failure
    increments retryCount, and the job fails once retryCount reaches maxRetry.
    """
    notes = []
    for role in app.roles:
        if role.max_retries > 0:
            restarts = role.max_retries - 1
            notes.append(
                f"note: role {role.name}: --max_retries {role.max_retries} on Volcano runs the "
                f"job at most {role.max_retries} time(s) in all, i.e. {restarts} restart(s) "
                "after a failed or evicted pod (Volcano's maxRetry counts the first run); "
                "each restart resumes from the run directory's last checkpoint"
            )
    return notes


def roles_of_tasks(spec: Mapping[str, Any]) -> list[Role]:
    """The roles (name, number of replicas) of a Volcano Job that torchx built.

    torchx makes one Volcano task per replica, named `<role>-<replica id>`, and reads them back
    the same way in `describe` when Volcano still counts them; so does this.
    """
    roles: dict[str, Role] = {}
    for task in spec.get("tasks") or []:
        role, _, replica = str(task.get("name", "")).rpartition("-")
        if not role or not replica.isdigit():
            continue  # not a task torchx made
        roles.setdefault(role, Role(name=role, image="", num_replicas=0)).num_replicas += 1
    return list(roles.values())


def pending_reasons(events: list[Any], job: str, most: int = 2) -> list[str]:
    """The latest distinct warnings about a Volcano Job's pod group and pods, newest first.

    Volcano names them `<job>-<uid>` (pod group) and `<job>-<task>-<i>` (pods); its scheduler
    says why a gang is not placed in Unschedulable events on the pod group, e.g. "resource in
    cluster is overused: overused nvidia.com/gpu", the kubelet why a pod does not start
    (image pulls) in Warning events on the pod.
    """
    ours = [
        e
        for e in events
        if e.involved_object.name.startswith(f"{job}-")
        and (e.type == "Warning" or e.reason == "Unschedulable")
    ]
    ours.sort(
        key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp,
        reverse=True,
    )
    reasons: list[str] = []
    for event in ours:
        message = (event.message or "").strip()
        if message and message not in reasons:
            reasons.append(message)
        if len(reasons) == most:
            break
    return reasons


def _edit_pod(
    pod: Any,
    tolerations: list[dict[str, str]],
    node_selector: dict[str, str],
    secret_names: list[str],
    secret: str,
) -> None:
    """Adds tolerations, node selector labels and secret env refs to one V1Pod template."""
    from kubernetes.client.models import (
        V1EnvVar,
        V1EnvVarSource,
        V1SecretKeySelector,
        V1Toleration,
    )

    if tolerations:
        pod.spec.tolerations = [
            *(pod.spec.tolerations or []),
            *(
                V1Toleration(
                    key=t["key"],
                    operator=t["operator"],
                    value=t.get("value"),
                    effect=t.get("effect"),
                )
                for t in tolerations
            ),
        ]
    if node_selector:
        # torchx may already have put the named resource's instance type here; keep it.
        pod.spec.node_selector = {**(pod.spec.node_selector or {}), **node_selector}
    for container in pod.spec.containers:
        container.env = [
            *(container.env or []),
            *(
                V1EnvVar(
                    name=name,
                    value_from=V1EnvVarSource(
                        secret_key_ref=V1SecretKeySelector(name=secret, key=name)
                    ),
                )
                for name in secret_names
            ),
        ]


def _set_fs_group(pod: Any, gid: int) -> None:
    from kubernetes.client.models import V1PodSecurityContext

    context = pod.spec.security_context or V1PodSecurityContext()
    context.fs_group = gid
    # Only chown a volume whose root is not already ours: a big runs PVC is not walked per pod.
    context.fs_group_change_policy = "OnRootMismatch"
    pod.spec.security_context = context


def create_scheduler(session_name: str, **kwargs: Any) -> RecjobsKubernetesScheduler:
    """The `torchx.schedulers` entry point: same arguments as torchx's kubernetes factory."""
    guard_torchx_stdout()  # a stdout torchx cannot write is one line, not a traceback
    return RecjobsKubernetesScheduler(
        session_name=session_name,
        client=kwargs.get("client"),
        docker_client=kwargs.get("docker_client"),
    )
