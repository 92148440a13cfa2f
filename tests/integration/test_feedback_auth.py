"""Authenticated feedback on a real gateway on 127.0.0.1 (issue 13, item 5).

Labels steer the guard (live accuracy), so ``/feedback`` takes its own token, a label is accepted only for a
prediction id the gateway signed, and only once; ``MLCD_EXPOSE_VARIANT=false`` hides which variant answered.
The served version is a small numpy softmax model handed to the real gateway through its ``loader`` hook (what
is under test is the HTTP contract, not model loading).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlcd.mlflow_server import free_port
from mlcd.serving.config import GatewayConfig
from mlcd.serving.server import GatewayServer

pytestmark = pytest.mark.integration

ADMIN = "feedback-test-admin-token-0123456789"
FEEDBACK = "feedback-test-feedback-token-0123456789"
GOOD = {"Authorization": f"Bearer {FEEDBACK}"}


def loader(version: str) -> Any:
    w = np.random.default_rng(int(version)).normal(size=(784, 10)).astype("float32") / 255.0

    def predict(x: np.ndarray) -> np.ndarray:
        z = x.reshape(len(x), -1) @ w
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return predict


def _gateway(tmp_path: Path, name: str, **kw: Any) -> GatewayServer:
    config = GatewayConfig(model_name="m", tracking_uri="http://127.0.0.1:9", admin_token=ADMIN,
                           state_path=tmp_path / name / "state.json", pinned_version="1", **kw)
    return GatewayServer(config, free_port(), loader=loader).start()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayServer]:
    server = _gateway(tmp_path, "a", feedback_token=FEEDBACK, gateway_secret="shared-secret-0123456789")
    try:
        yield server
    finally:
        server.stop()


def _predict(url: str, n: int = 1) -> dict[str, Any]:
    r = httpx.post(f"{url}/predict", json={"images": np.zeros((n, 28, 28), dtype=int).tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _feedback_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("mlcd_gateway_feedback_total{"))


def test_a_label_for_an_issued_id_is_counted_once(gw: GatewayServer) -> None:
    body = _predict(gw.url)
    pid = body["predictions"][0]["prediction_id"]
    assert body["version"] == "1" and body["variant"] == "stable"  # exposed by default
    before = _feedback_total(gw.url)
    ok = httpx.post(f"{gw.url}/feedback", json={"prediction_id": pid, "label": body["predictions"][0]["class"]},
                    headers=GOOD)
    assert ok.status_code == 200 and ok.json()["correct"] is True
    assert _feedback_total(gw.url) == before + 1
    replay = httpx.post(f"{gw.url}/feedback", json={"prediction_id": pid, "label": 3}, headers=GOOD)
    assert replay.status_code == 409 and "already labelled" in replay.json()["detail"]
    assert _feedback_total(gw.url) == before + 1  # the replay changed nothing


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {ADMIN}"},
                                     {"Authorization": FEEDBACK}, {"Authorization": f"Basic {FEEDBACK}"}],
                         ids=["none", "wrong", "admin-token", "no-scheme", "basic"])
def test_feedback_needs_its_own_token(gw: GatewayServer, headers: dict[str, str]) -> None:
    pid = _predict(gw.url)["predictions"][0]["prediction_id"]
    r = httpx.post(f"{gw.url}/feedback", json={"prediction_id": pid, "label": 1}, headers=headers)
    assert r.status_code == 401 and "feedback token" in r.json()["detail"]
    ok = httpx.post(f"{gw.url}/feedback", json={"prediction_id": pid, "label": 1}, headers=GOOD)
    assert ok.status_code == 200  # the refused attempt did not use the id up


def test_forged_ids_are_refused(gw: GatewayServer, tmp_path: Path) -> None:
    pid = _predict(gw.url)["predictions"][0]["prediction_id"]
    nonce, mac = pid.split(".")
    forged = [
        "0" * 32,  # the old uuid4-hex shape
        f"{nonce}.{'0' * 32}",  # a real nonce, a made-up signature
        f"{'a' * 24}.{mac}",  # a real signature on another nonce
        f"{nonce}.{mac}x",
    ]
    before = _feedback_total(gw.url)
    for bad in forged:
        r = httpx.post(f"{gw.url}/feedback", json={"prediction_id": bad, "label": 1}, headers=GOOD)
        assert r.status_code == 403 and "not issued by this gateway" in r.json()["detail"], bad
    # Ids of a gateway with another secret do not pass either; one sharing the secret (a replica) signs alike.
    other = _gateway(tmp_path, "b", feedback_token=FEEDBACK, gateway_secret="another-secret-0123456789")
    replica = _gateway(tmp_path, "c", feedback_token=FEEDBACK, gateway_secret="shared-secret-0123456789")
    try:
        foreign = _predict(other.url)["predictions"][0]["prediction_id"]
        r = httpx.post(f"{gw.url}/feedback", json={"prediction_id": foreign, "label": 1}, headers=GOOD)
        assert r.status_code == 403
        sibling = _predict(replica.url)["predictions"][0]["prediction_id"]
        # A replica's id carries its prediction and is signed alike: taken here, once (the shared ledger).
        r = httpx.post(f"{gw.url}/feedback", json={"prediction_id": sibling, "label": 1}, headers=GOOD)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{replica.url}/feedback", json={"prediction_id": sibling, "label": 1}, headers=GOOD)
        assert r.status_code == 409 and "already labelled" in r.json()["detail"]
    finally:
        other.stop()
        replica.stop()
    assert _feedback_total(gw.url) == before + 1  # the forged and foreign ids counted nothing
    ok = httpx.post(f"{gw.url}/feedback", json={"prediction_id": pid, "label": 1}, headers=GOOD)
    assert ok.status_code == 200


def test_without_a_feedback_token_configured_feedback_is_refused(tmp_path: Path) -> None:
    server = _gateway(tmp_path, "d")
    try:
        pid = _predict(server.url)["predictions"][0]["prediction_id"]
        for headers in ({}, GOOD, {"Authorization": f"Bearer {ADMIN}"}):
            r = httpx.post(f"{server.url}/feedback", json={"prediction_id": pid, "label": 1}, headers=headers)
            assert r.status_code == 403
            assert r.json()["detail"] == "feedback disabled: MLCD_FEEDBACK_TOKEN is not configured"
    finally:
        server.stop()


def test_the_variant_can_be_hidden_from_clients(tmp_path: Path) -> None:
    server = _gateway(tmp_path, "e", feedback_token=FEEDBACK, expose_variant=False)
    try:
        body = _predict(server.url, n=2)
        assert set(body) == {"model", "predictions"}, body
        v2 = httpx.post(f"{server.url}/v2/models/m/infer", json={"inputs": [
            {"name": "images", "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784}]}, timeout=30).json()
        assert "model_version" not in v2 and set(v2["parameters"]) == {"prediction_ids"}, v2
        fb = httpx.post(f"{server.url}/feedback", json={"prediction_id": v2["parameters"]["prediction_ids"],
                                                        "label": 1}, headers=GOOD)
        assert fb.status_code == 200 and set(fb.json()) == {"prediction_id", "correct"}
        assert _feedback_total(server.url) == 1  # still counted against the variant in the gateway's metrics
    finally:
        server.stop()


def test_the_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCD_FEEDBACK_TOKEN", "t0k")
    monkeypatch.setenv("MLCD_GATEWAY_SECRET", "s3c")
    monkeypatch.setenv("MLCD_EXPOSE_VARIANT", "false")
    config = GatewayConfig.from_settings()
    assert (config.feedback_token, config.gateway_secret, config.expose_variant) == ("t0k", "s3c", False)
    monkeypatch.delenv("MLCD_EXPOSE_VARIANT")
    monkeypatch.delenv("MLCD_FEEDBACK_TOKEN")
    assert GatewayConfig.from_settings().expose_variant is True
    assert GatewayConfig.from_settings().feedback_token is None
