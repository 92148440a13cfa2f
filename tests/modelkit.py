"""Tiny contract-conforming Keras models in a real MLflow server, a gateway per test, and bounded live traffic.

Three models are logged once per MLflow server (cached here, so every test module that asks shares them):

* ``healthy_a`` and ``healthy_b``: linear softmax models on 2,000 real training images (seeds 0 and 1): two
  honest retrains of the same model that disagree on a few percent of images, as real retrains do;
* ``broken``: ``healthy_a`` with a bias of +50 on class 3, so it answers 3 for every image. Same architecture,
  same latency: only the prediction distribution gives it away, which is what the guard must catch without labels.

A test registers versions of these under its own registered-model name (a new MLflow run each, pointing at the
logged model, so no weights are re-uploaded) and gets a fresh registry, aliases and gateway.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TOKEN = "guard-test-admin-token-0123456789"
FEEDBACK_TOKEN = "guard-test-feedback-token-0123456789"  # /feedback's own token (not the admin one)
BROKEN_CLASS = 3
_LOGGED: dict[str, dict[str, str]] = {}  # tracking URI → kind → logged model URI
_LOCK = threading.Lock()


def logged_models(tracking_uri: str, x: np.ndarray, y: np.ndarray, signing_key: str | None = None) -> dict[str, str]:
    """Log the three models once per server; returns kind → ``models:/m-…`` URI.

    ``signing_key``: the platform's model signing key (``make up`` creates one), so its gateway loads them;
    default ``MLCD_MODEL_SIGNING_KEY``, else digest only."""
    with _LOCK:
        if tracking_uri in _LOGGED:
            return _LOGGED[tracking_uri]
        import mlflow
        import tensorflow as tf

        from mlcd.training.tracking import seal_model

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment("guard-models")
        models: dict[str, Any] = {}
        for kind, seed in (("healthy_a", 0), ("healthy_b", 1)):
            tf.keras.utils.set_random_seed(seed)
            model = tf.keras.Sequential([
                tf.keras.Input((28, 28)),
                tf.keras.layers.Rescaling(1 / 255),
                tf.keras.layers.Flatten(),
                tf.keras.layers.Dense(10),
            ])
            model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(x, y, epochs=4, batch_size=64, verbose=0)
            models[kind] = model
        broken = tf.keras.models.clone_model(models["healthy_a"])
        broken.set_weights(models["healthy_a"].get_weights())
        kernel, bias = broken.layers[-1].get_weights()
        bias = bias.copy()
        bias[BROKEN_CLASS] += 50.0  # logits of class 3 dwarf every other: the model always answers 3
        broken.layers[-1].set_weights([kernel, bias])
        models["broken"] = broken
        uris = {}
        for kind, model in models.items():
            with mlflow.start_run(run_name=f"guard-{kind}"):
                # Explicit requirements skip MLflow's import-capturing subprocess (seconds per model).
                info = mlflow.tensorflow.log_model(model, name="model", pip_requirements=["tensorflow-cpu"])
            seal_model(info.model_uri, tracking_uri, signing_key)  # as the trainer does: loaders refuse an unsealed model
            uris[kind] = info.model_uri
        _LOGGED[tracking_uri] = uris
        return uris


def register(tracking_uri: str, model_name: str, model_uri: str) -> str:
    """A new version of ``model_name`` from a logged model (a fresh run, so the registry never dedupes it)."""
    from mlflow import MlflowClient

    from mlcd.registry import ModelRegistry

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("guard-models")
    run = client.create_run(exp.experiment_id if exp else "0", run_name=f"register-{model_name}")
    client.set_terminated(run.info.run_id)
    return ModelRegistry(tracking_uri, model_name).register_run_model(run.info.run_id, model_uri)


@dataclass
class Rollout:
    """A registered model with a champion and a canary, served by its own gateway on 127.0.0.1."""

    model_name: str
    tracking_uri: str
    stable: str
    canary: str
    gateway: Any
    registry: Any
    router: Any

    @property
    def url(self) -> str:
        return str(self.gateway.url)


@contextmanager
def rollout(tracking_uri: str, uris: dict[str, str], model_name: str, canary_kind: str, state_dir: Path,
            weight: int = 50, stable_kind: str = "healthy_a", drift: bool = False) -> Iterator[Rollout]:
    """Champion ``stable_kind``, canary ``canary_kind`` at ``weight`` % (as the canary task would set it)."""
    from mlcd.mlflow_server import free_port
    from mlcd.registry import ModelRegistry
    from mlcd.rollout.router import LocalGatewayRouter
    from mlcd.serving.config import GatewayConfig
    from mlcd.serving.server import GatewayServer

    stable = register(tracking_uri, model_name, uris[stable_kind])
    canary = register(tracking_uri, model_name, uris[canary_kind])
    registry = ModelRegistry(tracking_uri, model_name)
    registry.bootstrap_champion(stable, "tests")
    registry.start_canary(canary, "tests", f"{canary_kind} canary under test")
    config = GatewayConfig(model_name=model_name, tracking_uri=tracking_uri, admin_token=TOKEN,
                           state_path=state_dir / f"{model_name}-state.json", drift=drift,
                           feedback_token=FEEDBACK_TOKEN)
    server = GatewayServer(config, free_port()).start()
    try:
        router = LocalGatewayRouter(server.url, TOKEN)
        router.set_routes(stable, canary, weight)
        yield Rollout(model_name, tracking_uri, stable, canary, server, registry, router)
    finally:
        server.stop()


@dataclass
class TrafficStats:
    sent: int = 0
    failed: int = 0
    by_version: Counter[str] = field(default_factory=Counter)
    first_seen: dict[str, float] = field(default_factory=dict)  # version → monotonic time of its first answer


@contextmanager
def traffic(url: str, images: np.ndarray, rate: float = 40.0, max_s: float = 90.0,
            workers: int = 4) -> Iterator[TrafficStats]:
    """Bounded single-image load (``mlcd traffic``-like, open loop on a clock) until the block ends or ``max_s``."""
    import httpx

    from mlcd.serving.traffic import require_loopback

    require_loopback(url)
    stats = TrafficStats()
    stop = threading.Event()
    start = time.monotonic()
    lock = threading.Lock()
    counter = iter(range(int(rate * max_s)))

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                delay = start + k / rate - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                try:
                    r = client.post("/predict", json={"images": [images[k % len(images)].tolist()]})
                    with lock:
                        stats.sent += 1
                        if r.status_code == 200:
                            version = r.json()["version"]
                            stats.by_version[version] += 1
                            stats.first_seen.setdefault(version, time.monotonic())
                        else:
                            stats.failed += 1
                except httpx.HTTPError:
                    with lock:
                        stats.failed += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    try:
        yield stats
    finally:
        stop.set()
        for t in threads:
            t.join(15)
