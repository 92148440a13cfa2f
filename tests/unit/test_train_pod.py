"""The kubernetes backend's pod, built by the provider itself and checked field by field and against the schema.

No cluster runs here: ``build_pod_request_obj`` needs only a kubeconfig file, so a dummy one is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mlcd.airflow.training import (
    GPU_RESOURCE,
    MLFLOW_URI_TEMPLATE,
    TrainerPodConfig,
    make_train_task,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
POD_TEMPLATE = REPO / "deploy" / "k8s" / "trainer-pod-template.yaml"
K8S_VERSION = "1.37.0"

DUMMY_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: dummy
  cluster: {server: "https://127.0.0.1:6443"}
users:
- name: dummy
  user: {token: "not-a-real-token"}
contexts:
- name: dummy
  context: {cluster: dummy, user: dummy, namespace: mlcd}
current-context: dummy
"""


class _TaskInstance:
    """What the pod build reads from ``ti``: identity for the pod labels, and the validate task's XCom."""

    dag_id = "mlcd_retrain"
    task_id = "train"
    map_index = -1
    try_number = 1

    def __init__(self, xcoms: dict[str, Any]) -> None:
        self.xcoms = xcoms

    def xcom_pull(self, task_ids: str, **_: Any) -> Any:
        return self.xcoms[task_ids]


@pytest.fixture
def kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(DUMMY_KUBECONFIG)
    return str(path)


@pytest.fixture
def mlflow_conn(monkeypatch: pytest.MonkeyPatch) -> None:
    # user:password in the Connection must never reach the pod spec.
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", "http://alice:s3cret@mlflow.mlcd.svc.cluster.local:5000")


def _context(snapshot_uri: str) -> dict[str, Any]:
    from airflow.sdk.execution_time.context import ConnectionAccessor

    return {
        "conn": ConnectionAccessor(),
        "ti": _TaskInstance({"validate": {"snapshot_uri": snapshot_uri}}),
        "params": {"epochs": 4, "batch_size": 256},
        "run_id": "manual__2026-11-25T00:00:00+00:00",
        "dag": None,
    }


def _built_pod(kubeconfig: str, **overrides: Any) -> Any:
    task = make_train_task(backend="kubernetes", config_file=kubeconfig, **overrides)
    context = _context("s3://mlcd-data/mlcd/snapshots/0123abcd")
    task.render_template_fields(context)  # type: ignore[arg-type]
    return task, task.build_pod_request_obj(context)  # type: ignore[attr-defined]


