"""Connection and browser hardening of the gateway: content types, header and body deadlines, hang-ups.

* A web page may send a "simple" cross-origin POST without a CORS preflight: ``text/plain``, a form, or a body
  with no type at all. Inference accepts only ``application/json`` or, with the binary tensor extension's
  ``Inference-Header-Content-Length``, ``application/octet-stream`` (415 otherwise), and refuses any request
  that names an ``Origin`` (403), so no page a user visits can drive a loopback gateway.
* uvicorn waits for a request's headers forever (slowloris: connections that trickle a header byte now and
  then hold a slot each): :func:`header_deadline_protocol` closes a connection whose headers are not complete
  within a deadline; the body has its own deadline (``BODY_TIMEOUT_S``, a 408), and the connection count is capped.
* A client that hangs up mid-upload is one log line, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

JSON = "application/json"
BINARY = "application/octet-stream"
HEADER_LENGTH = "inference-header-content-length"
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
LIMIT_CONCURRENCY = 512


def media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def content_type_refusal(headers: Mapping[str, str], binary_extension: bool = False) -> tuple[int, str] | None:
    """Why the request's body is refused (status and one line), or ``None`` when it is acceptable.

    ``application/json`` always passes; with ``binary_extension`` (``/v2/.../infer``) so does
    ``application/octet-stream`` with ``Inference-Header-Content-Length``. A body with no declared type passes
    only from a client that is not a browser page (no ``Origin``): ``tritonclient`` sends none, while a page's
    "simple" POST of an untyped body carries its ``Origin``. The gateway serves no pages, so a request that names
    an origin is cross-origin by definition and refused whatever its type.
    """
    origin = headers.get("origin")
    if origin is not None or headers.get("sec-fetch-site", "none") in ("cross-site", "same-site"):
        return 403, f"cross-origin requests are refused (Origin: {(origin or 'unknown')[:80]})"
    ctype = media_type(headers)
    if ctype == JSON:
        return None
    if binary_extension and HEADER_LENGTH in headers and ctype in (BINARY, ""):
        return None
    if not ctype:
        return None  # a non-browser client (no Origin) that declares no type: read as JSON
    wanted = f"{JSON} (or {BINARY} with Inference-Header-Content-Length)" if binary_extension else JSON
    return 415, f"content type must be {wanted}, got {ctype}"


def header_deadline_protocol(base: type[Any], timeout_s: float) -> type[Any]:
    """``base`` (a uvicorn HTTP protocol class) that closes a connection whose request headers are not complete
    within ``timeout_s``: when it opens, and again whenever it waits for the next request's headers."""

    class HeaderDeadline(base):
        _mlcd_timer: asyncio.TimerHandle | None = None

        def _mlcd_arm(self) -> None:
            if self._mlcd_timer is None:
                self._mlcd_timer = self.loop.call_later(timeout_s, self._mlcd_expire)

        def _mlcd_disarm(self) -> None:
            if self._mlcd_timer is not None:
                self._mlcd_timer.cancel()
                self._mlcd_timer = None

        def _mlcd_waiting_for_headers(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is None or bool(getattr(cycle, "response_complete", False))

        def _mlcd_expire(self) -> None:
            self._mlcd_timer = None
            if self._mlcd_waiting_for_headers() and not self.transport.is_closing():
                log.info("closing a connection whose request headers took over %.0fs", timeout_s)
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._mlcd_arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._mlcd_waiting_for_headers():
                self._mlcd_arm()
            else:
                self._mlcd_disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._mlcd_disarm()
            super().connection_lost(exc)

    HeaderDeadline.__name__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline


def http_protocol(timeout_s: float | None = None) -> type[Any]:
    """uvicorn's own choice of HTTP protocol (httptools when installed, else h11), with the header deadline
    (``timeout_s``, default :data:`HEADER_TIMEOUT_S` as it is when called)."""
    timeout_s = HEADER_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return header_deadline_protocol(HttpToolsProtocol, timeout_s)
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return header_deadline_protocol(H11Protocol, timeout_s)
