"""The Asset events that chain the DAGs, read back from Airflow's metadata DB after a real ``dag.test()``.

landing → retrain: ``mlcd_landing_watch`` emits ``mlcd_landing_zone`` and Airflow queues ``mlcd_retrain`` on it.
register → guard (``announce_canary`` emits ``mlcd_canary`` for a canary, not for a bootstrapped first champion) and
drift → retrain are asserted inside their stories (tests/dags/test_retrain_dag.py and
tests/dags/test_drift_dag.py) with :func:`asset_events` from here, because only those runs register a canary or
see drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlcd.settings import get_settings
from tests.badbatches import good_bytes

pytestmark = pytest.mark.dags


def asset_events(asset_name: str, run: Any | None = None) -> list[dict[str, Any]]:
    """Every AssetEvent row of one Asset (optionally only those emitted by one DAG run), oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).where(
        AssetModel.name == asset_name
    )
    if run is not None:
        query = query.where(AssetEvent.source_dag_id == run.dag_id, AssetEvent.source_run_id == run.run_id)
    with create_session() as session:
        return [
            {"asset_id": e.asset_id, "dag_id": e.source_dag_id, "task_id": e.source_task_id,
             "run_id": e.source_run_id, "extra": dict(e.extra or {})}
            for e in session.scalars(query.order_by(AssetEvent.id))
        ]


def queued_runs(asset_name: str, dag_id: str) -> int:
    """How many AssetDagRunQueue rows wait to start ``dag_id`` because of ``asset_name``."""
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return int(session.scalar(
            select(func.count()).select_from(AssetDagRunQueue)
            .join(AssetModel, AssetDagRunQueue.asset_id == AssetModel.id)
            .where(AssetModel.name == asset_name, AssetDagRunQueue.target_dag_id == dag_id)
        ) or 0)


def test_the_assets_chain_the_dags(dagbag: Any) -> None:
    """Who emits and who listens, as declared: the names the event tests below look up are the wired ones."""
    from mlcd.airflow.steps import CANARY_ASSET, DRIFT_ASSET, LANDING_ASSET

    def outlets(dag_id: str, task_id: str) -> set[str]:
        return {a.name for a in dagbag.get_dag(dag_id).get_task(task_id).outlets}

    def scheduled_on(dag_id: str) -> set[str]:
        return {a.name for a in dagbag.get_dag(dag_id).timetable.asset_condition.objects}

    assert outlets("mlcd_landing_watch", "wait_for_batch") == {LANDING_ASSET.name}
    assert outlets("mlcd_retrain", "announce_canary") == {CANARY_ASSET.name}
    assert outlets("mlcd_drift_watch", "check_drift") == {DRIFT_ASSET.name}
    assert {LANDING_ASSET.name, DRIFT_ASSET.name} <= scheduled_on("mlcd_retrain")
    assert scheduled_on("mlcd_guard") == {CANARY_ASSET.name}


def test_a_landed_batch_emits_the_landing_asset_and_queues_retrain(dagbag, mlcd_home, reference_data) -> None:  # type: ignore[no-untyped-def]
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    from mlcd.airflow.steps import LANDING_ASSET

    with create_session() as session:  # a run queued by an earlier test would hide ours (one row per asset and DAG)
        session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == "mlcd_retrain"))
    before = len(asset_events(LANDING_ASSET.name))
    landing = Path(get_settings().landing_uri)
    landing.mkdir(parents=True)
    (landing / "b1.npz").write_bytes(good_bytes(reference_data.x_train[:300], reference_data.y_train[:300]))

    run = dagbag.get_dag("mlcd_landing_watch").test()
    assert str(run.state) == "success"
    events = asset_events(LANDING_ASSET.name, run)
    assert [(e["dag_id"], e["task_id"]) for e in events] == [("mlcd_landing_watch", "wait_for_batch")]
    assert len(asset_events(LANDING_ASSET.name)) == before + 1  # one event, from this run only
    # The event is what starts mlcd_retrain: Airflow queued a run of it on this Asset.
    assert queued_runs(LANDING_ASSET.name, "mlcd_retrain") == 1
