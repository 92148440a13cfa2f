"""The Open Inference Protocol (KServe V2) over REST, beside mlcd's own ``/predict``.

What KServe, MLServer and Triton clients speak: ``/v2/health/{live,ready}``, ``/v2`` (server metadata),
``/v2/models/{name}[/versions/{v}]`` (model metadata), ``…/ready`` and ``…/infer`` with typed tensors, errors as
``{"error": "..."}``. Inference goes through :meth:`Gateway.route`, so it gets the same weighted or sticky canary
split, the same micro-batcher, the same metrics and the same ``/feedback`` ids as ``/predict``:

* ``/v2/models/{name}/infer`` is routed like ``/predict``; ``parameters.client_id`` makes it sticky;
* ``/v2/models/{name}/versions/{v}/infer`` answers with exactly version ``v`` while it is served (stable or
  canary), else 404: no weighting, no fallback.

The model takes one input ``images`` (``[N, 28, 28]``, ``[N, 784]`` or ``[N, 28, 28, 1]``; any integer or
floating datatype; pixels in 0..255) and gives ``probabilities`` (FP32 ``[N, 10]``) and ``class`` (INT64 ``[N]``).
The answer's ``parameters`` carry ``variant``, ``fallback`` and ``prediction_ids`` (comma-separated, one per image,
for ``/feedback``).

The binary tensor extension (Triton's ``binary_tensor_data``, the default of ``tritonclient``) is supported both
ways: a request whose ``Inference-Header-Content-Length`` header says where its JSON ends carries the input's raw
little-endian bytes after it (``parameters.binary_data_size``); outputs asked for with ``binary_data: true`` (or all
of them, with the request parameter ``binary_data_output``) come back the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlcd import __version__
from mlcd.serving import fastjson
from mlcd.serving.app import (
    MAX_CLIENT_ID,
    Gateway,
    RequestError,
    Served,
    check_pixels,
    parse_json_body,
    read_bounded,
)

V2_PREFIX = "/v2"
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "images"
OUTPUTS: dict[str, tuple[str, list[int]]] = {"probabilities": ("FP32", [-1, 10]), "class": ("INT64", [-1])}
# Pixels are numbers: BOOL and BYTES tensors are refused. Wire order is little-endian (the extension's rule).
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in {
        "UINT8": "u1", "UINT16": "u2", "UINT32": "u4", "UINT64": "u8",
        "INT8": "i1", "INT16": "i2", "INT32": "i4", "INT64": "i8",
        "FP16": "f2", "FP32": "f4", "FP64": "f8",
    }.items()
}
SHAPES = ((28, 28), (784,), (28, 28, 1))  # accepted per-image shapes, all read as 28×28


@dataclass(frozen=True)
class InferRequest:
    """A checked inference request."""

    x: np.ndarray  # float32 N×28×28
    request_id: str | None = None
    client_id: str | None = None
    outputs: dict[str, bool] = field(default_factory=dict)  # output name → binary; all outputs when empty
    binary_default: bool = False


def _bad(reason: str) -> RequestError:
    return RequestError(400, reason)


def split_infer_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON inference header and the binary tensor data after it (the binary tensor extension)."""
    if header_length is None:
        return body, b""
    try:
        json_size = int(header_length)
    except ValueError:
        raise _bad(f"{HEADER_LENGTH} must be an integer, got {header_length[:40]!r}") from None
    if not 0 < json_size <= len(body):
        raise _bad(f"{HEADER_LENGTH} {json_size} is outside the body of {len(body)} bytes")
    return body[:json_size], body[json_size:]


def parse_infer(payload: Any, tail: bytes, max_images: int) -> InferRequest:
    """Check a parsed infer header (and the binary tensors in ``tail``) and build the request.

    Raises:
        RequestError: 400 with the one reason the request is refused, 413 for a batch above ``max_images``.
    """
    if not isinstance(payload, dict):
        raise _bad("inference request must be a JSON object with 'inputs'")
    unknown = set(payload) - {"id", "parameters", "inputs", "outputs"}
    if unknown:
        raise _bad(f"unknown fields in the inference request: {', '.join(sorted(map(str, unknown)))}")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("'id' must be a string")
    params = _parameters(payload.get("parameters"), "request")
    client_id = params.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID):
        raise _bad(f"parameter 'client_id' must be a string of 1..{MAX_CLIENT_ID} characters")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise _bad("parameter 'binary_data_output' must be a boolean")

    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _bad(f"'inputs' must hold exactly one tensor, '{INPUT}'")
    x, used = _input_tensor(inputs[0], tail, max_images)
    if used != len(tail):
        raise _bad(f"binary data of {len(tail)} bytes does not match the {used} bytes the inputs declare")

    outputs: dict[str, bool] = {}
    requested = payload.get("outputs")
    if requested is not None:
        if not isinstance(requested, list):
            raise _bad("'outputs' must be a list of {'name': ...}")
        for out in requested:
            if not isinstance(out, dict) or out.get("name") not in OUTPUTS:
                name = out.get("name") if isinstance(out, dict) else out
                raise _bad(f"unknown output {name!r}; this model has {', '.join(OUTPUTS)}")
            binary = _parameters(out.get("parameters"), f"output {out['name']}").get("binary_data", binary_default)
            if not isinstance(binary, bool):
                raise _bad(f"output {out['name']}: parameter 'binary_data' must be a boolean")
            outputs[out["name"]] = binary
    return InferRequest(x, request_id, client_id, outputs, binary_default)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{where} 'parameters' must be an object")
    return value


