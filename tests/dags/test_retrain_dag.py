"""dag.test() of the whole mlcd_retrain on the embedded default, against real servers on 127.0.0.1.

One story in three runs on real MNIST, with the real gateway serving and `mlcd traffic` driving it:
1. a first batch → trained → gate by the floor alone → bootstrap champion, served by the gateway;
2. a second batch → retrained → gated against the champion → canary through the traffic steps → promoted;
3. a deliberately weak model (64 training images) → rejected with its verdict, the champion untouched.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlcd.mlflow_server import free_port
from tests.badbatches import good_bytes
from tests.dags.test_asset_events import asset_events, queued_runs

pytestmark = pytest.mark.dags

TOKEN = "retrain-dag-test-token-0123456789"
FEEDBACK_TOKEN = "retrain-dag-feedback-token-0123456789"
FAST_CANARY = {"steps": [50, 100], "analysis_window_s": 4, "min_requests": 15, "min_stable_requests": 15}
GATE = {"accuracy_floor": 0.8}


@pytest.fixture
def platform(mlflow_server: Any, mlcd_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from mlcd.serving.config import GatewayConfig
    from mlcd.serving.server import GatewayServer

    model = f"retrain-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLCD_MODEL_NAME", model)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLCD_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("MLCD_FEEDBACK_TOKEN", FEEDBACK_TOKEN)  # `mlcd traffic --feedback` sends it
    config = GatewayConfig(model_name=model, tracking_uri=mlflow_server.url, admin_token=TOKEN,
                           state_path=mlcd_home / "gateway-state.json", feedback_token=FEEDBACK_TOKEN)
    gateway = GatewayServer(config, free_port()).start()
    monkeypatch.setenv("MLCD_GATEWAY_URL", gateway.url)
    try:
        yield {"model": model, "gateway": gateway, "tracking_uri": mlflow_server.url, "home": mlcd_home}
    finally:
        gateway.stop()


def _states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _traffic(url: str, seconds: int) -> subprocess.Popen[bytes]:
    """`mlcd traffic` as a user runs it: bounded rate and duration, loopback only, with feedback labels."""
    return subprocess.Popen([sys.executable, "-m", "mlcd.cli.__main__", "traffic", "--url", url, "--rate", "25",
                             "--duration", str(seconds), "--feedback"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _served_version(url: str, images: Any) -> set[tuple[str, str]]:
    """(variant, version) of the answers to a few real /predict calls."""
    seen = set()
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(5):
            r = client.post("/predict", json={"images": [images[i].tolist()]})
            assert r.status_code == 200, r.text
            seen.add((r.json()["variant"], str(r.json()["version"])))
    return seen


def _clear_queue(dag_id: str) -> None:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id))


def test_retrain_bootstrap_canary_promote_and_reject(platform: dict[str, Any], dagbag: Any, reference_data: Any) -> None:
    from mlcd.registry import ModelRegistry

    registry = ModelRegistry(platform["tracking_uri"], platform["model"])
    landing = Path(platform["home"]) / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    x, y = reference_data.x_train, reference_data.y_train
    dag = dagbag.get_dag("mlcd_retrain")

    # 1. First batch: the first model is judged by the floor alone and becomes champion.
    (landing / "batch-1.npz").write_bytes(good_bytes(x[:3000], y[:3000]))
    first = dag.test(run_conf={"epochs": 2, "gate": GATE, "canary_spec": FAST_CANARY})
    assert str(first.state) == "success", _states(first)
    assert registry.get_alias_version("champion") == "1"
    assert registry.get_state("1").state.value == "champion"
    assert _served_version(platform["gateway"].url, reference_data.x_test) == {("stable", "1")}
    assert asset_events("mlcd_canary", first) == []  # a bootstrapped first champion starts no guard

    # 2. Second batch under live traffic: gated, canaried through 50 % and 100 %, promoted.
    (landing / "batch-2.npz").write_bytes(good_bytes(x[3000:6000], y[3000:6000]))
    _clear_queue("mlcd_guard")
    # Bounded, and stopped as soon as the run ends: long enough to cover training on a loaded machine.
    traffic = _traffic(platform["gateway"].url, 900)
    try:
        second = dag.test(run_conf={"epochs": 2, "gate": GATE, "canary_spec": FAST_CANARY})
    finally:
        traffic.terminate()
        traffic.wait(10)
    assert str(second.state) == "success", _states(second)
    assert registry.get_alias_version("champion") == "2"
    assert registry.get_alias_version("previous") == "1"
    assert registry.get_alias_version("canary") is None
    record = registry.get_state("2")
    events = [h.get("event") or h.get("to") for h in (e if isinstance(e, dict) else e.__dict__ for e in record.history)]
    assert sum(1 for e in events if e == "canary_step") >= 2, events
    # Gated against champion 1 and passed on its own merits: not an override.
    assert (record.tags.get("mlcd.verdict"), record.tags.get("mlcd.forced")) == ("pass", "false")
    assert record.tags.get("mlcd.champion_at_eval") == "1"
    # The gateway now answers from the promoted version, with the previous champion kept on the holdback share
    # as the bake's concurrent control (mlcd_guard releases it when the bake ends; no guard runs here).
    health = httpx.get(f"{platform['gateway'].url}/healthz").json()
    assert (health["stable"], health["canary"]) == ("2", None), health
    assert (health["holdback"], health["holdback_weight"]) == ("1", 5), health
    served = _served_version(platform["gateway"].url, reference_data.x_test)
    assert ("stable", "2") in served and served <= {("stable", "2"), ("holdback", "1")}, served
    # register → guard: the canary registration emitted the mlcd_canary Asset once, which queued mlcd_guard.
    events = asset_events("mlcd_canary", second)
    assert [(e["dag_id"], e["task_id"]) for e in events] == [("mlcd_retrain", "announce_canary")], events
    assert queued_runs("mlcd_canary", "mlcd_guard") == 1

    # 3. A weak model: rejected with the verdict as the reason, the champion untouched.
    third = dag.test(run_conf={"epochs": 1, "max_train_samples": 64, "gate": GATE, "canary_spec": FAST_CANARY})
    states = _states(third)
    # A gate rejection is a correct refusal (mlcd.airflow.refusals): not a red run; the rollout is skipped.
    assert str(third.state) == "success" and states["register"] == "skipped", states
    assert states["canary"] == "skipped" and states["announce_canary"] == "skipped", states
    assert registry.get_alias_version("champion") == "2"
    assert registry.get_state("3").state.value == "rejected"
    assert registry.get_state("3").tags.get("mlcd.verdict") == "fail"
    assert asset_events("mlcd_canary", third) == []  # a rejected version starts no guard
    served = _served_version(platform["gateway"].url, reference_data.x_test)
    assert ("stable", "2") in served and served <= {("stable", "2"), ("holdback", "1")}, served
