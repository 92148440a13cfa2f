"""dag.test() of mlcd_guard (a broken canary is rolled back; a healthy one is not) and of mlcd_control.

Real MLflow server, real gateway on 127.0.0.1, bounded live traffic in a background thread; the guard gets
short poll intervals, grace and bake periods through the DAG's params so each run stays well under a minute.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlcd.registry.state import RolloutState
from mlcd.rollout.router import RouteStatus
from tests.modelkit import TOKEN, logged_models, rollout, traffic

pytestmark = pytest.mark.dags

FAST = {"poll_interval_s": 1.0, "grace_s": 20.0, "bake_s": 4.0}


def _states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


@pytest.fixture(scope="module")
def uris(mlflow_server: Any, reference_data: Any) -> dict[str, str]:
    return logged_models(mlflow_server.url, reference_data.x_train[:2000], reference_data.y_train[:2000])


@pytest.fixture(scope="module")
def images(reference_data: Any) -> np.ndarray:
    return reference_data.x_test[:500]


@pytest.fixture
def env(tracking_uri: str, mlcd_home: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("MLCD_ADMIN_TOKEN", TOKEN)
    monkeypatch.delenv("AIRFLOW_CONN_MLCD_ALERTS", raising=False)
    return monkeypatch


def _serve(env: pytest.MonkeyPatch, ro: Any) -> None:
    env.setenv("MLCD_MODEL_NAME", ro.model_name)
    env.setenv("MLCD_GATEWAY_URL", ro.url)


def test_guard_dag_rolls_a_broken_canary_back(dagbag, env, mlflow_server, uris, images, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with rollout(mlflow_server.url, uris, "dag-broken", "broken", tmp_path, weight=50) as ro:
        _serve(env, ro)
        with traffic(ro.url, images, rate=40, max_s=60):
            run = dagbag.get_dag("mlcd_guard").test(run_conf=FAST)
        assert str(run.state) == "success"
        assert _states(run) == {"watch": "success", "breached": "success", "rollback": "success"}
        assert ro.router.get_routes() == RouteStatus(ro.stable, None, 0)
        record = ro.registry.get_state(ro.canary)
        assert record.state is RolloutState.ROLLED_BACK
        assert record.tags["mlcd.rollback_reason"].startswith("guard: canary version")
        assert "class_distribution" in record.tags["mlcd.rollback_evidence"]
        assert record.transitions()[-1]["dag_run"] == run.run_id
        assert ro.registry.aliases() == {"champion": ro.stable}


def test_guard_dag_leaves_a_healthy_canary_alone(dagbag, env, mlflow_server, uris, images, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with rollout(mlflow_server.url, uris, "dag-healthy", "healthy_b", tmp_path, weight=50) as ro:
        _serve(env, ro)

        def canary_task() -> None:
            # What mlcd_retrain's canary task does when its steps pass: promote, then serve the new champion.
            time.sleep(10)
            ro.registry.promote(ro.canary, "tests", "canary passed")
            ro.router.set_routes(ro.canary, None, 0)

        promoter = threading.Thread(target=canary_task)
        with traffic(ro.url, images, rate=40, max_s=60):
            promoter.start()
            run = dagbag.get_dag("mlcd_guard").test(run_conf=FAST)
            promoter.join()
        assert str(run.state) == "success"
        states = _states(run)
        assert states["watch"] == "success" and states["breached"] == "success"
        assert states["rollback"] == "skipped"
        decision = next(ti for ti in run.get_task_instances() if ti.task_id == "watch").xcom_pull(task_ids="watch")
        assert decision["decision"] == "healthy" and decision["reason"].startswith("bake_complete")
        assert ro.registry.get_state(ro.canary).state is RolloutState.CHAMPION
        assert ro.router.get_routes() == RouteStatus(ro.canary, None, 0)


def test_control_dag_rolls_back_by_hand(dagbag, env, mlflow_server, uris, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with rollout(mlflow_server.url, uris, "dag-control", "healthy_b", tmp_path, weight=25) as ro:
        _serve(env, ro)
        dag = dagbag.get_dag("mlcd_control")
        # The form's defaults: a dry run of a pause; nothing is recorded.
        assert {k: dag.params[k] for k in ("action", "dry_run")} == {"action": "pause", "dry_run": True}
        run = dag.test(run_conf={"action": "rollback", "version": ro.canary, "reason": "just looking"})
        assert str(run.state) == "success"
        assert ro.router.get_routes() == RouteStatus(ro.stable, ro.canary, 25)
        assert ro.registry.get_state(ro.canary).state is RolloutState.CANARY
        run = dag.test(run_conf={"action": "pause", "version": None, "reason": "investigating latency",
                                 "dry_run": False})
        assert str(run.state) == "success"
        assert ro.registry.get_state(ro.canary).last_event("paused")["by"].startswith("airflow-ui")
        run = dag.test(run_conf={"action": "rollback", "version": ro.canary, "reason": "on-call says no",
                                 "dry_run": False})
        assert str(run.state) == "success"
        assert ro.router.get_routes() == RouteStatus(ro.stable, None, 0)
        record = ro.registry.get_state(ro.canary)
        last = record.transitions()[-1]
        assert record.state is RolloutState.ROLLED_BACK and last["why"] == "manual: on-call says no"
        assert last["by"].startswith("airflow-ui") and last["dag_run"] == run.run_id
