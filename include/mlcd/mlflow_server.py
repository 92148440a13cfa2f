"""Start and stop a local MLflow tracking server: the embedded default's registry, and the tests' real one.

The server is slimmed as ../STACK.md measured (one worker, job execution off): about 13 s to health and
0.4 GiB instead of 15 processes. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET {url}/health`` answers 200."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class LocalMlflowServer:
    """A ``mlflow server`` child process with a SQLite backend and a local artifact folder.

    Args:
        root: folder for ``mlflow.db``, ``artifacts/`` and ``server.log``.
        port: TCP port on 127.0.0.1; ``0`` picks a free one.
    """

    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def command(self) -> list[str]:
        mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        return [
            mlflow_bin,
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def start(self, timeout: float = 90.0) -> LocalMlflowServer:
        """Start the server and wait for ``/health``; raises ``RuntimeError`` with the log tail on failure."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        env = dict(os.environ)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        # A client-side tracking URI in the environment must not leak into the server's own config.
        env.pop("MLFLOW_TRACKING_URI", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # so stop() can end gunicorn/uvicorn children as a group
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: {self._log_tail()}")
            if is_healthy(self.url, timeout=1.0):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy on {self.url} after {timeout:.0f}s: {self._log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and its workers; safe to call twice."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            self.process = None
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        self.process = None

    def kill(self) -> None:
        """Kill abruptly, as a crash would (fault-injection tests)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def _log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> LocalMlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