def _input_tensor(tensor: dict[str, Any], tail: bytes, max_images: int) -> tuple[np.ndarray, int]:
    """The ``images`` tensor as float32 N×28×28, and how many bytes of ``tail`` it used."""
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if name != INPUT:
        raise _bad(f"unknown input {name!r}; this model takes one input, '{INPUT}'")
    if datatype not in DATATYPES:
        raise _bad(f"input '{INPUT}': datatype {datatype!r} is not supported; use one of {', '.join(DATATYPES)}")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise _bad(f"input '{INPUT}': 'shape' must be a list of non-negative integers")
    if tuple(shape[1:]) not in SHAPES:
        raise _bad(f"input '{INPUT}': shape {shape} is not [N, 28, 28], [N, 784] or [N, 28, 28, 1]")
    n = shape[0]
    if n > max_images:
        raise RequestError(413, f"batch of {n} images exceeds the limit of {max_images}")
    count = math.prod(shape)
    dtype = DATATYPES[datatype]
    params = _parameters(tensor.get("parameters"), f"input {INPUT}")
    binary_size = params.get("binary_data_size")
    if binary_size is not None:
        if "data" in tensor:
            raise _bad(f"input '{INPUT}' has both 'data' and binary_data_size")
        if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size != count * dtype.itemsize:
            raise _bad(
                f"input '{INPUT}': binary_data_size {binary_size!r} is not {count} {datatype} values "
                f"({count * dtype.itemsize} bytes)"
            )
        if len(tail) < binary_size:
            raise _bad(f"input '{INPUT}': {binary_size} binary bytes declared, {len(tail)} sent")
        arr = np.frombuffer(tail[:binary_size], dtype=dtype)
        used = binary_size
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise _bad(f"input '{INPUT}' needs 'data' (a list of numbers) or binary data")
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError):
            raise _bad(f"input '{INPUT}': 'data' is ragged or not numbers") from None
        if arr.dtype.kind not in "iuf":
            raise _bad(f"input '{INPUT}': 'data' must hold numbers only")
        if arr.size != count:
            raise _bad(f"input '{INPUT}': shape {shape} needs {count} values, 'data' has {arr.size}")
        if dtype.kind in "iu" and arr.dtype.kind == "f" and not np.array_equal(arr, np.floor(arr)):
            raise _bad(f"input '{INPUT}': {datatype} data holds non-integer values")
        used = 0
    return check_pixels(arr.reshape(n, 28, 28), status=400), used


