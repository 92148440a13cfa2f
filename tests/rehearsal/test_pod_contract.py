"""The training pod's contract (#11.3): the pod needs nothing but what its spec gives it.

The pod is built by the operator's own ``build_pod_request_obj`` (as the kubernetes backend of ``mlcd_retrain``'s
``train`` task builds it). Its container command runs as a child process with exactly the spec's environment:
plain values as given, ``secretKeyRef`` / ``secretRef`` resolved from a dict standing in for the Kubernetes Secrets,
the emptyDir mount (``$HOME``, ``$TMPDIR``) a fresh empty folder, an empty working directory and no ``MLCD_HOME``.
Only the interpreter and ``PYTHONPATH`` stand for the image. The pod must read the snapshot by its ``s3://`` URI,
train, and log the run and the model to MLflow (Postgres backend, artifacts in S3).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mlcd.training.contract import parse_result
from tests.rehearsal.conftest import ARTIFACT_BUCKET, ClusterSettings
from tests.rehearsal.services import REPO, VENV_BIN, MlflowServer, S3Server

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: "not-a-real-token"}}]
contexts: [{name: c, context: {cluster: c, user: u, namespace: mlcd}}]
current-context: c
"""


class _TaskInstance:
    dag_id = "mlcd_retrain"
    task_id = "train"
    map_index = -1
    try_number = 1

    def __init__(self, xcoms: dict[str, Any]) -> None:
        self.xcoms = xcoms

    def xcom_pull(self, task_ids: str, **_: Any) -> Any:
        return self.xcoms[task_ids]


def resolve_env(container: Any, secrets: dict[str, dict[str, str]], mounts: dict[str, Path]) -> dict[str, str]:
    """The environment the kubelet would give the container: values, secretKeyRef and envFrom secretRef.

    A value naming a mount path is rewritten to the folder that stands for that volume here. A required Secret
    or key that is missing fails, as the kubelet refuses to start such a container.
    """
    env: dict[str, str] = {}
    for source in container.env_from or []:
        ref = source.secret_ref
        assert ref is not None, f"only secretRef envFrom is expected, got {source}"
        if ref.name not in secrets:
            assert ref.optional, f"required Secret {ref.name} missing"
            continue
        env.update(secrets[ref.name])
    for var in container.env or []:
        if var.value_from is None:
            value = var.value or ""
            for mount, folder in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    value = str(folder) + value[len(mount):]
            env[var.name] = value
            continue
        ref = var.value_from.secret_key_ref
        assert ref is not None, f"{var.name}: only secretKeyRef is expected"
        secret = secrets.get(ref.name, {})
        if ref.key not in secret:
            assert ref.optional, f"{var.name}: required Secret key {ref.name}/{ref.key} missing"
            continue
        env[var.name] = secret[ref.key]
    return env


@pytest.fixture
def snapshot_uri(cluster_settings: ClusterSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 reference_data: Any) -> str:
    """A batch landed in the s3:// landing zone, collected and validated: the published snapshot's URI."""
    from mlcd.data.batch import save_batch
    from mlcd.data.intake import collect, validate
    from mlcd.data.landing import LandingZone
    from mlcd.settings import get_settings

    for key, value in cluster_settings.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLCD_STORAGE_URL", f"{cluster_settings.storage_url}/pod-contract")
    monkeypatch.setenv("MLCD_HOME", str(tmp_path / "worker-home"))  # the validating worker's scratch, not the pod's
    batch = save_batch(tmp_path / "pod-batch.npz", reference_data.x_train[:600], reference_data.y_train[:600])
    LandingZone(get_settings().landing_uri).land(batch)
    report = validate(collect())
    assert report.snapshot_uri and str(report.snapshot_uri).startswith("s3://"), report
    return str(report.snapshot_uri)


@pytest.mark.timeout(900, method="signal")
def test_training_pod_runs_from_its_spec_alone(snapshot_uri: str, cluster_settings: ClusterSettings,
                                               mlflow_service: MlflowServer, s3: S3Server, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.execution_time.context import ConnectionAccessor
    from mlflow.tracking import MlflowClient

    from mlcd.airflow.training import SCRATCH_PATH, make_train_task

    # What the Airflow worker that builds the pod has: the MLflow Connection and the store's (non-secret) options.
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_service.url)
    monkeypatch.setenv("MLCD_STORAGE_OPTIONS", cluster_settings.storage_options)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    task = make_train_task(backend="kubernetes", config_file=str(kubeconfig))
    context: dict[str, Any] = {
        "conn": ConnectionAccessor(),
        "ti": _TaskInstance({"validate": {"snapshot_uri": snapshot_uri, "snapshot_path": snapshot_uri}}),
        "params": {"epochs": 1, "batch_size": 32},
        "run_id": "rehearsal__pod-contract",
        "dag": None,
    }
    task.render_template_fields(context)  # type: ignore[arg-type]
    pod = task.build_pod_request_obj(context)  # type: ignore[attr-defined]
    container = next(c for c in pod.spec.containers if c.name == "base")

    # The Kubernetes Secrets the spec refers to, as a cluster operator would create them.
    secrets = {
        "mlcd-storage": dict(cluster_settings.aws),
        "mlcd-model-signing": {"key": "rehearsal-signing-key"},
    }
    scratch = tmp_path / "scratch"  # the emptyDir volume: $HOME and $TMPDIR
    scratch.mkdir()
    mounts = {m.mount_path: scratch for m in container.volume_mounts or []}
    assert SCRATCH_PATH in mounts
    env = resolve_env(container, secrets, mounts)
    assert "MLCD_HOME" not in env and "MLCD_STORAGE_URL" not in env  # the snapshot's URI is all it is told
    assert env["HOME"] == str(scratch) and env["MLFLOW_TRACKING_URI"] == mlflow_service.url
    # The image: its interpreter (``python`` on its PATH) with mlcd installed.
    env["PATH"] = f"{VENV_BIN}:/usr/bin:/bin"
    env["PYTHONPATH"] = str(REPO / "include")
    env.update({"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
                "MLFLOW_DISABLE_TELEMETRY": "true"})  # the image's ENV, as tests/rehearsal/services.base_env
    argv = [*container.command, *container.args]
    assert argv[0] == "python" and "--snapshot" in argv and argv[argv.index("--snapshot") + 1] == snapshot_uri

    workdir = tmp_path / "pod-cwd"
    workdir.mkdir()
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    result = parse_result(done.stdout.splitlines())
    assert result["snapshot_path"] == snapshot_uri

    # The run and the model, read back from MLflow (Postgres) and the artifact store (S3).
    client = MlflowClient(mlflow_service.url)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params.get("epochs") == "1"
    assert result["train_samples"] > 0 and run.data.metrics.get("val_accuracy") is not None
    model_id = result.get("logged_model_id")
    keys = s3.filesystem().find(ARTIFACT_BUCKET)
    model_files = [k for k in keys if (model_id and model_id in k) or result["run_id"] in k]
    assert any(k.endswith("/MLmodel") for k in model_files), model_files[:20]
    assert any(k.endswith(".keras") or "/data/" in k for k in model_files), model_files[:20]
    # The pod left nothing where a worker's disk would be: its cwd stays empty.
    assert list(workdir.iterdir()) == []
    assert json.loads(json.dumps(result))  # the XCom is plain JSON
