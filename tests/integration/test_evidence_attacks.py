"""Issue #23's steering attacks, replayed through a real gateway on 127.0.0.1 into the real guard engine.

The gateway serves two real nearest-centroid classifiers fitted on MNIST (and a one-class model that answers 3);
genuine clients send real test digits at random; an attacker sends chosen inputs to the version it picks
(``/v2/models/{m}/versions/{v}/infer``) or through a sticky ``client_id`` it found on the canary. The guard reads
the gateway's own ``/metrics`` (the real provider) and decides with the real :class:`Analysis`. Before #23 the
attacker rolled back a healthy canary and saved a one-class one; now its requests are served and recorded in
``mlcd_gateway_unrandomised_*`` but are not evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlcd.guard.watch import Decision, Guard, GuardConfig
from mlcd.serving.config import GatewayConfig

pytestmark = pytest.mark.integration

MODEL = "evidence-attack"
POLLS = 12
GENUINE_PER_POLL = 120  # single-image requests, routed by the gateway at random


def centroid_model(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A real (if plain) digit classifier: softmax over negative distances to each class's mean image."""
    centroids = np.stack([x[y == k].reshape(-1, 784).mean(axis=0) for k in range(10)]).astype(np.float32)

    def predict(batch: np.ndarray) -> np.ndarray:
        d = ((batch.reshape(len(batch), 784)[:, None, :] - centroids[None]) ** 2).sum(axis=2) / 1e5
        e = np.exp(-(d - d.min(axis=1, keepdims=True)))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    return predict


def one_class(batch: np.ndarray) -> np.ndarray:
    return np.tile(np.eye(10, dtype=np.float32)[3], (len(batch), 1))


@pytest.fixture(scope="module")
def models(reference_data: Any) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    x, y = np.asarray(reference_data.x_train), np.asarray(reference_data.y_train)
    half = len(x) // 2
    return {"1": centroid_model(x[:half], y[:half]), "2": centroid_model(x[half:], y[half:]), "3": one_class}


def config(tmp_path: Path, **kw: Any) -> GatewayConfig:
    """A gateway whose saved routes serve version 1 (no registry is asked: the models come from ``loader``)."""
    from mlcd.serving.state import RouteState, save_state

    save_state(tmp_path / "state.json", RouteState("1", None, 0))
    return GatewayConfig(model_name=MODEL, tracking_uri="http://127.0.0.1:9", admin_token="admin-tok",
                         state_path=tmp_path / "state.json", **kw)


@pytest.fixture()
def gateway(models: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    from mlcd.mlflow_server import free_port
    from mlcd.serving.server import GatewayServer

    server = GatewayServer(config(tmp_path), free_port(), loader=lambda v: models[v]).start()
    try:
        yield server
    finally:
        server.stop()


def set_routes(url: str, stable: str, canary: str, weight: int) -> None:
    r = httpx.post(f"{url}/admin/routes", json={"stable": stable, "canary": canary, "canary_weight": weight},
                   headers={"Authorization": "Bearer admin-tok"})
    assert r.status_code == 200, r.text


def infer(client: httpx.Client, images: np.ndarray, version: str | None = None,
          client_id: str | None = None) -> dict[str, Any]:
    path = f"/v2/models/{MODEL}/versions/{version}/infer" if version else f"/v2/models/{MODEL}/infer"
    body: dict[str, Any] = {"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8",
                                        "data": images.astype(int).ravel().tolist()}]}
    if client_id:
        body["parameters"] = {"client_id": client_id}
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def canary_client_id(client: httpx.Client, probe: np.ndarray) -> str:
    """What the attacker does: try ids until the gateway says one is served by the canary."""
    for i in range(2000):
        cid = f"attacker-{i}"
        if infer(client, probe, client_id=cid)["parameters"].get("variant") == "canary":
            return cid
    raise AssertionError("no client id lands on the canary")


