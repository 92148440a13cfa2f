"""The Open Inference Protocol (KServe V2) on a real gateway on 127.0.0.1, called with the real ``tritonclient``.

Champion and canary are real Keras models in the real MLflow server (tests/modelkit.py). Both of tritonclient's
encodings are exercised: its default binary tensor extension and plain JSON (``binary_data=False``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

MODEL = "oip-test-mnist"


@pytest.fixture(scope="module")
def served(mlflow_server: Any, reference_data: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.modelkit import logged_models, rollout

    uris = logged_models(mlflow_server.url, reference_data.x_train[:2000], reference_data.y_train[:2000])
    with rollout(mlflow_server.url, uris, MODEL, "healthy_b", tmp_path_factory.mktemp("oip"), weight=50) as r:
        yield r


@pytest.fixture(scope="module")
def client(served: Any) -> Iterator[Any]:
    import tritonclient.http as triton

    c = triton.InferenceServerClient(url=served.url.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def images(reference_data: Any) -> np.ndarray:
    return np.asarray(reference_data.x_test[:64])


def _input(x: np.ndarray, datatype: str, binary: bool) -> Any:
    import tritonclient.http as triton

    inp = triton.InferInput("images", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def _outputs(binary: bool) -> list[Any]:
    import tritonclient.http as triton

    return [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "class")]


def _stable_client_id(weight: int) -> str:
    """A sticky client id that the gateway routes to the stable model at ``weight`` % canary."""
    import random

    from mlcd.serving.app import STABLE, choose_variant

    return next(c for c in (f"client-{i}" for i in range(1000)) if choose_variant(weight, c, random.Random()) == STABLE)


@pytest.fixture(scope="module")
def labels(reference_data: Any) -> np.ndarray:
    return np.asarray(reference_data.y_test[:64])


def test_health_and_metadata_through_tritonclient(client: Any, served: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "mlcd" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata(MODEL)
    assert model["versions"] == [served.stable, served.canary]
    assert model["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert {o["name"]: o["datatype"] for o in model["outputs"]} == {"probabilities": "FP32", "class": "INT64"}
    assert client.get_model_metadata(MODEL, model_version=served.canary)["versions"] == [served.canary]
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, served.stable)
    assert client.is_model_ready(MODEL, served.canary)
    assert not client.is_model_ready(MODEL, "999") and not client.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [True, False], ids=["binary-extension", "json"])
def test_infer_each_version_matches_the_gateway_own_predict(client: Any, served: Any, images: np.ndarray,
                                                            binary: bool) -> None:
    x = images[:16].astype(np.float32)
    for version in (served.stable, served.canary):
        result = client.infer(MODEL, [_input(x, "FP32", binary)], model_version=version, outputs=_outputs(binary),
                              request_id=f"req-{version}")
        response = result.get_response()
        assert response["model_version"] == version and response["id"] == f"req-{version}"
        probs, classes = result.as_numpy("probabilities"), result.as_numpy("class")
        assert probs.shape == (16, 10) and probs.dtype == np.float32 and classes.dtype == np.int64
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-4) and (classes == probs.argmax(axis=1)).all()
        again = client.infer(MODEL, [_input(x, "FP32", binary)], model_version=version)  # tritonclient's defaults
        assert np.allclose(again.as_numpy("probabilities"), probs, atol=1e-6)
    # The stable version over V2 answers what /predict answers for the same images.
    stable = client.infer(MODEL, [_input(x, "FP32", binary)], model_version=served.stable).as_numpy("probabilities")
    r = httpx.post(f"{served.url}/predict", json={"images": x.astype(int).tolist(), "client_id": _stable_client_id(50)})
    assert r.json()["version"] == served.stable
    assert np.allclose(np.asarray([p["probabilities"] for p in r.json()["predictions"]]), stable, atol=1e-5)


def test_infer_answers_real_digits_correctly(client: Any, served: Any, images: np.ndarray, labels: np.ndarray) -> None:
    result = client.infer(MODEL, [_input(images.astype(np.uint8), "UINT8", True)], model_version=served.stable)
    assert (result.as_numpy("class") == labels).mean() > 0.8


def test_integer_datatypes_and_flat_shapes_are_read_as_the_same_pixels(client: Any, served: Any,
                                                                       images: np.ndarray) -> None:
    x = images[:8]
    ref = client.infer(MODEL, [_input(x.astype(np.float32), "FP32", True)], model_version=served.stable)
    for datatype, arr in (("UINT8", x.astype(np.uint8).reshape(8, 784)), ("INT64", x.astype(np.int64)),
                          ("FP64", x.astype(np.float64).reshape(8, 28, 28, 1)), ("UINT16", x.astype(np.uint16))):
        for binary in (True, False):
            got = client.infer(MODEL, [_input(arr, datatype, binary)], model_version=served.stable)
            assert np.allclose(got.as_numpy("probabilities"), ref.as_numpy("probabilities"), atol=1e-5), datatype


def test_unversioned_infer_goes_through_the_weighted_and_sticky_canary_split(client: Any, served: Any,
                                                                             images: np.ndarray) -> None:
    x = images[:1].astype(np.float32)
    seen = Counter(client.infer(MODEL, [_input(x, "FP32", True)]).get_response()["model_version"] for _ in range(80))
    assert set(seen) == {served.stable, served.canary}, seen  # 50 %: both answer (chance of one-sided: 2^-79)
    for cid in ("alice", "bob", "carol", "dave"):
        versions = {
            client.infer(MODEL, [_input(x, "FP32", True)], parameters={"client_id": cid}).get_response()["model_version"]
            for _ in range(6)
        }
        assert len(versions) == 1, (cid, versions)
    metrics = httpx.get(f"{served.url}/metrics").text
    assert f'mlcd_gateway_requests_total{{variant="canary",version="{served.canary}"}}' in metrics


def test_prediction_ids_from_v2_take_feedback(client: Any, served: Any, images: np.ndarray) -> None:
    result = client.infer(MODEL, [_input(images[:3].astype(np.float32), "FP32", False)], model_version=served.canary)
    params = result.get_response()["parameters"]
    ids = params["prediction_ids"].split(",")
    assert len(ids) == 3 and params["variant"] == "canary" and params["fallback"] is False
    from tests.modelkit import FEEDBACK_TOKEN

    r = httpx.post(f"{served.url}/feedback", json={"prediction_id": ids[0], "label": 7},
                   headers={"Authorization": f"Bearer {FEEDBACK_TOKEN}"})
    assert r.status_code == 200 and r.json()["version"] == served.canary


def _raw(url: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    if body is None and "content" not in kw:
        return httpx.get(f"{url}{path}", timeout=30)
    return httpx.post(f"{url}{path}", json=body, timeout=30, **kw)


def _tensor(shape: list[int], data: list[Any], datatype: str = "FP32", name: str = "images") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/v2/models/other/infer", _tensor([1, 784], [0] * 784), 404, "unknown model"),
        (f"/v2/models/{MODEL}/versions/999/infer", _tensor([1, 784], [0] * 784), 404, "not being served"),
        (f"/v2/models/{MODEL}/infer", _tensor([1, 783], [0] * 783), 400, "shape"),
        (f"/v2/models/{MODEL}/infer", _tensor([2, 784], [0] * 784), 400, "needs 1568 values"),
        (f"/v2/models/{MODEL}/infer", _tensor([1, 784], [300] * 784), 400, "0..255"),
        (f"/v2/models/{MODEL}/infer", _tensor([1, 784], ["a"] * 784), 400, "numbers"),
        (f"/v2/models/{MODEL}/infer", _tensor([1, 784], [0.5] * 784, "UINT8"), 400, "non-integer"),
        (f"/v2/models/{MODEL}/infer", _tensor([1, 784], [True] * 784, "BOOL"), 400, "not supported"),
        (f"/v2/models/{MODEL}/infer", _tensor([1, 784], [0] * 784, name="pixels"), 400, "unknown input"),
        (f"/v2/models/{MODEL}/infer", _tensor([257, 784], [0]), 413, "exceeds the limit"),
        (f"/v2/models/{MODEL}/infer", {"inputs": []}, 400, "exactly one tensor"),
        (f"/v2/models/{MODEL}/infer", {**_tensor([1, 784], [0] * 784), "outputs": [{"name": "logits"}]}, 400,
         "unknown output"),
        ("/v2/nowhere", None, 404, "Not Found"),
    ],
)
def test_bad_requests_get_the_protocol_error_format(served: Any, path: str, body: Any, status: int,
                                                   says: str) -> None:
    r = _raw(served.url, path, body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and says in r.json()["error"]


def test_binary_framing_errors_and_body_bounds(served: Any) -> None:
    url = f"{served.url}/v2/models/{MODEL}/infer"
    head = b'{"inputs":[{"name":"images","shape":[1,784],"datatype":"UINT8","parameters":{"binary_data_size":784}}]}'
    ok = httpx.post(url, content=head + bytes(784), headers={"Inference-Header-Content-Length": str(len(head))})
    assert ok.status_code == 200, ok.text
    short = httpx.post(url, content=head + bytes(700), headers={"Inference-Header-Content-Length": str(len(head))})
    assert short.status_code == 400 and "binary bytes declared" in short.json()["error"]
    extra = httpx.post(url, content=head + bytes(900), headers={"Inference-Header-Content-Length": str(len(head))})
    assert extra.status_code == 400 and "does not match" in extra.json()["error"]
    beyond = httpx.post(url, content=head, headers={"Inference-Header-Content-Length": "99999"})
    assert beyond.status_code == 400 and "outside the body" in beyond.json()["error"]
    huge = httpx.post(url, content=b"0" * (3 * 1024 * 1024))
    assert huge.status_code == 413 and "exceeds the limit" in huge.json()["error"]
    # The header goes through the gateway's one JSON parser: a syntax error or hostile nesting is a one-line 400.
    broken = httpx.post(url, content=b'{"inputs": [')
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    deep = httpx.post(url, content=b"[" * 200_000 + b"]" * 200_000)
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]
    gz = httpx.post(url, content=head, headers={"Content-Encoding": "gzip"})
    assert gz.status_code == 415 and "gzip" in gz.json()["error"]
    # mlcd's own routes keep their own error shape.
    assert set(httpx.post(f"{served.url}/predict", json={}).json()) == {"detail"}


def test_tritonclient_sees_protocol_errors_as_its_exceptions(client: Any, served: Any, images: np.ndarray) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [_input(images[:1].astype(np.float32), "FP32", True)], model_version="999")
    assert err.value.status() == "404" and "not being served" in err.value.message()


def test_unready_gateway_says_so_on_v2_health(tmp_path: Path) -> None:
    from mlcd.mlflow_server import free_port
    from mlcd.serving.config import GatewayConfig
    from mlcd.serving.server import GatewayServer

    def loader(version: str) -> Any:
        raise RuntimeError(f"registry unreachable for {version}")

    config = GatewayConfig(model_name=MODEL, tracking_uri="http://127.0.0.1:9", admin_token=None,
                           state_path=tmp_path / "state.json", pinned_version="1")
    with GatewayServer(config, free_port(), loader=loader) as gw:
        assert httpx.get(f"{gw.url}/v2/health/live").status_code == 200
        ready = httpx.get(f"{gw.url}/v2/health/ready")
        assert ready.status_code == 503 and "registry unreachable" in ready.json()["error"]
        r = httpx.post(f"{gw.url}/v2/models/{MODEL}/infer", json=_tensor([1, 784], [0] * 784))
        assert r.status_code == 503 and "no model" in r.json()["error"]
