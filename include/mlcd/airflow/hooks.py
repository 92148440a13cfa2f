"""``MlflowHook``: an Airflow Connection to an MLflow tracking server, turned into clients.

Connection ``mlflow_default`` of type ``mlflow`` (the hook's own type: the UI shows its form and its *Test*
button reaches :meth:`MlflowHook.test_connection`), e.g. ``AIRFLOW_CONN_MLFLOW_DEFAULT='{"conn_type": "mlflow",
"host": "mlflow.ml.svc", "port": 5000, "password": "<token>"}'``. A Connection of type ``http`` with the same
fields keeps working. ``host`` may carry the scheme (``https://mlflow.example.com``); ``extra.tracking_uri``
overrides everything; ``password`` or ``extra.token`` is a bearer token. Without the Connection the deploy-wide
setting (``MLFLOW_TRACKING_URI`` / ``MLCD_MLFLOW_URI``) is used, so the embedded default needs no Connection.

The token reaches MLflow through MLflow's own request-auth-provider plugin (:mod:`mlcd.mlflow_auth`, entry point
``mlflow.request_auth_provider: mlcd``): it is kept in this process' memory for that server's URL only, never in
``os.environ`` (MLflow's usual ``MLFLOW_TRACKING_TOKEN`` would leak it to every later task in the same worker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from mlcd.settings import get_settings

if TYPE_CHECKING:
    from mlcd.registry.client import ModelRegistry


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
    conn_type = "mlflow"
    hook_name = "MLflow"

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extra field the Connection form shows for an ``mlflow`` Connection."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import StringField

        return {"tracking_uri": StringField(lazy_gettext("Tracking URI"), widget=BS3TextFieldWidget())}

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Which standard fields the form hides, how it names them, and what it suggests."""
        return {
            "hidden_fields": ["login", "extra"],
            "relabeling": {"host": "Host (or URL)", "schema": "Scheme (http or https)", "password": "Token"},
            "placeholders": {
                "host": "mlflow.ml.svc or https://mlflow.example.com",
                "port": "5000",
                "schema": "http",
                "password": "bearer token (optional)",
                "tracking_uri": "overrides host/port/scheme, e.g. http://mlflow.ml.svc:5000",
            },
        }

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id
        self._config: MlflowConnection | None = None

    @property
    def config(self) -> MlflowConnection:
        """The resolved connection (read once per hook); its token is registered with MLflow's auth plugin."""
        if self._config is None:
            self._config = self._resolve()
            if self._config.token:
                from mlcd.mlflow_auth import register_token

                register_token(self._config.tracking_uri, self._config.token)
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
        """An ``MlflowClient`` for the server; a token reaches it through the ``mlcd`` request-auth provider."""
        from mlflow import MlflowClient

        cfg = self.config
        return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)

    def get_registry(self, model_name: str | None = None) -> ModelRegistry:
        """A :class:`~mlcd.registry.ModelRegistry` on this connection (model from settings by default)."""
        from mlcd.registry import ModelRegistry

        return ModelRegistry(
            self.config.tracking_uri, model_name or get_settings().model_name, client=self.get_conn()
        )

    def test_connection(self) -> tuple[bool, str]:
        """For the Airflow UI's "Test" button: can the server list registered models (with the token)?"""
        try:
            self.get_conn().search_registered_models(max_results=1)
        except Exception as err:  # noqa: BLE001 - the UI shows the message
            text = str(err).splitlines()[0] if str(err) else type(err).__name__
            return False, f"MLflow at {self.config.tracking_uri}: {text}"[:500]
        return True, f"MLflow at {self.config.tracking_uri} answered"

