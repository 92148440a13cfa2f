"""The ``train`` task: a GPU pod on Kubernetes, or the same command as a local child process.

:func:`make_train_task` picks the backend from ``MLCD_TRAINING_BACKEND`` (``local`` by default, or
``kubernetes``), so switching a deployment to a cluster needs no DAG edit. Both backends run
``python -m mlcd.training`` with flags from one pure builder (:func:`train_arguments`), return the same XCom
(the trainer's result dict), and take the MLflow server from the ``mlflow_default`` Connection at run time.

Importing this module imports neither TensorFlow nor MLflow; the Kubernetes provider is imported only when
the kubernetes backend is chosen.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from mlcd.settings import get_settings
from mlcd.training.contract import RESULT_PREFIX, last_error_line, parse_result, trainer_args, trainer_command

if TYPE_CHECKING:
    from airflow.sdk import Context

MLFLOW_CONN_ID = "mlflow_default"
TASK_ID = "train"
# The URI (file:///…, s3://…) of the snapshot the DAG's validate task published: the pod reads it from the
# storage, never from a path on the worker's disk. The DAG owner may pass another template.
DEFAULT_SNAPSHOT = "{{ ti.xcom_pull(task_ids='validate')['snapshot_uri'] }}"
# Run-time choices come from the DAG's Params; the defaults keep a DAG without those Params working.
DEFAULT_EPOCHS = "{{ params.epochs | default(3) }}"
DEFAULT_BATCH_SIZE = "{{ params.batch_size | default(128) }}"
DEFAULT_SEED = "{{ params.seed | default(0) }}"
DEFAULT_DAG_RUN_ID = "{{ run_id }}"

# The MLflow tracking URI from the ``mlflow_default`` Connection, rendered when the task runs (never while
# parsing). Same rule as :func:`mlcd.airflow.hooks.connection_from_airflow`: ``extra.tracking_uri`` wins; a host that
# already holds a scheme is used as is; else ``schema`` (Airflow's HTTP-connection convention) or the
# connection type picks http/https. Login and password never enter the URI.
MLFLOW_URI_TEMPLATE = (
    "{% set c = conn." + MLFLOW_CONN_ID + " %}"
    "{{ c.extra_dejson.get('tracking_uri') or ("
    "(c.host if '://' in (c.host or '') else "
    "((c.schema if c.schema in ('http', 'https') else ('https' if c.conn_type == 'https' else 'http'))"
    " ~ '://' ~ c.host))"
    " ~ (':' ~ c.port if c.port else '')) }}"
)

GPU_RESOURCE = "nvidia.com/gpu"
# The trainer's root filesystem is read-only; everything it writes (Keras/MLflow caches, temp files, the
# model before upload) goes to this emptyDir, which is also $HOME and $TMPDIR.
SCRATCH_PATH = "/scratch"
# The model-signing key (see mlcd.model_io): the trainer signs the digest of the model it logged.
SIGNING_SECRET = "mlcd-model-signing"
SIGNING_SECRET_KEY = "key"


def mlflow_environment(conn_id: str = MLFLOW_CONN_ID) -> dict[str, str]:
    """Environment for a trainer child process: the tracking URI and token of the MLflow Connection.

    Resolved by :class:`~mlcd.airflow.hooks.MlflowHook` (settings' tracking URI when the Connection does not
    exist). Read at execute time only; the token goes into the child's environment, never into this process'.
    """
    from mlcd.airflow.hooks import MlflowHook

    config = MlflowHook(conn_id).config
    env = {"MLFLOW_TRACKING_URI": config.tracking_uri}
    if config.token:
        env["MLFLOW_TRACKING_TOKEN"] = config.token
    return env


def train_arguments(
    snapshot: str = DEFAULT_SNAPSHOT,
    *,
    epochs: int | str = DEFAULT_EPOCHS,
    batch_size: int | str = DEFAULT_BATCH_SIZE,
    seed: int | str = DEFAULT_SEED,
    max_train_samples: int | str | None = None,
    experiment: str | None = None,
    dag_run_id: str | None = DEFAULT_DAG_RUN_ID,
    model: str | None = None,
) -> list[str]:
    """The trainer flags of the ``train`` task (templates until Airflow renders them); both backends use it."""
    return trainer_args(
        snapshot,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        max_train_samples=max_train_samples,
        experiment=experiment,
        dag_run_id=dag_run_id,
        model=model,
    )


class LocalTrainOperator(BaseOperator):
    """Run ``python -m mlcd.training`` as a child process; stream its output into the task log.

    Returns the trainer's result dict (the XCom). A non-zero exit fails the task with the trainer's own last
    error line, so the reason is readable in the UI without opening the log.

    Args:
        arguments: the trainer flags (see :func:`train_arguments`); templated.
        mlflow_conn_id: Connection that names the MLflow server; absent means the settings' URI.
        python: interpreter; default the worker's own (``sys.executable``), where mlcd is installed.
        env: extra environment for the child (non-secret settings).
    """

    template_fields: Sequence[str] = ("arguments", "env")
    ui_color = "#fbe5c8"

    def __init__(
        self,
        *,
        arguments: list[str],
        mlflow_conn_id: str = MLFLOW_CONN_ID,
        python: str | None = None,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.arguments = list(arguments)
        self.mlflow_conn_id = mlflow_conn_id
        self.python = python
        self.env = dict(env or {})
        self._process: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        return trainer_command(self.python or sys.executable, [str(a) for a in self.arguments])

    def execute(self, context: Context) -> dict[str, Any]:
        command = self.command()
        from mlcd.envroles import Role, env_for

        # The trainer child holds MLflow's credentials and the signing key, none of the task's other secrets.
        child_env = env_for(Role.TRAINER, {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            **self.env,
            **mlflow_environment(self.mlflow_conn_id),
            "PYTHONUNBUFFERED": "1",  # progress must reach the log as it happens, not at exit
        })
        self.log.info("Running the trainer: %s", shlex.join(command))
        self.log.info("MLflow tracking URI: %s", child_env["MLFLOW_TRACKING_URI"])
        tail: deque[str] = deque(maxlen=200)
        result_lines: list[str] = []
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one stream keeps errors in order with progress in the log
            text=True,
            bufsize=1,
            env=child_env,
            start_new_session=True,  # on_kill ends the trainer and anything it started
        )
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.rstrip("\n")
            self.log.info("%s", line)
            tail.append(line)
            if line.startswith(RESULT_PREFIX):
                result_lines.append(line)
        code = self._process.wait()
        self._process = None
        if code != 0:
            reason = last_error_line(tail) or "no output"
            raise AirflowException(f"trainer failed (exit code {code}): {reason}")
        try:
            result = parse_result(result_lines)
        except ValueError as err:
            raise AirflowException(str(err)) from None
        self.log.info("Trained: run %s, val_accuracy %.4f", result["run_id"], float(result["val_accuracy"]))
        return result

    def on_kill(self) -> None:
        proc = self._process
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value else default


def _parse_node_selector(text: str) -> dict[str, str]:
    """``{"k": "v"}`` JSON or ``k=v,k2=v2``; empty means no selector."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        return {str(k): str(v) for k, v in json.loads(text).items()}
    pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass(frozen=True)
