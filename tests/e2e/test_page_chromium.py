"""The operator's page in a real headless Chromium, against the real api-server of `make up`, after a rollout.

The platform runs on free loopback ports with its own MLCD_HOME. A demo-like rollout goes through its MLflow and
gateway: a champion, a canary walked through analysis windows under live traffic by the real canary logic, then
rolled back by the one rollback the guard uses. Chromium (Debian's, driven over the DevTools protocol by
docs/screenshot.py) opens /mlcd/ with an Airflow token: the page renders, the rollout chart carries one point per
recorded window and the rollback mark, and no script is loaded from anywhere. The screenshots land in docs/ when
``MLCD_UPDATE_SCREENSHOTS=1`` (else in a temporary folder).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from mlcd.mlflow_server import free_port

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed "
                                 "(apt-get install -y --no-install-recommends chromium; .ci/run does it)")]

REPO = Path(__file__).resolve().parents[2]
TOKEN = "page-test-token-0123456789"
FEEDBACK_TOKEN = "page-test-feedback-token-0123456789"
TRAIN_RUN = "manual__2026-11-29T09:00:00+00:00"  # the mlcd_retrain run that trained and rolled out the canary
GUARD_RUN = "asset_triggered__2026-11-29T09:01:00+00:00"


def _screenshot_module() -> Any:
    spec = importlib.util.spec_from_file_location("mlcd_docs_screenshot", REPO / "docs" / "screenshot.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from mlcd.platform import Ports, down, up
    from mlcd.settings import get_settings

    home = tmp_path_factory.mktemp("page-home")
    patched = pytest.MonkeyPatch()  # module scope: the function-scoped monkeypatch fixture is not available
    # The feedback token and the model signing key are set here so the platform's gateway and this process (its
    # traffic, the models it logs and trains) share them: the gateway refuses a version not signed with its key.
    for key, value in {"MLCD_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow"), "MLCD_ADMIN_TOKEN": TOKEN,
                       "MLCD_FEEDBACK_TOKEN": FEEDBACK_TOKEN,
                       "MLCD_MODEL_SIGNING_KEY": "page-test-model-signing-key-0123456789"}.items():
        patched.setenv(key, value)
    settings = get_settings()
    ports = Ports(airflow=free_port(), mlflow=free_port(), gateway=free_port())
    try:
        urls = up(settings, ports)
        patched.setenv("MLCD_GATEWAY_URL", urls["gateway"])
        patched.setenv("MLFLOW_TRACKING_URI", urls["mlflow"])
        yield {"settings": settings, "urls": urls, "home": home}
    finally:
        down(settings)
        patched.undo()


def _train_broken(urls: dict[str, str], reference: Any, folder: Path) -> dict[str, Any]:
    """The demo's broken model through the real trainer (``BlindModel``: it answers one class whatever the image), so
    its MLflow run carries what a retrain logs: per-epoch curves and the validation confusion matrix."""
    from mlcd.data.snapshot import write_arrays_snapshot
    from mlcd.training import train  # the entrypoint that seals the model, as every trainer run does

    snapshot = write_arrays_snapshot(reference.x_train[:1500], reference.y_train[:1500], folder)
    return train(snapshot.path, epochs=3, batch_size=128, tracking_uri=urls["mlflow"], dag_run_id=TRAIN_RUN,
                 model="mlcd.training.faulty:BlindModel", patience=5, progress=lambda _: None).to_dict()


def _demo_rollout(urls: dict[str, str], model: str, reference: Any, folder: Path) -> tuple[str, str, int]:
    """Champion healthy_a; a canary trained by the real trainer as the broken BlindModel and registered by the
    register task's code (forced past the gate, as the demo does), walked through up to two analysis windows under
    traffic with feedback labels, rolled back by its own analysis (the class-distribution check) or, if it is
    still running after two windows, by the guard.

    Returns the stable and canary versions and how many analysis windows were judged (each is one chart point).
    """
    from mlcd.registry import ModelRegistry
    from mlcd.registry.task import register_challenger
    from mlcd.rollout.actions import rollback
    from mlcd.rollout.canary import CanaryRollout, RolloutAborted
    from mlcd.rollout.router import LocalGatewayRouter
    from mlcd.rollout.spec import RolloutSpec
    from mlcd.serving.traffic import run_traffic
    from tests.modelkit import logged_models, register

    uris = logged_models(urls["mlflow"], reference.x_train[:2000], reference.y_train[:2000])
    stable = register(urls["mlflow"], model, uris["healthy_a"])
    registry = ModelRegistry(urls["mlflow"], model)
    registry.bootstrap_champion(stable, "tests", "first model")
    router = LocalGatewayRouter(urls["gateway"], TOKEN)
    router.set_routes(stable, None, 0)
    trained = _train_broken(urls, reference, folder)
    canary = register_challenger(
        trained, {"passed": True, "verdict": "forced", "forced": True, "reasons": ["forced past the gate (drill)"],
                  "champion_version": stable},
        tracking_uri=urls["mlflow"], model_name=model, actor="airflow:mlcd_retrain", dag_run_id=TRAIN_RUN)["version"]
    spec = RolloutSpec(steps=(25, 50, 100), analysis_window_s=2.0, min_requests=5, min_stable_requests=5,
                       max_p99_latency_ratio=20.0, p99_latency_slack_s=0.25)
    rollout = CanaryRollout(registry, router, spec, urls["gateway"], actor="airflow:mlcd_retrain",
                            dag_run_id=TRAIN_RUN)
    traffic = threading.Thread(target=run_traffic, args=(urls["gateway"], 40, 12),
                               kwargs={"images": reference.x_test[:300], "labels": reference.y_test[:300],
                                       "feedback": True})
    traffic.start()
    windows = 0
    try:
        time.sleep(0.5)
        p = rollout.start(canary, "tests")
        try:
            for _ in range(2):
                p = rollout.begin_step(p)
                time.sleep(spec.analysis_window_s)
                windows += 1  # judged and recorded, whatever the verdict
                p = rollout.finish_step(p).progress
        except RolloutAborted:
            pass  # the canary's own analysis rolled it back (recorded with its evidence)
        else:
            rollback(registry, router, canary, "guard: canary version predicted-class distribution shifted",
                     {"verdict": {"class_distribution": "p < 1e-9"}}, "airflow:mlcd_guard", GUARD_RUN)
    finally:
        traffic.join()
    assert registry.get_state(canary).state.value == "rolled_back"
    return stable, canary, windows


def test_page_shows_the_rollout_chart_in_chromium(platform: dict[str, Any], reference_data: Any,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from mlcd.overview import dag_runs, rollout_series
    from mlcd.registry import ModelRegistry

    shots = _screenshot_module()
    urls, model = platform["urls"], platform["settings"].model_name
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", urls["airflow"])  # what a register task on this platform sees
    stable, canary, windows = _demo_rollout(urls, model, reference_data, tmp_path / "snapshots")
    from mlcd.data.ledger import QUARANTINED, Ledger

    ledger = Ledger(platform["settings"].ledger_path)  # a quarantined batch, as turn 3 of the demo leaves one
    ledger.see("ab" * 32, "batch-inverted.npz", "landing/batch-inverted.npz", 1000)
    ledger.decide("ab" * 32, QUARANTINED, reason="images look blank or inverted")
    out = REPO / "docs" if os.environ.get("MLCD_UPDATE_SCREENSHOTS") == "1" else tmp_path
    token = shots.airflow_token(urls["airflow"], platform["home"])
    facts = shots.take(urls["airflow"], token, out)
    assert facts["status"] == 200 and facts["title"] == "mlcd"
    assert facts["first"] == f"v{canary}"  # the newest version first
    assert windows >= 1 and facts["charts"] >= 1 and facts["verdicts"] == windows  # one dot per window recorded
    assert facts["rollbacks"] == 1 and facts["scripts"] == 0

    # The status header comes first: the state, the canary's weight (none left: 0 %), drift and bake, as of now;
    # then what needs a person, the rollback and the quarantined batch, all within the first screen and above
    # the versions.
    assert facts["state"] in ("healthy", "degraded"), facts["state"]  # degraded only if the gateway saw drift
    assert facts["header"]["canary weight"] == "0%" and facts["header"]["step"] == "no canary"
    assert facts["header"]["drift"] and facts["header"]["bake"]
    assert any(f"version {canary} rolled back" in a for a in facts["attention"]), facts["attention"]
    assert any("batch-inverted.npz: images look blank or inverted" in a for a in facts["attention"])
    top = facts["top"]
    assert top["#status"] < top["#attention"] < top["#quarantine"] < top["section.version"], top
    assert top["#quarantine"] < 900, top  # in the first screen, not 2,700 px down

    # The chart's points are the recorded windows: error rate and p99 per variant, live accuracy where feedback
    # labels came back, and one class-mix bar segment per (window, variant, predicted class).
    history = [h for h in ModelRegistry(urls["mlflow"], model).history() if h["version"] == canary]
    points = rollout_series(history)["points"]
    with_accuracy = sum(p.get(f"{side}_accuracy") is not None for p in points for side in ("canary", "stable"))
    segments = sum(len(p.get(f"{side}_classes") or {}) for p in points for side in ("canary", "stable"))
    assert with_accuracy >= 1 and segments >= 2  # traffic with feedback reached both variants
    assert facts["accuracy"] == with_accuracy and facts["mix"] == segments
    assert facts["points"] == facts["verdicts"] * 5 + with_accuracy
    # The blind canary answers one class whatever the image; its live accuracy is below stable's.
    first = points[0]
    assert len(first["canary_classes"]) == 1 and len(first["stable_classes"]) >= 5
    if first.get("canary_accuracy") is not None and first.get("stable_accuracy") is not None:
        assert first["canary_accuracy"] < first["stable_accuracy"]

    # The confusion matrix is the training run's, cell by cell, and its curves have one point per epoch and key.
    client = MlflowClient(urls["mlflow"])
    mv = client.get_model_version(model, canary)
    logged = json.loads(Path(client.download_artifacts(mv.run_id, "per_class_metrics.json", str(tmp_path)))
                        .read_text())["confusion_matrix"]
    assert facts["confusion"] == 100
    assert facts["cells"] == [f"true {i}, predicted {j}: {logged[i][j]}" for i in range(10) for j in range(10)]
    epochs = len(client.get_metric_history(mv.run_id, "val_loss"))
    assert epochs >= 1 and facts["curves"] == 4 * epochs

    # Links: to MLflow's version and run, to each DAG run by role, and from MLflow's version back to the page.
    mlflow = urls["mlflow"].rstrip("/")
    assert f"{mlflow}/#/models/{model}/versions/{canary}" in facts["mlflow_links"]
    assert f"{mlflow}/#/runs/{mv.run_id}" in facts["mlflow_links"]
    expected = [(r["role"], f"/dags/{r['dag_id']}/runs/{quote(r['run_id'], safe='')}")
                for r in dag_runs(history, TRAIN_RUN)]
    assert [tuple(link) for link in facts["dag_links"]] == expected
    assert expected[0] == ("trained", f"/dags/mlcd_retrain/runs/{quote(TRAIN_RUN, safe='')}")
    assert ("rolled back", f"/dags/mlcd_retrain/runs/{quote(TRAIN_RUN, safe='')}") in expected or (
        "rolled back", f"/dags/mlcd_guard/runs/{quote(GUARD_RUN, safe='')}") in expected
    page_url = f"{urls['airflow']}/mlcd/#v{canary}"
    assert mv.tags["mlcd.page_url"] == page_url and f"({page_url})" in mv.description
    for name in ("mlcd-page.png", "mlcd-rollout.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
