"""The optimised serving paths answer what the model itself answers.

A real reference CNN (briefly fitted on real MNIST) in the real MLflow server, a real gateway on 127.0.0.1: its
answers over V2 JSON, V2 with the binary tensor extension, ``/predict``, and many concurrent single-image requests
that the micro-batcher coalesces into shared model calls must give the same classes and (to float rounding)
the same probabilities as the logged model called directly, eagerly, in this process. This holds the fast paths
to the truth: the compiled model graph (:mod:`mlcd.serving.compiled`), msgspec JSON (:mod:`mlcd.serving.fastjson`),
the ASGI infer path (:mod:`mlcd.serving.fastpath`) and the batcher's slicing of shared results.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

MODEL = "same-answers-cnn"
ATOL = 1e-5  # a fused graph kernel may round differently from the eager one; nothing more may differ


@pytest.fixture(scope="module")
def cnn_version(mlflow_server: Any, reference_data: Any) -> str:
    import mlflow
    import tensorflow as tf

    from mlcd.registry import ModelRegistry
    from mlcd.training.tracking import seal_model

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28)),
        tf.keras.layers.Rescaling(1 / 255),
        tf.keras.layers.Reshape((28, 28, 1)),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(64, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(10),
    ])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(reference_data.x_train[:2000], reference_data.y_train[:2000], epochs=1, batch_size=128, verbose=0)
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("same-answers")
    with mlflow.start_run() as run:
        info = mlflow.tensorflow.log_model(model, name="model", pip_requirements=["tensorflow-cpu"])
    seal_model(info.model_uri, mlflow_server.url)
    registry = ModelRegistry(mlflow_server.url, MODEL)
    version = registry.register_run_model(run.info.run_id, info.model_uri)
    registry.bootstrap_champion(version, "tests")
    return version


@pytest.fixture(scope="module")
def gateway(mlflow_server: Any, cnn_version: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from mlcd.mlflow_server import free_port
    from mlcd.serving.config import GatewayConfig
    from mlcd.serving.server import GatewayServer

    config = GatewayConfig(model_name=MODEL, tracking_uri=mlflow_server.url, admin_token=None,
                           state_path=tmp_path_factory.mktemp("same-answers") / "state.json")
    with GatewayServer(config, free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def images(reference_data: Any) -> np.ndarray:
    return np.asarray(reference_data.x_test[:64]).astype(np.float32)


@pytest.fixture(scope="module")
def direct(mlflow_server: Any, cnn_version: str, images: np.ndarray) -> np.ndarray:
    """The logged model called directly (eager Keras, no gateway), one image at a time and as one batch."""
    from mlcd.model_io import load_predictor

    predictor = load_predictor(f"models:/{MODEL}/{cnn_version}", tracking_uri=mlflow_server.url)
    batch = predictor.predict_proba(images)
    one_by_one = np.concatenate([predictor.predict_proba(images[i:i + 1]) for i in range(len(images))])
    assert np.allclose(batch, one_by_one, atol=ATOL)  # the model itself does not care how it is batched
    return batch


def _check(probs: np.ndarray, classes: np.ndarray, expected: np.ndarray) -> None:
    assert probs.shape == expected.shape
    assert np.abs(probs - expected).max() <= ATOL, f"largest difference {np.abs(probs - expected).max():.2e}"
    assert (classes == expected.argmax(axis=1)).all()


def _v2_json(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def _v2_binary(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = x.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head)),
                        "Content-Type": "application/octet-stream"}


def _binary_outputs(resp: httpx.Response) -> tuple[np.ndarray, np.ndarray]:
    n = int(resp.headers["Inference-Header-Content-Length"])
    head, tail = json.loads(resp.content[:n]), resp.content[n:]
    out, offset = {}, 0
    for o in head["outputs"]:
        size = o["parameters"]["binary_data_size"]
        dtype = {"FP32": "<f4", "INT64": "<i8"}[o["datatype"]]
        out[o["name"]] = np.frombuffer(tail[offset:offset + size], dtype=dtype).reshape(o["shape"])
        offset += size
    assert offset == len(tail)
    return out["probabilities"], out["class"]


def _json_outputs(body: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    out = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in body["outputs"]}
    return out["probabilities"], out["class"]


def test_v2_json_matches_the_model_called_directly(gateway: Any, images: np.ndarray, direct: np.ndarray) -> None:
    r = httpx.post(f"{gateway.url}/v2/models/{MODEL}/infer", json=_v2_json(images), timeout=60)
    assert r.status_code == 200, r.text
    _check(*_json_outputs(r.json()), direct)


def test_v2_binary_matches_the_model_called_directly(gateway: Any, images: np.ndarray, direct: np.ndarray) -> None:
    body, headers = _v2_binary(images)
    r = httpx.post(f"{gateway.url}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    probs, classes = _binary_outputs(r)
    assert probs.dtype == np.float32
    _check(probs, classes, direct)


def test_predict_matches_the_model_called_directly(gateway: Any, images: np.ndarray, direct: np.ndarray) -> None:
    r = httpx.post(f"{gateway.url}/predict", json={"images": images.astype(int).tolist()}, timeout=60)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    _check(np.asarray([p["probabilities"] for p in preds]), np.asarray([p["class"] for p in preds]), direct)


def test_concurrent_single_images_batched_together_each_get_their_own_answer(
        gateway: Any, images: np.ndarray, direct: np.ndarray) -> None:
    def batching() -> dict[str, float]:
        return dict(httpx.get(f"{gateway.url}/healthz", timeout=10).json()["batching"].popitem()[1])

    before = batching()

    def one(i: int) -> tuple[int, np.ndarray, np.ndarray]:
        with httpx.Client(timeout=60) as client:
            if i % 2:
                body, headers = _v2_binary(images[i:i + 1])
                r = client.post(f"{gateway.url}/v2/models/{MODEL}/infer", content=body, headers=headers)
                assert r.status_code == 200, r.text
                return i, *_binary_outputs(r)
            r = client.post(f"{gateway.url}/v2/models/{MODEL}/infer", json=_v2_json(images[i:i + 1]))
            assert r.status_code == 200, r.text
            return i, *_json_outputs(r.json())

    order = [i for _ in range(4) for i in range(len(images))]  # 256 requests, every image four times
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(one, order))
    after = batching()
    calls = after["calls"] - before["calls"]
    assert calls < len(order), "no request shared a model call: the batched path was not exercised"
    for i, probs, classes in answers:
        _check(probs, classes, direct[i:i + 1])


def test_compiled_graph_and_eager_call_agree_on_the_reference_cnn(mlflow_server: Any, cnn_version: str,
                                                                   images: np.ndarray, direct: np.ndarray) -> None:
    """What the gateway's batcher calls, in-process: every batch size it can form, and a retrace never happens."""
    from mlcd.serving.models import mlflow_loader

    fn = mlflow_loader(MODEL, mlflow_server.url)(cnn_version)
    for n in (1, 2, 7, 32, 64):
        out = fn(images[:n])
        _check(out, out.argmax(axis=1), direct[:n])
    graph = getattr(fn, "graph", None)
    assert graph is not None, "the loader served the model eagerly"
    assert graph.experimental_get_tracing_count() == 1  # traced once at load time, whatever the batch size