class TrainerPodConfig:
    """The trainer pod's deploy-wide settings, read from ``MLCD_*`` (see :meth:`from_env`)."""

    image: str = "ghcr.io/mlcd/trainer:0.1.0"
    # Training pods get a namespace of their own: whoever may create pods in a namespace may read its Secrets
    # (by mounting them), so the serving Secrets stay out of Airflow's reach in `mlcd`.
    namespace: str = "mlcd-training"
    gpus: int = 1
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    cpu_request: str = "2"
    cpu_limit: str = "8"
    memory_request: str = "8Gi"
    memory_limit: str = "16Gi"
    scratch_limit: str = "20Gi"
    kubernetes_conn_id: str = "kubernetes_default"
    token_secret: str = "mlflow-credentials"  # Kubernetes Secret with the MLflow token (optional)
    token_secret_key: str = "token"
    pod_template_file: str | None = None
    service_account: str | None = None
    # The pod reads its snapshot from storage by URI: the storage options (non-secret, e.g. endpoint_url) go
    # in as MLCD_STORAGE_OPTIONS, and the store's credentials (AWS_ACCESS_KEY_ID, …) from this Secret's keys.
    storage_options: str = ""
    storage_secret: str = "mlcd-storage"

    @classmethod
    def from_env(cls) -> TrainerPodConfig:
        """``MLCD_TRAINER_IMAGE``, ``MLCD_TRAINER_NAMESPACE``, ``MLCD_TRAINER_GPUS``, ``MLCD_TRAINER_NODE_SELECTOR``
        (JSON or ``k=v,…``), ``MLCD_TRAINER_CPU``, ``MLCD_TRAINER_CPU_LIMIT``, ``MLCD_TRAINER_MEMORY``,
        ``MLCD_TRAINER_MEMORY_LIMIT``, ``MLCD_TRAINER_SCRATCH``,
        ``MLCD_K8S_CONN_ID``, ``MLCD_MLFLOW_TOKEN_SECRET``, ``MLCD_TRAINER_POD_TEMPLATE``,
        ``MLCD_TRAINER_SERVICE_ACCOUNT``, ``MLCD_STORAGE_OPTIONS``, ``MLCD_STORAGE_SECRET``."""
        d = cls()
        selector = os.environ.get("MLCD_TRAINER_NODE_SELECTOR")
        return cls(
            image=_env("MLCD_TRAINER_IMAGE", d.image),
            # Not MLCD_K8S_NAMESPACE: that one names serving's namespace (the HTTPRoute router reads it).
            namespace=_env("MLCD_TRAINER_NAMESPACE", d.namespace),
            gpus=int(_env("MLCD_TRAINER_GPUS", str(d.gpus))),
            node_selector=_parse_node_selector(selector) if selector is not None else d.node_selector,
            cpu_request=_env("MLCD_TRAINER_CPU", d.cpu_request),
            cpu_limit=_env("MLCD_TRAINER_CPU_LIMIT", d.cpu_limit),
            memory_request=_env("MLCD_TRAINER_MEMORY", d.memory_request),
            memory_limit=_env("MLCD_TRAINER_MEMORY_LIMIT", d.memory_limit),
            scratch_limit=_env("MLCD_TRAINER_SCRATCH", d.scratch_limit),
            kubernetes_conn_id=_env("MLCD_K8S_CONN_ID", d.kubernetes_conn_id),
            token_secret=_env("MLCD_MLFLOW_TOKEN_SECRET", d.token_secret),
            pod_template_file=os.environ.get("MLCD_TRAINER_POD_TEMPLATE") or None,
            service_account=os.environ.get("MLCD_TRAINER_SERVICE_ACCOUNT") or None,
            storage_options=os.environ.get("MLCD_STORAGE_OPTIONS") or "",
            storage_secret=_env("MLCD_STORAGE_SECRET", d.storage_secret),
        )


