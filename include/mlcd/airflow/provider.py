"""mlcd as an Airflow provider (entry point ``apache_airflow_provider``): connection type, plugin, ``[mlcd]`` config.

``airflow providers list`` shows mlcd; ``airflow providers plugins`` its UI plugin; ``airflow config list`` the
``[mlcd]`` section, whose options :func:`mlcd.settings.load_settings` reads when the ``MLCD_*`` variable of the same
name is not set (``model_name`` is ``MLCD_MODEL_NAME``).

Registering the connection type this way is what lets the Connection form show MLflow's fields and its *Test* button
reach :meth:`mlcd.airflow.hooks.MlflowHook.test_connection` (Airflow finds a hook by its connection type only through a
provider). Form fields are declared here (``conn-fields`` / ``ui-field-behaviour``), as Airflow 3.3 asks,
instead of the hook's deprecated ``get_connection_form_widgets``. Importing this module imports nothing else.
"""

from __future__ import annotations

from typing import Any

from mlcd import __version__


def get_provider_info() -> dict[str, Any]:
    """The provider description Airflow's ProvidersManager reads."""
    return {
        "package-name": "mlcd",
        "name": "mlcd",
        "description": "Continuous delivery for ML models: the MLflow connection type and mlcd's notifiers.",
        "versions": [__version__],
        "connection-types": [
            {
                "hook-class-name": "mlcd.airflow.hooks.MlflowHook",
                "hook-name": "MLflow",
                "connection-type": "mlflow",
                "ui-field-behaviour": {
                    "hidden-fields": ["login"],
                    "relabeling": {"host": "Host or URL", "schema": "Scheme (http or https)", "password": "Token"},
                    "placeholders": {
                        "host": "mlflow.ml.svc or https://mlflow.example.com",
                        "port": "5000",
                        "schema": "http",
                        "password": "bearer token (optional)",
                    },
                },
                "conn-fields": {
                    "tracking_uri": {
                        "label": "Tracking URI",
                        "description": "Overrides host, port and scheme, e.g. http://mlflow.ml.svc:5000",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            }
        ],
        "notifications": ["mlcd.airflow.notifiers.MlcdNotifier"],
        "plugins": [{"name": "mlcd", "plugin-class": "mlcd.airflow.plugin.MlcdPlugin"}],
        "config": {"mlcd": {"description": CONFIG_DESCRIPTION, "options": config_options()}},
    }


CONFIG_DESCRIPTION = (
    "mlcd's deploy-wide settings. Each option is the MLCD_* environment variable of the same name in upper case "
    "(model_name is MLCD_MODEL_NAME); the environment wins over this section. Empty means the embedded default. "
    "Secrets (MLCD_ADMIN_TOKEN) come from the environment only."
)

# option -> (type, description with the embedded default). Every MLCD_* setting of mlcd.settings.load_settings
# except the secrets; a unit test keeps the two lists equal.
OPTIONS: dict[str, tuple[str, str]] = {
    "home": ("string", "Local state folder (ledger SQLite, logs, scratch). Default: .mlcd of the working directory."),
    "storage_url": ("string", "Where batches, quarantine copies, snapshots and Data Docs live: a folder or "
                              "s3://bucket/prefix (mlcd[s3]) / gs://... (mlcd[gcs]). Default: file:// of home."),
    "storage_options": ("string", "fsspec options of storage_url as a JSON object (endpoint_url, ...), "
                                  "never credentials."),
    "landing_uri": ("string", "The landing zone new batches arrive in. Default: landing/ under storage_url."),
    "model_name": ("string", "Registered model name in MLflow. Default: mnist-cnn."),
    "mlflow_uri": ("string", "MLflow tracking URI when neither MLFLOW_TRACKING_URI nor the mlflow_default "
                             "Connection gives one. Default: http://127.0.0.1:5000."),
    "training_backend": ("string", "local (a child process of the worker) or kubernetes (a GPU pod). Default: local."),
    "router_backend": ("string", "local (the gateway's admin API) or kubernetes (an HTTPRoute). Default: local."),
    "gateway_url": ("string", "The inference gateway's base URL. Default: http://127.0.0.1:8000."),
    "data": ("string", "Reference dataset (an mnist.npz). Default: the Keras cache, else scikit-learn's digits."),
    "canary_spec": ("string", "Rollout spec overrides for every canary, a JSON object."),
    "guard_bake_s": ("float", "Seconds mlcd_guard still watches a freshly promoted champion. Default: 300."),
    "max_batch_bytes": ("integer", "Largest landed file accepted, in bytes. Default: 536870912."),
    "max_uncompressed_bytes": ("integer", "Largest decoded batch, in bytes. Default: 536870912."),
    "max_batch_images": ("integer", "Most images in one batch. Default: 500000."),
    "max_compression_ratio": ("float", "Largest uncompressed/compressed ratio of a member (zip bombs). Default: 100."),
    "settle_s": ("float", "A landed file is taken once unchanged for this many seconds. Default: 5."),
    "ledger_url": ("string", "SQL database of the ledger and the registry lease (postgresql+psycopg2://..., "
                             "mlcd[postgres]). Default: SQLite under home."),
    "metrics_provider": ("string", "gateway (its /metrics) or prometheus. Default: gateway."),
    "prometheus_url": ("string", "Prometheus base URL (metrics_provider = prometheus)."),
    "prometheus_selector": ("string", "Extra label matchers, e.g. namespace=\"mlcd\"."),
    "prometheus_lookback": ("string", "How long a vanished pod's final counts stay in the sums. Default: 1h."),
    "retrain_defaults": ("string", "mlcd_retrain param defaults as a JSON object (epochs, batch_size, gate)."),
    "guard_thresholds": ("string", "mlcd_guard judge overrides as a JSON object of GuardThresholds fields."),
}


def config_options() -> dict[str, dict[str, Any]]:
    """The ``[mlcd]`` options in the provider-info schema; no defaults, so a written airflow.cfg overrides nothing."""
    return {
        key: {"description": description, "version_added": "0.1.0", "type": kind, "example": None, "default": None}
        for key, (kind, description) in OPTIONS.items()
    }
