"""The serving gateway: champion and canary side by side, weighted and sticky routing, metrics, admin API.

Importing this package imports neither TensorFlow nor MLflow; they load with the first model.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GatewayConfig", "GatewayServer", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import mlcd.serving` stays cheap for the CLI and the Airflow operator.
    if name == "GatewayConfig":
        from mlcd.serving.config import GatewayConfig

        return GatewayConfig
    if name == "create_app":
        from mlcd.serving.app import create_app

        return create_app
    if name in ("GatewayServer", "serve"):
        from mlcd.serving import server

        return getattr(server, name)
    raise AttributeError(name)