@functools.cache
def trainer_pod_operator_class() -> type[BaseOperator]:
    """``KubernetesPodOperator`` that reads the trainer's result from the pod log instead of an XCom sidecar.

    The sidecar is read with ``pods/exec``, and whoever may exec into pods may read every Secret mounted in
    them; the trainer already prints its result as the last ``MLCD_TRAIN_RESULT`` line, which ``pods/log``
    (needed for the task log anyway) returns. Built on first use so parsing a DAG never imports the provider.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.cncf.kubernetes.utils.container import container_is_succeeded

    class TrainerPodOperator(KubernetesPodOperator):
        _train_result: dict[str, Any] | None = None

        def post_complete_action(self, *, pod: Any, remote_pod: Any, context: Any, result: Any, **kwargs: Any) -> None:
            # Read before the parent deletes a succeeded pod (on_finish_action=delete_succeeded_pod).
            if self._train_result is None and remote_pod is not None and container_is_succeeded(
                    remote_pod, self.base_container_name):
                self._train_result = self.read_result(remote_pod)
            super().post_complete_action(pod=pod, remote_pod=remote_pod, context=context, result=result, **kwargs)

        def read_result(self, pod: Any) -> dict[str, Any] | None:
            logs = self.pod_manager.read_pod_logs(pod, self.base_container_name, tail_lines=500, follow=False)
            lines = [raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw) for raw in logs]
            try:
                return parse_result(lines)
            except ValueError as err:
                self.log.error("%s", err)
                return None

        def _result(self) -> dict[str, Any]:
            if self._train_result is None:
                raise AirflowException("the trainer pod succeeded but its log holds no MLCD_TRAIN_RESULT line")
            self.log.info("Trained: run %s, val_accuracy %.4f", self._train_result["run_id"],
                          float(self._train_result["val_accuracy"]))
            return self._train_result

        def execute_sync(self, context: Any) -> dict[str, Any]:
            super().execute_sync(context)
            return self._result()

        def trigger_reentry(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
            super().trigger_reentry(context, event)  # defers again (raises) while the pod still runs
            return self._result()

    return TrainerPodOperator


def make_pod_operator(
    task_id: str, arguments: list[str], config: TrainerPodConfig | None = None, **overrides: Any
) -> BaseOperator:
    """A deferrable pod operator running the trainer on a GPU node, under the ``restricted`` Pod Security level.

    Non-root, every capability dropped, no privilege escalation, seccomp ``RuntimeDefault``, read-only root
    filesystem with an emptyDir scratch as ``$HOME`` and ``$TMPDIR``, CPU and memory limits, no API token.
    """
    from kubernetes.client import models as k8s

    cfg = config or TrainerPodConfig.from_env()
    command = trainer_command("python", arguments)
    requests = {"cpu": cfg.cpu_request, "memory": cfg.memory_request}
    limits = {"cpu": cfg.cpu_limit, "memory": cfg.memory_limit}
    if cfg.gpus > 0:
        # Extended resources are requested through limits (the request defaults to the limit).
        limits[GPU_RESOURCE] = str(cfg.gpus)
    env = [
        k8s.V1EnvVar(name="MLFLOW_TRACKING_URI", value=MLFLOW_URI_TEMPLATE),
        k8s.V1EnvVar(
            name="MLFLOW_TRACKING_TOKEN",
            value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(
                    name=cfg.token_secret, key=cfg.token_secret_key, optional=True  # servers without auth
                )
            ),
        ),
        k8s.V1EnvVar(
            name="MLCD_MODEL_SIGNING_KEY",
            value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(
                    name=SIGNING_SECRET, key=SIGNING_SECRET_KEY, optional=True  # digest only without one
                )
            ),
        ),
        k8s.V1EnvVar(name="HOME", value=SCRATCH_PATH),  # Keras and MLflow write caches under $HOME
        k8s.V1EnvVar(name="TMPDIR", value=SCRATCH_PATH),
        k8s.V1EnvVar(name="TF_CPP_MIN_LOG_LEVEL", value="2"),
        k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
    ]
    if cfg.storage_options:
        env.append(k8s.V1EnvVar(name="MLCD_STORAGE_OPTIONS", value=cfg.storage_options))
    # The object store's credentials, as environment variables named by the Secret's keys (optional: a
    # workload identity or a public bucket needs none).
    env_from = [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=cfg.storage_secret, optional=True))]
    seccomp = k8s.V1SeccompProfile(type="RuntimeDefault")
    kwargs: dict[str, Any] = {
        "task_id": task_id,
        "name": "mlcd-train",
        "namespace": cfg.namespace,
        "image": cfg.image,
        "cmds": command[:1],
        "arguments": command[1:],
        "env_vars": env,
        "env_from": env_from,
        "container_resources": k8s.V1ResourceRequirements(requests=requests, limits=limits),
        "tolerations": [k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")],
        "node_selector": dict(cfg.node_selector),
        "labels": {"app.kubernetes.io/name": "mlcd-trainer", "app.kubernetes.io/part-of": "mlcd"},
        "kubernetes_conn_id": cfg.kubernetes_conn_id,
        "service_account_name": cfg.service_account,
        "automount_service_account_token": False,  # the trainer talks to MLflow, never to the Kubernetes API
        "security_context": k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=1000, run_as_group=1000, fs_group=1000, seccomp_profile=seccomp
        ),
        "container_security_context": k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
            seccomp_profile=seccomp,
        ),
        "volumes": [k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=cfg.scratch_limit))],
        "volume_mounts": [k8s.V1VolumeMount(name="scratch", mount_path=SCRATCH_PATH)],
        "pod_template_file": cfg.pod_template_file,
        # The result comes from the pod log (pods/log), not from an XCom sidecar read with pods/exec.
        "do_xcom_push": False,
        "deferrable": True,
        "logging_interval": 60,  # the deferred task wakes to copy pod logs, so epochs show up while it runs
        "get_logs": True,
        "log_events_on_failure": True,
        "on_finish_action": "delete_succeeded_pod",  # a failed pod stays for `kubectl describe/logs`
        "startup_timeout_seconds": 900,  # GPU node scale-up plus a multi-GB image pull
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    }
    kwargs.update(overrides)
    return trainer_pod_operator_class()(**kwargs)


def make_train_task(
    task_id: str = TASK_ID,
    *,
    snapshot: str = DEFAULT_SNAPSHOT,
    epochs: int | str = DEFAULT_EPOCHS,
    batch_size: int | str = DEFAULT_BATCH_SIZE,
    seed: int | str = DEFAULT_SEED,
    max_train_samples: int | str | None = None,
    experiment: str | None = None,
    model: str | None = None,
    backend: str | None = None,
    pod_config: TrainerPodConfig | None = None,
    **overrides: Any,
) -> BaseOperator:
    """The ``train`` task for the configured backend.

    Args:
        task_id: the same on both backends, so downstream ``xcom_pull(task_ids="train")`` never changes.
        snapshot: template or path of the snapshot folder/URL (default: the ``validate`` task's XCom).
        epochs, batch_size, seed, max_train_samples: values or templates (default: the DAG's Params).
        experiment: MLflow experiment (default: the model name).
        model: model builder spec (default: the reference CNN).
        backend: ``local`` or ``kubernetes``; default ``MLCD_TRAINING_BACKEND``.
        pod_config: pod settings for the kubernetes backend; default from ``MLCD_*``.
        overrides: passed to the operator (``retries``, ``pool``, ``image``…).

    Returns:
        A ``KubernetesPodOperator`` (:func:`trainer_pod_operator_class`) or a :class:`LocalTrainOperator`.
    """
    arguments = train_arguments(
        snapshot,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        max_train_samples=max_train_samples,
        experiment=experiment,
        model=model,
    )
    chosen = (backend or get_settings().training_backend).strip().lower()
    if chosen == "kubernetes":
        return make_pod_operator(task_id, arguments, pod_config, **overrides)
    if chosen == "local":
        # Most local failures are deterministic (bad snapshot, bug), but an MLflow server restarting while the
        # model is logged is not: one retry, not the DAG's default.
        overrides.setdefault("retries", 1)
        return LocalTrainOperator(task_id=task_id, arguments=arguments, **overrides)
    raise ValueError(f"MLCD_TRAINING_BACKEND={chosen!r}: expected 'local' or 'kubernetes'")
