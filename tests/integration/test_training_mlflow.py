"""Real training on a few hundred real MNIST images, logged to a real MLflow server, loaded back and used.

The trainer runs as the child process both backends use (``python -m mlcd.training``), once directly and
once through :class:`LocalTrainOperator`; failures are checked for the one readable line they promise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlcd.training.contract import ERROR_PREFIX, REQUIRED_RESULT_KEYS, parse_result, trainer_args, trainer_command

pytestmark = pytest.mark.integration

N_IMAGES = 500  # about 400 train / 50 val after the hash split
# One epoch of the reference CNN on ~400 real images reaches about 0.7 on the validation split (measured: see
# test_result_and_progress); 0.1 is chance. 0.4 is > 7 binomial standard deviations above chance at n≈50.
MIN_VAL_ACCURACY = 0.4


@pytest.fixture(scope="module")
def snapshot(reference_data: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mlcd.data.snapshot import write_arrays_snapshot

    x, y = reference_data.x_train[:N_IMAGES], reference_data.y_train[:N_IMAGES]
    return write_arrays_snapshot(x, y, tmp_path_factory.mktemp("snapshots"))


def _child_env(tracking: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


@pytest.fixture(scope="module")
def trained(mlflow_server: Any, snapshot: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 1-epoch run through the entrypoint, with the pod's xcom file redirected to a temp folder."""
    xcom = tmp_path_factory.mktemp("xcom") / "return.json"
    command = trainer_command(
        sys.executable,
        trainer_args(str(snapshot.path), epochs=1, batch_size=64, experiment="it-training", dag_run_id="manual__it"),
    )
    proc = subprocess.run(
        command,
        env=_child_env(mlflow_server.url, MLCD_XCOM_PATH=str(xcom)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout.splitlines()
    return {"result": parse_result(stdout), "stdout": stdout, "xcom": xcom}


def test_result_and_progress(trained: dict[str, Any], snapshot: Any, mlflow_server: Any) -> None:
    result = trained["result"]
    assert set(REQUIRED_RESULT_KEYS) <= set(result)
    assert result["model_uri"] == f"runs:/{result['run_id']}/model"
    assert result["snapshot_id"] == snapshot.snapshot_id
    assert result["snapshot_path"] == str(snapshot.path)
    assert result["epochs_run"] == 1
    assert result["tracking_uri"] == mlflow_server.url
    assert np.isfinite(result["val_loss"])
    # One epoch on ~400 images: chance is 0.10; a model that learned nothing (or a trainer that reports the
    # untrained weights) stays near it, so the floor sits far above chance and far below what the run reaches.
    assert result["val_accuracy"] >= MIN_VAL_ACCURACY, result["val_accuracy"]
    assert any(line.startswith("epoch 1/1") and "val_loss=" in line for line in trained["stdout"])
    assert trained["stdout"][-1].startswith("MLCD_TRAIN_RESULT ")  # the result is the last line
    assert json.loads(trained["xcom"].read_text()) == result  # what the KPO sidecar would push


def test_run_is_recorded_in_mlflow(trained: dict[str, Any], snapshot: Any, mlflow_server: Any) -> None:
    from mlflow.tracking import MlflowClient

    result = trained["result"]
    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == result["experiment_id"]
    params = run.data.params
    assert params["epochs"] == "1" and params["batch_size"] == "64" and params["seed"] == "0"
    assert params["snapshot_id"] == snapshot.snapshot_id
    assert params["mixed_precision"] == "False" and params["strategy"] == "_DefaultDistributionStrategy"
    assert params["model.learning_rate"] == "0.001"
    tags = run.data.tags
    assert tags["mlcd.dag_run_id"] == "manual__it"
    assert tags["mlcd.snapshot_id"] == snapshot.snapshot_id
    assert tags["mlcd.code_version"].startswith("0.")

    history = client.get_metric_history(result["run_id"], "val_loss")
    assert [m.step for m in history] == [1]  # one point per epoch
    metrics = run.data.metrics
    assert metrics["final_val_accuracy"] == pytest.approx(result["val_accuracy"])
    assert {f"val_recall_class_{k}" for k in range(10)} <= set(metrics)

    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"confusion_matrix.png", "per_class_metrics.json"} <= artifacts
    png = Path(client.download_artifacts(result["run_id"], "confusion_matrix.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_class = json.loads(Path(client.download_artifacts(result["run_id"], "per_class_metrics.json")).read_text())
    assert sum(map(sum, per_class["confusion_matrix"])) == snapshot.counts["val"]

    inputs = run.inputs.dataset_inputs
    digests = {(i.dataset.digest, t.value) for i in inputs for t in i.tags if t.key == "mlflow.data.context"}
    assert digests == {(snapshot.snapshot_id, "training"), (snapshot.snapshot_id, "validation")}


def test_logged_model_loads_and_predicts(trained: dict[str, Any], reference_data: Any, mlflow_server: Any) -> None:
    import mlflow
    import mlflow.pyfunc

    from mlcd.model_io import load_predictor

    result = trained["result"]
    predictor = load_predictor(result["model_uri"], tracking_uri=mlflow_server.url)
    x = reference_data.x_test[:32]
    logits = predictor.predict_logits(x)
    assert logits.shape == (32, 10) and logits.dtype == np.float32

    mlflow.set_tracking_uri(mlflow_server.url)
    info = mlflow.models.get_model_info(result["model_uri"])
    assert info.signature is not None and info.saved_input_example_info is not None
    served = np.asarray(mlflow.pyfunc.load_model(result["model_uri"]).predict(x.astype(np.float32)))
    np.testing.assert_allclose(served, logits, rtol=1e-4, atol=1e-4)


def test_logged_metrics_are_what_the_logged_model_scores(
    trained: dict[str, Any], snapshot: Any, mlflow_server: Any
) -> None:
    """Re-evaluate the logged model on the snapshot's validation split: accuracy, confusion matrix and recalls agree."""
    from mlflow.tracking import MlflowClient

    from mlcd.data.snapshot import load_split
    from mlcd.model_io import load_predictor

    result = trained["result"]
    x_val, y_val = load_split(snapshot.path, "val")
    predicted = load_predictor(result["model_uri"], tracking_uri=mlflow_server.url).predict_logits(x_val).argmax(axis=1)
    accuracy = float((predicted == y_val).mean())
    # Same weights, same images: at most one near-tie may flip between batchings.
    assert result["val_accuracy"] == pytest.approx(accuracy, abs=1.01 / len(y_val))
    assert accuracy >= MIN_VAL_ACCURACY

    client = MlflowClient(tracking_uri=mlflow_server.url)
    per_class = json.loads(Path(client.download_artifacts(result["run_id"], "per_class_metrics.json")).read_text())
    cm = np.asarray(per_class["confusion_matrix"])
    assert cm.sum() == len(y_val)
    assert np.trace(cm) / cm.sum() == pytest.approx(result["val_accuracy"])
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(y_val, minlength=10))  # rows are the true labels
    metrics = client.get_run(result["run_id"]).data.metrics
    for k in range(10):
        if cm[k].sum():
            assert metrics[f"val_recall_class_{k}"] == pytest.approx(cm[k, k] / cm[k].sum()), k


def test_unreadable_snapshot_fails_with_one_readable_line(snapshot: Any, tmp_path: Path, mlflow_server: Any) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(snapshot.path, broken)
    (broken / "train.npz").write_bytes(b"\x00garbage")
    proc = subprocess.run(
        trainer_command(sys.executable, trainer_args(str(broken), epochs=1)),
        env=_child_env(mlflow_server.url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(ERROR_PREFIX) and "train.npz" in last and "not an .npz archive" in last
    assert "Traceback" not in proc.stderr
    assert "MLCD_TRAIN_RESULT" not in proc.stdout


def test_local_operator_fails_with_the_trainers_message(tmp_path: Path, mlflow_server: Any) -> None:
    from airflow.sdk.exceptions import AirflowException

    from mlcd.airflow.training import make_train_task

    task = make_train_task(backend="local", snapshot=str(tmp_path / "no-such-snapshot"), epochs=1, batch_size=32)
    task.render_template_fields({"run_id": "manual__fail", "params": {}})  # type: ignore[arg-type]
    with pytest.raises(AirflowException) as err:
        task.execute({})  # type: ignore[arg-type]
    message = str(err.value)
    assert message.startswith("trainer failed (exit code 1): ")
    assert message.endswith(f"snapshot folder {tmp_path / 'no-such-snapshot'} does not exist (or is not a folder)")


def test_local_operator_trains_with_the_connection(
    snapshot: Any, mlflow_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local backend takes MLflow from the ``mlflow_default`` Connection and returns the trainer's XCom."""
    from mlflow.tracking import MlflowClient

    from mlcd.airflow.training import LocalTrainOperator, make_train_task

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the Connection must win over this
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "http", "host": mlflow_server.url}))
    task = make_train_task(
        backend="local", snapshot=str(snapshot.path), epochs=1, batch_size=64, max_train_samples=200, seed=1
    )
    assert isinstance(task, LocalTrainOperator)
    task.render_template_fields({"run_id": "manual__local", "params": {}})  # type: ignore[arg-type]
    assert "manual__local" in task.command()
    result = task.execute({})  # type: ignore[arg-type]
    assert result["tracking_uri"] == mlflow_server.url
    assert result["train_samples"] == 200
    run = MlflowClient(tracking_uri=mlflow_server.url).get_run(result["run_id"])
    assert run.data.tags["mlcd.dag_run_id"] == "manual__local"
    assert result["model_uri"] == f"runs:/{result['run_id']}/model"
