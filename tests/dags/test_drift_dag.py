"""Input drift on a real gateway: the gauges on /metrics, and mlcd_drift_watch emitting the retrain Asset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlcd.guard.signals import read_drift, reference_cache_path
from tests.dags.test_asset_events import asset_events, queued_runs
from tests.modelkit import TOKEN, logged_models, register, rollout

pytestmark = pytest.mark.dags


def _send(url: str, images: np.ndarray) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(0, len(images), 100):
            r = client.post("/predict", json={"images": images[i:i + 100].tolist()})
            assert r.status_code == 200, r.text


def _clear_retrain_queue() -> None:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == "mlcd_retrain"))


def test_drift_gauges_and_the_drift_signal(dagbag, tracking_uri, mlcd_home, mlflow_server, reference_data,  # type: ignore[no-untyped-def]
                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uris: dict[str, Any] = logged_models(mlflow_server.url, reference_data.x_train[:2000],
                                         reference_data.y_train[:2000])
    with rollout(mlflow_server.url, uris, "drift-dag", "healthy_b", tmp_path, weight=0, drift=True) as ro:
        monkeypatch.setenv("MLCD_GATEWAY_URL", ro.url)
        monkeypatch.setenv("MLCD_ADMIN_TOKEN", TOKEN)
        monkeypatch.setenv("MLCD_MODEL_NAME", ro.model_name)  # the drift step reads what its retrain produced
        # The reference was fitted from the reference data (no snapshot recorded) and cached under MLCD_HOME.
        assert reference_cache_path(mlcd_home, None).exists()
        text = httpx.get(f"{ro.url}/metrics").text
        assert "mlcd_gateway_drift_drifted 0.0" in text and "mlcd_gateway_drift_images 0.0" in text

        x = reference_data.x_test[:600]
        _send(ro.url, x)
        calm = read_drift(ro.url)
        assert calm is not None and not calm.drifted and calm.n_images == 600
        assert calm.psi_mean_intensity is not None and calm.psi_mean_intensity < 0.1

        dag = dagbag.get_dag("mlcd_drift_watch")
        quiet = dag.test()
        assert {ti.task_id: str(ti.state) for ti in quiet.get_task_instances()} == {"check_drift": "skipped"}
        assert asset_events("mlcd_drift", quiet) == []  # no drift, no retrain
        _clear_retrain_queue()

        _send(ro.url, 255 - reference_data.x_test[600:1400])  # inverted digits: a different population
        drifted = read_drift(ro.url)
        assert drifted is not None and drifted.drifted and drifted.n_images == 1400
        assert drifted.psi_mean_intensity > 0.25 and drifted.anomaly_share > 0.05

        fired = dag.test()
        assert {ti.task_id: str(ti.state) for ti in fired.get_task_instances()} == {"check_drift": "success"}
        # drift → retrain: one mlcd_drift event from this run, and Airflow queued mlcd_retrain on it.
        events = asset_events("mlcd_drift", fired)
        assert [(e["dag_id"], e["task_id"]) for e in events] == [("mlcd_drift_watch", "check_drift")], events
        assert queued_runs("mlcd_drift", "mlcd_retrain") == 1
        again = dag.test()  # still drifted, but within the cooldown: no second retrain
        assert {ti.task_id: str(ti.state) for ti in again.get_task_instances()} == {"check_drift": "skipped"}
        assert asset_events("mlcd_drift", again) == []

        # The retrain it started registered a version and the gate rejected it (issue #23: faked drift then
        # muted genuine drift for 6 h): the cooldown is released, and the page can say why.
        from mlcd.guard.signals import CooldownHold, drift_cooldown_status

        status = drift_cooldown_status()
        assert status is not None and status["state"] == CooldownHold.RETRAINING and not status["signalled"]
        rejected = register(mlflow_server.url, ro.model_name, uris["broken"])
        ro.registry.reject(rejected, ["accuracy below the floor"], "tests")
        _clear_retrain_queue()
        released = dag.test()
        assert {ti.task_id: str(ti.state) for ti in released.get_task_instances()} == {"check_drift": "success"}
        assert queued_runs("mlcd_drift", "mlcd_retrain") == 1
        status = drift_cooldown_status()
        assert status is not None and status["state"] == CooldownHold.RELEASED and status["signalled"]
        assert f"version {rejected}" in status["reason"] and "rejected" in status["reason"]
        held = dag.test()  # the new signal holds while its own retrain is on its way
        assert {ti.task_id: str(ti.state) for ti in held.get_task_instances()} == {"check_drift": "skipped"}
