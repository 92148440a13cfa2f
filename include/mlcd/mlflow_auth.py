"""MLflow's request-auth-provider plugin for mlcd: a bearer token per MLflow server, never in ``os.environ``.

MLflow calls a provider named by ``MLFLOW_TRACKING_AUTH`` for every REST request (entry point group
``mlflow.request_auth_provider``, declared in pyproject.toml as ``mlcd``). The provider's ``requests`` auth looks
the request's URL up in this process's token table, which :func:`register_token` fills (the Airflow
``MlflowHook`` does, from its Connection). So the token stays in memory, only the provider's *name* is in the
environment, a request to another server never gets the token, and no private client attribute is touched.
"""

from __future__ import annotations

import os
import threading
from typing import Any

PROVIDER_NAME = "mlcd"
_TOKENS: dict[str, str] = {}  # tracking URI prefix (no trailing slash) → token
_LOCK = threading.Lock()


def _norm(uri: str) -> str:
    return uri.rstrip("/")


def register_token(tracking_uri: str, token: str) -> None:
    """Send ``Authorization: Bearer <token>`` on MLflow requests to ``tracking_uri`` from this process."""
    with _LOCK:
        _TOKENS[_norm(tracking_uri)] = token
    # The provider's name, not a secret; a deployment that already chose another provider keeps it.
    os.environ.setdefault("MLFLOW_TRACKING_AUTH", PROVIDER_NAME)


def token_for(url: str) -> str | None:
    """The token of the longest registered URI that ``url`` starts with (at a path boundary)."""
    with _LOCK:
        items = sorted(_TOKENS.items(), key=lambda kv: len(kv[0]), reverse=True)
    for prefix, token in items:
        if url == prefix or url.startswith(prefix + "/"):
            return token
    return None


class BearerForRegisteredServers:
    """A ``requests`` auth callable: adds the token registered for the request's server, if any."""

    def __call__(self, request: Any) -> Any:
        token = token_for(str(request.url))
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        return request


class MlcdRequestAuthProvider:
    """Entry point ``mlflow.request_auth_provider: mlcd`` (MLflow's ``RequestAuthProvider`` interface)."""

    def get_name(self) -> str:
        return PROVIDER_NAME

    def get_auth(self) -> BearerForRegisteredServers:
        return BearerForRegisteredServers()
