"""A recording HTTP endpoint on 127.0.0.1 for tests of outgoing calls (webhooks, MLflow auth headers)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[str, str, dict[str, str], bytes], tuple[int, Any]]


@dataclass
class Recorder:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def recording_server(respond: Responder | None = None) -> Iterator[Recorder]:
    """Record every request (method, path, headers, JSON body); answer with ``respond`` (default 200 ``{}``)."""
    rec: Recorder

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                parsed: Any = json.loads(body) if body else None
            except ValueError:
                parsed = body.decode(errors="replace")
            rec.requests.append({"method": self.command, "path": self.path, "headers": headers, "body": parsed})
            status, answer = respond(self.command, self.path, headers, body) if respond else (200, {})
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle  # noqa: N815 - http.server's names

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec = Recorder(f"http://127.0.0.1:{server.server_port}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
