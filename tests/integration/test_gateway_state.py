"""Gateway route state on real uvicorn processes on 127.0.0.1: generation compare-and-set, persist-then-switch,
restart with the persisted routes before the first answer, one-line 400s for bad JSON, /metrics during big bodies.

The model versions here are small numpy softmax models handed to the real gateway through its ``loader`` hook:
what is under test is the gateway's route state, not model loading (tests/integration/test_gateway.py covers
MLflow models), and a gateway process then starts in about a second, so it can be killed and restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlcd.mlflow_server import free_port
from mlcd.rollout.router import LocalGatewayRouter, RouteConflict, RouteStatus
from mlcd.serving.state import RouteState, load_state, save_state

pytestmark = pytest.mark.integration

TOKEN = "state-test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

_SERVE = r"""
import sys
from pathlib import Path
import numpy as np
import uvicorn
from mlcd.serving.app import create_app
from mlcd.serving.config import GatewayConfig

def loader(version):
    w = np.random.default_rng(int(version)).normal(size=(784, 10)).astype("float32") / 255.0
    def predict(x):
        z = x.reshape(len(x), -1) @ w
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return predict

port, state = int(sys.argv[1]), Path(sys.argv[2])
if len(sys.argv) > 4:  # for a side-by-side measurement: parse every body inline, as before
    import mlcd.serving.app as app_module
    app_module.PARSE_INLINE_BYTES = int(sys.argv[4])
config = GatewayConfig(model_name="m", tracking_uri="http://127.0.0.1:9", admin_token=sys.argv[3], state_path=state,
                       feedback_token=sys.argv[3])  # one token for both here: what is under test is the parser
uvicorn.run(create_app(config, loader), host="127.0.0.1", port=port, log_level="warning")
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "include") + os.pathsep + env.get("PYTHONPATH", "")
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    return env


class Gw:
    """One gateway process; ``first_answer`` is the first /healthz it gave after (re)start."""

    def __init__(self, state: Path, inline_bytes: int | None = None):
        self.state = state
        self.extra = [] if inline_bytes is None else [str(inline_bytes)]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.first_answer: tuple[int, dict[str, Any]] | None = None

    def start(self) -> Gw:
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(self.port), str(self.state), TOKEN, *self.extra],
                                     env=_env(), stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                r = httpx.get(f"{self.url}/healthz", timeout=2)
                self.first_answer = (r.status_code, r.json())
                return self
            except httpx.TransportError:
                time.sleep(0.02)
        raise AssertionError("gateway did not come up")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def gw(tmp_path: Path) -> Any:
    state = tmp_path / "gateway" / "state.json"
    save_state(state, RouteState("1", None, 0, generation=0))  # as a previous run of the gateway left it
    inline = os.environ.get("MLCD_TEST_PARSE_INLINE_BYTES")  # side-by-side runs only (see the last test)
    g = Gw(state, int(inline) if inline else None).start()
    try:
        yield g
    finally:
        g.stop()


def test_a_restart_serves_the_persisted_routes_at_their_generation_before_answering(gw: Gw) -> None:
    router = LocalGatewayRouter(gw.url, TOKEN, timeout=30)
    assert gw.first_answer is not None and gw.first_answer[0] == 200
    assert gw.first_answer[1]["stable"] == "1" and gw.first_answer[1]["generation"] == 0
    moved = router.set_routes("1", "2", 30, expected_generation=0)
    assert moved == RouteStatus("1", "2", 30) and moved.generation == 1
    saved = load_state(gw.state)
    assert saved is not None and (saved.stable, saved.canary, saved.canary_weight, saved.generation) == ("1", "2", 30, 1)

    gw.kill()  # no graceful shutdown: what a node failure does mid-canary
    gw.start()
    code, body = gw.first_answer  # type: ignore[misc]
    assert code == 200, body
    assert (body["stable"], body["canary"], body["canary_weight"], body["generation"]) == ("1", "2", 30, 1)
    # The canary step that read generation 1 before the restart can go on; a staler one cannot.
    with pytest.raises(RouteConflict) as info:
        router.set_routes("1", "2", 50, expected_generation=0)
    assert info.value.current == 1 and router.get_routes() == RouteStatus("1", "2", 30)
    assert router.set_routes("1", "2", 50, expected_generation=1).generation == 2


