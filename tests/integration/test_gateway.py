"""The gateway on a real 127.0.0.1 port with real Keras models from the real MLflow server.

Three tiny models are logged once for the module: two that keep the model contract (version 1 and 2) and one
whose predictions fail on contract input (version 3: it expects 784 flat features), the "canary raises" case.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlcd.mlflow_server import free_port
from mlcd.rollout.canary import CanaryRollout, RolloutAborted, run_rollout
from mlcd.rollout.metrics import fetch_metrics
from mlcd.rollout.providers import fetch_scrape
from mlcd.rollout.router import LocalGatewayRouter, RouteStatus
from mlcd.rollout.spec import RolloutSpec
from mlcd.serving.config import GatewayConfig
from mlcd.serving.server import GatewayServer
from mlcd.serving.traffic import require_loopback, run_traffic

pytestmark = pytest.mark.integration

MODEL = "gw-test-mnist"
TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEEDBACK_TOKEN = "test-feedback-token-0123456789"
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}


def _log_models(tracking_uri: str, x: np.ndarray, y: np.ndarray) -> list[str]:
    """Versions 1 and 2: the shared healthy models (tests/modelkit.py); version 3: a model that fails on contract
    input (it expects 784 flat features), the "canary raises" case."""
    import mlflow
    import tensorflow as tf

    from mlcd.registry import ModelRegistry
    from mlcd.training.tracking import seal_model
    from tests.modelkit import logged_models, register

    shared = logged_models(tracking_uri, x, y)
    out = [register(tracking_uri, MODEL, shared["healthy_a"]), register(tracking_uri, MODEL, shared["healthy_b"])]
    broken = tf.keras.Sequential([tf.keras.Input((784,)), tf.keras.layers.Dense(10)])
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("gateway-tests")
    with mlflow.start_run() as run:
        # Explicit requirements skip MLflow's import-capturing subprocess (seconds per model).
        info = mlflow.tensorflow.log_model(broken, name="model", pip_requirements=["tensorflow-cpu"])
    seal_model(info.model_uri, tracking_uri)  # as the trainer does: the gateway refuses an unsealed model
    out.append(ModelRegistry(tracking_uri, MODEL).register_run_model(run.info.run_id, info.model_uri))
    return out


@pytest.fixture(scope="module")
def versions(mlflow_server: Any, reference_data: Any) -> list[str]:
    from mlflow import MlflowClient

    from mlcd.registry import ModelRegistry

    v = _log_models(mlflow_server.url, reference_data.x_train[:2000], reference_data.y_train[:2000])
    assert v == ["1", "2", "3"]
    ModelRegistry(mlflow_server.url, MODEL).bootstrap_champion("1", "tests")
    MlflowClient(mlflow_server.url, mlflow_server.url).set_registered_model_alias(MODEL, "canary", "2")
    return v


def _config(tracking_uri: str, state: Path, token: str | None = TOKEN, model: str = MODEL) -> GatewayConfig:
    return GatewayConfig(model_name=model, tracking_uri=tracking_uri, admin_token=token, state_path=state,
                         feedback_token=FEEDBACK_TOKEN)


@pytest.fixture(scope="module")
def state_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway") / "state.json"


@pytest.fixture(scope="module")
def gateway(versions: list[str], mlflow_server: Any, state_path: Path) -> Iterator[GatewayServer]:
    server = GatewayServer(_config(mlflow_server.url, state_path), free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def images(reference_data: Any) -> np.ndarray:
    return reference_data.x_test[:200]


def admin(gw: GatewayServer, stable: str | None, canary: str | None, weight: int) -> dict[str, Any]:
    r = httpx.post(f"{gw.url}/admin/routes", json={"stable": stable, "canary": canary, "canary_weight": weight},
                   headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    return dict(r.json())


def predict_many(url: str, images: np.ndarray, n: int, client_ids: list[str] | None = None,
                 workers: int = 8) -> list[httpx.Response]:
    with httpx.Client(base_url=url, timeout=30) as client:
        def one(i: int) -> httpx.Response:
            body: dict[str, Any] = {"images": [images[i % len(images)].tolist()]}
            if client_ids:
                body["client_id"] = client_ids[i % len(client_ids)]
            return client.post("/predict", json=body)

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, range(n)))


def test_starts_from_the_registry_aliases_with_the_new_canary_at_zero(gateway: GatewayServer) -> None:
    health = httpx.get(f"{gateway.url}/healthz").json()
    assert (health["status"], health["stable"], health["canary"], health["canary_weight"]) == ("ok", "1", "2", 0)
    r = httpx.post(f"{gateway.url}/predict", json={"images": [np.zeros((28, 28), int).tolist()] * 3})
    body = r.json()
    assert r.status_code == 200 and body["version"] == "1" and body["variant"] == "stable"
    assert len(body["predictions"]) == 3
    p = body["predictions"][0]
    assert 0 <= p["class"] <= 9 and len(p["probabilities"]) == 10 and abs(sum(p["probabilities"]) - 1) < 1e-4
    assert len({q["prediction_id"] for q in body["predictions"]}) == 3


def test_predictions_are_real_and_feedback_feeds_live_accuracy(gateway: GatewayServer, reference_data: Any) -> None:
    admin(gateway, "1", None, 0)
    x, y = reference_data.x_test[:100], reference_data.y_test[:100]
    r = httpx.post(f"{gateway.url}/predict", json={"images": x.tolist()}).json()
    correct = 0
    for pred, label in zip(r["predictions"], y.tolist(), strict=True):
        fb = httpx.post(f"{gateway.url}/feedback", json={"prediction_id": pred["prediction_id"], "label": label},
                        headers=FEEDBACK)
        assert fb.status_code == 200
        correct += fb.json()["correct"]
    assert correct / 100 > 0.6  # a linear model on 600 real images: far above chance
    again = httpx.post(f"{gateway.url}/feedback", json={"prediction_id": r["predictions"][0]["prediction_id"], "label": 1},
                       headers=FEEDBACK)
    assert again.status_code == 409  # a replayed id: a label is taken once
    text = httpx.get(f"{gateway.url}/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith('mlcd_gateway_live_accuracy{variant="stable",version="1"}'))
    assert float(line.split()[-1]) == pytest.approx(correct / 100)


def test_routing_proportions_are_within_binomial_bounds(gateway: GatewayServer, images: np.ndarray) -> None:
    n, w = 600, 30
    admin(gateway, "1", "2", w)
    responses = predict_many(gateway.url, images, n)
    assert all(r.status_code == 200 for r in responses)
    canary = sum(r.json()["variant"] == "canary" for r in responses)
    assert all(r.json()["version"] == ("2" if r.json()["variant"] == "canary" else "1") for r in responses)
    mean, sd = n * w / 100, math.sqrt(n * w / 100 * (1 - w / 100))
    assert abs(canary - mean) < 4.5 * sd, f"{canary} canary answers of {n} at {w}%"
    admin(gateway, "1", "2", 0)
    assert {r.json()["variant"] for r in predict_many(gateway.url, images, 50)} == {"stable"}
    admin(gateway, "1", "2", 100)
    assert {r.json()["variant"] for r in predict_many(gateway.url, images, 50)} == {"canary"}


def test_sticky_routing_keeps_each_client_on_one_variant(gateway: GatewayServer, images: np.ndarray) -> None:
    admin(gateway, "1", "2", 50)
    clients = [f"user-{i}" for i in range(40)]
    responses = predict_many(gateway.url, images, 200, client_ids=clients)
    seen: dict[str, set[str]] = {}
    for i, r in enumerate(responses):
        seen.setdefault(clients[i % len(clients)], set()).add(r.json()["variant"])
    assert all(len(v) == 1 for v in seen.values()), seen
    assert Counter(next(iter(v)) for v in seen.values()).keys() == {"stable", "canary"}
    # Growing the canary keeps its clients there (buckets below the weight stay below it).
    canary_clients = {c for c, v in seen.items() if v == {"canary"}}
    admin(gateway, "1", "2", 80)
    grown = predict_many(gateway.url, images, 40, client_ids=clients)
    assert all(r.json()["variant"] == "canary" for i, r in enumerate(grown) if clients[i] in canary_clients)


def test_a_failing_canary_is_answered_by_stable_and_counted_against_the_canary(
    gateway: GatewayServer, images: np.ndarray
) -> None:
    routes = admin(gateway, "1", "3", 100)
    assert "warm-up failed" in routes["warnings"]["canary"]
    before = fetch_metrics(gateway.url).get(("canary", "3"))
    responses = predict_many(gateway.url, images, 30)
    assert all(r.status_code == 200 for r in responses)
    assert {(r.json()["variant"], r.json()["version"], r.json()["fallback"]) for r in responses} == {("stable", "1", True)}
    after = fetch_metrics(gateway.url)[("canary", "3")]
    base = before.errors if before else 0
    assert after.errors - base == 30 and after.fallbacks - (before.fallbacks if before else 0) == 30


def test_hot_swap_under_concurrent_load_drops_nothing(gateway: GatewayServer, images: np.ndarray) -> None:
    """Routes change while requests flow: nothing fails, and each phase is answered by the versions it routes to."""
    admin(gateway, "1", "2", 50)
    stop = threading.Event()
    answered: list[tuple[float, float, str, str]] = []  # (sent, received, variant, version)
    statuses: list[int] = []
    errors: list[str] = []

    def load() -> None:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                try:
                    sent = time.monotonic()
                    r = client.post("/predict", json={"images": [images[i % len(images)].tolist()]})
                    statuses.append(r.status_code)
                    if r.status_code != 200:
                        errors.append(r.text)
                    else:
                        body = r.json()
                        answered.append((sent, time.monotonic(), body["variant"], body["version"]))
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                i += 1

    phases = [("1", "2", 50), ("2", None, 0), ("1", "2", 20), ("2", "1", 50), ("1", None, 0), ("1", "2", 10)]
    windows: list[tuple[float, float]] = []  # per phase: from the admin call's return to the next call's start
    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        begun = time.monotonic()
        for n, (stable, canary, weight) in enumerate(phases):
            if n:
                windows.append((begun, time.monotonic()))
                admin(gateway, stable, canary, weight)  # loads / reuses / retires models while requests flow
                begun = time.monotonic()
            # Let each phase run until a few requests sent inside it came back (bounded: the machine may be slow).
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and sum(1 for a in list(answered) if a[0] >= begun) < 8:
                time.sleep(0.1)
        windows.append((begun, time.monotonic()))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(statuses) > 50
    assert errors == [] and set(statuses) == {200}
    for (stable, canary, weight), (lo, hi) in zip(phases, windows, strict=True):
        # Requests sent after this phase's routes were set and answered before the next change.
        seen = {(variant, version) for sent, received, variant, version in answered if sent >= lo and received <= hi}
        assert seen, f"no request completed inside phase {(stable, canary, weight)}"
        allowed = {("stable", stable)} | ({("canary", canary)} if canary and weight else set())
        assert seen <= allowed, f"phase {(stable, canary, weight)} answered by {seen}"
        assert ("stable", stable) in seen, f"phase {(stable, canary, weight)}: the stable version never answered"


def test_restart_keeps_versions_and_weights(versions: list[str], mlflow_server: Any, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = GatewayServer(_config(mlflow_server.url, state), free_port()).start()
    try:
        admin(first, "2", "1", 40)
    finally:
        first.stop()
    assert '"canary_weight": 40' in state.read_text()
    second = GatewayServer(_config(mlflow_server.url, state), free_port()).start()
    try:
        router = LocalGatewayRouter(second.url, TOKEN)
        # The saved routes win over the registry aliases (champion=1, canary=2).
        assert router.get_routes() == RouteStatus("2", "1", 40)
        assert router.set_routes("2", None, 0) == RouteStatus("2", None, 0)
    finally:
        second.stop()


BAD_REQUESTS: list[tuple[str, Any, dict[str, str], int, str]] = [
    ("not json", b"{nope", {}, 400, "not valid JSON"),
    ("not an object", b"[1, 2]", {}, 422, "JSON object"),
    ("no images", b'{"client_id": "a"}', {}, 422, "non-empty list"),
    ("empty batch", b'{"images": []}', {}, 422, "non-empty list"),
    ("wrong shape", {"images": [[[0] * 27] * 28]}, {}, 422, "Nx28x28"),
    ("flat image", {"images": [[0] * 784]}, {}, 422, "Nx28x28"),
    ("ragged", {"images": [[[0] * 28] * 27 + [[0] * 5]]}, {}, 422, "ragged"),
    ("strings", {"images": [[["a"] * 28] * 28]}, {}, 422, "numbers"),
    ("booleans", {"images": [[[True] * 28] * 28]}, {}, 422, "numbers"),
    ("out of range", {"images": [[[256] * 28] * 28]}, {}, 422, "0..255"),
    ("negative", {"images": [[[-1] * 28] * 28]}, {}, 422, "0..255"),
    ("NaN", b'{"images": [' + (b"[" + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]") + b"]}",
     {}, 422, "finite"),
    ("too many images", {"images": [[[0] * 28] * 28] * 257}, {}, 413, "limit of 256"),
    ("unknown field", {"images": [[[0] * 28] * 28], "extra": 1}, {}, 422, "unknown fields"),
    ("bad client id", {"images": [[[0] * 28] * 28], "client_id": 5}, {}, 422, "client_id"),
    ("wrong content type", b'{"images": []}', {"Content-Type": "text/plain"}, 415, "application/json"),
    ("body too large", b"{" + b" " * (2 * 1024 * 1024 + 10) + b"}", {}, 413, "exceeds the limit"),
]


@pytest.mark.parametrize(("name", "body", "headers", "status", "reason"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_are_refused_with_a_one_line_reason(
    gateway: GatewayServer, name: str, body: Any, headers: dict[str, str], status: int, reason: str
) -> None:
    kwargs: dict[str, Any] = {"json": body} if not isinstance(body, bytes) else {"content": body}
    hdrs = {"Content-Type": "application/json", **headers} if isinstance(body, bytes) else headers
    r = httpx.post(f"{gateway.url}/predict", headers=hdrs, timeout=30, **kwargs)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert reason in detail and "\n" not in detail


def test_bad_feedback_is_refused(gateway: GatewayServer) -> None:
    for body, status in [({"prediction_id": "nope", "label": 3}, 403), ({"prediction_id": "x", "label": 10}, 422),
                         ({"prediction_id": "x", "label": True}, 422), ({"label": 3}, 422)]:
        assert httpx.post(f"{gateway.url}/feedback", json=body, headers=FEEDBACK).status_code == status


def test_admin_needs_the_token(gateway: GatewayServer, mlflow_server: Any, tmp_path: Path) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic " + TOKEN}):
        assert httpx.get(f"{gateway.url}/admin/routes", headers=headers).status_code == 401
        r = httpx.post(f"{gateway.url}/admin/weights", json={"canary_weight": 100}, headers=headers)
        assert r.status_code == 401
        assert httpx.post(f"{gateway.url}/admin/reload", headers=headers).status_code == 401
    bad = httpx.post(f"{gateway.url}/admin/routes", json={"stable": "1", "canary": "2", "canary_weight": 101},
                     headers=AUTH)
    assert bad.status_code == 422
    missing = httpx.post(f"{gateway.url}/admin/routes", json={"stable": "99", "canary": None}, headers=AUTH, timeout=60)
    assert missing.status_code == 409
    # A gateway with no token configured refuses every admin call, even with a token.
    closed = GatewayServer(_config(mlflow_server.url, tmp_path / "s.json", token=None, model="no-such-model"),
                           free_port()).start()
    try:
        assert httpx.get(f"{closed.url}/healthz").status_code == 503  # no champion: up but unready
        r = httpx.get(f"{closed.url}/admin/routes", headers=AUTH)
        assert r.status_code == 403 and "MLCD_ADMIN_TOKEN" in r.json()["detail"]
        assert httpx.post(f"{closed.url}/predict", json={"images": [[[0] * 28] * 28]}).status_code == 503
    finally:
        closed.stop()


def test_reload_follows_the_registry_aliases(gateway: GatewayServer) -> None:
    r = httpx.post(f"{gateway.url}/admin/reload", headers=AUTH, timeout=60)
    assert r.status_code == 200
    assert (r.json()["stable"], r.json()["canary"]) == ("1", "2")


def test_traffic_generator_is_bounded_and_loopback_only(gateway: GatewayServer, reference_data: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLCD_FEEDBACK_TOKEN", raising=False)
    for url in ("http://10.0.0.1:8000", "http://example.com", "ftp://127.0.0.1"):
        with pytest.raises(ValueError):
            require_loopback(url)
    with pytest.raises(ValueError):
        run_traffic(gateway.url, rate=5000, duration=1)
    with pytest.raises(ValueError, match="MLCD_FEEDBACK_TOKEN"):
        run_traffic(gateway.url, rate=40, duration=1, feedback=True, images=reference_data.x_test[:5],
                    labels=reference_data.y_test[:5])  # labels are not sent unauthenticated
    report = run_traffic(gateway.url, rate=40, duration=1, feedback=True, feedback_token=FEEDBACK_TOKEN,
                         images=reference_data.x_test[:50], labels=reference_data.y_test[:50])
    assert report.ok == report.sent >= 35 and report.failed == 0 and report.feedback_sent == report.ok


def _rollout(gateway: GatewayServer, url: str, **spec: Any) -> CanaryRollout:
    from mlcd.registry import ModelRegistry

    full = {"steps": (50, 100), "analysis_window_s": 1.5, "min_requests": 5, "min_stable_requests": 5,
            "max_p99_latency_ratio": 20.0, "p99_latency_slack_s": 0.25, **spec}
    return CanaryRollout(ModelRegistry(url, MODEL), LocalGatewayRouter(gateway.url, TOKEN),
                         RolloutSpec(**full), gateway.url, actor="tests")


def _with_traffic(gateway: GatewayServer, images: np.ndarray, fn: Any) -> Any:
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", run_traffic(gateway.url, 60, 8, images=images)))
    t.start()
    try:
        time.sleep(0.3)
        return fn()
    finally:
        t.join()


def test_a_broken_canary_is_aborted_and_rolled_back(gateway: GatewayServer, mlflow_server: Any,
                                                    images: np.ndarray) -> None:
    from mlcd.registry import ModelRegistry

    admin(gateway, "1", None, 0)
    rollout = _rollout(gateway, mlflow_server.url)
    with pytest.raises(RolloutAborted, match="error rate"):
        _with_traffic(gateway, images, lambda: run_rollout(rollout, "3", "tests: broken canary"))
    reg = ModelRegistry(mlflow_server.url, MODEL)
    assert reg.get_state("3").state.value == "rolled_back"
    assert reg.get_alias_version("champion") == "1"
    assert httpx.get(f"{gateway.url}/admin/routes", headers=AUTH).json()["canary"] is None


def test_a_healthy_canary_walks_the_steps_and_is_promoted(gateway: GatewayServer, mlflow_server: Any,
                                                          images: np.ndarray) -> None:
    from mlcd.registry import ModelRegistry

    rollout = _rollout(gateway, mlflow_server.url)
    progress = _with_traffic(gateway, images, lambda: run_rollout(rollout, "2", "tests: healthy canary"))
    assert progress.done and progress.outcomes[-1] == "pass" and progress.weight == 100
    reg = ModelRegistry(mlflow_server.url, MODEL)
    assert (reg.get_alias_version("champion"), reg.get_alias_version("previous")) == ("2", "1")
    assert reg.get_alias_version("canary") is None
    steps = [e for e in reg.get_state("2").history if e.get("event") == "canary_step"]
    assert [e["d"]["weight"] for e in steps if e["d"]["outcome"] == "pass"] == [50, 100]
    routes = httpx.get(f"{gateway.url}/admin/routes", headers=AUTH).json()
    assert (routes["stable"], routes["canary"]) == ("2", None)


def test_a_holdback_serves_its_share_as_a_third_variant_and_survives_a_restart(
        versions: list[str], mlflow_server: Any, images: np.ndarray, tmp_path: Path) -> None:
    # After a promotion the previous champion keeps a share (the bake's concurrent control): variant "holdback".
    state = tmp_path / "state.json"
    gw = GatewayServer(_config(mlflow_server.url, state), free_port()).start()
    try:
        router = LocalGatewayRouter(gw.url, TOKEN)
        status = router.set_routes("2", None, 0, holdback="1", holdback_weight=30)
        assert status == RouteStatus("2", None, 0, holdback="1", holdback_weight=30)
        n = 400
        responses = predict_many(gw.url, images, n)
        assert all(r.status_code == 200 for r in responses)
        held = [r.json() for r in responses if r.json()["variant"] == "holdback"]
        assert all(r["version"] == "1" for r in held)
        mean, sd = n * 0.3, math.sqrt(n * 0.3 * 0.7)
        assert abs(len(held) - mean) < 4.5 * sd, f"{len(held)} holdback answers of {n} at 30%"
        text = httpx.get(f"{gw.url}/metrics", timeout=10).text
        assert 'mlcd_gateway_holdback_weight 0.3' in text
        assert fetch_scrape(gw.url).served == {"stable": "2", "holdback": "1"}
        assert fetch_scrape(gw.url).holdback_weight == 0.3
        assert 'mlcd_gateway_model_info{variant="holdback",version="1"} 1.0' in text
        assert f'mlcd_gateway_requests_total{{variant="holdback",version="1"}} {float(len(held))}' in text
        # A split that is not one is refused with one line; nothing moves.
        bad = httpx.post(f"{gw.url}/admin/routes", json={"stable": "2", "canary": "3", "canary_weight": 80,
                                                         "holdback": "1", "holdback_weight": 30},
                         headers=AUTH, timeout=30)
        assert bad.status_code == 422 and "split of 100%" in bad.text
        assert router.get_routes() == status
    finally:
        gw.stop()
    again = GatewayServer(_config(mlflow_server.url, state), free_port()).start()
    try:
        router = LocalGatewayRouter(again.url, TOKEN)
        assert router.get_routes() == RouteStatus("2", None, 0, holdback="1", holdback_weight=30)
        # The bake ends: a move without a holdback releases it; the old version is no longer served.
        assert router.set_routes("2", None, 0) == RouteStatus("2", None, 0)
        assert {r.json()["variant"] for r in predict_many(again.url, images, 40)} == {"stable"}
        scrape = fetch_scrape(again.url)
        assert scrape.served == {"stable": "2"} and scrape.holdback_weight == 0.0
    finally:
        again.stop()