def test_pod_fields(kubeconfig: str, mlflow_conn: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    monkeypatch.setenv("MLCD_TRAINER_IMAGE", "registry.example.com/mlcd/trainer:1.2.3")
    monkeypatch.setenv("MLCD_TRAINER_NAMESPACE", "ml-train")
    monkeypatch.setenv("MLCD_K8S_NAMESPACE", "serving")  # serving's namespace (the router's), not the trainer's
    monkeypatch.setenv("MLCD_TRAINER_NODE_SELECTOR", "cloud.google.com/gke-accelerator=nvidia-l4")
    monkeypatch.setenv("MLCD_STORAGE_OPTIONS", '{"endpoint_url": "http://minio.storage:9000"}')
    task, pod = _built_pod(kubeconfig)

    assert isinstance(task, KubernetesPodOperator)
    assert task.task_id == "train"
    assert task.deferrable
    assert not task.do_xcom_push  # the result comes from the pod log: no sidecar, no pods/exec
    assert task.on_finish_action.value == "delete_succeeded_pod"
    assert task.retries == 2 and task.retry_exponential_backoff == 2.0

    assert pod.metadata.namespace == "ml-train"
    assert not spec_has_token(pod)
    assert pod.metadata.labels["app.kubernetes.io/name"] == "mlcd-trainer"
    spec = pod.spec
    assert spec.restart_policy == "Never"
    assert spec.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    tolerations = [(t.key, t.operator, t.effect) for t in spec.tolerations]
    assert (GPU_RESOURCE, "Exists", "NoSchedule") in tolerations

    base = next(c for c in spec.containers if c.name == "base")
    assert base.image == "registry.example.com/mlcd/trainer:1.2.3"
    assert base.command == ["python"]
    assert base.args == [
        "-m", "mlcd.training",
        "--snapshot", "s3://mlcd-data/mlcd/snapshots/0123abcd",
        "--epochs", "4",
        "--batch-size", "256",
        "--seed", "0",
        "--dag-run-id", "manual__2026-11-25T00:00:00+00:00",
    ]  # fmt: skip
    assert base.resources.limits[GPU_RESOURCE] == "1"
    assert base.resources.requests == {"cpu": "2", "memory": "8Gi"}
    assert base.resources.limits["memory"] == "16Gi" and base.resources.limits["cpu"] == "8"

    env = {e.name: e for e in base.env}
    assert env["MLFLOW_TRACKING_URI"].value == "http://mlflow.mlcd.svc.cluster.local:5000"
    token = env["MLFLOW_TRACKING_TOKEN"]
    assert token.value is None
    assert token.value_from.secret_key_ref.name == "mlflow-credentials"
    assert token.value_from.secret_key_ref.key == "token"
    # The snapshot is read by URI: the store's options by value, its credentials from an optional Secret.
    assert env["MLCD_STORAGE_OPTIONS"].value == '{"endpoint_url": "http://minio.storage:9000"}'
    assert [(f.secret_ref.name, f.secret_ref.optional) for f in base.env_from] == [("mlcd-storage", True)]
    serialized = str(pod.to_dict())
    assert "s3cret" not in serialized and "alice" not in serialized

    assert [c.name for c in spec.containers] == ["base"]


def spec_has_token(pod: Any) -> bool:
    return pod.spec.automount_service_account_token is not False


def test_pod_is_schema_valid(kubeconfig: str, mlflow_conn: None) -> None:
    from kubernetes.client import ApiClient

    _, pod = _built_pod(kubeconfig)
    manifest = ApiClient().sanitize_for_serialization(pod)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_pod_from_template_is_schema_valid(kubeconfig: str, mlflow_conn: None) -> None:
    from kubernetes.client import ApiClient

    config = TrainerPodConfig(pod_template_file=str(POD_TEMPLATE))
    _, pod = _built_pod(kubeconfig, pod_config=config)
    manifest = ApiClient().sanitize_for_serialization(pod)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    # The template's own volume (/dev/shm) survives the merge with the operator's fields; no volume is shared
    # with Airflow (the snapshot is read by URI from the object store).
    assert "dshm" in {v["name"] for v in manifest["spec"]["volumes"]}
    assert not any("persistentVolumeClaim" in v for v in manifest["spec"]["volumes"])
    base = next(c for c in manifest["spec"]["containers"] if c["name"] == "base")
    assert base["resources"]["limits"][GPU_RESOURCE] == "1"


def test_pod_template_file_is_schema_valid() -> None:
    manifest = yaml.safe_load(POD_TEMPLATE.read_text())
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    spec = manifest["spec"]
    base = next(c for c in spec["containers"] if c["name"] == "base")
    assert base["resources"]["limits"][GPU_RESOURCE] == 1 or base["resources"]["limits"][GPU_RESOURCE] == "1"
    assert any(t["key"] == GPU_RESOURCE and t["effect"] == "NoSchedule" for t in spec["tolerations"])


def test_invalid_pod_is_rejected_by_the_schema(kubeconfig: str, mlflow_conn: None) -> None:
    """The schema check has teeth: a malformed container field fails it."""
    from kubernetes.client import ApiClient

    _, pod = _built_pod(kubeconfig)
    manifest = ApiClient().sanitize_for_serialization(pod)
    manifest["spec"]["containers"][0]["args"] = "not-a-list"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("conn_env", "expected"),
    [
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("https://u:p@mlflow.example.com", "https://mlflow.example.com"),
        ('{"conn_type": "http", "host": "https://mlflow.example.com/prefix"}', "https://mlflow.example.com/prefix"),
        ('{"conn_type": "http", "host": "mlflow", "port": 8080, "schema": "https"}', "https://mlflow:8080"),
        ('{"conn_type": "generic", "extra": {"tracking_uri": "databricks"}}', "databricks"),
    ],
)
def test_uri_template_matches_python_rule(conn_env: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod's Jinja rule and the local operator's Python rule give the same URI for the same Connection."""
    import jinja2
    from airflow.sdk.definitions.connection import Connection
    from airflow.sdk.execution_time.context import ConnectionAccessor

    from mlcd.airflow.hooks import connection_from_airflow

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", conn_env)
    rendered = jinja2.Environment().from_string(MLFLOW_URI_TEMPLATE).render(conn=ConnectionAccessor())
    assert rendered == expected
    assert connection_from_airflow(Connection.get("mlflow_default")).tracking_uri == expected


def test_local_backend_is_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcd.airflow.training import LocalTrainOperator

    monkeypatch.delenv("MLCD_TRAINING_BACKEND", raising=False)
    assert isinstance(make_train_task(), LocalTrainOperator)
    monkeypatch.setenv("MLCD_TRAINING_BACKEND", "slurm")
    with pytest.raises(ValueError, match="slurm"):
        make_train_task()


def test_pod_template_yaml_parses_as_pod() -> None:
    data = yaml.safe_load(POD_TEMPLATE.read_text())
    assert data["kind"] == "Pod" and data["apiVersion"] == "v1"


# --- least privilege (issue 16) -----------------------------------------------------------------------------


def _manifest(pod: Any) -> dict[str, Any]:
    from kubernetes.client import ApiClient

    return dict(ApiClient().sanitize_for_serialization(pod))


@pytest.mark.parametrize("template", [False, True], ids=["operator", "operator+template"])
def test_trainer_pod_meets_the_restricted_level(kubeconfig: str, mlflow_conn: None, template: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """seccomp RuntimeDefault, read-only root with an emptyDir scratch as HOME/TMPDIR, CPU and memory limits."""
    from mlcd.airflow.training import SCRATCH_PATH
    from tests.unit.test_k8s_manifests import TRAINER_SECRETS, TRAINING_NS, restricted_violations

    monkeypatch.delenv("MLCD_TRAINER_NAMESPACE", raising=False)
    config = TrainerPodConfig(pod_template_file=str(POD_TEMPLATE)) if template else TrainerPodConfig()
    _, pod = _built_pod(kubeconfig, pod_config=config)
    manifest = _manifest(pod)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    spec = manifest["spec"]
    assert manifest["metadata"]["namespace"] == TRAINING_NS
    assert restricted_violations(spec) == []
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    (base,) = spec["containers"]
    assert base["securityContext"]["readOnlyRootFilesystem"] is True
    assert base["resources"]["limits"]["cpu"] and base["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in base["env"]}
    assert env["HOME"]["value"] == env["TMPDIR"]["value"] == SCRATCH_PATH
    mounts = {m["mountPath"]: m["name"] for m in base["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts[SCRATCH_PATH]]
    # A merge with the template appends lists: nothing may appear twice.
    for items, key in ((base["env"], "name"), (base["volumeMounts"], "mountPath"), (spec["volumes"], "name")):
        names = [i[key] for i in items]
        assert len(names) == len(set(names)), names
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in base["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets <= TRAINER_SECRETS


class _PodManager:
    """Stands in for the Kubernetes API's pod log endpoint (no cluster runs here)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.calls: list[dict[str, Any]] = []

    def read_pod_logs(self, pod: Any, container_name: str, **kwargs: Any) -> list[bytes]:
        self.calls.append({"container": container_name, **kwargs})
        return [line.encode() for line in self.lines]


def test_the_result_is_read_from_the_pod_log_not_by_exec(kubeconfig: str, mlflow_conn: None) -> None:
    """pods/log replaces the XCom sidecar's pods/exec: the trainer's last MLCD_TRAIN_RESULT line is the XCom."""
    import json

    from airflow.sdk.exceptions import AirflowException

    from mlcd.training.contract import REQUIRED_RESULT_KEYS, RESULT_PREFIX

    task, pod = _built_pod(kubeconfig)
    result = {k: f"v-{k}" for k in REQUIRED_RESULT_KEYS} | {"val_accuracy": 0.98, "run_id": "abc"}
    manager = _PodManager(["epoch 1/1 ...", RESULT_PREFIX + json.dumps(result), ""])
    task.__dict__["pod_manager"] = manager
    assert task.read_result(pod) == result
    assert manager.calls == [{"container": "base", "tail_lines": 500, "follow": False}]
    task._train_result = result
    assert task._result() == result
    task._train_result = None
    task.__dict__["pod_manager"] = _PodManager(["Traceback ...", "mlcd.training: error: boom"])
    assert task.read_result(pod) is None
    with pytest.raises(AirflowException, match="no MLCD_TRAIN_RESULT line"):
        task._result()
