"""MLflow client retries bounded to seconds, for the paths that must finish quickly (rollback, reconcile).

MLflow's REST client retries a failed call with exponential backoff for minutes by default
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 7, backoff factor 2, timeout 120 s per call). On the rollback path that is
minutes of users on a bad version; there a call must fail fast so the caller moves traffic first and lets the
retrying reconcile step bring the registry in line later.

MLflow reads these variables on every request (and keys its cached HTTP session by them), so setting them
around a block takes effect at once. They are process-wide: the block is meant for a short CLI command or a task
process, not a long-lived server thread pool.

How the rollback path uses it::

    from mlcd.registry.retries import bounded_registry

    router.set_routes(stable, None, 0)                      # 1. traffic first, no MLflow call before it
    try:
        with bounded_registry(tracking_uri, model_name) as registry:   # 2. each MLflow call gives up in seconds
            registry.rollback(version, reason, evidence, actor)
    except RegistryError:                                   # MLflow down / lease busy: traffic is already safe;
        ...                                                 # 3. `mlcd reconcile` (retrying) converges it later
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# A call budget of about timeout × (retries + 1) + backoff: ~2 × 3 s + 1 s by default.
_VARS = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


def bounded_env(max_retries: int = 1, timeout_s: float = 3.0, backoff_factor: int = 1) -> dict[str, str]:
    """The MLflow environment variables for a bounded call budget."""
    if max_retries < 0 or timeout_s <= 0 or backoff_factor < 0:
        raise ValueError("max_retries >= 0, timeout_s > 0 and backoff_factor >= 0 are required")
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(int(max_retries)),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(int(backoff_factor)),  # MLflow parses it as an int
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
        # MLflow parses this one as an int.
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(round(timeout_s)))),
    }


@contextmanager
def bounded_mlflow_retries(max_retries: int = 1, timeout_s: float = 3.0, backoff_factor: int = 1) -> Iterator[None]:
    """Within the block, every MLflow HTTP call gives up after about ``timeout_s × (max_retries + 1)`` seconds."""
    env = bounded_env(max_retries, timeout_s, backoff_factor)
    saved = {k: os.environ.get(k) for k in _VARS}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def bounded_registry(
    tracking_uri: str,
    model_name: str,
    *,
    max_retries: int = 1,
    timeout_s: float = 3.0,
    backoff_factor: int = 1,
    lease_wait_s: float = 5.0,
    **kwargs: Any,
) -> Iterator[Any]:
    """A :class:`~mlcd.registry.ModelRegistry` whose MLflow calls, and wait for the lease, are bounded to seconds."""
    from mlcd.registry.client import ModelRegistry

    with bounded_mlflow_retries(max_retries, timeout_s, backoff_factor):
        registry = ModelRegistry(tracking_uri, model_name, **kwargs)
        registry.lease_wait_s = lease_wait_s
        yield registry


__all__ = ["bounded_env", "bounded_mlflow_retries", "bounded_registry"]
