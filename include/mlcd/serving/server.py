"""Run the gateway with uvicorn on 127.0.0.1: blocking (``mlcd serve``) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from mlcd.serving.config import GatewayConfig
from mlcd.serving.models import ModelLoader

if TYPE_CHECKING:
    import uvicorn

HOST = "127.0.0.1"


def _uvicorn_config(config: GatewayConfig, port: int, loader: ModelLoader | None = None) -> uvicorn.Config:
    import uvicorn

    from mlcd.serving.app import create_app
    from mlcd.serving.hardening import LIMIT_CONCURRENCY, http_protocol

    return uvicorn.Config(
        create_app(config, loader),
        host=HOST,  # loopback only; a cluster exposes it through its Service instead
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        # Slow clients: headers within a deadline (uvicorn alone waits forever), idle keep-alive closed after 5 s,
        # at most LIMIT_CONCURRENCY connections and requests at once (503 beyond), headers of at most 64 KiB.
        http=http_protocol(),
        timeout_keep_alive=5,
        limit_concurrency=LIMIT_CONCURRENCY,
        h11_max_incomplete_event_size=64 * 1024,
    )


def serve(config: GatewayConfig, port: int) -> None:
    """Serve until interrupted (SIGINT/SIGTERM end it gracefully: in-flight requests are answered)."""
    import uvicorn

    uvicorn.Server(_uvicorn_config(config, port)).run()


class GatewayServer:
    """A gateway in a background thread of this process, on ``127.0.0.1:port``."""

    def __init__(self, config: GatewayConfig, port: int, loader: ModelLoader | None = None):
        import uvicorn

        self.config = config
        self.port = port
        self.server = uvicorn.Server(_uvicorn_config(config, port, loader))
        self.thread = threading.Thread(target=self.server.run, name=f"gateway-{port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def app(self) -> Any:
        return self.server.config.app

    def start(self, timeout: float = 120.0) -> GatewayServer:
        """Start and wait until startup (model loading) is done and the port answers."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise RuntimeError(f"gateway on port {self.port} exited during startup")
            if self.server.started:
                try:
                    urllib.request.urlopen(f"{self.url}/healthz", timeout=2).close()
                    return self
                except urllib.error.HTTPError:
                    return self  # 503 = up but without a model; the caller decides
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway on port {self.port} not up after {timeout:.0f}s")

    def stop(self, timeout: float = 20.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
