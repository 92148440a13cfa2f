"""Fault-drill kit: a killable gateway process, a killable MLflow server, a metrics proxy that can go dark.

The gateway is the real app (``create_app``) under uvicorn in its own process on 127.0.0.1, with its route state
persisted to a file; its model versions are small numpy softmax models handed in through the ``loader`` hook, so
a process starts in about a second and can be killed and restarted inside a drill. Every healthy version shares
the same weights (a canary of them is a faithful retrain: the guard must not see a difference); a version listed
in ``BROKEN`` answers class 3 for every image. Versions are registered in a real MLflow server from empty runs
(the registry never loads a model).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from mlcd.mlflow_server import free_port

REPO = Path(__file__).resolve().parents[2]
ADMIN = "faults-admin-token-0123456789"
FEEDBACK = "faults-feedback-token-0123456789"

_SERVE = r"""
import os, sys
from pathlib import Path
import numpy as np
import uvicorn
from mlcd.serving.app import create_app
from mlcd.serving.config import GatewayConfig

BROKEN = set(filter(None, os.environ.get("FAULTS_BROKEN", "").split(",")))
W = np.random.default_rng(0).normal(size=(784, 10)).astype("float32") / 255.0

def loader(version):
    def predict(x):
        if version in BROKEN:
            out = np.zeros((len(x), 10), dtype="float32"); out[:, 3] = 1.0
            return out
        z = x.reshape(len(x), -1) @ W
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return predict

port, state, tracking, model = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
config = GatewayConfig(model_name=model, tracking_uri=tracking, admin_token=os.environ["FAULTS_ADMIN"],
                       state_path=state, feedback_token=os.environ["FAULTS_FEEDBACK"])
uvicorn.run(create_app(config, loader), host="127.0.0.1", port=port, log_level="warning")
"""


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a drill's child process: this checkout's sources first, bounded MLflow retries."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "include") + os.pathsep + str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
    env.update(extra)
    return env


class GatewayProcess:
    """One gateway process on a fixed free port (a restart comes back on the same URL)."""

    def __init__(self, state: Path, tracking_uri: str, model_name: str, broken: tuple[str, ...] = ()) -> None:
        self.state, self.tracking_uri, self.model_name, self.broken = state, tracking_uri, model_name, broken
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.first_answer: dict[str, Any] | None = None

    def start(self) -> GatewayProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(self.port), str(self.state), self.tracking_uri, self.model_name],
            env=child_env(FAULTS_ADMIN=ADMIN, FAULTS_FEEDBACK=FEEDBACK, FAULTS_BROKEN=",".join(self.broken)),
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(self.proc.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
            try:
                self.first_answer = httpx.get(f"{self.url}/healthz", timeout=2).json()
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("gateway did not come up")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as a node failure."""
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


class MetricsProxy:
    """A ``/metrics`` forwarder in front of the gateway (as Prometheus stands between the guard and the pods):
    ``down()`` closes its port (connection refused), ``up()`` opens it again on the same port."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ThreadingHTTPServer | None = None

    def up(self) -> MetricsProxy:
        target = self.target

        class Forward(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with urllib.request.urlopen(f"{target}{self.path}", timeout=5) as resp:  # noqa: S310 - loopback
                    data = resp.read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Forward)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def register_versions(registry: Any, n: int) -> list[str]:
    """``n`` new versions from empty runs (no weights: the gateway's loader supplies the models)."""
    client = registry.client
    exp = client.get_experiment_by_name("fault-drills")
    exp_id = exp.experiment_id if exp else client.create_experiment("fault-drills")
    out = []
    for _ in range(n):
        run = client.create_run(exp_id)
        client.set_terminated(run.info.run_id)
        out.append(registry.register_run_model(run.info.run_id, f"runs:/{run.info.run_id}/model"))
    return out


def model_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextmanager
def traffic(url: str, rate: float = 30.0, max_s: float = 120.0) -> Iterator[dict[str, int]]:
    """Bounded single-image load until the block ends; counts answers by version."""
    import numpy as np

    counts: dict[str, int] = {}
    stop = threading.Event()
    images = np.random.default_rng(1).integers(0, 256, size=(64, 28, 28)).tolist()

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            start, k = time.monotonic(), 0
            while not stop.is_set() and time.monotonic() - start < max_s:
                try:
                    r = client.post("/predict", json={"images": [images[k % len(images)]]})
                    if r.status_code == 200:
                        v = r.json()["version"]
                        counts[v] = counts.get(v, 0) + 1
                except httpx.HTTPError:
                    pass
                k += 1
                stop.wait(1.0 / rate)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        yield counts
    finally:
        stop.set()
        for t in threads:
            t.join(15)


def wait_for(condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition()`` until true (a loaded machine can take seconds to send the first request)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout:.0f}s"
        time.sleep(0.1)


@dataclass
class Ending:
    """What every drill ends with: traffic on a healthy version, the registry free of violations."""

    stable: str
    canary: str | None
    weight: int


def assert_healthy_ending(router: Any, registry: Any, healthy: set[str], bad: set[str] = frozenset()) -> Ending:  # type: ignore[assignment]
    """Traffic only on healthy versions, and ``mlcd status`` (CLI and its reporting function) with no violation."""
    from click.testing import CliRunner

    from mlcd.cli import cli

    routes = router.get_routes()
    assert routes.stable in healthy, routes
    assert routes.canary is None or routes.canary_weight == 0 or routes.canary in healthy, routes
    assert routes.stable not in bad and (routes.canary not in bad or routes.canary_weight == 0), routes
    status = registry.status()
    assert status["consistent"], (status["problems"], status["violations"])
    assert not status["violations"], status["violations"]
    env = {"MLFLOW_TRACKING_URI": registry.tracking_uri, "MLCD_MODEL_NAME": registry.model_name}
    out = CliRunner().invoke(cli, ["status"], env=env, catch_exceptions=False)
    assert out.exit_code == 0 and "VIOLATIONS" not in out.output, out.output
    return Ending(str(routes.stable), routes.canary, routes.canary_weight)
