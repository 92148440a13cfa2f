"""Least privilege between the platform's processes: each gets only the secrets its role needs.

``make up`` builds one environment with every secret (:func:`mlcd.platform.platform_env`); before a process
starts, :func:`env_for` drops what its role has no use for. A gateway holds the tokens it checks and the key it
verifies models with, never Airflow's JWT secret (a token minted from it was accepted by the Airflow API); MLflow
holds none of mlcd's or Airflow's; the trainer child holds MLflow's credentials and the key it signs its model
with, nothing else.

Airflow's own parts share its JWT secret (the scheduler and triggerer issue and check task tokens with it); the
scheduler's task processes run mlcd's tasks, which call the gateway's admin API and read its metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Role(StrEnum):
    """What a process is; the service names of :func:`mlcd.platform.services` map onto these."""

    MLFLOW = "mlflow"
    AIRFLOW_API = "airflow-api-server"
    SCHEDULER = "airflow-scheduler"
    DAG_PROCESSOR = "airflow-dag-processor"
    TRIGGERER = "airflow-triggerer"
    GATEWAY = "gateway"
    TRAFFIC = "traffic"  # the demo's load generator: it labels its own predictions
    TRAINER = "trainer"  # the local trainer child of the train task


ADMIN_TOKEN = "MLCD_ADMIN_TOKEN"
FEEDBACK_TOKEN = "MLCD_FEEDBACK_TOKEN"
GATEWAY_SECRET = "MLCD_GATEWAY_SECRET"
METRICS_TOKEN = "MLCD_METRICS_TOKEN"
SIGNING_KEY = "MLCD_MODEL_SIGNING_KEY"
JWT_SECRET = "AIRFLOW__API_AUTH__JWT_SECRET"
API_SECRET = "AIRFLOW__API__SECRET_KEY"
PASSWORDS_FILE = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
FERNET_KEY = "AIRFLOW__CORE__FERNET_KEY"
MLFLOW_TOKEN = "MLFLOW_TRACKING_TOKEN"
MLFLOW_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
MLFLOW_USERNAME = "MLFLOW_TRACKING_USERNAME"

SECRETS = frozenset({ADMIN_TOKEN, FEEDBACK_TOKEN, GATEWAY_SECRET, METRICS_TOKEN, SIGNING_KEY, JWT_SECRET,
                     API_SECRET, PASSWORDS_FILE, FERNET_KEY, MLFLOW_TOKEN, MLFLOW_PASSWORD, MLFLOW_USERNAME})
# Airflow Connections as environment variables may carry passwords: only Airflow's processes read them.
CONNECTION_PREFIX = "AIRFLOW_CONN_"
MLFLOW_CLIENT = frozenset({MLFLOW_TOKEN, MLFLOW_PASSWORD, MLFLOW_USERNAME})
_AIRFLOW = frozenset({JWT_SECRET, FERNET_KEY})

ALLOWED: dict[Role, frozenset[str]] = {
    Role.MLFLOW: frozenset(),
    # The api-server also serves the mlcd page (plugin): it reads the routes from the gateway's admin API, the
    # metrics and the registry, and its actions move routes.
    Role.AIRFLOW_API: _AIRFLOW | MLFLOW_CLIENT | {API_SECRET, PASSWORDS_FILE, ADMIN_TOKEN, METRICS_TOKEN},
    # Tasks run in the scheduler's LocalExecutor children: the canary and guard tasks move routes (admin token)
    # and read metrics; the train task's trainer signs its model; every task reads MLflow.
    Role.SCHEDULER: _AIRFLOW | MLFLOW_CLIENT | {ADMIN_TOKEN, METRICS_TOKEN, SIGNING_KEY},
    Role.DAG_PROCESSOR: _AIRFLOW,
    Role.TRIGGERER: _AIRFLOW | MLFLOW_CLIENT | {ADMIN_TOKEN, METRICS_TOKEN},  # the deferred canary and guard
    Role.GATEWAY: MLFLOW_CLIENT | {ADMIN_TOKEN, FEEDBACK_TOKEN, GATEWAY_SECRET, METRICS_TOKEN, SIGNING_KEY},
    Role.TRAFFIC: frozenset({FEEDBACK_TOKEN}),
    Role.TRAINER: MLFLOW_CLIENT | {SIGNING_KEY},
}
_READS_CONNECTIONS = frozenset({Role.AIRFLOW_API, Role.SCHEDULER, Role.DAG_PROCESSOR, Role.TRIGGERER})


def role_of(name: str) -> Role | None:
    """The role of a service name, or ``None`` for a process of no known role (it then gets no secret)."""
    try:
        return Role(name)
    except ValueError:
        return None


def env_for(role: Role | str | None, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the secrets ``role`` has no use for (an unknown role keeps none of them)."""
    known = role if isinstance(role, Role) else role_of(role or "")
    allowed = ALLOWED.get(known, frozenset()) if known is not None else frozenset()
    reads_connections = known in _READS_CONNECTIONS
    return {
        k: v for k, v in env.items()
        if (k not in SECRETS or k in allowed) and (reads_connections or not k.startswith(CONNECTION_PREFIX))
    }
