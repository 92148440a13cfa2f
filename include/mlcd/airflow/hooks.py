"""``MlflowHook``: an Airflow Connection to an MLflow tracking server, turned into clients.

Connection ``mlflow_default`` (type ``http``), e.g. ``AIRFLOW_CONN_MLFLOW_DEFAULT='{"conn_type": "http",
"host": "mlflow.ml.svc", "port": 5000, "password": "<token>"}'``. ``host`` may carry the scheme
(``https://mlflow.example.com``); ``extra.tracking_uri`` overrides everything; ``password`` or
``extra.token`` is a bearer token. Without the Connection the deploy-wide setting
(``MLFLOW_TRACKING_URI`` / ``MLCD_MLFLOW_URI``) is used, so the embedded default needs no Connection.

The token is handed to the client's requests only; it is never written into ``os.environ`` (MLflow's usual
``MLFLOW_TRACKING_TOKEN`` would leak it to every later task in the same worker process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import BaseHook

from mlcd.settings import get_settings


@dataclass(frozen=True)
class MlflowConnection:
    """Where the MLflow server is and how to authenticate; ``token`` is hidden from ``repr``."""

    tracking_uri: str
    token: str | None = field(default=None, repr=False)
    conn_id: str | None = None


def connection_from_airflow(conn: Any) -> MlflowConnection:
    """Build :class:`MlflowConnection` from an Airflow ``Connection`` (pure: tests pass a plain Connection).

    The one rule for a Connection's tracking URI (the trainer pod renders the same rule as a template, see
    ``mlcd.airflow.training.MLFLOW_URI_TEMPLATE``): ``extra.tracking_uri`` wins; a host that holds a scheme is
    used as is; else, as in Airflow's HTTP connections, ``schema`` (``http``/``https``) or the connection type
    picks the scheme. Login and password never enter the URI; a password or ``extra.token`` is the token.
    """
    extra = conn.extra_dejson or {}
    uri = extra.get("tracking_uri")
    if not uri:
        host = (conn.host or "").rstrip("/")
        if not host:
            raise ValueError(f"connection {conn.conn_id!r} has no host and no extra.tracking_uri")
        if "://" not in host:
            if conn.schema in ("http", "https"):
                scheme = conn.schema
            else:
                scheme = "https" if conn.conn_type == "https" else "http"
            host = f"{scheme}://{host}"
        uri = f"{host}:{conn.port}" if conn.port else host
    token = extra.get("token") or conn.password or None
    return MlflowConnection(tracking_uri=str(uri), token=token, conn_id=conn.conn_id)


class MlflowHook(BaseHook):
    """Builds ``MlflowClient`` and :class:`~mlcd.registry.ModelRegistry` from an Airflow Connection.

    Args:
        mlflow_conn_id: the Connection; when it is not defined the settings' tracking URI is used.
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "http"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id
        self._config: MlflowConnection | None = None

    @property
    def config(self) -> MlflowConnection:
        """The resolved connection (read once per hook)."""
        if self._config is None:
            self._config = self._resolve()
        return self._config

    def _resolve(self) -> MlflowConnection:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.mlflow_conn_id)
        except AirflowNotFoundException:
            self.log.info("connection %s not defined: using the configured tracking URI", self.mlflow_conn_id)
            return MlflowConnection(tracking_uri=get_settings().tracking_uri)
        return connection_from_airflow(conn)

    def get_conn(self) -> Any:
        """An ``MlflowClient`` for the server (``MlflowClient(tracking_uri=...)``), token attached if any."""
        from mlflow import MlflowClient

        cfg = self.config
        client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
        if cfg.token:
            _attach_token(client, cfg.token)
        return client

    def get_registry(self, model_name: str | None = None) -> Any:
        """A :class:`~mlcd.registry.ModelRegistry` on this connection (model from settings by default)."""
        from mlcd.registry import ModelRegistry

        return ModelRegistry(
            self.config.tracking_uri, model_name or get_settings().model_name, client=self.get_conn()
        )

    def test_connection(self) -> tuple[bool, str]:
        """For the Airflow UI's "Test" button: can the server list registered models?"""
        try:
            self.get_conn().search_registered_models(max_results=1)
        except Exception as err:  # the UI shows the message
            return False, str(err).splitlines()[0]
        return True, f"MLflow at {self.config.tracking_uri} answered"


def _attach_token(client: Any, token: str) -> None:
    """Make this client's REST stores send ``Authorization: Bearer <token>``.

    MLflow reads the token from the environment only; wrapping the stores' credential callbacks keeps it
    inside this client. Relies on the REST stores' ``get_host_creds`` attribute (MLflow 2.x and 3.x).
    """
    stores = [client._tracking_client.store, client._get_registry_client().store]
    for store in stores:
        original = getattr(store, "get_host_creds", None)
        if original is None:
            continue

        def with_token(original: Any = original) -> Any:
            creds = original()
            creds.token = token
            return creds

        store.get_host_creds = with_token
