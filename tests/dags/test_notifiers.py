"""mlcd's notifiers as real Airflow callbacks in ``dag.test()``: templates rendered, delivered by Airflow's HTTP
hook or Slack's webhook notifier to a recording endpoint on 127.0.0.1, or logged without a Connection."""

from __future__ import annotations

import json
from typing import Any

import pendulum
import pytest

from tests.webhook import recording_server

pytestmark = pytest.mark.dags


def _dag(dag_id: str, conn_id: str) -> Any:
    from airflow.sdk import DAG, task

    from mlcd.airflow.notifiers import RollbackNotifier, RolloutNotifier

    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
             render_template_as_native_obj=True,
             on_failure_callback=RolloutNotifier(message="run {{ dag_run.run_id }} failed", conn_id=conn_id)) as dag:

        @task(on_success_callback=RollbackNotifier(
            message="version {{ ti.xcom_pull(task_ids='rollback')['version'] }} rolled back: "
                    "{{ ti.xcom_pull(task_ids='rollback')['reason'] }}", conn_id=conn_id))
        def rollback() -> dict:
            return {"version": "7", "reason": "class_distribution"}

        rollback()
    return _serialized(dag)


def _serialized(dag: Any) -> Any:
    """dag.test() needs the DAG in the metadata DB, as the dag-processor would have put it."""
    import tempfile

    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=tempfile.mkdtemp(prefix="mlcd-notify-dags-"))
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag


def test_rollback_callback_renders_and_posts_through_the_http_hook(airflow_db: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with recording_server() as hook:
        monkeypatch.setenv("AIRFLOW_CONN_MLCD_ALERTS_T1", json.dumps(
            {"conn_type": "http", "host": f"{hook.url}/hooks/mlcd", "password": "t0ken"}))
        run = _dag("notify_http", "mlcd_alerts_t1").test()
        posted = list(hook.requests)
    assert str(run.state) == "success"
    assert len(posted) == 1, posted
    assert posted[0]["path"] == "/hooks/mlcd" and posted[0]["headers"]["authorization"] == "Bearer t0ken"
    body = posted[0]["body"]
    assert body["text"] == "version 7 rolled back: class_distribution"  # rendered, not the template
    assert (body["source"], body["dag_id"], body["task_id"]) == ("mlcd", "notify_http", "rollback")
    assert body["run_id"] == run.run_id


def test_slack_webhook_connection_goes_through_slacks_notifier(airflow_db: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with recording_server() as slack:
        monkeypatch.setenv("AIRFLOW_CONN_MLCD_ALERTS_T2", json.dumps(
            {"conn_type": "slackwebhook", "password": f"{slack.url}/services/T0/B0/xyz"}))
        run = _dag("notify_slack", "mlcd_alerts_t2").test()
        posted = list(slack.requests)
    assert str(run.state) == "success"
    assert [(r["path"], r["body"]["text"]) for r in posted] == [
        ("/services/T0/B0/xyz", "version 7 rolled back: class_distribution")
    ]


def test_a_dead_webhook_never_fails_the_task(airflow_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The rollback it reports already happened: a lost alert is logged (ERROR), the task stays successful.
    from mlcd.mlflow_server import free_port

    monkeypatch.setenv("AIRFLOW_CONN_MLCD_ALERTS_T3", json.dumps(
        {"conn_type": "http", "host": f"http://127.0.0.1:{free_port()}/nobody"}))
    run = _dag("notify_dead", "mlcd_alerts_t3").test()
    assert str(run.state) == "success"
