"""The training pod's contract (#11.3, #29.3): the trainer image runs from its pod spec alone.

The pod is built by the operator's own ``build_pod_request_obj`` (as the kubernetes backend of ``mlcd_retrain``'s
``train`` task builds it), and run as a container of the image the spec names (``ghcr.io/mlcd/trainer``, built
from this checkout by ``deploy/docker/build.sh``) with exactly the spec's command, arguments, user and environment:
plain values as given, ``secretKeyRef`` / ``secretRef`` resolved from a dict standing in for the Kubernetes Secrets.
The root filesystem is read-only and the spec's emptyDir (``$HOME``, ``$TMPDIR``) is the only writable path; no
host path is mounted. The pod must read the snapshot by its ``s3://`` URI, train, and log the run and the model to
MLflow (Postgres backend, artifacts in S3), and leave the image's filesystem as it found it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlcd.training.contract import parse_result
from tests.rehearsal.conftest import ARTIFACT_BUCKET, ClusterSettings
from tests.rehearsal.containers import CPU_BOUND_ENV, Container, ensure_images, unique_name
from tests.rehearsal.services import MlflowServer, S3Server

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
    # The emptyDir volumes, mounted at their paths inside the container (a fresh tmpfs each): no rewriting.
    empty_dirs = {v.name for v in pod.spec.volumes or [] if v.empty_dir is not None}
    mounts = [m.mount_path for m in container.volume_mounts or [] if m.name in empty_dirs]
    assert SCRATCH_PATH in mounts and len(mounts) == len(container.volume_mounts or [])  # no hostPath, no Secret files
    env = resolve_env(container, secrets, {})
    assert "MLCD_HOME" not in env and "MLCD_STORAGE_URL" not in env  # the snapshot's URI is all it is told
    assert env["HOME"] == SCRATCH_PATH and env["TMPDIR"] == SCRATCH_PATH
    assert env["MLFLOW_TRACKING_URI"] == mlflow_service.url
    env.update(CPU_BOUND_ENV)  # stand for the pod's CPU limit: 2 cores are shared by the whole rehearsal
    argv = [*container.command, *container.args]
    assert argv[0] == "python" and "--snapshot" in argv and argv[argv.index("--snapshot") + 1] == snapshot_uri

    ensure_images("trainer")
    security = pod.spec.security_context
    assert container.security_context.read_only_root_filesystem and security.run_as_non_root
    pod_run = Container(unique_name("trainer"), container.image, argv, env, mounts,
                        f"{security.run_as_user}:{security.run_as_group}", tmp_path / "trainer.log", keep=True)
    try:
        pod_run.start()
        code = pod_run.wait(timeout=600)
        log = pod_run.logs()
        assert code == 0, log[-4000:]
        # Nothing written outside the emptyDir: the image's filesystem is as the image left it (bar the engine's
        # own: the mount points it made and /etc's hosts, hostname and resolv.conf).
        engine = {"/etc", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run", "/run/.containerenv", *mounts}
        changed = [line for line in pod_run.diff() if line.split(maxsplit=1)[-1] not in engine]
        assert changed == [], changed[:20]
    finally:
        pod_run.stop()
        pod_run.remove()
    result = parse_result(log.splitlines())
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
    assert json.loads(json.dumps(result))  # the XCom is plain JSON
