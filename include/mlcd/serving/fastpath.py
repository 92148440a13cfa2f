"""Open Inference ``…/infer`` requests answered in one plain ASGI layer, before FastAPI's router.

Under load, FastAPI's per-request machinery (its exception middleware and exit stacks, route matching over every
route, dependency solving, ``Request`` and ``Response`` objects, the ``send`` wrappers) cost the event loop about
as much as the inference request's own work. This middleware sits inside Starlette's outermost error middleware
(an unexpected exception still becomes the same 500) and answers only ``POST /v2/models/{name}/infer`` and
``POST /v2/models/{name}/versions/{version}/infer``, with the same checks in the same order as the FastAPI route
(model and version served, content encoding, declared and streamed size limits) and the same code after them
(:func:`mlcd.serving.v2.infer_body`). Everything else (other paths, other methods, a trailing slash) goes on to
FastAPI untouched.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from mlcd.serving import fastjson
from mlcd.serving.app import RequestError, check_declared_length

if TYPE_CHECKING:
    from mlcd.serving.app import Gateway

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Starlette's ``{name}`` path parameter matches ``[^/]+``: the same here, so both layers agree on every path.
_INFER = re.compile(r"/v2/models/([^/]+)/infer")
_INFER_VERSION = re.compile(r"/v2/models/([^/]+)/versions/([^/]+)/infer")
_JSON = b"application/json"


class _Disconnected(Exception):
    """The client went away before its body was read: there is nobody to answer."""


def match_infer(path: str) -> tuple[str, str | None] | None:
    """``(model name, version or None)`` for an inference path, else ``None``."""
    m = _INFER.fullmatch(path)
    if m is not None:
        return m.group(1), None
    m = _INFER_VERSION.fullmatch(path)
    if m is not None:
        return m.group(1), m.group(2)
    return None


class V2InferFastPath:
    """ASGI middleware: Open Inference ``infer`` calls straight to the gateway, all else to ``app``."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        from mlcd.serving.evidence import parse_networks

        self.app = app
        self.gateway = gateway
        self._proxies = parse_networks(gateway.config.trusted_proxies)  # the config is frozen: parsed once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        target = match_infer(scope["path"])
        if target is None:
            await self.app(scope, receive, send)
            return
        from mlcd.serving.hardening import content_type_refusal
        from mlcd.serving.v2 import HEADER_LENGTH, check_encoding, check_model, infer_body

        name, version = target
        headers = _headers(scope)
        try:
            check_model(self.gateway, name, version)
            refusal = content_type_refusal(headers, binary_extension=True)  # as the FastAPI route (#23.5)
            if refusal is not None:
                raise RequestError(*refusal)
            check_encoding(headers.get("content-encoding"))
            body = await _read_bounded(receive, headers.get("content-length"), self.gateway.config.max_body_bytes)
            content, out_headers = await infer_body(self.gateway, name, version, body,
                                                    headers.get(HEADER_LENGTH.lower()), self._client(scope, headers))
            status = 200
        except _Disconnected:
            return
        except RequestError as err:
            # As the app's RequestError handler answers on /v2: counted when a 4xx, {"error": ...} body.
            if 400 <= err.status < 500:
                self.gateway.metrics.rejected.labels(str(err.status)).inc()
            content, out_headers, status = fastjson.dumps({"error": err.reason, **err.extra}), {}, err.status
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out_headers.items()
               if k.lower() != "content-type"]
        ctype = out_headers.get("content-type", "application/json").encode("latin-1")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(content)).encode()), (b"content-type", ctype), *raw]})
        await send({"type": "http.response.body", "body": content})


    def _client(self, scope: Scope, headers: dict[str, str]) -> str:
        """Who sent it, as :meth:`mlcd.serving.app.Gateway.client_of` reads it from a Starlette request."""
        from mlcd.serving.evidence import client_address

        peer = scope.get("client")
        return client_address(peer[0] if peer else None, headers, self._proxies)


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers by lower-case name; the first of repeated ones wins, as Starlette's ``Headers.get``."""
    out: dict[str, str] = {}
    for key, value in scope["headers"]:
        name = key.decode("latin-1").lower()
        if name not in out:
            out[name] = value.decode("latin-1")
    return out


async def _read_bounded(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body, refusing an oversized one (declared or streamed) as :func:`mlcd.serving.app.read_bounded`."""
    check_declared_length(declared, limit)
    import asyncio
    import logging

    from mlcd.serving.hardening import BODY_TIMEOUT_S

    chunks: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BODY_TIMEOUT_S  # a body trickled byte by byte must not hold a slot forever
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise RequestError(408, f"body not received within {BODY_TIMEOUT_S:.0f}s") from None
        if message["type"] == "http.disconnect":
            logging.getLogger(__name__).info("client hung up after %d bytes of its request body", size)
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body exceeds the limit of {limit} bytes")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