def test_a_rollback_between_read_and_set_is_not_undone(gw: Gw) -> None:
    step = LocalGatewayRouter(gw.url, TOKEN, timeout=30)
    guard = LocalGatewayRouter(gw.url, TOKEN, timeout=30)
    step.set_routes("1", "2", 25)
    seen = step.get_routes()  # the canary step reads the routes at the start of its window
    guard.set_routes("1", None, 0)  # the guard rolls back meanwhile (no expected generation: it always wins)
    with pytest.raises(RouteConflict, match="generation"):
        step.set_routes("1", "2", 50, expected_generation=seen.generation)
    assert guard.get_routes() == RouteStatus("1", None, 0)
    r = httpx.post(f"{gw.url}/admin/routes", headers=AUTH, timeout=10,
                   json={"stable": "1", "canary": "2", "canary_weight": 5, "expected_generation": seen.generation})
    assert r.status_code == 409 and r.json()["conflict"] == "generation"
    assert r.json()["routes"]["canary"] is None  # the answer says where traffic is
    bad = httpx.post(f"{gw.url}/admin/routes", headers=AUTH, timeout=10,
                     json={"stable": "1", "expected_generation": "latest"})
    assert bad.status_code == 422


def test_a_failed_save_answers_an_error_and_traffic_stays(gw: Gw) -> None:
    router = LocalGatewayRouter(gw.url, TOKEN, timeout=30)
    before = router.get_routes()
    gw.state.unlink()
    gw.state.mkdir()  # the save's os.replace onto a directory fails (root ignores file modes, so no chmod)
    try:
        r = httpx.post(f"{gw.url}/admin/routes", headers=AUTH, timeout=30,
                       json={"stable": "1", "canary": "2", "canary_weight": 50})
        assert r.status_code == 503 and "traffic unchanged" in r.json()["detail"]
        after = router.get_routes()
        assert after == before and after.generation == before.generation
        health = httpx.get(f"{gw.url}/healthz", timeout=5).json()
        assert health["canary"] is None and health["status"] == "ok"
    finally:
        gw.state.rmdir()
    assert router.set_routes("1", "2", 50).generation == (before.generation or 0) + 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/routes", b"[" * 2000 + b"]" * 2000),
        ("/predict", b'{"images": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
        ("/feedback", b'{"prediction_id": "x", "label": '),
        ("/predict", b"\xff\xfe not json"),
        ("/admin/weights", b"{'canary_weight': 5}"),
    ],
)
def test_bad_json_is_a_one_line_400(gw: Gw, path: str, body: bytes) -> None:
    r = httpx.post(f"{gw.url}{path}", headers={**AUTH, "Content-Type": "application/json"}, content=body,
                   timeout=30)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "\n" not in detail and "Traceback" not in r.text and len(detail) < 300
    assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200  # and the gateway is fine


def test_metrics_answer_while_large_bodies_are_parsed(gw: Gw) -> None:
    """Large bodies (parsed off the event loop) must not stall /metrics: its worst latency stays bounded."""
    row = "[" + ",".join(["255"] * 28) + "]"
    image = "[" + ",".join([row] * 28) + "]"
    big = ('{"images": [' + ",".join([image] * 600) + "]}").encode()  # ~1.9 MB, 600 images: refused with 413
    assert 1_000_000 < len(big) < 2 * 1024 * 1024
    stop = threading.Event()
    statuses: list[int] = []

    def flood() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                statuses.append(client.post(f"{gw.url}/predict", content=big,
                                            headers={"Content-Type": "application/json"}).status_code)

    senders = [threading.Thread(target=flood) for _ in range(2)]
    for t in senders:
        t.start()
    worst = 0.0
    try:
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                assert client.get(f"{gw.url}/metrics").status_code == 200
                worst = max(worst, time.perf_counter() - t0)
                time.sleep(0.02)
    finally:
        stop.set()
        for t in senders:
            t.join(60)
    assert statuses and set(statuses) == {413}  # each big body was parsed, then refused for its batch size
    print(json.dumps({"metrics_worst_latency_s": round(worst, 3), "big_bodies": len(statuses)}))
    assert worst < 0.5, f"/metrics stalled {worst:.2f}s while large bodies were parsed"
