"""The page's per-version detail against a real MLflow server: the run's own confusion matrix and epoch curves,
the DAG run that trained it, and the link back from MLflow's version page to the mlcd page."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def _train(client: Any, experiment: str, cm: list[list[int]], epochs: int) -> str:
    """A run logged as the trainer logs one: per-epoch metrics (step = epoch) and per_class_metrics.json."""
    run = client.create_run(experiment)
    run_id = str(run.info.run_id)
    for epoch in range(1, epochs + 1):
        for key, value in {"loss": 1.0 / epoch, "val_loss": 1.1 / epoch, "accuracy": 1 - 0.3 / epoch,
                           "val_accuracy": 1 - 0.35 / epoch}.items():
            client.log_metric(run_id, key, value, step=epoch)
    client.log_dict(run_id, {"confusion_matrix": cm, "per_class": {}}, "per_class_metrics.json")
    client.set_terminated(run_id)
    return run_id


def _evaluation(champion: str | None) -> dict[str, Any]:
    return {"passed": True, "verdict": "pass", "reasons": ["ok"], "summary": "gate pass",
            "metrics": {"challenger": {"accuracy": 0.9, "n": 10}}, "p_value": 0.01, "b": 1, "c": 2,
            "champion_version": champion}


def test_detail_shows_the_runs_matrix_and_curves_and_links_both_ways(
        tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from mlcd.overview import _detail_html, version_details
    from mlcd.registry import ModelRegistry
    from mlcd.registry.task import register_challenger

    client = MlflowClient(tracking_uri)
    experiment = str(client.create_experiment(f"page-{uuid.uuid4().hex[:8]}"))
    name = f"page-{uuid.uuid4().hex[:8]}"
    # An uneven matrix: every cell differs, so a transposed or shifted drawing is caught.
    cm = [[100 * i + j + (50 if i == j else 0) for j in range(10)] for i in range(10)]
    run_id = _train(client, experiment, cm, epochs=3)
    monkeypatch.setenv("MLCD_PAGE_URL", "http://airflow.example:8080/mlcd")
    first = register_challenger({"run_id": run_id, "model_uri": f"runs:/{run_id}/model", "snapshot_path": "/s/a"},
                                _evaluation(None), tracking_uri=tracking_uri, model_name=name,
                                actor="airflow:mlcd_retrain", dag_run_id="scheduled__2026-11-29T03:00:00+00:00")
    version = first["version"]

    # MLflow -> page: a tag and a Markdown link in the version's description.
    mv = client.get_model_version(name, version)
    assert mv.tags["mlcd.page_url"] == f"http://airflow.example:8080/mlcd/#v{version}"
    assert f"](http://airflow.example:8080/mlcd/#v{version})" in mv.description

    # A description a person wrote is kept on a re-run (only mlcd's own is rewritten).
    client.update_model_version(name, version, "hand-written notes")
    register_challenger({"run_id": run_id, "model_uri": f"runs:/{run_id}/model", "snapshot_path": "/s/a"},
                        _evaluation(None), tracking_uri=tracking_uri, model_name=name, actor="airflow:mlcd_retrain",
                        dag_run_id="scheduled__2026-11-29T03:00:00+00:00")
    assert client.get_model_version(name, version).description == "hand-written notes"

    registry = ModelRegistry(tracking_uri, name)
    details = version_details(tracking_uri, registry.status()["versions"], registry.history(), model_name=name)
    d = details[0]
    assert d["confusion"] == cm
    assert d["curves"]["val_loss"] == [(e, pytest.approx(1.1 / e)) for e in (1, 2, 3)]
    assert d["dag_runs"][0] == {"role": "trained", "dag_id": "mlcd_retrain",
                                "run_id": "scheduled__2026-11-29T03:00:00+00:00", "by": "airflow:mlcd_retrain"}

    # Page -> MLflow and -> Airflow, and the drawn matrix is the run's, cell by cell.
    page = _detail_html(d, name, tracking_uri)
    assert f"{tracking_uri}/#/models/{name}/versions/{version}" in page and f"{tracking_uri}/#/runs/{run_id}" in page
    assert "/dags/mlcd_retrain/runs/scheduled__2026-11-29T03%3A00%3A00%2B00%3A00" in page
    cells = {(int(i), int(j)): int(v) for i, j, v in re.findall(r"true (\d), predicted (\d): (\d+)", page)}
    assert cells == {(i, j): cm[i][j] for i in range(10) for j in range(10)}


def test_no_page_url_writes_nothing(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from mlcd.registry import ModelRegistry
    from mlcd.registry.task import link_page

    monkeypatch.delenv("MLCD_PAGE_URL", raising=False)
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    client = MlflowClient(tracking_uri)
    run_id = _train(client, str(client.create_experiment(f"page-{uuid.uuid4().hex[:8]}")), [[1]], epochs=1)
    registry = ModelRegistry(tracking_uri, f"page-{uuid.uuid4().hex[:8]}")
    version = registry.register_run_model(run_id, f"runs:/{run_id}/model")
    assert link_page(registry, version) is None
    assert "mlcd.page_url" not in client.get_model_version(registry.model_name, version).tags
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080/")
    assert link_page(registry, version) == f"http://127.0.0.1:8080/mlcd/#v{version}"
