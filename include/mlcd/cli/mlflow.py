"""``mlcd mlflow``: run the embedded default's MLflow tracking server (SQLite, artifacts under MLCD_HOME)."""

from __future__ import annotations

import signal
import time

import click

from mlcd.mlflow_server import LocalMlflowServer
from mlcd.settings import get_settings


@click.command("mlflow")
@click.option("--port", type=int, default=5000, show_default=True, help="Port on 127.0.0.1.")
def mlflow_command(port: int) -> None:
    """Start a local MLflow server on 127.0.0.1 and keep it running until interrupted."""
    settings = get_settings()
    server = LocalMlflowServer(root=settings.mlflow_dir, port=port).start()
    click.echo(f"MLflow UI: {server.url}  (state in {settings.mlflow_dir})")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop and server.process is not None and server.process.poll() is None:
            time.sleep(1)
    finally:
        server.stop()


def register(group: click.Group) -> None:
    group.add_command(mlflow_command)