def encode_outputs(req: InferRequest, served: Served, model_name: str, ids: list[str],
                   expose_variant: bool = True) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (``Inference-Header-Content-Length`` when any output is binary)."""
    arrays = {
        "probabilities": np.ascontiguousarray(served.probs, dtype="<f4"),
        "class": served.classes.astype("<i8"),
    }
    wanted = req.outputs or {name: req.binary_default for name in OUTPUTS}
    outputs, blobs = [], []
    for name, binary in wanted.items():
        datatype = OUTPUTS[name][0]
        arr = arrays[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel().tolist()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": model_name}
    if expose_variant:  # MLCD_EXPOSE_VARIANT=false: neither the version nor the variant is told to the client
        answer["model_version"] = served.version
        answer["parameters"] = {"variant": served.variant, "fallback": served.fallback, "prediction_ids": ",".join(ids)}
    else:
        answer["parameters"] = {"prediction_ids": ",".join(ids)}
    answer["outputs"] = outputs
    if req.request_id is not None:
        answer["id"] = req.request_id
    head = fastjson.dumps(answer)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def model_metadata(name: str, versions: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "versions": versions,
        "platform": "mlflow",
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, 28, 28]}],
        "outputs": [{"name": out, "datatype": dt, "shape": shape} for out, (dt, shape) in OUTPUTS.items()],
    }


def served_versions(gateway: Gateway) -> list[str]:
    routes = gateway.routes
    return [slot.version for slot in (routes.stable, routes.canary) if slot is not None]


def check_model(gateway: Gateway, name: str, version: str | None = None) -> list[str]:
    """The served versions, or :class:`RequestError` when ``name`` (or ``version``) is not served here."""
    config = gateway.config
    if name != config.model_name:
        raise RequestError(404, f"unknown model {name!r}; this gateway serves {config.model_name!r}")
    versions = served_versions(gateway)
    if not versions:
        raise RequestError(503, f"no model is being served ({gateway.ready_error})")
    if not config.expose_variant:  # hiding: no route may tell which versions serve (no 404/200 oracle)
        if version is not None:
            raise RequestError(404, "version-specific routes are disabled on this gateway (MLCD_EXPOSE_VARIANT=false)")
        return []
    if version is not None and version not in versions:
        raise RequestError(404, f"model version {version} is not being served (serving: {', '.join(versions)})")
    return versions


def check_encoding(content_encoding: str | None) -> None:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding != "identity":
        raise RequestError(415, f"content encoding {encoding!r} is not supported; send the body uncompressed")


async def infer_body(gateway: Gateway, name: str, version: str | None, body: bytes,
                     header_length: str | None, client: str) -> tuple[bytes, dict[str, str]]:
    """One inference: the request body (already read within the size limit) to the answer's body and headers.

    The one implementation behind both ways in (the FastAPI route and :mod:`mlcd.serving.fastpath`); ``client``
    is who sent it (:meth:`Gateway.client_of`), for the evidence and drift bounds.
    """
    config = gateway.config
    head, tail = split_infer_body(body, header_length)
    # The gateway's one JSON parser: one-line 400s, and large headers parsed off the event loop.
    req = parse_infer(await parse_json_body(head), tail, config.max_batch_images)
    served = await gateway.route(req.x, req.client_id, version, client=client)
    return encode_outputs(req, served, name, gateway.remember(served), config.expose_variant)


def add_v2_routes(app: FastAPI, gateway: Gateway) -> None:
    """Mount the protocol's routes on ``app`` (the gateway's RequestError handler writes ``{"error": ...}``)."""
    from mlcd.serving.fastpath import V2InferFastPath

    config = gateway.config
    # POST …/infer is answered by this middleware before FastAPI's router; the routes below stay for the rest
    # (a wrong method's 405, and any infer call the middleware lets through).
    app.add_middleware(V2InferFastPath, gateway=gateway)

    def check(name: str, version: str | None = None) -> list[str]:
        return check_model(gateway, name, version)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and wrong methods under /v2 answer in the protocol's format too.
        key = "error" if request.url.path.startswith(V2_PREFIX) else "detail"
        return JSONResponse({key: exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.get("/v2/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        if gateway.ready_error is not None:
            raise RequestError(503, f"not ready: {gateway.ready_error}")
        return JSONResponse({"ready": True})

    @app.get("/v2")
    async def server_metadata() -> JSONResponse:
        return JSONResponse({"name": "mlcd", "version": __version__, "extensions": ["binary_tensor_data"]})

    @app.get("/v2/models/{name}")
    async def metadata(name: str) -> JSONResponse:
        return JSONResponse(model_metadata(name, check(name)))

    @app.get("/v2/models/{name}/versions/{version}")
    async def version_metadata(name: str, version: str) -> JSONResponse:
        check(name, version)
        return JSONResponse(model_metadata(name, [version]))

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> JSONResponse:
        check(name)
        return JSONResponse({"name": name, "ready": True})

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def version_ready(name: str, version: str) -> JSONResponse:
        check(name, version)
        return JSONResponse({"name": name, "version": version, "ready": True})

    async def infer(request: Request, name: str, version: str | None) -> Response:
        # Only what the fast path (mlcd.serving.fastpath) does not take comes here: keep the two in step.
        check(name, version)
        from mlcd.serving.hardening import content_type_refusal

        refusal = content_type_refusal(request.headers, binary_extension=True)
        if refusal is not None:  # a web page's simple POST (text/plain, a form, an untyped Blob) never reaches a model
            raise RequestError(*refusal)
        check_encoding(request.headers.get("content-encoding"))
        body = await read_bounded(request, config.max_body_bytes)
        content, headers = await infer_body(gateway, name, version, body, request.headers.get(HEADER_LENGTH),
                                            gateway.client_of(request))
        return Response(content, headers=headers)

    @app.post("/v2/models/{name}/infer")
    async def infer_model(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)