def watch(url: str, client: httpx.Client, digits: np.ndarray, attack: Callable[[], None],
          seed: int = 0) -> Decision:
    """Genuine random traffic plus the attack, one guard poll after each round; the guard's last decision."""
    rng = np.random.default_rng(seed)
    clock = [1000.0]
    guard = Guard(GuardConfig(url, poll_interval_s=2.0), clock=lambda: clock[0])
    result = guard.poll()
    for _ in range(POLLS):
        for i in rng.integers(len(digits), size=GENUINE_PER_POLL):
            infer(client, digits[i:i + 1])
        attack()
        clock[0] += 2.0
        result = guard.poll(result.state)
        if result.decision is not Decision.WATCH:
            break
    return result.decision


def test_chosen_inputs_sent_to_the_canary_do_not_roll_back_a_healthy_canary(gateway: Any,
                                                                           reference_data: Any) -> None:
    url, digits = gateway.url, np.asarray(reference_data.x_test[:2000])
    black = np.zeros((1, 28, 28), dtype=np.uint8)
    set_routes(url, "1", "2", 10)
    with httpx.Client(base_url=url, timeout=30) as client:
        sticky = canary_client_id(client, black)

        def attack() -> None:  # ~1 black image per 4 genuine ones, all to the canary, by both ways
            for _ in range(15):
                infer(client, black, version="2")
                infer(client, black, client_id=sticky)

        decision = watch(url, client, digits, attack)
        metrics = client.get("/metrics").text
    assert decision is not Decision.BREACH, "the attacker's inputs to the canary were counted as evidence"
    pinned = 'mlcd_gateway_unrandomised_requests_total{reason="pinned",variant="canary",version="2"}'
    assert f"{pinned} {POLLS * 15}.0" in metrics, "pinned requests are served and recorded apart"
    assert 'reason="sticky",variant="canary",version="2"}' in metrics


def test_chosen_inputs_sent_to_stable_do_not_save_a_one_class_canary(gateway: Any, reference_data: Any,
                                                                     models: dict[str, Any]) -> None:
    url, digits = gateway.url, np.asarray(reference_data.x_test[:2000])
    x = np.asarray(reference_data.x_test[2000:4000]).astype(np.float32)
    threes = x[models["1"](x).argmax(axis=1) == 3][:64]  # the attacker picks what stable answers 3 to
    set_routes(url, "1", "3", 10)
    with httpx.Client(base_url=url, timeout=30) as client:
        def attack() -> None:  # stable's class mix made to look like the one-class canary's
            for _ in range(16):
                infer(client, threes, version="1")

        decision = watch(url, client, digits, attack)
    assert decision is Decision.BREACH, "the attacker's inputs to stable hid a one-class canary"


def test_healthz_and_v2_metadata_hide_the_served_versions(models: dict[str, Any], tmp_path: Path) -> None:
    from mlcd.mlflow_server import free_port
    from mlcd.serving.server import GatewayServer

    hidden = config(tmp_path, expose_variant=False, metrics_token="metrics-tok")
    with GatewayServer(hidden, free_port(), loader=lambda v: models[v]) as server:
        set_routes(server.url, "1", "2", 10)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            health = client.get("/healthz")
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            meta = client.get(f"/v2/models/{MODEL}")
            assert meta.status_code == 200 and meta.json()["versions"] == []
            for path in (f"/v2/models/{MODEL}/versions/2", f"/v2/models/{MODEL}/versions/2/ready",
                         f"/v2/models/{MODEL}/versions/9/ready"):
                r = client.get(path)  # served or not: the same answer, so no probe tells them apart
                assert r.status_code == 404 and "disabled" in r.json()["error"], path
            answer = infer(client, np.zeros((1, 28, 28), dtype=np.uint8))
            assert "model_version" not in answer and set(answer["parameters"]) == {"prediction_ids"}
            assert client.get("/metrics").status_code == 401
            for token in ("metrics-tok", "admin-tok"):
                r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200 and 'version="2"' in r.text
        # The metrics readers (canary task, guard, drift watch) send the token from settings and still see all.
        from mlcd.guard.signals import read_drift
        from mlcd.rollout.providers import GatewayMetrics, MetricsUnavailable

        assert GatewayMetrics(server.url, token="metrics-tok").scrape().served == {"stable": "1", "canary": "2"}
        with pytest.raises(MetricsUnavailable, match="401"):
            GatewayMetrics(server.url).scrape()
        assert read_drift(server.url, token="admin-tok") is not None
