"""Browser and connection hardening of a real gateway on 127.0.0.1 (issue #23.5): only JSON or the binary
extension's content type reaches a model, slowloris connections are closed, a hang-up mid-upload is one line."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from mlcd.serving.config import GatewayConfig

pytestmark = pytest.mark.integration

MODEL = "hardening"
BODY = b'{"images": [' + b",".join([b"[" + b",".join([b"[" + b",".join([b"0"] * 28) + b"]"] * 28) + b"]"]) + b"]}"
V2_BODY = (b'{"inputs": [{"name": "images", "shape": [1, 784], "datatype": "UINT8", "data": ['
           + b",".join([b"0"] * 784) + b"]}]}")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from mlcd.mlflow_server import free_port
    from mlcd.serving import hardening
    from mlcd.serving.server import GatewayServer
    from mlcd.serving.state import RouteState, save_state

    state = tmp_path_factory.mktemp("hardening") / "state.json"
    save_state(state, RouteState("1", None, 0))
    config = GatewayConfig(model_name=MODEL, tracking_uri="http://127.0.0.1:9", admin_token=None, state_path=state)
    patch = pytest.MonkeyPatch()
    patch.setattr(hardening, "HEADER_TIMEOUT_S", 1.0)
    try:
        server = GatewayServer(config, free_port(), loader=lambda v: lambda x: np.full((len(x), 10), 0.1)).start()
    finally:
        patch.undo()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_simple_cross_origin_content_types_are_refused_on_predict_and_v2(gateway: Any, ctype: str) -> None:
    for path, body in (("/predict", BODY), (f"/v2/models/{MODEL}/infer", V2_BODY)):
        r = httpx.post(f"{gateway.url}{path}", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 415, (path, ctype, r.text)
        assert "content type must be application/json" in r.text
    assert httpx.post(f"{gateway.url}/predict", content=BODY, headers={"Content-Type": "application/json"}).is_success
    assert httpx.post(f"{gateway.url}/v2/models/{MODEL}/infer", content=V2_BODY,
                      headers={"Content-Type": "application/json; charset=utf-8"}).is_success


def test_a_page_of_any_origin_is_refused_even_with_an_untyped_body(gateway: Any) -> None:
    """A page's fetch() of an untyped Blob is a simple request (no preflight) but names its Origin."""
    for path, body in (("/predict", BODY), (f"/v2/models/{MODEL}/infer", V2_BODY)):
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                        {"Origin": "https://evil.example", "Content-Type": "application/json"},
                        {"Sec-Fetch-Site": "cross-site"}):
            r = httpx.post(f"{gateway.url}{path}", content=body, headers=headers)
            assert r.status_code == 403 and "cross-origin" in r.text, (path, headers, r.text)
        # A client that is no browser and declares no type (tritonclient sends none) is still served.
        assert httpx.post(f"{gateway.url}{path}", content=body).status_code == 200


def test_the_binary_extension_needs_its_header_and_octet_stream(gateway: Any) -> None:
    head = b'{"inputs":[{"name":"images","shape":[1,784],"datatype":"UINT8","parameters":{"binary_data_size":784}}]}'
    url = f"{gateway.url}/v2/models/{MODEL}/infer"
    ok = httpx.post(url, content=head + bytes(784), headers={"Content-Type": "application/octet-stream",
                                                             "Inference-Header-Content-Length": str(len(head))})
    assert ok.status_code == 200, ok.text
    bare = httpx.post(url, content=head + bytes(784), headers={"Content-Type": "application/octet-stream"})
    assert bare.status_code == 415


def test_a_connection_that_trickles_its_headers_is_closed(gateway: Any) -> None:
    socks = []
    try:
        for _ in range(9):  # the review's nine slowloris connections
            s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        started = time.monotonic()
        for s in socks:
            s.sendall(b"X-a: b\r\n")  # a header line now and then keeps a bare uvicorn waiting forever
        closed = 0
        for s in socks:
            try:
                closed += s.recv(1024) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 1
        assert closed == 9 and time.monotonic() - started < 8
        assert httpx.get(f"{gateway.url}/healthz").status_code == 200  # the gateway itself is fine
    finally:
        for s in socks:
            s.close()


def test_a_client_hanging_up_mid_upload_is_one_line_not_a_traceback(gateway: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
              + b'{"images": [' + b"0," * 200)
    time.sleep(0.3)
    s.close()
    time.sleep(0.5)
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    records = [r for r in caplog.records if r.exc_info or "Exception in ASGI" in r.getMessage()]
    assert records == [], [r.getMessage() for r in records]
    assert any("hung up" in r.getMessage() for r in caplog.records)
